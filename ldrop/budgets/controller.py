"""From a target (a deadline, a real-time factor, a FLOPs rate) to a per-input layer budget, closing the loop.

For each input, the largest ``k`` in ``1..N`` whose predicted cost meets the target: ``ms`` and ``rtf``
from a :class:`~ldrop.budgets.profile.DeviceProfile` (``fixed_i + k * layer_i`` seconds, times the online
correction, planned for ``(1 - margin)`` of the allowance), ``gflops_per_second`` from the exact FLOPs count.
The closed loop (:meth:`BudgetController.observe`) corrects time predictions by the measured / predicted
ratio: an EMA of its logarithm, quicker to rise than to fall, never below a high quantile of the recent
ratios (a deadline is about misses, not mean latency). Inputs that cannot meet a target even with the
minimum budget run it, with an :class:`UnmeetableTargetWarning` (``on_unmeetable="raise"``: a ``ValueError``).
"""

from __future__ import annotations

import collections
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ldrop.budgets.profile import DeviceProfile, profile_model
from ldrop.budgets.targets import Target

#: The quick grid measured when a time target is used without a profile (a few seconds on a CPU).
QUICK_GRID: dict[str, Any] = {"seconds": (0.5, 1.0, 2.0, 4.0), "batch_sizes": (1, 2), "repeats": 3,
                              "validation_batches": 0}


class UnmeetableTargetWarning(UserWarning):
    """Some inputs cannot meet the target even with one layer; they get the minimum budget."""


@dataclass
class BudgetDecision:
    """A controller's choice for one batch.

    Attributes:
        budget: ``[batch]`` long, layers per input in ``1..N``.
        predicted_seconds: ``[batch]`` float64, the cost attributed to each input at its budget, with the
            current correction (seconds; for ``gflops_per_second`` targets: GFLOPs).
        allowance: ``[batch]`` float64, what each input may cost under the target (same unit).
        meets_target: ``[batch]`` bool, False where even one layer is predicted over the allowance.
    """

    budget: Tensor
    predicted_seconds: Tensor
    allowance: Tensor
    meets_target: Tensor


