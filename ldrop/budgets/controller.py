"""From a target (a deadline, a real-time factor, a FLOPs rate) to a per-input layer budget, closing the loop.

Each input gets the largest ``k`` whose predicted cost meets the target: time targets from a
:class:`~ldrop.budgets.cost.DeviceProfile` (``fixed_i + k * layer_i``, times the correction), FLOPs targets
exactly (with the exit heads confidence early exit passes at ``k``). The correction is an EMA of the log
measured / predicted ratio, quicker to rise than to fall, never below a high quantile of recent ratios (a
deadline is about misses).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ldrop.backbones.geometry import frame_lengths
from ldrop.budgets.cost import DeviceProfile, as_array, cost_facts
from ldrop.budgets.loop import BudgetDecision, ControlLoop, UnmeetableTargetWarning
from ldrop.budgets.machine import machine_info
from ldrop.budgets.profile import model_precision, profile_model
from ldrop.budgets.targets import Target
from ldrop.engine.flops import count_forward_flops, decision_flops, passed_head_flops

#: The quick grid measured when a time target is used without a profile (a few seconds on a CPU).
QUICK_GRID: dict[str, Any] = {"seconds": (0.5, 1.0, 2.0, 4.0), "batch_sizes": (1, 2), "repeats": 3,
                              "validation_batches": 0}


def torch_profile_warning(profile: DeviceProfile, precision: str | None, device: torch.device | str | None = None
                          ) -> str | None:
    """Why ``profile``'s times may not be those of a PyTorch model running at ``precision`` (``32-true``,
    ``bf16-mixed``, ...; ``None``: not judged) on ``device`` of this machine (``None``: not judged), or ``None``:
    it was measured on ONNX Runtime, on other hardware (:meth:`~ldrop.budgets.cost.DeviceProfile.machine_warning`)
    or at another precision (:meth:`~ldrop.budgets.cost.DeviceProfile.precision_warning`)."""
    if profile.device.get("runtime") == "onnxruntime":
        name = "this device profile" if profile.path is None else f"device profile {str(profile.path)!r}"
        return (f"{name} was measured on ONNX Runtime: its times are another runtime's (only a closed loop "
                "corrects them, as it runs): profile the model on PyTorch with 'ldrop profile'")
    found = (device is not None and profile.machine_warning(machine_info(device)),
             precision and profile.precision_warning(precision))
    return "; ".join(w for w in found if w) or None


class BudgetController(ControlLoop):
    """The PyTorch controller: costs from a device profile (time targets) or the exact FLOPs count.

    Args:
        profile: the device profile (needed for ``ms`` and ``rtf`` targets).
        flops_config: the backbone config (or backbone) for ``gflops_per_second`` targets.
        extra_fixed_flops: ``frames [batch] -> FLOPs [batch]`` every input pays on top (the selector's and
            the depth policy's own, :func:`~ldrop.engine.flops.decision_flops`).
        budget_flops: ``frames [batch] -> FLOPs [batch, layers]`` an input pays on top at each budget ``k``
            (column ``k - 1``; ``None`` from it: nothing), the heads confidence early exit passes
            (:func:`~ldrop.engine.flops.passed_head_flops`); a runtime binds its model's (:meth:`bind`).
        precision: how the model runs (``32-true``, ``bf16-mixed``, ...; :func:`~ldrop.budgets.profile.model_precision`),
            for :meth:`profile_warning` (:func:`torch_profile_warning`); ``None``: not judged.
        device: where the model runs, for :meth:`profile_warning`; ``None``: not judged.
        **options: :class:`~ldrop.budgets.loop.ControlLoop`'s.
    """

    profile_hint = ": run 'ldrop profile' (or ldrop.budgets.profile_model) and pass it"

    def __init__(self, num_layers: int, profile: DeviceProfile | None = None, flops_config: Any = None,
                 extra_fixed_flops: Callable[[Tensor], Tensor] | None = None, precision: str | None = None,
                 budget_flops: Callable[[Tensor], Tensor | None] | None = None,
                 device: torch.device | str | None = None, **options: Any) -> None:
        super().__init__(num_layers, **options)
        self.precision, self.device = precision, device
        if flops_config is not None:  # a profile must be of this model
            self.model_facts = cost_facts(getattr(flops_config, "config", flops_config))
        self.profile = profile
        self.flops_config = flops_config
        self.extra_fixed_flops = extra_fixed_flops
        self.budget_flops = budget_flops

    def bind(self, model: Any) -> None:
        """Count the heads ``model``'s depth policy passes at each budget (unless ``budget_flops`` was given)."""
        if self.budget_flops is None:
            self.budget_flops = functools.partial(passed_head_flops, model)

    def profile_warning(self, profile: DeviceProfile) -> str | None:
        return torch_profile_warning(profile, self.precision, self.device)

    def as_result(self, array: np.ndarray) -> Tensor:
        return torch.from_numpy(array)

    def costs(self, sample_lengths: Tensor, target: Target, profile: Any = None) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`ControlLoop.costs <ldrop.budgets.loop.ControlLoop.costs>` as CPU tensors."""
        return tuple(torch.from_numpy(np.asarray(part)) for part in super().costs(sample_lengths, target, profile))

    def flops_costs(self, sample_lengths: np.ndarray) -> tuple[Tensor, Tensor]:
        if self.flops_config is None:
            raise ValueError("a gflops_per_second target needs the backbone config (flops_config)")
        lengths, extra = torch.from_numpy(sample_lengths), None
        if self.extra_fixed_flops is not None:
            extra = self.extra_fixed_flops(frame_lengths(self.flops_config, lengths))
        flops = count_forward_flops(self.flops_config, lengths, None, extra)
        return flops.fixed / 1e9, flops.per_layer[:, 0] / 1e9

    def budget_costs(self, sample_lengths: np.ndarray, target: Target) -> np.ndarray | None:
        """A FLOPs target's ``[batch, layers]`` GFLOPs of :attr:`budget_flops` (the passed heads), else ``None``."""
        if target.kind != "gflops_per_second" or self.budget_flops is None or self.flops_config is None:
            return None
        flops = self.budget_flops(frame_lengths(self.flops_config, torch.from_numpy(sample_lengths)))
        return None if flops is None else np.asarray(as_array(flops, np.float64)) / 1e9


class TargetResolver:
    """Per-input budgets of a task module under targets over one run (``ldrop predict``, a target sweep).

    One open-loop controller per profile file (a time target without one measures a quick profile,
    :data:`QUICK_GRID`); unmet inputs are counted and warned about once by :meth:`close`.
    """

    def __init__(self) -> None:
        self.controllers: dict[str | None, BudgetController] = {}
        #: target -> [inputs that could not meet it, inputs decided, the minimum budget they ran]
        self.counts: dict[Target, list[int]] = {}

    def controller(self, model: Any, target: Target) -> BudgetController:
        """The open-loop controller of ``model`` for ``target``'s profile."""
        needs_profile = target.kind in ("ms", "rtf")
        controller = self.controllers.get(target.profile)
        if controller is None or (needs_profile and controller.profile is None):  # a FLOPs target's has none
            profile = None
            if needs_profile:
                if target.profile:  # checked against the model by the controller
                    profile = DeviceProfile.load(target.profile)
                    device = next(model.parameters()).device
                    if warning := torch_profile_warning(profile, model_precision(model), device):
                        warnings.warn(warning, stacklevel=3)
                else:
                    warnings.warn("a time target without a profile: measuring a quick one now (pass "
                                  "profile: PATH from 'ldrop profile' to skip this)", stacklevel=3)
                    profile = profile_model(model, **QUICK_GRID)
            controller = BudgetController(
                model.num_layers, profile, flops_config=model.backbone.config,
                extra_fixed_flops=functools.partial(decision_flops, model), closed_loop=False,
                budget_flops=functools.partial(passed_head_flops, model), min_budget=max(1, getattr(model, "prefix_layers", 0)),
                sample_rate=int(getattr(model, "sample_rate", 16_000)),
            )
            self.controllers[target.profile] = controller
        return controller

    def decide(self, model: Any, sample_lengths: Tensor, target: Target | dict | str) -> BudgetDecision:
        """The open-loop :class:`BudgetDecision` for ``model`` under ``target`` on the CPU."""
        target = Target.parse(target)
        controller = self.controller(model, target)
        decision = controller.decide(sample_lengths, target, warn=False)
        counts = self.counts.setdefault(target, [0, 0, controller.min_budget])
        counts[0] += int((~decision.meets_target).sum())
        counts[1] += len(decision.meets_target)
        return decision

    def budget(self, model: Any, sample_lengths: Tensor, target: Target | dict | str) -> Tensor:
        """``[batch]`` long: :meth:`decide`'s budget, on the device of ``sample_lengths``."""
        return self.decide(model, sample_lengths, target).budget.to(sample_lengths.device)

    def close(self, run: str = "this run") -> dict[Target, list[int]]:
        """Warn once per target that some inputs could not meet it; returns ``{target: [missed, inputs, min
        budget]}``."""
        counts, self.counts = self.counts, {}
        for target, (missed, total, min_budget) in counts.items():
            if missed:
                warnings.warn(
                    f"target {target.kind}={target.value:g} cannot be met by {missed} of the {total} inputs of "
                    f"{run} even with {min_budget} layer(s): they ran the minimum budget; a looser target, a faster "
                    "device or shorter inputs would help",
                    UnmeetableTargetWarning, stacklevel=2)
        return counts
