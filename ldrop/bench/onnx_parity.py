"""ONNX Runtime vs PyTorch: logits and masks per family at real geometry, folder sizes fp32/int8, and (with --ckpt)
the test accuracy of fp32 and int8 exports.

Per family (random weights, the input-conditioned selector): export, compare logits and masks at budgets
``1``, ``N/2``, ``N``, a mixed budget and explicit random masks, and record the export time, the fp32 and int8
folder sizes and the int8 logit change. With ``--ckpt`` and ``--config`` (a trained classification checkpoint)
it scores the test set at each budget with PyTorch, ONNX fp32 and ONNX int8 instead.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldrop._io import atomic_write_json
from ldrop._progress import Phase
from ldrop.bench import at_least
from ldrop.bench.onnx_speed import build_task
from ldrop.bench.speedup import names, random_batch, say, torch_threads
from ldrop.budgets.machine import machine_info
from ldrop.runtime.onnx_export import export_onnx, folder_megabytes, quantize_export
from ldrop.runtime.onnx_runtime import OnnxAdaptiveModel
from ldrop.selectors import InputConditionedSelector
from ldrop.sweeps import markdown_table


def _compare(budget: str, expected: np.ndarray, got: np.ndarray, quantized: np.ndarray, masks_equal: Any,
             distinct_masks: int) -> dict[str, Any]:
    """One row of :func:`parity_record`: ONNX Runtime fp32 (``got``) and int8 logits against PyTorch's."""
    return {"budget": budget, "max_abs_diff": float(np.abs(got - expected).max()), "masks_equal": masks_equal,
            "distinct_masks": distinct_masks, "int8_max_abs_diff": float(np.abs(quantized - expected).max()),
            "logit_scale": float(np.abs(expected).max())}


