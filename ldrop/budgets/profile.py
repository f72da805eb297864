"""Measuring a :class:`~ldrop.budgets.cost.DeviceProfile`: :func:`profile_model` times the fixed part and one
layer over a grid, fits both and checks the prediction on held-out batches; its timers are injectable."""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ldrop._progress import Phase
from ldrop.backbones.geometry import frame_lengths, shortest_sample_lengths
from ldrop.budgets.cost import PARTS, DeviceProfile, PartFit
from ldrop.budgets.machine import machine_info

__all__ = ["PARTS", "DeviceProfile", "PartFit", "fit_part", "model_timers", "profile_model", "profile_with_timers",
           "random_batches", "synchronize", "time_call", "validate_profile"]

#: ``measure(part, batch, frames) -> seconds``: the time of one part on ``batch`` inputs of ``frames`` frames.
PartTimer = Callable[[str, int, int], float]
#: ``measure_batch(sample_lengths [batch], keep_mask [batch, layers]) -> seconds``: one sparse forward.
BatchTimer = Callable[[Tensor, Tensor], float]


def fit_part(points: Sequence[tuple[int, int, float]]) -> tuple[PartFit, list[float]]:
    """Fit :class:`PartFit` to ``(batch, frames, seconds)``; returns it and each point's relative residual.

    Minimises the relative squared error under non-negative coefficients: of the least-squares fits of every
    subset of the three terms with no negative coefficient, the lowest AIC wins, so a term is kept only when
    it explains more than timing noise. ``ValueError`` for fewer than three points or a non-positive time.
    """
    if len(points) < 3:
        raise ValueError(f"fitting a part needs at least 3 measurements, got {len(points)}")
    data = torch.tensor([[float(b), float(t), float(s)] for b, t, s in points], dtype=torch.float64)
    batch, frames, seconds = data.unbind(1)
    if bool((seconds <= 0).any()):
        raise ValueError("measured times must be positive")
    features = torch.stack([torch.ones_like(batch), batch * frames, batch * frames * frames], dim=1)
    # Scale columns so the solve is well conditioned (frames² reaches 1e5-1e6).
    scale = features.abs().amax(0).clamp(min=1e-30)
    weighted = features / scale / seconds[:, None]
    target = torch.ones_like(seconds)
    best: tuple[float, Tensor] | None = None
    for size in (3, 2, 1):
        for columns in itertools.combinations(range(3), size):
            cols = list(columns)
            solution = torch.linalg.lstsq(weighted[:, cols], target[:, None]).solution.flatten()
            if bool((solution < 0).any()):
                continue
            coef = torch.zeros(3, dtype=torch.float64)
            coef[cols] = solution
            error = float(((weighted @ coef) - target).square().sum())
            aic = len(seconds) * math.log(max(error, 1e-12) / len(seconds)) + 2 * size
            if best is None or aic < best[0]:
                best = (aic, coef)
    assert best is not None  # a single column always has a non-negative least-squares solution
    coef = best[1] / scale
    fit = PartFit(*(float(c) for c in coef))
    predicted = features @ coef
    return fit, ((predicted - seconds) / seconds).tolist()


# ---------------------------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (CUDA): a wall time must include it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls after ``warmup`` (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters())
    return param.device, param.dtype


def run_autocast(model: Any) -> torch.dtype | None:
    """The autocast dtype ``model`` runs under now (an enclosing ``torch.autocast``: a Trainer's ``*-mixed``
    precision around its steps, ``AdaptiveModel(autocast=...)``), or ``None``."""
    device, _ = _model_device_dtype(model)
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None


def precision_name(dtype: torch.dtype, autocast: torch.dtype | None = None) -> str:
    """Lightning's name of running weights of ``dtype`` under ``autocast``: ``32-true``, ``bf16-mixed``, ..."""
    short = {torch.float32: "32", torch.bfloat16: "bf16", torch.float16: "16", torch.float64: "64"}
    if autocast is not None and autocast != dtype:
        return f"{short.get(autocast, autocast)}-mixed"
    return f"{short.get(dtype, dtype)}-true"


def model_precision(model: Any) -> str:
    """:func:`precision_name` of how ``model`` runs now (:func:`run_autocast`)."""
    return precision_name(_model_device_dtype(model)[1], run_autocast(model))


