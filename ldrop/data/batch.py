"""The example and batch types every ldrop DataModule produces, and the collate function between them."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

__all__ = ["AudioBatch", "AudioExample", "BatchTypeError", "SeededIndex", "SkippedExample", "batch_type_problem",
           "checked_collate", "collate_audio", "collate_targets"]


@dataclass
class AudioExample:
    """One item of a dataset before batching: a ``[samples]`` float32 mono waveform, its target and its id."""

    waveform: Tensor
    target: int | float | str | Tensor | np.ndarray
    id: str


@dataclass
class SkippedExample:
    """An example whose audio failed to load, returned in its place when the DataModule skips bad files."""

    id: str
    reason: str


class SeededIndex(int):
    """An example's index that carries the seed of its random draws (the random crop of a long training clip),
    so that they depend on the epoch and the example only: not on the worker process that loads it, nor on
    where a resumed epoch starts. ldrop's batch samplers yield them; an :class:`~ldrop.data.AudioDataset`
    seeds from them."""

    seed: int

    def __new__(cls, index: int, seed: int) -> SeededIndex:
        self = super().__new__(cls, index)
        self.seed = int(seed)
        return self

    def __reduce__(self) -> tuple[type, tuple[int, int]]:  # to worker processes, seed included
        return SeededIndex, (int(self), self.seed)


@dataclass
class AudioBatch:
    """A batch of zero-padded ``waveforms [batch, samples]`` with ``lengths [batch]``, targets (see
    :func:`collate_audio`) and ids."""

    waveforms: Tensor
    lengths: Tensor
    targets: Tensor | list[str]
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> AudioBatch:
        """Return a copy whose tensors live on ``device`` (strings and ids are shared)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> AudioBatch:
        """Return a copy in pinned memory (called by ``DataLoader(pin_memory=True)``)."""
        return self._map(Tensor.pin_memory)

    def _map(self, fn: Callable[[Tensor], Tensor]) -> AudioBatch:
        """A copy of the same class, ``fn`` applied to every tensor field (a subclass's own included)."""
        return replace(self, **{f.name: fn(value) for f in fields(self) if f.init
                                and isinstance(value := getattr(self, f.name), Tensor)})

    @property
    def padding_mask(self) -> Tensor:
        """``[batch, samples]`` bool, True on valid samples and False on padding."""
        positions = torch.arange(self.waveforms.shape[1], device=self.lengths.device)
        return positions[None, :] < self.lengths[:, None]


class BatchTypeError(TypeError):
    """A collate function (or a DataLoader) made a batch that is not an :class:`AudioBatch`, which every task step
    reads (``batch.waveforms``, ``batch.lengths``); the message says what made it, what it is and what to return."""


def batch_type_problem(batch: Any, source: str, split: str | None = None) -> str | None:
    """Why ``batch`` is no :class:`AudioBatch` (nor has its ``waveforms`` and ``lengths``), naming ``source`` (what
    made it: ``"MyData.collate returned"``) and what it is; ``None`` if it is one."""
    if isinstance(batch, AudioBatch) or hasattr(batch, "waveforms") and hasattr(batch, "lengths"):
        return None
    if isinstance(batch, dict):
        what = f"a dict with keys {list(batch)[:8]}"
    elif isinstance(batch, list | tuple):
        what = f"a {type(batch).__name__} of {len(batch)} ({', '.join(type(b).__name__ for b in batch[:6])})"
    else:
        what = f"a {type(batch).__module__}.{type(batch).__qualname__}"
    return (f"{f'the {split} batch' if split else 'a batch'} must be an ldrop AudioBatch (ldrop.data.AudioBatch, "
            f"defined in {AudioBatch.__module__.replace('.', '/')}.py; or a subclass): {source} {what}; return "
            "AudioBatch(waveforms=..., lengths=..., targets=..., ids=...) (ldrop.data.collate_audio builds one from "
            "AudioExamples)")


def checked_collate(collate: Callable[[list[AudioExample]], Any], source: str, split: str,
                    examples: list[AudioExample]) -> Any:
    """``collate(examples)`` (a DataModule's own ``collate``), or :class:`BatchTypeError` for a batch that is no
    :class:`AudioBatch` (:func:`batch_type_problem`): an ``isinstance`` per batch."""
    batch = collate(examples)
    if (problem := batch_type_problem(batch, source, split)) is not None:
        raise BatchTypeError(problem)
    return batch


def collate_audio(examples: Sequence[AudioExample]) -> AudioBatch:
    """Pad a list of examples into an :class:`AudioBatch` (an empty one for no examples, which training
    skips).

    Targets are batched by kind: class ids as a ``[batch]`` long tensor, values as ``[batch]`` float32,
    tensors or arrays of one shape ``S`` stacked into ``[batch, *S]`` (dtype kept), transcripts as a list.
    ``ValueError`` for mixed kinds or shapes.
    """
    if not examples:
        return AudioBatch(waveforms=torch.zeros(0, 0), lengths=torch.zeros(0, dtype=torch.long), targets=[], ids=[])
    lengths = torch.tensor([ex.waveform.shape[-1] for ex in examples], dtype=torch.long)
    # Datasets already zero-pad clips to their ``min_samples``; here rows are padded to the longest only.
    waveforms = pad_sequence([ex.waveform for ex in examples], batch_first=True).to(torch.float32)
    ids = [ex.id for ex in examples]
    return AudioBatch(waveforms=waveforms, lengths=lengths, targets=collate_targets([ex.target for ex in examples], ids),
                      ids=ids)


def collate_targets(targets: Sequence[Any], ids: Sequence[str] | None = None) -> Tensor | list[str]:
    """The targets of one batch, batched by their kind (see :func:`collate_audio`); ``ids`` are named in
    errors."""
    kinds = [_target_kind(t) for t in targets]
    if len(set(kinds)) > 1 and set(kinds) != {"class id", "value"}:
        shown = ", ".join(f"{ids[i] if ids else i}: {kinds[i]}" for i in range(min(len(kinds), 6)))
        raise ValueError(
            "a batch's targets must all be class ids (int), all values (float), all tensors of one shape or all "
            f"transcripts (str); this one mixes {' and '.join(sorted(set(kinds)))} ({shown})"
        )
    kind = "value" if "value" in kinds else kinds[0]
    if kind == "transcript":
        return list(targets)
    if kind == "class id":
        return torch.tensor([int(t) for t in targets], dtype=torch.long)
    if kind == "value":
        return torch.tensor([float(t) for t in targets], dtype=torch.float32)
    tensors = [torch.as_tensor(t) for t in targets]
    shapes = sorted({tuple(t.shape) for t in tensors})
    if len(shapes) > 1:
        raise ValueError(f"a batch's tensor targets must all have one shape, got shapes {shapes}")
    return torch.stack(tensors)


def _target_kind(target: Any) -> str:
    # bool is an int to Python, but neither a class id nor a value here: say so rather than guess.
    if isinstance(target, str):
        return "transcript"
    if isinstance(target, Tensor | np.ndarray):
        return "tensor"
    if isinstance(target, numbers.Integral) and not isinstance(target, bool | np.bool_):
        return "class id"
    if isinstance(target, numbers.Real) and not isinstance(target, bool | np.bool_):
        return "value"
    raise ValueError(
        f"a target must be a class id (int), a value (float), a tensor or array, or a transcript (str); got "
        f"{type(target).__name__} {target!r}"
    )