def parity_record(family: str, size: str, seed: int, scratch: Path, say: Any) -> dict[str, Any]:
    """Export one random model of ``family`` and compare both runtimes on it (see the module docstring)."""
    torch.manual_seed(seed)
    task = build_task(family, size, selector=InputConditionedSelector)
    started = time.perf_counter()
    folder = export_onnx(task, scratch / family, progress=say)
    export_seconds = time.perf_counter() - started
    int8_folder = quantize_export(folder, scratch / f"{family}-int8", progress=say)
    fp32, int8 = OnnxAdaptiveModel(folder), OnnxAdaptiveModel(int8_folder)
    generator = torch.Generator().manual_seed(seed)
    waves, lengths = random_batch([32000, 24000, 16000], generator)
    n = task.num_layers
    rows = []
    for name, budget in (("1", [1] * 3), ("N/2", [n // 2] * 3), ("N", [n] * 3), ("1,N/2,N", [1, n // 2, n])):
        budget_t = torch.tensor(budget)
        with torch.inference_mode():
            expected, keep = task(waves, lengths, budget_t)
        got, got_keep, _ = fp32.forward(waves.numpy(), lengths.numpy(), budget_t.numpy())
        quantized, _, _ = int8.forward(waves.numpy(), lengths.numpy(), budget_t.numpy())
        rows.append(_compare(name, expected.numpy(), got, quantized, bool(np.array_equal(got_keep, keep.numpy() > 0.5)),
                             len({tuple(r) for r in got_keep.tolist()})))
    # explicit masks, each input its own random layers (1, N/2 and N of them): per-input sub-batches for sure
    keep = torch.zeros(3, n)
    for row, k in enumerate((1, n // 2, n)):
        keep[row, torch.randperm(n, generator=generator)[:k]] = 1.0
    with torch.inference_mode():
        expected = task.logits_with_mask(task.encode(waves, lengths), keep).numpy()
    got = fp32.run_with_mask(waves.numpy(), lengths.numpy(), keep.numpy())
    quantized = int8.run_with_mask(waves.numpy(), lengths.numpy(), keep.numpy())
    rows.append(_compare("random per-input masks", expected, got, quantized, "given", 3))
    return {"family": family, "size": size, "num_layers": n, "hidden_size": task.backbone.hidden_size,
            "export_seconds": export_seconds, "folder_mb": {"fp32": folder_megabytes(folder),
                                                             "int8": folder_megabytes(int8_folder)},
            "budgets": rows}


def config_datamodule(config: str) -> Any:
    """The DataModule of a config's ``data`` section, set up for fit and test."""
    from ldrop.runtime.checkpoints import config_datamodule as build

    datamodule = build(config)
    datamodule.setup("fit")
    datamodule.setup("test")
    return datamodule


def accuracy_record(checkpoint: str, config: str, scratch: Path, say: Any) -> dict[str, Any]:
    """Test-set accuracy at every budget with PyTorch, ONNX Runtime fp32 and ONNX Runtime int8."""
    from ldrop.runtime import load_model

    datamodule = config_datamodule(config)
    task = load_model(checkpoint)
    task.calibrate_on_dataloader(datamodule.val_dataloader())  # the selector's fallback, as `ldrop test` does
    folder = export_onnx(task, scratch / "model", progress=say)
    int8_folder = quantize_export(folder, scratch / "model-int8", progress=say)
    runtimes = {"onnx_fp32": OnnxAdaptiveModel(folder), "onnx_int8": OnnxAdaptiveModel(int8_folder)}
    correct: dict[str, dict[int, int]] = {name: {} for name in ("torch", *runtimes)}
    total = 0
    loader = datamodule.test_dataloader()
    title = f"test accuracy at {task.num_layers} budgets, 3 runtimes"
    try:
        batches: int | None = len(loader)
    except TypeError:  # an iterable dataset of a datamodule of one's own: no length
        batches = None
    with Phase(title, total=batches, unit="test batch") as phase:
        for batch in loader:
            total += len(batch)
            targets = batch.targets.numpy()
            for k in range(1, task.num_layers + 1):
                with torch.inference_mode():
                    logits, _ = task(batch.waveforms, batch.lengths, k)
                correct["torch"][k] = correct["torch"].get(k, 0) + int((logits.argmax(-1).numpy() == targets).sum())
                for name, runtime in runtimes.items():
                    got, _, _ = runtime.forward(batch.waveforms.numpy(), batch.lengths.numpy(),
                                                np.full(len(batch), k, dtype=np.int64))
                    correct[name][k] = correct[name].get(k, 0) + int((got.argmax(-1) == targets).sum())
                phase.beat()  # a batch is 3 runtimes at every budget
            phase.step()
    return {"checkpoint": checkpoint, "config": config, "test_items": total,
            "accuracy": {name: {k: c / total for k, c in per_k.items()} for name, per_k in correct.items()},
            "folder_mb": {"fp32": folder_megabytes(folder), "int8": folder_megabytes(int8_folder)}}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ldrop.bench onnx_parity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default="wavlm,hubert,wav2vec2,data2vec")
    parser.add_argument("--size", choices=("base", "large", "tiny"), default="base")
    parser.add_argument("--ckpt", default=None, help="a trained classification checkpoint: score its test set instead")
    parser.add_argument("--config", default="configs/quickstart.yaml", help="with --ckpt: the YAML whose data it uses")
    parser.add_argument("--threads", type=at_least(1), default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", required=True, help="output JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with torch_threads(args.threads or None), tempfile.TemporaryDirectory(prefix="ldrop-onnx-parity-") as scratch:
        if args.ckpt:
            result: dict[str, Any] = accuracy_record(args.ckpt, args.config, Path(scratch), say)
            accuracy = result["accuracy"]
            rows = [{"k": k, **{name: f"{accuracy[name][k]:.4f}" for name in accuracy}} for k in accuracy["torch"]]
        else:
            records = [parity_record(f, args.size, args.seed, Path(scratch), say) for f in names(args.families)]
            result = {"records": records}
            rows = [{"family": r["family"], "budget": b["budget"], "max |ORT - PyTorch|": f"{b['max_abs_diff']:.2e}",
                     "masks equal": b["masks_equal"], "distinct masks": b["distinct_masks"],
                     "int8 max |diff|": f"{b['int8_max_abs_diff']:.2e}", "max |logit|": f"{b['logit_scale']:.3f}",
                     "MB fp32 / int8": f"{r['folder_mb']['fp32']:.2f} / {r['folder_mb']['int8']:.2f}",
                     "export (s)": f"{r['export_seconds']:.0f}"} for r in records for b in r["budgets"]]
        result.update(benchmark="onnx_parity", machine=machine_info("cpu"), argv=list(argv or []))
    atomic_write_json(args.json, result)
    print(markdown_table(rows, list(rows[0])))
    print(f"\n{json.dumps(result['machine']['cpu'])}; wrote {args.json}")
    return 0
