"""Count the calls that make the host wait for a CUDA device ("host syncs"), on any device, CPU included.

A value read on the host (``.item()``, ``bool(t)``, ``nonzero``, a bool-mask index, ...) or a blocking
host/device copy makes the host wait for everything queued; once per layer costs a gap per layer.
:class:`HostSyncCounter` records those calls so a CPU-only test can bound them, modelling where each tensor
*would* live on CUDA:

* host tensors: results of ``.cpu()``, ``.to("cpu")`` (a string device), factory calls without ``device``
  (``torch.as_tensor(t)`` and ``torch.tensor(t)`` stay where ``t`` is), and anything computed from host tensors
  only, each made while this counter runs;
* device tensors: everything else (inputs, parameters, ``device=x.device``, ``.to(x.device)``).

A sync is a value read of a device tensor, a host/device move without ``non_blocking=True``, a device op
taking a host tensor with elements, or a device factory call from Python data. It is a heuristic: check a CUDA
run with ``torch.cuda.set_sync_debug_mode("warn")``.
"""

from __future__ import annotations

import os
import traceback
import weakref
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

Tensor = torch.Tensor

#: Calls that read a tensor's value on the host.
_READS = {
    Tensor.item, Tensor.tolist, Tensor.__bool__, Tensor.__int__, Tensor.__float__, Tensor.__index__,
    Tensor.numpy, Tensor.__array__, Tensor.nonzero, torch.nonzero, Tensor.argwhere, torch.argwhere,
    Tensor.masked_select, torch.masked_select, Tensor.unique, torch.unique, Tensor.unique_consecutive,
    torch.unique_consecutive, torch.bincount, Tensor.bincount, Tensor.equal, torch.equal, torch.allclose,
    Tensor.allclose, torch.is_nonzero, Tensor.is_nonzero,
}
#: Calls whose output size depends on values unless told (``output_size``).
_SIZED_BY_VALUES = {torch.repeat_interleave, Tensor.repeat_interleave}
#: Moves between devices.
_MOVES = {Tensor.to, Tensor.cpu, Tensor.cuda, Tensor.copy_}
#: Factory functions: where their result lives depends on ``device``; ``torch.tensor``-like ones copy data.
_FACTORIES = {
    torch.arange, torch.zeros, torch.ones, torch.full, torch.empty, torch.rand, torch.randn, torch.randint,
    torch.randperm, torch.linspace, torch.logspace, torch.eye, torch.tensor, torch.as_tensor, torch.scalar_tensor,
}
_COPYING_FACTORIES = {torch.tensor, torch.as_tensor}
#: Methods that build a tensor on their object's device from Python data.
_COPYING_METHODS = {Tensor.new_tensor}
_INDEXING = {Tensor.__getitem__, Tensor.__setitem__}


@dataclass(frozen=True)
class HostSync:
    """One call that synchronises the host with the device: its kind, the call and where it was made."""

    kind: str  # "read", "move" or "implicit copy"
    call: str
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.kind} {self.call} at {self.file}:{self.line}"


def _device_is_host(device: Any) -> bool | None:
    """Whether a ``device`` argument names the host (``"cpu"`` as a string), a device, or nothing."""
    if device is None:
        return None
    if isinstance(device, str):
        return torch.device(device).type == "cpu"
    if isinstance(device, (torch.device, int)):
        return False  # a torch.device object (in practice x.device, the compute device) or a CUDA ordinal
    return None


def _to_target(args: tuple, kwargs: dict, is_host: Any) -> tuple[bool | None, bool]:
    """``Tensor.to(...)``: (whether the target is the host, or ``None`` without a device; non_blocking)."""
    non_blocking = bool(kwargs.get("non_blocking", False))
    if len(args) > 2 and isinstance(args[-1], bool):  # to(device, dtype, non_blocking)
        non_blocking = non_blocking or args[-1]
    if "device" in kwargs:
        return _device_is_host(kwargs["device"]), non_blocking
    for arg in args[1:]:
        if isinstance(arg, Tensor):
            return is_host(arg), non_blocking
        if isinstance(arg, (str, torch.device)):
            return _device_is_host(arg), non_blocking
    return None, non_blocking


def _call_name(func: Any) -> str:
    owner = getattr(func, "__objclass__", None) or getattr(func, "__self__", None)
    name = getattr(func, "__name__", repr(func))
    if isinstance(owner, type) and issubclass(owner, torch._C.TensorBase):
        return f"Tensor.{name}"
    return f"torch.{name}"


