"""Layer budgets: an int (layers), a float (fraction of the stack) or a per-sample tensor."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

Budget = int | float | Tensor


def budget_to_layers(budget: int | float, num_layers: int) -> int:
    """Convert one budget to a number of layers in ``1..num_layers``.

    An ``int`` is a number of layers; a ``float`` in ``(0, 1]`` is a fraction of the stack, rounded to the
    nearest layer (at least one).

    Raises:
        ValueError: a budget ``<= 0``, above ``num_layers``, or a fraction above 1.
    """
    if isinstance(budget, bool):
        raise ValueError(f"budget must be an int (layers) or a float (fraction), got {budget!r}")
    if isinstance(budget, int):
        if not 1 <= budget <= num_layers:
            raise ValueError(f"budget must be between 1 and {num_layers} layers, got {budget}")
        return budget
    if isinstance(budget, float):
        if not (0.0 < budget <= 1.0) or math.isnan(budget):
            raise ValueError(f"a fractional budget must be in (0, 1], got {budget}")
        return max(1, min(num_layers, int(round(budget * num_layers))))
    raise ValueError(f"budget must be an int, a float or a tensor, got {type(budget).__name__}")


def resolve_budget(budget: Budget, num_layers: int, batch: int, device: torch.device | str = "cpu") -> Tensor:
    """A budget of any accepted form as ``[batch]`` long layer counts.

    Args:
        budget: int layers, float fraction, or a tensor of shape ``[]`` or ``[batch]`` holding layer counts
            (integers) or fractions (floating point).
        num_layers: ``N``, the number of encoder layers.
        batch: batch size.
        device: device of the result.

    Raises:
        ValueError: out-of-range values or a tensor of the wrong shape, with what was expected.
    """
    if not isinstance(budget, Tensor):
        return torch.full((batch,), budget_to_layers(budget, num_layers), dtype=torch.long, device=device)
    if budget.dim() == 0:
        budget = budget.expand(batch)
    if budget.dim() != 1 or budget.shape[0] != batch:
        raise ValueError(f"a budget tensor must have shape [] or [batch={batch}], got {tuple(budget.shape)}")
    if budget.is_floating_point():
        if bool(((budget <= 0) | (budget > 1)).any()):
            raise ValueError("a floating-point budget tensor holds fractions, each in (0, 1]")
        budget = (budget * num_layers).round().clamp(1, num_layers)
    elif bool(((budget < 1) | (budget > num_layers)).any()):
        raise ValueError(f"budget values must be between 1 and {num_layers} layers, got {budget.tolist()}")
    return budget.to(device=device, dtype=torch.long)


def budget_list(budgets: Sequence[int | float] | None, num_layers: int) -> list[int]:
    """Distinct layer counts, ascending, for a list of budgets (``None``: every ``k`` in ``1..N``)."""
    if budgets is None:
        return list(range(1, num_layers + 1))
    if len(budgets) == 0:
        raise ValueError("the list of budgets is empty")
    return sorted({budget_to_layers(b, num_layers) for b in budgets})


#: Keys of a target budget: milliseconds per utterance, real-time factor (seconds of compute per second of
#: audio), or GFLOPs per second of audio.
TARGET_KINDS = ("ms", "rtf", "gflops_per_second")


@dataclass(frozen=True)
class Target:
    """A budget given as a target instead of a layer count (see :mod:`ldrop.runtime.controller`).

    Attributes:
        kind: ``"ms"`` (wall milliseconds per utterance), ``"rtf"`` (real-time factor: compute seconds per
            second of audio) or ``"gflops_per_second"`` (GFLOPs per second of audio, counted exactly).
        value: the target, a finite number above 0.
        profile: optional path of a device profile (``ldrop profile``) for the time targets.
    """

    kind: str
    value: float
    profile: str | None = None

    @classmethod
    def parse(cls, spec: Target | dict[str, Any] | str) -> Target:
        """A target from ``{"rtf": 0.1}`` (optionally with ``"profile": PATH``), ``"rtf=0.1"`` or a Target.

        A profile file is read and checked here, when the target is parsed (before any model runs).

        Raises:
            ValueError: no or several target keys, an unknown key, a value that is not a number > 0, or a
                profile file that is not a device profile (naming the file and what is wrong).
            FileNotFoundError: no profile file at the given path.
        """
        if isinstance(spec, Target):
            return spec
        if isinstance(spec, str):
            key, sep, value = spec.partition("=")
            if not sep:
                raise ValueError(f"a target string is KEY=VALUE with KEY in {TARGET_KINDS}, got {spec!r}")
            spec = {key.strip(): value.strip()}
        if not isinstance(spec, dict):
            raise ValueError(f"a target is a dict like {{'rtf': 0.1}}, got {type(spec).__name__}")
        spec = dict(spec)
        profile = spec.pop("profile", None)
        unknown = sorted(set(spec) - set(TARGET_KINDS))
        if unknown:
            raise ValueError(f"unknown target key(s) {unknown}; a target has one of {list(TARGET_KINDS)}")
        if len(spec) != 1:
            raise ValueError(f"a target has exactly one of {list(TARGET_KINDS)}, got {sorted(spec) or 'none'}")
        (kind, raw), = spec.items()
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"target {kind} must be a number, got {raw!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"target {kind} must be a finite number above 0, got {raw!r}")
        if profile is not None:
            if not isinstance(profile, str | os.PathLike) or not str(profile):
                raise ValueError(f"target profile must be the path of a device profile, got {profile!r}")
            profile = str(profile)
            _check_profile_file(profile)
        return cls(kind, value, profile)


#: Profile files already checked, by (absolute path, modification time, size): parsing the same target again
#: (each call of a streaming model) does not read the file again unless it changed.
_CHECKED_PROFILES: set[tuple[str, int, int]] = set()


def _check_profile_file(path: str) -> None:
    """Raise (naming ``path``) unless it is a readable device profile; see ``DeviceProfile.load``."""
    try:
        stat = os.stat(path)
    except OSError:
        stat = None
    key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size) if stat is not None else None
    if key is not None and key in _CHECKED_PROFILES:
        return
    # The profile's schema lives with the cost model (the runtime); the target only names its file.
    from ldrop.runtime.profile import DeviceProfile

    DeviceProfile.load(path)
    if key is not None:
        _CHECKED_PROFILES.add(key)


def is_target(budget: Any) -> bool:
    """Whether ``budget`` is a target (a dict, ``"KEY=VALUE"`` string or :class:`Target`), not layers."""
    return isinstance(budget, Target | dict | str)
