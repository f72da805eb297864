"""``python -m ldrop.bench speedup --runtime onnx``: skipping layers on ONNX Runtime, against PyTorch eager.

The model (random weights, masks given) is exported and timed through
:class:`~ldrop.runtime.OnnxAdaptiveModel` and PyTorch's sparse path on the same inputs and masks: ``full``,
``fixed`` (no layer), ``per_sample@k`` and (ONNX only) ``shared@k``, interleaved as in
:mod:`ldrop.bench.speedup`. ``onnx_vs_torch`` is PyTorch's time over ONNX Runtime's; both get the same
threads.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ldrop.bench.speedup import (
    SAMPLING_RATE,
    large_overrides,
    parse_budgets,
    random_batch,
    run_options,
    timed_records,
    torch_threads,
)
from ldrop.runtime.onnx_export import export_onnx, folder_megabytes, quantize_export
from ldrop.runtime.onnx_runtime import OnnxAdaptiveModel
from ldrop.sweeps import markdown_table
from ldrop.tasks import ClassificationTask


def build_task(backbone: str, size: str, **options: Any) -> ClassificationTask:
    """A 2-class task of random weights on ``backbone`` at ``size`` (the geometry of
    :func:`ldrop.bench.speedup.build_config`); ``options``: further task arguments (a selector)."""
    return ClassificationTask(labels=["a", "b"], backbone=f"{'tiny' if size == 'tiny' else 'random'}:{backbone}",
                              pretrained=False, backbone_overrides=large_overrides(backbone) if size == "large" else None,
                              **options).eval()


def run_onnx_speedup(
    backbone: str = "wavlm", size: str = "base", batch_size: int = 8, seconds: float = 4.0,
    budgets: str | Sequence[int] = "0.25,0.5,0.75", repeats: int = 10, warmup: int = 1,
    threads: int | None = None, quantize: str | None = None, export_dir: str | os.PathLike | None = None,
    seed: int = 0, log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Time ONNX Runtime and PyTorch eager at full depth and per budget; one record per budget.

    ``quantize="dynamic"`` times int8 layer graphs (PyTorch stays fp32); ``export_dir`` is an export to reuse
    or write (``None``: temporary); the rest as :func:`ldrop.bench.speedup.run_speedup`.
    """
    say = log or (lambda line: None)
    torch.manual_seed(seed)
    task = build_task(backbone, size)
    num_layers = task.num_layers
    if isinstance(budgets, str):
        budgets = parse_budgets(budgets, num_layers)
    with tempfile.TemporaryDirectory(prefix="ldrop-bench-onnx-") as scratch:
        folder = Path(export_dir) if export_dir else Path(scratch) / "fp32"
        export_seconds = None
        if not (folder / "manifest.json").is_file():
            started = time.perf_counter()
            export_onnx(task, folder, progress=say)
            export_seconds = time.perf_counter() - started
        sizes = {"fp32": folder_megabytes(folder)}
        if quantize == "dynamic":
            folder = quantize_export(folder, Path(scratch) / "int8", progress=say)
            sizes["int8"] = folder_megabytes(folder)
        model = OnnxAdaptiveModel(folder, threads=threads)
        waves, lengths = random_batch([round(seconds * SAMPLING_RATE)] * batch_size, torch.Generator().manual_seed(seed))
        variants = ["torch_full", "torch_fixed", "onnx_full", "onnx_fixed"] + [
            f"{runtime}_{kind}@{k}" for k in budgets for runtime, kind in
            (("torch", "per_sample"), ("onnx", "per_sample"), ("onnx", "shared"))]
        run = dict(backbone=backbone, size=size, batch_size=batch_size, seconds=seconds, repeats=repeats,
                   warmup=warmup, seed=seed)
        with torch_threads(threads or None):  # the machine is described with the thread count the timing used
            records = timed_records(variants, lambda name, masks: _variant(task, model, name, masks, waves, lengths),
                                    budgets, num_layers, "cpu", run, prefix="onnx_", full_names=True, log=say)
    for record in records:
        t = record["time_s"]
        record["machine"]["onnxruntime_threads"] = threads
        record.update(runtime="onnx", quantize=quantize, folder_mb=sizes, export_seconds=export_seconds,
                      onnx_vs_torch={"full": t["torch_full"] / t["onnx_full"],
                                     "per_sample": t["torch_per_sample"] / t["onnx_per_sample"]})
    return records