def model_timers(model: Any, repeats: int = 5, warmup: int = 1, seed: int = 0) -> tuple[PartTimer, BatchTimer]:
    """Real timing functions for a task module in eval mode: ``(measure, measure_batch)``.

    The fixed part is ``encode`` + the selector + the head with no layer (a selector's prefix layers are
    layers of the mask, so they are left out); a layer is ``backbone.run_layer``; a batch is the sparse
    forward with a given keep mask.
    """
    device, dtype = _model_device_dtype(model)
    backbone = model.backbone
    generator = torch.Generator().manual_seed(seed)

    def waveforms_for(lengths: Tensor) -> Tensor:
        waves = torch.randn(len(lengths), int(lengths.max()), generator=generator)
        waves[torch.arange(waves.shape[1])[None, :] >= lengths[:, None]] = 0.0
        return waves.to(device, dtype)

    @torch.inference_mode()
    def forward(waves: Tensor, lengths: Tensor, keep: Tensor | None) -> None:
        """The sparse forward with ``keep``; ``None``: the fixed part alone (no layer, no prefix)."""
        encoded = model.encode(waves, lengths, run_prefix=keep is not None)
        if keep is None and getattr(model, "prefix_layers", 0):  # the selector reads a layer's input shape
            encoded = dataclasses.replace(encoded, features=encoded.hidden)
        model.decide(encoded, model.num_layers)
        model.logits_with_mask(encoded, torch.zeros(len(lengths), model.num_layers, device=device) if keep is None
                               else keep)

    def measure(part: str, batch: int, frames: int) -> float:
        if part == "fixed":
            samples = int(shortest_sample_lengths(backbone.config, torch.tensor([frames]))[0])
            lengths = torch.full((batch,), samples, dtype=torch.long)
            waves, lengths_d = waveforms_for(lengths), lengths.to(device)
            return time_call(lambda: forward(waves, lengths_d, None), device, repeats, warmup)
        if part == "layer":
            hidden = torch.randn(batch, frames, backbone.hidden_size, generator=generator).to(device, dtype)
            mask = torch.ones(batch, frames, dtype=torch.bool, device=device)
            with torch.inference_mode():
                context = backbone.prepare_layers(mask)
            layer_pass = torch.inference_mode()(lambda: backbone.run_layer(0, hidden, None, context))  # unpadded
            return time_call(layer_pass, device, repeats, warmup)
        raise ValueError(f"unknown part {part!r}; parts are {PARTS}")

    def measure_batch(sample_lengths: Tensor, keep_mask: Tensor) -> float:
        waves, lengths_d, keep = waveforms_for(sample_lengths), sample_lengths.to(device), keep_mask.to(device)
        return time_call(lambda: forward(waves, lengths_d, keep), device, repeats, warmup)

    return measure, measure_batch


# ---------------------------------------------------------------------------------------------- profiling
def random_batches(
    count: int, num_layers: int, seconds_range: tuple[float, float], batch_sizes: Sequence[int],
    sample_rate: int = 16_000, seed: int = 1, prefix_layers: int = 0,
) -> list[tuple[Tensor, Tensor]]:
    """Held-out ``(sample_lengths [batch], keep_mask [batch, layers])`` pairs: random lengths, batch sizes and
    layers, plus the first ``prefix_layers`` layers for every input."""
    generator = torch.Generator().manual_seed(seed)
    low, high = seconds_range
    batches = []
    for _ in range(count):
        batch = int(batch_sizes[int(torch.randint(len(batch_sizes), (), generator=generator))])
        seconds = low + (high - low) * torch.rand(batch, generator=generator, dtype=torch.float64)
        lengths = (seconds * sample_rate).round().to(torch.long)
        keep = torch.zeros(batch, num_layers)
        for row in range(batch):
            k = int(torch.randint(1, num_layers + 1, (), generator=generator))
            keep[row, torch.randperm(num_layers, generator=generator)[:k]] = 1.0
        keep[:, :prefix_layers] = 1.0
        batches.append((lengths, keep))
    return batches


def validate_profile(profile: DeviceProfile, batches: Sequence[tuple[Tensor, Tensor]],
                     measure_batch: BatchTimer, tolerance: float = 0.10) -> dict[str, Any]:
    """Compare the profile's prediction with measured sparse forwards on held-out batches."""
    rows = []
    with Phase("profiling: checking the fit", total=len(batches), unit="held-out batch") as phase:
        for lengths, keep in batches:
            measured = measure_batch(lengths, keep)
            predicted = profile.predict(lengths, keep)
            rows.append({
                "batch": len(lengths), "seconds": [round(float(s), 3) for s in lengths / profile.sample_rate],
                "layers_run": keep.sum(1).int().tolist(), "measured_ms": 1000 * measured,
                "predicted_ms": 1000 * predicted, "relative_error": (predicted - measured) / measured,
            })
            phase.step()
    errors = [abs(r["relative_error"]) for r in rows]
    median = statistics.median(errors) if errors else float("nan")
    return {
        "median_abs_relative_error": median,
        "max_abs_relative_error": max(errors) if errors else float("nan"), "tolerance": tolerance,
        "passed": bool(median <= tolerance), "batches": rows,
    }


