"""The device profile of an ONNX export on ONNX Runtime (``ldrop profile --runtime onnx DIR``).

The cost model, fit and check are :mod:`ldrop.budgets.profile`'s (they use torch); only the timers differ:
they run the export's graphs as :class:`~ldrop.runtime.onnx_runtime.OnnxAdaptiveModel` does.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ldrop.budgets.cost import cost_facts
from ldrop.budgets.machine import cpu_name
from ldrop.budgets.profile import BatchTimer, DeviceProfile, PartTimer, profile_with_timers, time_call
from ldrop.runtime.onnx_runtime import OnnxAdaptiveModel

_CPU = torch.device("cpu")


def onnx_timers(model: OnnxAdaptiveModel, repeats: int = 5, warmup: int = 1, seed: int = 0
                ) -> tuple[PartTimer, BatchTimer]:
    """``(measure(part, batch, frames), measure_batch(sample_lengths, keep_mask))`` on ONNX Runtime."""
    rng = np.random.default_rng(seed)
    manifest = model.manifest["backbone"]
    samples_per_frame = math.prod(manifest["conv_stride"])
    hidden_size = int(manifest["hidden_size"])

    def waveforms_for(lengths: np.ndarray) -> np.ndarray:
        waves = rng.standard_normal((len(lengths), int(lengths.max())), dtype=np.float32)
        waves[np.arange(waves.shape[1])[None, :] >= lengths[:, None]] = 0.0
        return waves

    def fixed_pass(waves: np.ndarray, lengths: np.ndarray) -> None:
        encoded = model.encode(waves, lengths, run_prefix=False)
        if model.prefix_layers:  # what the selector reads has the shape of a layer's input
            encoded["features"] = encoded["hidden"]
        model.select(encoded, np.full(len(lengths), model.num_layers, dtype=np.int64))
        model.head(encoded["hidden"], encoded["frame_mask"])

    def measure(part: str, batch: int, frames: int) -> float:
        if part == "fixed":
            lengths = np.full(batch, model.receptive_field + (frames - 1) * samples_per_frame, dtype=np.int64)
            waves = waveforms_for(lengths)
            return time_call(lambda: fixed_pass(waves, lengths), _CPU, repeats, warmup)
        if part == "layer":
            hidden = rng.standard_normal((batch, frames, hidden_size), dtype=np.float32)
            mask = np.ones((batch, frames), dtype=bool)
            encoded = {"frame_mask": mask}
            if model._context is not None:
                encoded["position_bias"] = model._context.run(None, {"frame_mask": mask})[0]
            return time_call(lambda: model._run_layer(0, hidden, mask, encoded), _CPU, repeats, warmup)
        raise ValueError(f"unknown part {part!r}; parts are ('fixed', 'layer')")

    def measure_batch(sample_lengths: Tensor, keep_mask: Tensor) -> float:
        lengths = sample_lengths.numpy().astype(np.int64)
        waves, keep = waveforms_for(lengths), keep_mask.numpy() > 0.5

        def forward() -> None:
            encoded = model.encode(waves, lengths)
            model.select(encoded, np.full(len(lengths), model.num_layers, dtype=np.int64))
            model.head(model.run_layers(encoded, keep), encoded["frame_mask"])

        return time_call(forward, _CPU, repeats, warmup)

    return measure, measure_batch


def runtime_description(model: OnnxAdaptiveModel, threads: int | None) -> dict[str, Any]:
    """Where a profile was measured: ONNX Runtime, its providers and threads, the CPU, the load average."""
    import onnxruntime

    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"runtime": "onnxruntime", "onnxruntime": onnxruntime.__version__,
            "providers": model._fixed.get_providers(), "threads": threads, "cpu": cpu_name(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "dtype": "int8 layers" if model.manifest.get("quantize") else "fp32", "load_average_1min": load}


def profile_onnx(
    model: OnnxAdaptiveModel | str | os.PathLike, seconds: Sequence[float] = (1.0, 2.0, 4.0, 8.0),
    batch_sizes: Sequence[int] = (1, 2, 4), repeats: int = 5, warmup: int = 1, validation_batches: int = 12,
    seed: int = 0, threads: int | None = None,
) -> DeviceProfile:
    """Measure, fit and validate the cost model of an ONNX export on this machine (see
    :func:`~ldrop.budgets.profile.profile_model` for the arguments); ``threads`` are ONNX Runtime's."""
    if not isinstance(model, OnnxAdaptiveModel):
        # the folder's own profile.json, stale or bad, is not read: the one measured here replaces it
        model = OnnxAdaptiveModel.from_pretrained(model, profile=False, threads=threads)
    measure, _ = onnx_timers(model, repeats=1, warmup=0, seed=seed)
    _, measure_batch = onnx_timers(model, repeats=repeats, warmup=warmup, seed=seed)
    backbone = model.manifest["backbone"]
    summary = {"format": "onnx", "folder": str(model.folder), "task": model.manifest["task"]["class"],
               "selector": model.manifest["selector"]["class"], "quantize": model.manifest.get("quantize"),
               **cost_facts(backbone)}
    return profile_with_timers(
        measure, measure_batch, num_layers=model.num_layers,
        geometry=SimpleNamespace(conv_kernel=backbone["conv_kernel"], conv_stride=backbone["conv_stride"]), seconds=seconds, batch_sizes=batch_sizes, repeats=repeats,
        warmup=warmup, validation_batches=validation_batches, sample_rate=model.sample_rate, seed=seed,
        prefix_layers=model.prefix_layers, device=runtime_description(model, threads), model=summary,
    )