def _variant(task: ClassificationTask, model: OnnxAdaptiveModel, name: str, masks: dict[int, dict[str, torch.Tensor]],
             waves: torch.Tensor, lengths: torch.Tensor) -> Callable[[], Any]:
    runtime, _, rest = name.partition("_")
    kind, _, k = rest.partition("@")
    if kind == "full":
        keep = torch.ones(len(lengths), task.num_layers)
    elif kind == "fixed":
        keep = torch.zeros(len(lengths), task.num_layers)
    else:
        keep = masks[int(k)][kind]
    if runtime == "torch":
        return lambda: task.logits_with_mask(task.encode(waves, lengths), keep)
    waves_np, lengths_np, keep_np = waves.numpy(), lengths.numpy(), keep.numpy()
    return lambda: model.run_with_mask(waves_np, lengths_np, keep_np)


def results_table(records: Sequence[dict[str, Any]]) -> str:
    """The records as a Markdown table, one row per budget."""
    rows = []
    for r in records:
        t, q, p, v = r["time_s"], r["realized_over_ideal"], r["realized_over_ideal_paired"], r["onnx_vs_torch"]
        rows.append({
            "k": r["budget"], "k/N": f"{r['budget_fraction']:.2f}",
            "PyTorch full (s)": f"{t['torch_full']:.3f}", "ORT full (s)": f"{t['onnx_full']:.3f}",
            "PyTorch fixed (s)": f"{t['torch_fixed']:.3f}", "ORT fixed (s)": f"{t['onnx_fixed']:.3f}",
            "PyTorch per-sample (s)": f"{t['torch_per_sample']:.3f}", "ORT per-sample (s)": f"{t['onnx_per_sample']:.3f}",
            "ORT shared (s)": f"{t['onnx_shared']:.3f}", "ideal": f"{r['ideal_speedup']:.2f}x",
            "ORT realized/ideal per-sample": f"{q['per_sample']:.3f}", "ORT realized/ideal shared": f"{q['shared']:.3f}",
            "paired (per-sample / shared)": f"{p['per_sample']:.3f} / {p['shared']:.3f}",
            "PyTorch/ORT full": f"{v['full']:.2f}", "PyTorch/ORT per-sample": f"{v['per_sample']:.2f}",
        })
    return markdown_table(rows, list(rows[0]) if rows else [])


def main(args: Any) -> int:
    """Run from ``python -m ldrop.bench speedup --runtime onnx`` with its parsed arguments."""
    from ldrop._io import atomic_write_json

    if args.device != "cpu" or args.dtype != "fp32":
        raise SystemExit("speedup --runtime onnx: ONNX Runtime is timed on the CPU in fp32 (--quantize dynamic for "
                         "int8 layers)")
    records = run_onnx_speedup(**run_options(args), threads=args.threads, quantize=args.quantize,
                               export_dir=args.export_dir)
    atomic_write_json(args.json, records)
    first = records[0]
    machine = first["machine"]
    print(f"\n{args.backbone} {args.size}, batch {args.batch_size}, {args.seconds:g} s, "
          f"{'int8 layers' if args.quantize else 'fp32'} on {machine['cpu']} ({machine['threads']} threads; "
          f"onnxruntime threads {args.threads or 'default'}), median of {args.repeats}; load average "
          + " -> ".join("n/a" if v is None else f"{v:.2f}" for v in machine["load_average_1min"].values()) + "\n")
    print(results_table(records))
    print(f"\nfolder: {', '.join(f'{k} {v:.1f} MB' for k, v in first['folder_mb'].items())}; wrote {len(records)} "
          f"records to {args.json}")
    return 0
