"""Benchmarks, run as ``python -m ldrop.bench <benchmark> [options]``.

* ``speedup`` (:mod:`ldrop.bench.speedup`): wall-clock speed-up of sparse gated execution over the full
  model, against the ideal the fixed part allows and the FLOPs ratio.
* ``loading`` (:mod:`ldrop.bench.dataloading`): data loading throughput.
* ``overhead``: the selector's and the gating's own cost (when present).

Each benchmark writes JSON records (one per measured setting) and prints a Markdown table. Modules are
imported only when their benchmark runs.
"""
