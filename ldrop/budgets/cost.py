"""The device profile: how long the fixed part and one encoder layer of a model take on one device.

Each part is ``t(B, T) = overhead + per_frame * B*T + per_frame_sq * B*T²`` seconds for ``B`` inputs of ``T``
frames; a batch is predicted to take ``fixed(B, T_max) + sum_i layer(B_i, T_i)``, the work of
:func:`ldrop.engine.run_gated_layers`. Torch-free (numpy): both runtimes, PyTorch and ONNX, read the same
profile; :mod:`ldrop.budgets.profile` measures one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Fitted parts of a profile.
PARTS = ("fixed", "layer")

#: The command that writes a device profile, as error messages give it.
REMEDY = "'ldrop profile' ('ldrop profile --runtime onnx' for an ONNX export)"

#: The ``ldrop profile`` options that measure at a Lightning precision.
PROFILE_PRECISION_OPTIONS = {"32-true": "", "bf16-mixed": "--autocast bf16", "16-mixed": "--autocast fp16",
                             "bf16-true": "--dtype bf16", "16-true": "--dtype fp16", "64-true": "--dtype fp64"}
#: The precision of a profile from before ``device.precision`` was recorded, from its weights' ``device.dtype``
#: (``ldrop profile`` then had no ``--autocast``: the weights' dtype ran).
DTYPE_PRECISIONS = {"float32": "32-true", "bfloat16": "bf16-true", "float16": "16-true", "float64": "64-true"}

#: The model properties a profile's times depend on, each under the names a backbone config, an ONNX export's
#: manifest and the profiles measured on them record it by (the family is ``model_type`` in one, ``family`` in
#: the other: those two are not compared with each other). A profile may lack any of them (older ones do).
COST_PROPERTIES = {
    "num_layers": ("num_layers", "num_hidden_layers"), "model_type": ("model_type",), "family": ("family",),
    "hidden_size": ("hidden_size",), "num_attention_heads": ("num_attention_heads",),
    "intermediate_size": ("intermediate_size",), "conv_dim": ("conv_dim",), "conv_kernel": ("conv_kernel",),
    "conv_stride": ("conv_stride",), "stable_layer_norm": ("stable_layer_norm", "do_stable_layer_norm"),
}


def cost_facts(source: Any) -> dict[str, Any]:
    """The :data:`COST_PROPERTIES` that ``source`` (a mapping, or an object such as a backbone config) has."""
    def get(key: str) -> Any:
        return source.get(key) if isinstance(source, dict) else getattr(source, key, None)

    facts = {}
    for name, keys in COST_PROPERTIES.items():
        value = next((v for v in map(get, keys) if v is not None), None)
        if value is not None:
            facts[name] = list(value) if isinstance(value, tuple | list) else value
    return facts


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` where there is one, else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def as_array(values: Any, dtype: Any = None) -> np.ndarray:
    """A numpy array of a tensor (on any device), an array or a list."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)


def conv_frames(sample_lengths: Any, conv_kernel: Sequence[int], conv_stride: Sequence[int]) -> np.ndarray:
    """``[batch]`` int64 frames the CNN produces for ``sample_lengths`` samples (numpy's
    :func:`ldrop.backbones.geometry.frame_lengths`)."""
    lengths = as_array(sample_lengths, np.int64)
    for kernel, stride in zip(conv_kernel, conv_stride, strict=True):
        lengths = np.maximum(np.floor_divide(lengths - int(kernel), int(stride)) + 1, 0)
    return lengths


@dataclass
class PartFit:
    """``t(B, T) = overhead + per_frame * B*T + per_frame_sq * B*T²`` seconds, all coefficients >= 0."""

    overhead: float = 0.0
    per_frame: float = 0.0
    per_frame_sq: float = 0.0

    def seconds(self, batch: Any, frames: Any) -> Any:
        """Predicted seconds for ``batch`` inputs of ``frames`` frames (arrays broadcast)."""
        return self.overhead + batch * (self.per_frame * frames + self.per_frame_sq * frames * frames)

    def per_input(self, frames: np.ndarray, batch: int) -> np.ndarray:
        """Seconds attributed to each input of a batch of ``batch``: its frames plus its share of overhead."""
        frames = np.asarray(frames, dtype=np.float64)
        return self.overhead / batch + self.per_frame * frames + self.per_frame_sq * frames * frames


