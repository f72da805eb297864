"""``python -m ldrop.bench <benchmark> [options]``: run one of the benchmarks.

Benchmarks are imported only when chosen, so one that needs an optional dependency does not break the
others.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

#: Benchmark name -> (module with a ``main(argv) -> int | None``, one-line description).
BENCHMARKS: dict[str, tuple[str, str]] = {
    "speedup": ("ldrop.bench.speedup", "wall-clock speed-up of sparse gated execution vs the full model"),
    "loading": ("ldrop.bench.dataloading", "data loading throughput"),
    "overhead": ("ldrop.bench.overhead", "selector and gating overhead"),
    "control": ("ldrop.bench.control", "meeting a per-utterance deadline under changing load (budget controller)"),
    "methods": ("ldrop.bench.methods", "every method trained from one full-depth model and swept: one table, one plot"),
    "precision": ("ldrop.bench.precision", "the quickstart metric at each training precision, paired over seeds"),
    "gpu": ("ldrop.bench.gpu", "every GPU figure in one command: speed-up, host syncs, profile, quickstart at bf16"),
    "onnx_parity": ("ldrop.bench.onnx_parity", "ONNX Runtime vs PyTorch: logits, masks, folder size, int8 accuracy"),
    "batching": ("ldrop.bench.batching", "clips whose layers or prediction change when batched (batch_independent)"),
}


def usage() -> str:
    lines = ["usage: python -m ldrop.bench {" + ",".join(BENCHMARKS) + "} [options]", "", "benchmarks:"]
    lines += [f"  {name:<10} {description}" for name, (_, description) in BENCHMARKS.items()]
    lines += ["", "Run `python -m ldrop.bench <benchmark> --help` for a benchmark's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the chosen benchmark's ``main`` with the remaining arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name = BENCHMARKS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise  # the benchmark exists but one of its own imports is missing
        print(
            f"benchmark {name!r} is not available in this version of ldrop ({module_name} is missing)",
            file=sys.stderr,
        )
        return 2
    try:
        return int(module.main(rest) or 0)
    except (ValueError, OSError, ModuleNotFoundError) as error:  # a bad argument or input, a missing extra: one line
        from ldrop.runtime.onnx_runtime import MissingExtraError

        missing_module = isinstance(error, ModuleNotFoundError) and not isinstance(error, MissingExtraError)
        if missing_module or os.environ.get("LDROP_DEBUG", "0") not in ("", "0"):
            raise
        print(f"python -m ldrop.bench {name}: error: {error} (LDROP_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