def profile_model(
    model: Any, seconds: Sequence[float] = (1.0, 2.0, 4.0, 8.0), batch_sizes: Sequence[int] = (1, 2, 4),
    repeats: int = 5, warmup: int = 1, validation_batches: int = 12, measure: PartTimer | None = None,
    measure_batch: BatchTimer | None = None, sample_rate: int = 16_000, seed: int = 0,
) -> DeviceProfile:
    """Measure, fit and validate the cost model of ``model`` on its current device, precision (its dtype, and
    the autocast it runs under: :func:`run_autocast`) and threads.

    Args:
        seconds, batch_sizes: the grid (seconds of audio; cover the lengths you will run).
        repeats, warmup: timed rounds over the grid (median per point, each round in a random order) and
            untimed rounds before them; also the calls per held-out batch.
        validation_batches: held-out random batches to check the fit on (0: no check).
        measure, measure_batch: timing functions (default: :func:`model_timers`); tests inject synthetic ones.
    """
    model.eval()
    config = model.backbone.config
    if measure is None or (measure_batch is None and validation_batches):
        # The grid is timed in interleaved rounds (below), so the grid's timer takes one call per point;
        # held-out batches are timed one at a time.
        measure = measure or model_timers(model, repeats=1, warmup=0, seed=seed)[0]
        measure_batch = measure_batch or model_timers(model, repeats=repeats, warmup=warmup, seed=seed)[1]
    device, dtype = _model_device_dtype(model)
    autocast = run_autocast(model)
    with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        return profile_with_timers(
            measure, measure_batch, num_layers=model.backbone.num_layers, geometry=config, seconds=seconds,
            batch_sizes=batch_sizes, repeats=repeats, warmup=warmup, validation_batches=validation_batches,
            sample_rate=sample_rate, seed=seed, prefix_layers=getattr(model, "prefix_layers", 0),
            device=device_description(device, dtype, autocast), model=model_summary(model),
        )


def profile_with_timers(
    measure: PartTimer, measure_batch: BatchTimer | None, *, num_layers: int, geometry: Any,
    seconds: Sequence[float], batch_sizes: Sequence[int], repeats: int, warmup: int, validation_batches: int,
    sample_rate: int, seed: int, prefix_layers: int, device: dict[str, Any], model: dict[str, Any],
) -> DeviceProfile:
    """:func:`profile_model` once it has its timers (ONNX Runtime passes its own); ``geometry`` has the CNN's
    ``conv_kernel`` and ``conv_stride``."""
    if not seconds or not batch_sizes:
        raise ValueError("the profiling grid needs at least one length and one batch size")
    if min(seconds) <= 0 or min(batch_sizes) < 1:
        raise ValueError(f"grid lengths must be > 0 s and batch sizes >= 1, got {list(seconds)}, {list(batch_sizes)}")
    frames_grid = sorted({frame_lengths(geometry, round(s * sample_rate)) for s in seconds})
    if len(frames_grid) * len(set(batch_sizes)) < 3:
        raise ValueError("the profiling grid needs at least 3 (length, batch size) points to fit")
    grid = [(part, batch, frames) for batch in sorted(set(batch_sizes)) for frames in frames_grid for part in PARTS]
    # Rounds over the whole grid in a fresh random order, median per point: drift of the machine's speed
    # (other processes, clocks) then hits every length alike instead of biasing the fitted shape.
    order = random.Random(seed)
    samples: dict[tuple[str, int, int], list[float]] = {key: [] for key in grid}
    with Phase(f"profiling: timing {len(grid)} grid points", total=(warmup + max(1, repeats)) * len(grid),
               unit="measurement") as phase:
        for _ in range(warmup):
            for key in grid:
                measure(*key)
                phase.step()
        for _ in range(max(1, repeats)):
            for key in order.sample(grid, len(grid)):
                samples[key].append(float(measure(*key)))
                phase.step()
    fits, measurements = {}, []
    for part in PARTS:
        points = [(b, t, statistics.median(values)) for (p, b, t), values in samples.items() if p == part]
        fits[part], residuals = fit_part(points)
        measurements += [
            {"part": part, "batch": b, "frames": t, "seconds": s, "relative_residual": r}
            for (b, t, s), r in zip(points, residuals, strict=True)
        ]
    profile = DeviceProfile(
        fixed=fits["fixed"], layer=fits["layer"], num_layers=num_layers, conv_kernel=list(geometry.conv_kernel),
        conv_stride=list(geometry.conv_stride), sample_rate=sample_rate, device=device, model=model,
        measurements=measurements,
    )
    if validation_batches and measure_batch is not None:
        held_out = random_batches(validation_batches, num_layers, (min(seconds), max(seconds)),
                                  sorted(set(batch_sizes)), sample_rate, seed=seed + 1, prefix_layers=prefix_layers)
        profile.validation = validate_profile(profile, held_out, measure_batch)
    return profile


def device_description(device: torch.device, dtype: torch.dtype, autocast: torch.dtype | None = None) -> dict[str, Any]:
    """Where a profile was measured: the machine (CPU/GPU, threads, versions), the weights' dtype, the precision
    (:func:`precision_name`) and the load average."""
    info = machine_info(device)
    info["dtype"] = str(dtype).removeprefix("torch.")
    info["precision"] = precision_name(dtype, autocast)
    try:
        info["load_average_1min"] = os.getloadavg()[0]
    except OSError:
        info["load_average_1min"] = None
    return info


def model_summary(model: Any) -> dict[str, Any]:
    """The model facts a profile depends on (family, depth, width, selector)."""
    config = model.backbone.config
    keys = ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
            "conv_dim", "do_stable_layer_norm")
    summary = {k: (list(v) if isinstance(v, tuple) else v) for k in keys if (v := getattr(config, k, None)) is not None}
    summary["task"] = type(model).__name__
    summary["selector"] = type(model.selector).__name__ if getattr(model, "selector", None) is not None else None
    return summary