class HostSyncCounter(TorchFunctionMode):
    """Record the calls that would synchronise a CUDA device with the host (``events``, in call order)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[HostSync] = []
        self._here = os.path.dirname(torch.__file__), __file__
        self._host: dict[int, weakref.ref] = {}  # id -> the host tensors this counter made (no tag outlives it)

    @property
    def count(self) -> int:
        """Number of syncs recorded."""
        return len(self.events)

    def count_in(self, path_part: str) -> int:
        """Syncs made by code whose file path contains ``path_part`` (e.g. ``"ldrop/engine"``)."""
        return sum(path_part in event.file.replace(os.sep, "/") for event in self.events)

    def where(self) -> dict[str, int]:
        """``{"kind call at file:line": times}``, to say which lines sync."""
        return dict(Counter(str(event) for event in self.events))

    def _is_host(self, value: Any) -> bool:
        ref = self._host.get(id(value)) if isinstance(value, Tensor) else None
        return not isinstance(value, Tensor) or (ref is not None and ref() is value)

    def _tag(self, result: Any, host: bool) -> None:
        for leaf in tree_flatten(result)[0] if host else ():
            if isinstance(leaf, Tensor) and leaf.device.type == "cpu":
                try:
                    self._host[id(leaf)] = weakref.ref(leaf, lambda _, key=id(leaf): self._host.pop(key, None))
                except TypeError:  # some tensor kinds take no weak references
                    pass

    def _record(self, kind: str, func: Any) -> None:
        torch_dir, this_file = self._here
        for frame in reversed(traceback.extract_stack()[:-2]):
            if not frame.filename.startswith(torch_dir) and frame.filename != this_file:
                self.events.append(HostSync(kind, _call_name(func), _short_path(frame.filename), frame.lineno or 0))
                return
        self.events.append(HostSync(kind, _call_name(func), "?", 0))

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        tensors = [leaf for leaf in tree_flatten((args, kwargs))[0] if isinstance(leaf, Tensor)]
        host = bool(tensors) and all(self._is_host(t) for t in tensors)
        if func in _READS:  # (tagged below: nonzero & co. return a tensor where their input is)
            if not host:
                self._record("read", func)
        elif func in _MOVES:
            source_host, non_blocking = self._is_host(args[0]), bool(kwargs.get("non_blocking", False))
            if func in (Tensor.cpu, Tensor.cuda):
                target_host = func is Tensor.cpu  # (cpu() takes no non_blocking)
            elif func is Tensor.copy_:
                target_host, source_host = source_host, self._is_host(args[1])  # into args[0] from args[1]
                if len(args) > 2:
                    non_blocking = bool(args[2])
            else:
                target_host, non_blocking = _to_target(args, kwargs, self._is_host)
            if target_host is None:
                target_host = source_host
            # A non-blocking copy to the host still needs a sync before its values may be read.
            if target_host != source_host and (target_host or not non_blocking):
                self._record("move", func)
            result = func(*args, **kwargs)
            if result is args[0] and target_host != source_host:
                # A same-device move returns its input; the copy it models is another tensor.
                result = result.view_as(result)
            self._tag(result, target_host)
            return result
        elif func in _FACTORIES:  # no device: the host, or where the tensor copied is
            source = host or not (func in _COPYING_FACTORIES and isinstance(args[0] if args else None, Tensor))
            target = _device_is_host(kwargs.get("device"))
            if func in _COPYING_FACTORIES and target is not None and target != source:
                self._record("move", func)
            host = source if target is None else target
        elif not host:
            if func in _COPYING_METHODS and len(args) > 1 and not isinstance(args[1], Tensor):
                self._record("move", func)
            elif any(self._is_host(t) and t.dim() > 0 and t.numel() > 0 for t in tensors):
                self._record("implicit copy", func)
            elif func in _INDEXING and _bool_index(args):
                self._record("read", func)
            elif func in _SIZED_BY_VALUES and kwargs.get("output_size") is None:
                self._record("read", func)
        result = func(*args, **kwargs)
        if host and any(result is t and not self._is_host(t) for t in tensors):
            result = result.view_as(result)  # as_tensor(x, device="cpu") returns x: the host copy is another tensor
        self._tag(result, host)
        return result


def _short_path(filename: str) -> str:
    """``transformers/masking_utils.py`` rather than the whole site-packages path; ``ldrop/...`` likewise."""
    path = filename.replace(os.sep, "/")
    for anchor in ("/site-packages/", "/dist-packages/"):
        if anchor in path:
            return path.split(anchor, 1)[1]
    if _PACKAGE_ROOT and path.startswith(_PACKAGE_ROOT + "/"):
        return path[len(_PACKAGE_ROOT) + 1:]
    return path


#: The folder holding the ``ldrop`` package (a source checkout's root).
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).replace(os.sep, "/")


def _bool_index(args: tuple) -> bool:
    """Whether ``tensor[index]`` (or ``tensor[index] = value``) indexes with a bool mask (a ``nonzero``)."""
    index = args[1] if len(args) > 1 else None
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(part, Tensor) and part.dtype in (torch.bool, torch.uint8) for part in parts)
