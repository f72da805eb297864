"""The ONNX runtime's costs in numpy: the device profile, the FLOPs law of an export, plain budgets and the
controller (:class:`~ldrop.budgets.loop.ControlLoop` with these costs). Tests hold every formula to its
PyTorch counterpart."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ldrop.budgets.loop import ControlLoop
from ldrop.budgets.targets import Target


def resolve_budget(budget: Any, num_layers: int, batch: int) -> np.ndarray:
    """A plain budget (layers, fraction or an array of either) as ``[batch]`` int64, as
    :func:`ldrop.budgets.resolve_budget`."""
    if isinstance(budget, bool):
        raise ValueError(f"budget must be an int (layers) or a float (fraction), got {budget!r}")
    if isinstance(budget, int | np.integer):
        if not 1 <= int(budget) <= num_layers:
            raise ValueError(f"budget must be between 1 and {num_layers} layers, got {budget}")
        return np.full(batch, int(budget), dtype=np.int64)
    if isinstance(budget, float | np.floating):
        if not (0.0 < budget <= 1.0) or math.isnan(budget):
            raise ValueError(f"a fractional budget must be in (0, 1], got {budget}")
        return np.full(batch, max(1, min(num_layers, int(round(budget * num_layers)))), dtype=np.int64)
    array = np.asarray(budget)
    if array.dtype == object or array.dtype.kind not in "iuf":
        raise ValueError(f"budget must be an int, a float or an array of them, got {type(budget).__name__}")
    if array.ndim == 0:
        array = np.broadcast_to(array, (batch,))
    if array.shape != (batch,):
        raise ValueError(f"a budget array must have shape [] or [batch={batch}], got {list(array.shape)}")
    if array.dtype.kind == "f":
        if bool(((array <= 0) | (array > 1)).any()):
            raise ValueError("a floating-point budget array holds fractions, each in (0, 1]")
        return np.clip(np.round(array * num_layers), 1, num_layers).astype(np.int64)  # half to even, as torch
    if bool(((array < 1) | (array > num_layers)).any()):
        raise ValueError(f"budget values must be between 1 and {num_layers} layers, got {array.tolist()}")
    return array.astype(np.int64)


def conv_frames(sample_lengths: Any, conv_kernel: Sequence[int], conv_stride: Sequence[int]) -> np.ndarray:
    """``[batch]`` int64 frames the CNN produces for ``sample_lengths`` samples."""
    lengths = np.asarray(sample_lengths, dtype=np.int64)
    for kernel, stride in zip(conv_kernel, conv_stride, strict=True):
        lengths = np.maximum(np.floor_divide(lengths - int(kernel), int(stride)) + 1, 0)
    return lengths


def _seconds(fit: dict[str, float], batch: Any, frames: Any) -> Any:
    """A part's ``overhead + per_frame * B*T + per_frame_sq * B*T²`` (``budgets.profile.PartFit``)."""
    return fit["overhead"] + batch * (fit["per_frame"] * frames + fit["per_frame_sq"] * frames * frames)