@dataclass
class DeviceProfile:
    """The measured cost model of one model on one device (see the module docstring).

    ``device`` says where it was measured, ``model`` summarises the model, ``measurements`` holds the grid and
    ``validation`` the accuracy on held-out batches. Lengths and masks may be tensors or numpy arrays.
    """

    fixed: PartFit
    layer: PartFit
    num_layers: int
    conv_kernel: list[int]
    conv_stride: list[int]
    sample_rate: int = 16_000
    device: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    measurements: list[dict[str, Any]] = field(default_factory=list)
    validation: dict[str, Any] = field(default_factory=dict)
    #: The file it was loaded from (:meth:`load`), named by its errors; not saved.
    path = None

    def frames(self, sample_lengths: Any) -> np.ndarray:
        """Frames per input, ``[batch]`` int64."""
        return conv_frames(sample_lengths, self.conv_kernel, self.conv_stride)

    def predict(self, sample_lengths: Any, keep_mask: Any) -> float:
        """Predicted seconds of one sparse forward: ``sample_lengths [batch]``, ``keep_mask [batch, layers]``
        0/1."""
        frames = self.frames(sample_lengths).astype(np.float64)
        keep = as_array(keep_mask) > 0.5
        if keep.shape != (frames.shape[0], self.num_layers):
            raise ValueError(
                f"keep_mask must be [batch, layers] = [{frames.shape[0]}, {self.num_layers}], got {list(keep.shape)}"
            )
        total = float(self.fixed.seconds(frames.shape[0], float(frames.max())))
        for rows in keep.T:
            if rows.any():
                total += float(self.layer.seconds(int(rows.sum()), float(frames[rows].max())))
        return total

    def layer_seconds(self, batch: int, frames: int) -> float:
        """Predicted seconds of one layer on ``batch`` inputs of ``frames`` frames."""
        return float(self.layer.seconds(batch, frames))

    def per_input(self, sample_lengths: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(fixed [batch], one layer [batch])`` float64 seconds attributed to each input.

        Each input pays the fixed part at the batch's longest length and a layer at its own length; overheads
        are shared equally. For one input this is exactly :meth:`predict`.
        """
        frames = self.frames(sample_lengths)
        batch = frames.shape[0]
        return self.fixed.per_input(np.full(batch, frames.max()), batch), self.layer.per_input(frames, batch)

    def check_model(self, facts: dict[str, Any]) -> None:
        """``ValueError`` (one line naming :attr:`path`) unless the profile is of a model with ``facts``
        (:func:`cost_facts`): every property both record must agree."""
        mine = {**cost_facts(self.model), **cost_facts(self)}  # the top-level fields are the ones used
        wrong = [f"{key} {mine[key]}, not {value}" for key, value in facts.items() if mine.get(key, value) != value]
        if wrong:
            name = "the device profile" if self.path is None else f"device profile {str(self.path)!r}"
            raise ValueError(f"{name} is of another model ({'; '.join(wrong)}): profile this model with {REMEDY}")

    def precision_warning(self, precision: str) -> str | None:
        """Why the times of this profile may not be those of a model running at ``precision`` (a Lightning
        name, :func:`~ldrop.budgets.profile.precision_name`), or ``None``; an older one that records only its
        weights' dtype is at that dtype's precision (:data:`DTYPE_PRECISIONS`); one that records neither (ONNX
        Runtime's) is not judged."""
        measured = self.device.get("precision") or DTYPE_PRECISIONS.get(str(self.device.get("dtype")))
        if measured is None or measured == precision:
            return None
        name = "the device profile" if self.path is None else f"device profile {str(self.path)!r}"
        how = PROFILE_PRECISION_OPTIONS.get(precision, "")
        return (f"{name} was measured at {measured} precision but the model runs at {precision}: its times are "
                f"another precision's (measure one with 'ldrop profile{how and ' ' + how}')")

    def machine_warning(self, here: dict[str, Any] | None = None, how: str = "") -> str | None:
        """Why the times of this profile may be another machine's: the hardware it records (the device's kind
        and name; the CPU where it names no device, as ONNX Runtime's) is not ``here``'s (fields of
        :func:`~ldrop.budgets.machine.machine_info`; ``None``: this CPU), or ``None``; a field either lacks (an
        older profile) is not compared. ``how``: the options of 'ldrop profile' that measure one here."""
        here = {"cpu": cpu_name()} if here is None else here
        keys = ("device", "device_name") if "device_name" in self.device and "device_name" in here else ("cpu",)
        keys = [k for k in keys if self.device.get(k) is not None and here.get(k) is not None]
        sides = [[" ".join(str(side[k]).split()) for k in keys] for side in (self.device, here)]
        if sides[0] == sides[1]:
            return None
        there, mine = (v[0] if len(set(v)) == 1 else f"{v[0]} ({', '.join(v[1:])})" for v in sides)
        name = "the device profile" if self.path is None else f"device profile {str(self.path)!r}"
        return (f"{name} was measured on {there}, this is {mine}: its timings may not hold; measure one here with "
                f"'ldrop profile{how and ' ' + how}'")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceProfile:
        """A profile from :meth:`to_dict`'s form, checked field by field (``ValueError`` saying what is
        wrong)."""
        problem = _profile_problem(data)
        if problem:
            raise ValueError(f"not an ldrop device profile: {problem}; write one with {REMEDY}")
        return cls(**{**data, **{part: PartFit(**{k: float(v) for k, v in data[part].items()}) for part in PARTS}})

    def save(self, path: str | os.PathLike) -> Path:
        """Write the profile as JSON (atomically)."""
        from ldrop._io import atomic_write_json

        atomic_write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> DeviceProfile:
        """Read a profile written by :meth:`save` or ``ldrop profile``.

        ``FileNotFoundError`` without a file; else a one-line ``ValueError`` naming ``path`` and what is
        wrong.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no device profile at {str(path)!r}; write one with {REMEDY}")
        try:
            profile = cls.from_dict(json.loads(path.read_bytes().decode("utf-8")))
            profile.path = str(path)
            return profile
        except UnicodeDecodeError:
            problem = f" is not a text file (not UTF-8); write one with {REMEDY}"
        except json.JSONDecodeError as error:
            problem = (f" is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}); write one with "
                       f"{REMEDY}")
        except ValueError as error:  # from_dict's own line
            problem = f": {error}"
        raise ValueError(f"device profile {str(path)!r}{problem}") from None


def _profile_problem(data: Any) -> str | None:
    """What keeps ``data`` (parsed JSON) from being a :class:`DeviceProfile`, or ``None`` if nothing does."""

    def count(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    if not isinstance(data, dict):
        return f"the JSON holds a {type(data).__name__}, not an object"
    fields = {f.name for f in dataclasses.fields(DeviceProfile)}
    required = {f.name for f in dataclasses.fields(DeviceProfile)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing, unknown = sorted(required - set(data)), sorted(set(data) - fields)
    if missing:
        return f"missing field(s) {missing}"
    if unknown:
        return f"unknown field(s) {unknown}"
    for part in PARTS:
        fit = data[part]
        names = [f.name for f in dataclasses.fields(PartFit)]
        if not isinstance(fit, dict) or set(fit) - set(names):
            return f"{part!r} must be an object with keys among {names}, got {fit!r}"
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                   for v in fit.values()):
            return f"{part!r} coefficients must be finite numbers >= 0, got {fit!r}"
    if not any(data["layer"].values()):
        return "the 'layer' coefficients are all 0: an encoder layer would cost no time, so every target would run every layer"
    if not count(data["num_layers"]):
        return f"'num_layers' must be an integer >= 1, got {data['num_layers']!r}"
    kernel, stride = data["conv_kernel"], data["conv_stride"]
    if not (isinstance(kernel, list) and isinstance(stride, list) and kernel and len(kernel) == len(stride)
            and all(count(v) for v in kernel + stride)):
        return f"'conv_kernel' and 'conv_stride' must be equally long lists of integers >= 1, got {kernel!r}, {stride!r}"
    if "sample_rate" in data and not count(data["sample_rate"]):
        return f"'sample_rate' must be an integer >= 1, got {data['sample_rate']!r}"
    for name in ("device", "model", "validation"):
        if name in data and not isinstance(data[name], dict):
            return f"{name!r} must be an object, got {type(data[name]).__name__}"
    if "measurements" in data and not isinstance(data["measurements"], list):
        return f"'measurements' must be a list, got {type(data['measurements']).__name__}"
    return None
