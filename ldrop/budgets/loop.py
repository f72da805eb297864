"""The controller's decision and closed loop, torch-free: shared by :class:`~ldrop.budgets.BudgetController`
and the ONNX runtime's numpy controller (a subclass counts FLOPs, :meth:`ControlLoop.flops_costs`), and by both
runtimes' calls (:class:`ClosedLoopModel`)."""

from __future__ import annotations

import collections
import math
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ldrop.budgets.cost import DeviceProfile, as_array, cost_facts
from ldrop.budgets.targets import Target, is_target


class UnmeetableTargetWarning(UserWarning):
    """Some inputs cannot meet the target even with one layer; they get the minimum budget."""


@dataclass
class BudgetDecision:
    """A controller's choice for one batch (tensors from the PyTorch controller, arrays from the numpy one).

    ``budget`` (layers per input), ``predicted_seconds`` (each input's corrected cost at its budget; GFLOPs
    for FLOPs targets), ``allowance`` (in the same unit) and ``meets_target``, all ``[batch]``.
    """

    budget: Any
    predicted_seconds: Any
    allowance: Any
    meets_target: Any
    #: the correction this decision planned with (time targets in closed loop; else the controller's)
    planned_correction: float = 1.0


class ControlLoop:
    """Chooses the largest affordable budget per input and corrects its cost model online.

    Args:
        closed_loop: correct predictions with measured times (:meth:`observe`); ``False`` is open loop.
        margin: fraction of a time allowance kept free for noise (plan for ``(1 - margin) x target``).
        alpha_up, alpha_down: EMA weights of a new ratio when it is above / below the current correction.
        window, quantile: the correction is at least this quantile of the last ``window`` ratios, the
            upper one (the ratio at index ``int(quantile x n)`` of the ``n`` sorted: of 8 ratios, 0.75 takes
            the 7th smallest; ``quantile=None``: the moving average alone).
        jump: a change of speed this large is a change of load, not noise: a probe (see :meth:`decide`) this
            much above the correction is planned for at once, and ``recover_after`` ratios in a row this much
            below it end the slow spell (the correction restarts from their largest; ``0``: never).
        correction_bounds: the correction stays within these factors.
        on_unmeetable: ``"min"`` (the minimum budget and a warning) or ``"raise"`` (a ``ValueError``).
        sample_rate: samples per second of the inputs, which turns lengths into seconds for ``rtf`` and
            FLOPs-rate targets.
        min_budget: the fewest layers any input runs (``j`` for a selector that reads the first ``j`` layers).
    """

    def __init__(
        self, num_layers: int, closed_loop: bool = True, margin: float = 0.1, alpha_up: float = 0.6,
        alpha_down: float = 0.15, window: int = 8, quantile: float | None = 0.75, jump: float = 1.25,
        recover_after: int = 5, correction_bounds: tuple[float, float] = (0.25, 8.0),
        on_unmeetable: Literal["min", "raise"] = "min", sample_rate: int = 16_000, min_budget: int = 1,
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
        if jump < 1.0 or recover_after < 0:
            raise ValueError(f"jump must be >= 1 and recover_after >= 0, got {jump}, {recover_after}")
        low, high = correction_bounds
        if not 0.0 < low <= 1.0 <= high:
            raise ValueError(f"correction_bounds must satisfy 0 < low <= 1 <= high, got {correction_bounds}")
        if on_unmeetable not in ("min", "raise"):
            raise ValueError(f"on_unmeetable must be 'min' or 'raise', got {on_unmeetable!r}")
        self.num_layers = num_layers
        self.closed_loop = closed_loop
        self.margin = margin
        self.alpha_up, self.alpha_down = alpha_up, alpha_down
        self.correction_bounds = (float(low), float(high))
        self.quantile = quantile
        self.jump, self.recover_after = float(jump), int(recover_after)
        self._recent: collections.deque[float] = collections.deque(maxlen=window)
        self._average = 1.0
        self.on_unmeetable = on_unmeetable
        self.sample_rate = sample_rate
        self.min_budget = int(min_budget)
        #: Current ratio measured / predicted time that scales every time prediction (1: trust the profile).
        self.correction = 1.0
        #: The model's :func:`~ldrop.budgets.cost.cost_facts` that a profile must agree with, besides its layers.
        self.model_facts: dict[str, Any] = {}
        self._profile: Any = None
        #: The last decision's measured / predicted time of the part already run (``None``: not measured),
        #: and the correction its layers were planned with (at least :attr:`correction`).
        self.probe: float | None = None
        self.planned = 1.0
        self._warned: set[str] = set()  # the target kinds whose unmeetable inputs were warned about

    @property
    def profile(self) -> Any:
        """The device profile (``None``: none yet). In closed loop, until a call has been measured, the
        correction starts from the profile's own check: the median measured / predicted time of the whole
        forwards it was validated on (the parts it fits are timed alone)."""
        return self._profile

    @profile.setter
    def profile(self, profile: Any) -> None:
        if profile is not None:
            self.check_profile(profile)
        self._profile = profile
        if not self._recent:
            self.reset()

    def check_profile(self, profile: DeviceProfile) -> None:
        """``ValueError`` (naming its file) unless ``profile`` is of this model: its layers and
        :attr:`model_facts`."""
        profile.check_model({**self.model_facts, "num_layers": self.num_layers})

    def profile_warning(self, profile: DeviceProfile) -> str | None:
        """Why ``profile``'s times may not be this runtime's, or ``None`` (a runtime's controller says)."""
        return None

    # ------------------------------------------------------------------ decisions
    #: How to get a profile, in the error of a time target without one.
    profile_hint = ": run 'ldrop profile' and pass it"

    def costs(self, sample_lengths: Any, target: Target, profile: Any = None) -> tuple[Any, Any, Any]:
        """``(fixed [batch], per layer [batch], allowance [batch])`` float64 in the target's unit: time targets'
        seconds from ``profile`` (default :attr:`profile`) times the correction (the allowance ``(1 - margin)`` of
        the target), or GFLOPs (:meth:`flops_costs`)."""
        profile = self.profile if profile is None else profile
        lengths = as_array(sample_lengths, np.int64)
        seconds = lengths.astype(np.float64) / self.sample_rate
        if target.kind == "gflops_per_second":
            return (*self.flops_costs(lengths), target.value * seconds)
        if target.kind not in ("ms", "rtf"):
            raise ValueError(f"unknown target kind {target.kind!r}")
        if profile is None:
            raise ValueError(f"a {target.kind} target needs a device profile of this model{self.profile_hint}")
        fixed, layer = profile.per_input(lengths)
        allowance = (target.value / 1000.0) * np.ones_like(seconds) if target.kind == "ms" else target.value * seconds
        return fixed * self.correction, layer * self.correction, allowance * (1.0 - self.margin)

    def flops_costs(self, sample_lengths: np.ndarray) -> tuple[Any, Any]:
        """``(fixed [batch], per layer [batch])`` GFLOPs of each input, for ``gflops_per_second`` targets."""
        raise NotImplementedError

    def budget_costs(self, sample_lengths: np.ndarray, target: Target) -> Any:
        """``[batch, layers]`` further cost of each input at each budget ``k`` (column ``k - 1``) in the target's
        unit, beside ``fixed + k * per layer`` (confidence early exit's passed heads, not linear in ``k``), or
        ``None``: none (here, always). Used as it is: neither the correction nor a probe scales it, so only
        FLOPs targets, which have neither, give one."""
        return None

    def bind(self, model: Any) -> None:
        """Take what the costs need from the PyTorch ``model`` a runtime runs (here: nothing)."""

    def as_result(self, array: np.ndarray) -> Any:
        """A decision's array in this controller's array type (numpy here; the PyTorch controller: tensors)."""
        return array

    def decide(self, sample_lengths: Any, target: Target | dict | str, *, spent: tuple[float, int] | None = None,
               warn: bool = True, profile: Any = None, _stacklevel: int = 2) -> BudgetDecision:
        """The largest budget each input can afford under ``target`` (at least ``min_budget``).

        ``spent``: ``(seconds, layers)`` this call has already spent on its budget-independent part (and that
        many prefix layers). In closed loop, when that part ran more than ``jump`` times slower than the
        correction predicts, the call plans at the measured ratio (:attr:`probe`): a load that starts between
        calls is seen before the budget is chosen. ``warn=False`` leaves counting inputs that cannot meet the
        target to the caller. ``profile``: the device profile this call plans with (default :attr:`profile`; a
        runtime passes the one it resolved for the call, which threads sharing the controller cannot switch under
        it). ``ValueError`` for an invalid target, a missing profile or config, or (``on_unmeetable="raise"``) an
        unmeetable target.
        """
        target = Target.parse(target)
        costs = self.costs(sample_lengths, target, profile)
        fixed, layer, allowance = (np.asarray(x, dtype=np.float64) for x in costs)
        # this call's own values (a controller shared by threads: another call may set the attributes meanwhile)
        probe, correction = None, self.correction
        planned = correction
        if spent is not None and self.closed_loop and target.kind in ("ms", "rtf"):
            predicted = float(fixed.sum() + spent[1] * layer.sum()) / correction
            probe = spent[0] / max(predicted, 1e-30)
            jumped = probe > self.jump * correction
            scale = min(self.correction_bounds[1], probe) / correction if jumped else 1.0
            fixed, layer, planned = fixed * scale, layer * scale, correction * scale
        self.probe, self.planned = probe, planned  # the last call's, to inspect
        extra = self.budget_costs(as_array(sample_lengths, np.int64), target)
        if extra is None:
            affordable = np.floor((allowance - fixed) / np.maximum(layer, 1e-30) + 1e-9)
            meets = affordable >= self.min_budget
            budget = np.clip(affordable, self.min_budget, self.num_layers).astype(np.int64)
        else:  # not linear in k: the largest k whose whole cost fits
            extra = np.asarray(extra, dtype=np.float64)
            layers = np.arange(1, self.num_layers + 1, dtype=np.float64)
            total = fixed[:, None] + layers[None] * layer[:, None] + extra
            fits = total <= allowance[:, None] + 1e-9 * np.maximum(layer, 1e-30)[:, None]
            fits[:, : self.min_budget - 1] = False
            meets = fits.any(1)
            deepest = self.num_layers - np.argmax(fits[:, ::-1], axis=1)
            budget = np.where(meets, deepest, self.min_budget).astype(np.int64)
        if not bool(meets.all()):
            bad = int((~meets).sum())
            message = (f"target {target.kind}={target.value:g} cannot be met by {bad} of {len(meets)} inputs even "
                       f"with {self.min_budget} layer(s)")
            if self.on_unmeetable == "raise":
                raise ValueError(message)
            if warn and target.kind not in self._warned:  # once per kind: a service's varying targets, no spam
                self._warned.add(target.kind)
                warnings.warn(f"{message}: they run the minimum budget ({self.min_budget} layer(s)); later calls "
                              f"that miss a {target.kind} target are not warned again (see meets_target)",
                              UnmeetableTargetWarning, stacklevel=_stacklevel)
        predicted = fixed + budget.astype(np.float64) * layer
        if extra is not None:
            predicted = predicted + extra[np.arange(len(budget)), budget - 1]
        return BudgetDecision(*(self.as_result(a) for a in (budget, predicted, allowance, meets)), planned)

    def budgets(self, sample_lengths: Any, target: Target | dict | str) -> Any:
        """``[batch]`` int64: :meth:`decide`'s budget only."""
        return self.decide(sample_lengths, target, _stacklevel=3).budget

    # ------------------------------------------------------------------ closed loop
    def observe(self, predicted_seconds: float, measured_seconds: float) -> float:
        """Feed back one forward's measured time against the *uncorrected* prediction; returns the new
        correction."""
        if not self.closed_loop or not (predicted_seconds > 0 and measured_seconds > 0):
            return self.correction
        low, high = self.correction_bounds
        ratio = min(high, max(low, measured_seconds / predicted_seconds))
        alpha = self.alpha_up if ratio > self._average else self.alpha_down
        self._average = math.exp((1 - alpha) * math.log(self._average) + alpha * math.log(ratio))
        self._recent.append(ratio)
        last = list(self._recent)[-self.recover_after:]
        if 0 < self.recover_after == len(last) and self.jump * max(last) < self.correction:  # the load has gone
            self._average = max(last)
            self._recent = collections.deque(last, maxlen=self._recent.maxlen)
        correction = self._average
        if self.quantile is not None:
            recent = sorted(self._recent)
            correction = max(correction, recent[min(len(recent) - 1, int(self.quantile * len(recent)))])
        self.correction = min(high, max(low, correction))
        return self.correction

    def reset(self) -> None:
        """Forget the online correction (start again from the profile's check, see :attr:`profile`)."""
        rows = (getattr(self._profile, "validation", None) or {}).get("batches") or []
        pairs = [(r.get("measured_ms") or 0, r.get("predicted_ms") or 0) for r in rows if isinstance(r, dict)]
        ratios = sorted(m / p for m, p in pairs if min(m, p) > 0)
        start = ratios[len(ratios) // 2] if ratios and self.closed_loop else 1.0
        self.correction = self._average = min(self.correction_bounds[1], max(self.correction_bounds[0], start))
        self._recent.clear()


class DeadlineGuard:
    """Lets a layer start only if it is predicted to end by ``deadline`` (a ``clock()`` time): the last line of
    a time target when the machine slows down within a call.

    A layer's time is the profile's (``layer_seconds(inputs, frames)``) times the larger of ``correction`` and
    this call's own measured / predicted ratio over the layers run so far. The first ``min_layers`` layers
    always run. Refused layers are in :attr:`skipped`. Each check reads ``clock`` (on CUDA the runtimes' clock
    synchronises the device first: one sync per layer under a time target).
    """

    def __init__(self, deadline: float, layer_seconds: Callable[[int, int], float], correction: float = 1.0,
                 min_layers: int = 1, clock: Callable[[], float] = time.perf_counter) -> None:
        self.deadline, self.layer_seconds, self.correction = deadline, layer_seconds, correction
        self.min_layers, self.clock = min_layers, clock
        self.skipped: list[int] = []
        self._ran, self._measured, self._predicted = 0, 0.0, 0.0
        self._last: tuple[float, float] | None = None  # (start, predicted seconds) of the layer running

    def __call__(self, index: int, inputs: int, frames: int) -> bool:
        now = self.clock()
        if self._last is not None:  # the previous layer has ended: learn this call's speed
            self._measured += now - self._last[0]
            self._predicted += self._last[1]
        rate = max(self.correction, self._measured / self._predicted if self._predicted > 0 else 0.0)
        predicted = float(self.layer_seconds(inputs, frames))
        if self._ran >= self.min_layers and now + predicted * rate > self.deadline:
            self.skipped.append(index)
            self._last = None
            return False
        self._ran += 1
        self._last = (now, predicted)
        return True


def full_depth_warning(num_layers: int, budget: Any) -> str:
    """What a model that cannot skip layers says, once, when it is asked for fewer."""
    return (f"this model has no selector and no early exits, so it runs all {num_layers} layers whatever the "
            f"budget or target ({budget}); train it with a selector (or early exit) to skip layers")


class ClosedLoopModel:
    """What both runtimes (``AdaptiveModel``, ``OnnxAdaptiveModel``) do around a forward under a target. A
    runtime sets ``controller``, ``num_layers``, ``guard``, ``clock``, its array type's ``_resolve_budget`` (a
    static method), ``_measure_profile(**grid)`` and ``skips_layers``, and has its ``model`` (PyTorch) or export
    ``manifest`` (ONNX).

    Threads may share a runtime: each call plans with the profile it resolved (its target's, else the model's),
    and a profile is loaded or measured by one thread at a time; the controller's correction is shared."""

    #: One profile load or measurement at a time, across runtimes (a measurement under another's load is wrong).
    _profile_lock = threading.RLock()

    #: Whether a call has run: the first pays one-time costs (allocations, lazy initialisation), never learnt.
    _warm = False
    #: Whether a model that cannot skip layers has said so (once).
    _said_full_depth = False

    @property
    def controller(self) -> Any:
        """The model's controller; one assigned is checked against the model (a profile of another model, with
        other layers or sizes, is a ``ValueError`` naming its file)."""
        return self._loop

    @controller.setter
    def controller(self, controller: Any) -> None:
        manifest = getattr(self, "manifest", None)
        controller.model_facts = cost_facts(manifest["backbone"] if manifest else self.model.backbone.config)
        if not manifest:
            controller.bind(self.model)
        if controller.profile is not None:
            controller.check_profile(controller.profile)
        self._loop = controller

    @property
    def profile(self) -> DeviceProfile | None:
        return self.controller.profile

    def ensure_profile(self, **grid: Any) -> DeviceProfile:
        """The profile, measured now (``QUICK_GRID``, or ``grid``) if there is none yet."""
        with self._profile_lock:  # threads' first calls: one measures, the others wait for it
            if self.controller.profile is None:
                self.controller.profile = self._measure_profile(**grid)
            return self.controller.profile

    def budget_for(self, lengths: Any, target: Any, spent: tuple[float, int] | None = None
                   ) -> tuple[Any, Target | None]:
        """``(budget [batch], the parsed target or None)`` for a call (``spent``: see
        :meth:`ControlLoop.decide`)."""
        parsed, profile = self._parse_target(target)
        if parsed is None:  # a plain budget; None runs every layer
            budget = self._resolve_budget(self.num_layers if target is None else target, self.num_layers, len(lengths))
        else:
            budget = self.controller.decide(lengths, parsed, spent=spent, profile=profile, _stacklevel=4).budget
        self._check_skips(budget, target, stacklevel=4)
        return budget, parsed

    def _check_skips(self, budget: Any, target: Any, stacklevel: int) -> None:
        """Warn once (at the model's caller) when a model that cannot skip layers is given fewer than all of them
        (not under a guarded time target: the deadline guard stops the layers of any model)."""
        if self.skips_layers or self._said_full_depth or not bool((budget < self.num_layers).any()):
            return
        self._said_full_depth = True
        warnings.warn(full_depth_warning(self.num_layers, target), stacklevel=stacklevel)

    def _parse_target(self, target: Any) -> tuple[Target | None, DeviceProfile | None]:
        """``(the parsed target, the profile this call plans with)``: ``(None, None)`` for a plain budget; a time
        target's profile is its own (loaded now), else the model's (measured now if there is none)."""
        if not is_target(target):
            return None, None
        parsed = Target.parse(target)
        if parsed.kind not in ("ms", "rtf"):
            return parsed, None
        return parsed, self._use_profile(parsed.profile) if parsed.profile else self.ensure_profile()

    def _use_profile(self, path: str) -> DeviceProfile:
        """The profile at ``path`` (a target's), made the model's from now on, checked and warned about as a
        constructor's is; the correction restarts from it. The file already in use is kept, with its correction."""
        with self._profile_lock:
            current = self.controller.profile
            known = getattr(current, "path", None)
            if known is not None and os.path.realpath(known) == os.path.realpath(path):
                return current
            profile = DeviceProfile.load(path)
            warning = self.controller.profile_warning(profile)
            if warning:
                warnings.warn(warning, stacklevel=4)  # the caller of the model
            self.controller.profile = profile
            self.controller.reset()
            return profile

    def _plan(self, lengths: Any, target: Target, profile: DeviceProfile, start: float, clock: Callable[[], float],
              prefix_layers: int, guarded: bool) -> tuple[Any, float, DeadlineGuard | None]:
        """A time target's ``(budget, correction planned with, DeadlineGuard or None)`` under the call's
        ``profile``, decided once the budget-independent part (begun at ``clock()`` time ``start``, with
        ``prefix_layers``) has run, from its time; ``guarded``: whether the model's layers can be guarded (not
        early exit)."""
        controller = self.controller
        decision = controller.decide(lengths, target, spent=(clock() - start, prefix_layers), profile=profile,
                                     _stacklevel=4)
        planned = decision.planned_correction
        if not (self.guard and controller.closed_loop and guarded):
            self._check_skips(decision.budget, target, stacklevel=4)
            return decision.budget, planned, None
        deadline = start + float(decision.allowance.sum()) / (1.0 - controller.margin)
        guard = DeadlineGuard(deadline, profile.layer_seconds, planned, clock=clock)
        return decision.budget, planned, guard

    def _feedback(self, lengths: Any, keep: Any, measured: float, correction: float,
                  profile: DeviceProfile | None) -> float | None:
        """The call's ``predicted_ms`` by ``profile`` (the call's; default the model's; ``None`` without one) at
        ``correction``; its ``measured`` seconds are fed back (:meth:`ControlLoop.observe`) from the second call
        on."""
        predicted_ms = None
        profile = self.controller.profile if profile is None else profile
        if profile is not None:
            predicted = profile.predict(lengths, keep)
            predicted_ms = 1000.0 * predicted * correction
            if self._warm:
                self.controller.observe(predicted, measured)
        self._warm = True
        return predicted_ms
