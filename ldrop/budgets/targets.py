"""Targets: a budget given as a deadline, a real-time factor or a FLOPs rate instead of a layer count."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from ldrop.budgets.cost import DeviceProfile, cost_facts

#: Keys of a target budget: milliseconds per utterance, real-time factor (seconds of compute per second of
#: audio), or GFLOPs per second of audio.
TARGET_KINDS = ("ms", "rtf", "gflops_per_second")


@dataclass(frozen=True)
class Target:
    """A budget given as a target: ``kind`` ``"ms"`` (per utterance), ``"rtf"`` or ``"gflops_per_second"``, a
    ``value`` > 0 and an optional device ``profile`` path."""

    kind: str
    value: float
    profile: str | None = None

    @classmethod
    def parse(cls, spec: Target | dict[str, Any] | str) -> Target:
        """A target from ``{"rtf": 0.1}`` (optionally with ``"profile": PATH``), ``"rtf=0.1"`` or a Target.

        The profile file is read and checked here. Raises ``ValueError`` (a bad key or value, or a file that
        is not a device profile) or ``FileNotFoundError``.
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
            value = math.nan if isinstance(raw, bool) else float(raw)  # True is no 1.0 ms
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

    def check_model(self, config: Any, num_layers: int) -> None:
        """``ValueError`` naming the file unless the target's profile (if any) is of the model with this backbone
        ``config`` and ``num_layers`` (:meth:`DeviceProfile.check_model`)."""
        if self.profile:
            DeviceProfile.load(self.profile).check_model({**cost_facts(config), "num_layers": num_layers})


#: Profile files already checked, by (absolute path, modification time, size): parsing the same target again
#: (each call of a streaming model) does not read the file again unless it changed.
_CHECKED_PROFILES: set[tuple[str, int, int]] = set()


def _check_profile_file(path: str) -> None:
    """Raise (naming ``path``) unless it is a readable device profile; see ``DeviceProfile.load``."""
    try:
        stat = os.stat(path)
        key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size)
    except OSError:
        key = None  # DeviceProfile.load says what is wrong
    if key not in _CHECKED_PROFILES:
        DeviceProfile.load(path)
        if key is not None:
            _CHECKED_PROFILES.add(key)


def is_target(budget: Any) -> bool:
    """Whether ``budget`` is a target (a dict, ``"KEY=VALUE"`` string or :class:`Target`), not layers."""
    return isinstance(budget, Target | dict | str)