class BudgetController:
    """Chooses the largest affordable budget per input and corrects its cost model online.

    Args:
        num_layers: ``N``, encoder layers of the model.
        profile: the device profile (needed for ``ms`` and ``rtf`` targets).
        flops_config: the backbone config (or backbone) for ``gflops_per_second`` targets.
        extra_fixed_flops: ``frames [batch] -> FLOPs [batch]`` paid by every input on top of the backbone's
            fixed part (the selector's own cost).
        closed_loop: correct predictions with measured times (:meth:`observe`); ``False`` is open loop.
        margin: fraction of a time allowance kept free for noise (plan for ``(1 - margin) x target``).
        alpha_up, alpha_down: EMA weights of a new ratio when it is above / below the current correction.
        window, quantile: the correction is at least this quantile of the last ``window`` ratios
            (``quantile=None``: the moving average alone).
        correction_bounds: the correction stays within these factors.
        on_unmeetable: ``"min"`` (one layer and a warning) or ``"raise"`` (a ``ValueError``).
        sample_rate: samples per second of the waveforms.
        min_budget: the fewest layers any input runs: ``j`` for a selector that reads (and so always runs)
            the first ``j`` encoder layers, else 1. Budgets below it are never chosen (they would run ``j``).
    """

    def __init__(
        self,
        num_layers: int,
        profile: DeviceProfile | None = None,
        flops_config: Any = None,
        extra_fixed_flops: Callable[[Tensor], Tensor] | None = None,
        closed_loop: bool = True,
        margin: float = 0.1,
        alpha_up: float = 0.6,
        alpha_down: float = 0.15,
        window: int = 8,
        quantile: float | None = 0.9,
        correction_bounds: tuple[float, float] = (0.25, 8.0),
        on_unmeetable: Literal["min", "raise"] = "min",
        sample_rate: int = 16_000,
        min_budget: int = 1,
    ) -> None:
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if not 1 <= min_budget <= num_layers:
            raise ValueError(f"min_budget must be in 1..{num_layers}, got {min_budget}")
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"margin must be in [0, 1), got {margin}")
        if not (0.0 < alpha_up <= 1.0 and 0.0 < alpha_down <= 1.0):
            raise ValueError(f"alpha_up and alpha_down must be in (0, 1], got {alpha_up}, {alpha_down}")
        if window < 1 or (quantile is not None and not 0.0 <= quantile <= 1.0):
            raise ValueError(f"window must be >= 1 and quantile in [0, 1] or None, got {window}, {quantile}")
        low, high = correction_bounds
        if not 0.0 < low <= 1.0 <= high:
            raise ValueError(f"correction_bounds must satisfy 0 < low <= 1 <= high, got {correction_bounds}")
        if on_unmeetable not in ("min", "raise"):
            raise ValueError(f"on_unmeetable must be 'min' or 'raise', got {on_unmeetable!r}")
        if profile is not None and profile.num_layers != num_layers:
            raise ValueError(f"the profile is of a {profile.num_layers}-layer model, not of {num_layers} layers")
        self.num_layers = num_layers
        self.profile = profile
        self.flops_config = flops_config
        self.extra_fixed_flops = extra_fixed_flops
        self.closed_loop = closed_loop
        self.margin = margin
        self.alpha_up, self.alpha_down = alpha_up, alpha_down
        self.correction_bounds = (float(low), float(high))
        self.quantile = quantile
        self._recent: collections.deque[float] = collections.deque(maxlen=window)
        self._average = 1.0
        self.on_unmeetable = on_unmeetable
        self.sample_rate = sample_rate
        self.min_budget = int(min_budget)
        #: Current ratio measured / predicted time that scales every time prediction (1: trust the profile).
        self.correction = 1.0

    # ------------------------------------------------------------------ decisions
    def costs(self, sample_lengths: Tensor, target: Target) -> tuple[Tensor, Tensor, Tensor]:
        """``(fixed [batch], per layer [batch], allowance [batch])`` in the target's unit, float64.

        Time targets: seconds, the profile's prediction times the correction; the allowance is
        ``(1 - margin)`` of the target. FLOPs targets: GFLOPs, exact.
        """
        lengths = torch.as_tensor(sample_lengths).detach().cpu().to(torch.long)
        seconds = lengths.to(torch.float64) / self.sample_rate
        if target.kind == "gflops_per_second":
            if self.flops_config is None:
                raise ValueError("a gflops_per_second target needs the backbone config (flops_config)")
            from ldrop.engine.flops import count_forward_flops

            extra = None
            if self.extra_fixed_flops is not None:
                from ldrop.backbones.geometry import frame_lengths

                extra = self.extra_fixed_flops(frame_lengths(self.flops_config, lengths))
            flops = count_forward_flops(self.flops_config, lengths, None, extra)
            return flops.fixed / 1e9, flops.per_layer[:, 0] / 1e9, target.value * seconds
        if target.kind not in ("ms", "rtf"):
            raise ValueError(f"unknown target kind {target.kind!r}")
        if self.profile is None:
            raise ValueError(
                f"a {target.kind} target needs a device profile of this model: run 'ldrop profile' (or "
                "ldrop.budgets.profile_model) and pass it"
            )
        fixed, layer = self.profile.per_input(lengths)
        allowance = (target.value / 1000.0) * torch.ones_like(seconds) if target.kind == "ms" else target.value * seconds
        return fixed * self.correction, layer * self.correction, allowance * (1.0 - self.margin)

    def decide(self, sample_lengths: Tensor, target: Target | dict | str, *, warn: bool = True,
               _stacklevel: int = 2) -> BudgetDecision:
        """The largest budget each input can afford under ``target`` (at least one layer).

        Args:
            sample_lengths: ``[batch]`` valid samples per input.
            target: a :class:`Target`, ``{"rtf": 0.1}`` or ``"ms=80"``.
            warn: warn about inputs that cannot meet the target (``False``: the caller counts
                ``meets_target`` itself, e.g. over a whole run, as :class:`TargetResolver` does).

        Raises:
            ValueError: an invalid target, a missing profile/config, or (``on_unmeetable="raise"``) a target
                that some input cannot meet.
        """
        target = Target.parse(target)
        fixed, layer, allowance = self.costs(sample_lengths, target)
        affordable = torch.floor((allowance - fixed) / layer.clamp(min=1e-30) + 1e-9)
        meets = affordable >= self.min_budget
        budget = affordable.clamp(self.min_budget, self.num_layers).to(torch.long)
        if not bool(meets.all()):
            bad = int((~meets).sum())
            message = (f"target {target.kind}={target.value:g} cannot be met by {bad} of {len(meets)} inputs even "
                       f"with {self.min_budget} layer(s)")
            if self.on_unmeetable == "raise":
                raise ValueError(message)
            if warn:
                warnings.warn(f"{message}: they run the minimum budget ({self.min_budget} layer(s))",
                              UnmeetableTargetWarning, stacklevel=_stacklevel)
        predicted = fixed + budget.to(torch.float64) * layer
        return BudgetDecision(budget, predicted, allowance, meets)

    def budgets(self, sample_lengths: Tensor, target: Target | dict | str) -> Tensor:
        """``[batch]`` long: :meth:`decide`'s budget only."""
        return self.decide(sample_lengths, target, _stacklevel=3).budget

    # ------------------------------------------------------------------ closed loop
    def observe(self, predicted_seconds: float, measured_seconds: float) -> float:
        """Feed back one forward's measured time against the profile's *uncorrected* prediction.

        Returns:
            The new correction (unchanged in open loop or for a non-positive time).
        """
        if not self.closed_loop or not (predicted_seconds > 0 and measured_seconds > 0):
            return self.correction
        low, high = self.correction_bounds
        ratio = min(high, max(low, measured_seconds / predicted_seconds))
        alpha = self.alpha_up if ratio > self._average else self.alpha_down
        self._average = math.exp((1 - alpha) * math.log(self._average) + alpha * math.log(ratio))
        self._recent.append(ratio)
        correction = self._average
        if self.quantile is not None:
            recent = sorted(self._recent)
            correction = max(correction, recent[min(len(recent) - 1, int(self.quantile * len(recent)))])
        self.correction = min(high, max(low, correction))
        return self.correction

    def reset(self) -> None:
        """Forget the online correction (trust the profile again)."""
        self.correction = self._average = 1.0
        self._recent.clear()


