"""The ONNX runtime's costs in numpy: the FLOPs law of an export, plain budgets and the controller
(:class:`~ldrop.budgets.loop.ControlLoop` with these costs and the shared device profile). Tests hold every
formula to its PyTorch counterpart."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ldrop.budgets.cost import DeviceProfile, conv_frames
from ldrop.budgets.loop import ControlLoop


def resolve_budget(budget: Any, num_layers: int, batch: int) -> np.ndarray:
    """A plain budget (layers, fraction or an array of either) as ``[batch]`` int64, as
    :func:`ldrop.budgets.resolve_budget`."""
    if isinstance(budget, list | tuple):  # one per input, each read as a single budget
        budget = np.array([resolve_budget(b, num_layers, 1)[0] for b in budget], dtype=np.int64)
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
        if bool(((array <= 0) | (array > 1) | np.isnan(array)).any()):
            raise ValueError(f"a floating-point budget array holds fractions, each in (0, 1], got {array.tolist()}")
        return np.clip(np.round(array * num_layers), 1, num_layers).astype(np.int64)  # half to even, as torch
    if bool(((array < 1) | (array > num_layers)).any()):
        raise ValueError(f"budget values must be between 1 and {num_layers} layers, got {array.tolist()}")
    return array.astype(np.int64)


@dataclass
class FlopsLaw:
    """FLOPs of one forward per input as :func:`ldrop.engine.flops.count_forward_flops` counts them, as a
    manifest stores them.

    Attributes:
        cnn: per CNN layer ``[kernel, stride, FLOPs per output frame]``.
        frames_table: ``[T_max + 1]`` FLOPs of the rest of the fixed part at ``T = 0..T_max`` frames.
        frames_slope: FLOPs per frame beyond ``T_max``.
        layer: ``[a, b]``: one encoder layer costs ``a T + b T²``.
        budget: ``[layers][c, a, b]``: what an input pays on top at budget ``k`` (row ``k - 1``), the heads
            confidence early exit passes (:func:`~ldrop.engine.flops.passed_head_flops`), costs
            ``c + a T + b T²``; ``None``: nothing (and exports from before it).
    """

    cnn: list[list[float]]
    frames_table: list[float]
    frames_slope: float
    layer: list[float]
    budget: list[list[float]] | None = None

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
        t = self.frames(sample_lengths).astype(np.float64)
        return self.layer[0] * t + self.layer[1] * t * t

    def per_budget(self, sample_lengths: Any) -> np.ndarray | None:
        """``[batch, layers]`` float64 FLOPs on top at each budget (:attr:`budget`), or ``None``."""
        if self.budget is None:
            return None
        t = self.frames(sample_lengths).astype(np.float64)[:, None]
        c, a, b = np.asarray(self.budget, dtype=np.float64).T
        return c + a * t + b * t * t

    def frames(self, sample_lengths: Any) -> np.ndarray:
        """``[batch]`` int64 encoder frames of each input."""
        return conv_frames(sample_lengths, *zip(*[(k, s) for k, s, _ in self.cnn], strict=True))


class OnnxBudgetController(ControlLoop):
    """The ONNX runtime's controller: costs from a :class:`~ldrop.budgets.DeviceProfile` (time targets) or the export's
    :class:`FlopsLaw` (``gflops_per_second``); ``**options`` are :class:`~ldrop.budgets.loop.ControlLoop`'s."""

    profile_hint = " on this runtime: run 'ldrop profile --runtime onnx DIR' and pass it"

    def profile_warning(self, profile: DeviceProfile) -> str | None:
        if profile.device.get("runtime") == "onnxruntime":
            return profile.machine_warning(how="--runtime onnx")
        return ("this device profile was not measured on ONNX Runtime ('ldrop profile --runtime onnx'): its times are "
                "another runtime's, only the closed loop will correct them")

    def __init__(self, num_layers: int, profile: DeviceProfile | None = None, flops: FlopsLaw | None = None,
                 **options: Any) -> None:
        super().__init__(num_layers, **options)
        self.profile = profile
        self.flops = flops

    def flops_costs(self, sample_lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.flops is None:
            raise ValueError("a gflops_per_second target needs the model's FLOPs law (the export manifest's)")
        return self.flops.fixed(sample_lengths) / 1e9, self.flops.per_layer(sample_lengths) / 1e9

    def budget_costs(self, sample_lengths: np.ndarray, target: Any) -> np.ndarray | None:
        """A FLOPs target's ``[batch, layers]`` GFLOPs of the passed exit heads (:meth:`FlopsLaw.per_budget`)."""
        if target.kind != "gflops_per_second" or self.flops is None:
            return None
        extra = self.flops.per_budget(sample_lengths)
        return None if extra is None else extra / 1e9