@dataclass
class CostProfile:
    """A device profile's JSON (``ldrop profile``) with :class:`~ldrop.budgets.DeviceProfile`'s predictions."""

    fixed: dict[str, float]
    layer: dict[str, float]
    num_layers: int
    conv_kernel: list[int]
    conv_stride: list[int]
    sample_rate: int = 16_000
    device: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CostProfile:
        """Raises ``ValueError`` for a dict that is not a device profile."""
        try:
            fits = [{"overhead": 0.0, "per_frame": 0.0, "per_frame_sq": 0.0, **data[p]} for p in ("fixed", "layer")]
            return cls(*fits, int(data["num_layers"]), list(data["conv_kernel"]), list(data["conv_stride"]),
                       int(data.get("sample_rate", 16_000)), dict(data.get("device") or {}), dict(data))
        except (KeyError, TypeError) as error:
            raise ValueError(f"not an ldrop device profile ({error}); write one with 'ldrop profile'") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> CostProfile:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError) as error:
            raise ValueError(f"device profile {str(path)!r}: {error}") from None

    @property
    def validation(self) -> dict[str, Any]:
        """The profile's check on held-out forwards (``DeviceProfile.validation``)."""
        return self.data.get("validation") or {}

    def frames(self, sample_lengths: Any) -> np.ndarray:
        return conv_frames(sample_lengths, self.conv_kernel, self.conv_stride)

    def predict(self, sample_lengths: Any, keep_mask: Any) -> float:
        """Predicted seconds of one sparse forward, ``fixed(B, T_max) + sum_i layer(B_i, T_i)``."""
        frames = self.frames(sample_lengths).astype(np.float64)
        keep = np.asarray(keep_mask) > 0.5
        if keep.shape != (frames.shape[0], self.num_layers):
            raise ValueError(
                f"keep_mask must be [batch, layers] = [{frames.shape[0]}, {self.num_layers}], got {list(keep.shape)}"
            )
        total = float(_seconds(self.fixed, frames.shape[0], float(frames.max())))
        for rows in keep.T:
            if rows.any():
                total += float(_seconds(self.layer, int(rows.sum()), float(frames[rows].max())))
        return total

    def layer_seconds(self, batch: int, frames: int) -> float:
        """Predicted seconds of one layer on ``batch`` inputs of ``frames`` frames."""
        return float(_seconds(self.layer, batch, frames))

    def per_input(self, sample_lengths: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(fixed [batch], one layer [batch])`` seconds per input (fixed part at the batch's longest input,
        a layer at the input's own length, overheads shared equally), as ``DeviceProfile.per_input``."""
        frames = self.frames(sample_lengths).astype(np.float64)
        batch = frames.shape[0]
        return _per_input(self.fixed, np.full(batch, frames.max()), batch), _per_input(self.layer, frames, batch)


def _per_input(fit: dict[str, float], frames: np.ndarray, batch: int) -> np.ndarray:
    """Seconds of each input of a batch of ``batch``: its frames plus its share of the overhead."""
    return fit["overhead"] / batch + fit["per_frame"] * frames + fit["per_frame_sq"] * frames * frames


@dataclass
class FlopsLaw:
    """FLOPs of one forward per input as :func:`ldrop.engine.flops.count_forward_flops` counts them, as a
    manifest stores them.

    Attributes:
        cnn: per CNN layer ``[kernel, stride, FLOPs per output frame]``.
        frames_table: ``[T_max + 1]`` FLOPs of the rest of the fixed part at ``T = 0..T_max`` frames.
        frames_slope: FLOPs per frame beyond ``T_max``.
        layer: ``[a, b]``: one encoder layer costs ``a T + b T²``.
    """

    cnn: list[list[float]]
    frames_table: list[float]
    frames_slope: float
    layer: list[float]

    def fixed(self, sample_lengths: Any) -> np.ndarray:
        """``[batch]`` float64 FLOPs every input pays whatever layers it runs."""
        length = np.asarray(sample_lengths, dtype=np.int64)
        flops = np.zeros(length.shape, dtype=np.float64)
        for kernel, stride, per_frame in self.cnn:
            length = conv_frames(length, [kernel], [stride])
            flops += length.astype(np.float64) * per_frame
        table = np.asarray(self.frames_table, dtype=np.float64)
        last = len(table) - 1
        beyond = table[last] + (length - last).clip(min=0) * self.frames_slope
        return flops + np.where(length <= last, table[np.minimum(length, last)], beyond)

    def per_layer(self, sample_lengths: Any) -> np.ndarray:
        """``[batch]`` float64 FLOPs of one encoder layer at each input's own length."""
        t = conv_frames(sample_lengths, *zip(*[(k, s) for k, s, _ in self.cnn], strict=True)).astype(np.float64)
        return self.layer[0] * t + self.layer[1] * t * t


class OnnxBudgetController(ControlLoop):
    """The ONNX runtime's controller: costs from a :class:`CostProfile` (time targets) or the export's
    :class:`FlopsLaw` (``gflops_per_second``); ``**options`` are :class:`~ldrop.budgets.loop.ControlLoop`'s."""

    def __init__(self, num_layers: int, profile: CostProfile | None = None, flops: FlopsLaw | None = None,
                 **options: Any) -> None:
        super().__init__(num_layers, **options)
        self.profile = profile
        self.flops = flops

    def costs(self, sample_lengths: Any, target: Target) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lengths = np.asarray(sample_lengths, dtype=np.int64)
        seconds = lengths.astype(np.float64) / self.sample_rate
        if target.kind == "gflops_per_second":
            if self.flops is None:
                raise ValueError("a gflops_per_second target needs the model's FLOPs law (the export manifest's)")
            return self.flops.fixed(lengths) / 1e9, self.flops.per_layer(lengths) / 1e9, target.value * seconds
        if target.kind not in ("ms", "rtf"):
            raise ValueError(f"unknown target kind {target.kind!r}")
        if self.profile is None:
            raise ValueError(f"a {target.kind} target needs a device profile of this model on this runtime: run "
                             "'ldrop profile --runtime onnx DIR' and pass it")
        fixed, layer = self.profile.per_input(lengths)
        allowance = (target.value / 1000.0) * np.ones_like(seconds) if target.kind == "ms" else target.value * seconds
        return fixed * self.correction, layer * self.correction, allowance * (1.0 - self.margin)