class TargetResolver:
    """Per-input budgets of a task module under targets over one run (``ldrop predict``, a target sweep).

    One open-loop controller per profile file, built on first use (a time target without a profile measures
    a quick one, :data:`QUICK_GRID`). Inputs that cannot meet a target are counted over the run and warned
    about once, by :meth:`close`. The model is duck-typed (``num_layers``, ``backbone``, ``selector``, ...).
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
                if target.profile:
                    profile = DeviceProfile.load(target.profile)
                    if profile.num_layers != model.num_layers:
                        raise ValueError(f"device profile {target.profile!r} is of a {profile.num_layers}-layer "
                                         f"model, not of this {model.num_layers}-layer one: profile this model with "
                                         "'ldrop profile'")
                else:
                    warnings.warn("a time target without a profile: measuring a quick one now (pass "
                                  "profile: PATH from 'ldrop profile' to skip this)", stacklevel=3)
                    profile = profile_model(model, **QUICK_GRID)
            selector = model.selector
            controller = BudgetController(
                model.num_layers, profile, flops_config=model.backbone.config,
                extra_fixed_flops=selector.flops if selector is not None else None, closed_loop=False,
                min_budget=max(1, getattr(model, "prefix_layers", 0)),
            )
            self.controllers[target.profile] = controller
        return controller

    def decide(self, model: Any, sample_lengths: Tensor, target: Target | dict | str) -> BudgetDecision:
        """The controller's :class:`BudgetDecision` for ``model`` under ``target`` (open loop), on the CPU.

        Early exit takes one budget per batch, the tightest one (``predicted_seconds`` then is that budget's).
        """
        target = Target.parse(target)
        controller = self.controller(model, target)
        decision = controller.decide(sample_lengths, target, warn=False)
        depth = getattr(model, "depth", None)  # its depth policy may run other budgets (early exit: the tightest)
        budget = decision.budget if depth is None else depth.batch_budget(decision.budget)
        if budget is not decision.budget:
            fixed, layer, _ = controller.costs(sample_lengths, target)
            decision = BudgetDecision(budget, fixed + budget.to(torch.float64) * layer, decision.allowance,
                                      decision.meets_target)
        counts = self.counts.setdefault(target, [0, 0, controller.min_budget])
        counts[0] += int((~decision.meets_target).sum())
        counts[1] += len(decision.meets_target)
        return decision

    def budget(self, model: Any, sample_lengths: Tensor, target: Target | dict | str) -> Tensor:
        """``[batch]`` long: :meth:`decide`'s budget, on the device of ``sample_lengths``."""
        return self.decide(model, sample_lengths, target).budget.to(sample_lengths.device)

    def close(self, run: str = "this run") -> dict[Target, list[int]]:
        """Warn once per target that some inputs of the run could not meet; start a new count.

        Returns:
            ``{target: [missed, inputs, min budget]}`` of the run.
        """
        counts, self.counts = self.counts, {}
        for target, (missed, total, min_budget) in counts.items():
            if missed:
                warnings.warn(
                    f"target {target.kind}={target.value:g} cannot be met by {missed} of the {total} inputs of "
                    f"{run} even with {min_budget} layer(s): they ran the minimum budget; a looser target, a faster "
                    "device or shorter inputs would help",
                    UnmeetableTargetWarning, stacklevel=2)
        return counts
