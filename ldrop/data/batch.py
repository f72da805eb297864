"""The example and batch types every ldrop DataModule produces, and the collate function between them."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

__all__ = ["AudioBatch", "AudioExample", "SkippedExample", "collate_audio", "collate_targets"]


@dataclass
class AudioExample:
    """One item of a dataset, before batching.

    Attributes:
        waveform: ``[samples]`` float32 mono waveform at the DataModule's sample rate.
        target: a class id (classification), a transcript (CTC), or a value or tensor (regression,
            multi-label; see :func:`collate_audio`).
        id: a string that traces the item back to its source (utterance id, file path, ...).
    """

    waveform: Tensor
    target: int | float | str | Tensor | np.ndarray
    id: str


@dataclass
class SkippedExample:
    """An example whose audio failed to load, returned instead of it when the DataModule skips bad files.

    The DataModule's loader leaves it out of the batch, and logs and counts it (``num_bad_files``).

    Attributes:
        id: the example's id.
        reason: the error, naming the file.
    """

    id: str
    reason: str


@dataclass
class AudioBatch:
    """A padded batch of waveforms with their lengths, targets and ids.

    Attributes:
        waveforms: ``[batch, samples]`` float32, zero-padded on the right to the longest item.
        lengths: ``[batch]`` long, number of valid samples of each row.
        targets: ``[batch]`` long class ids (classification), the ``batch`` transcripts (CTC), a ``[batch]``
            float32 tensor of values or a ``[batch, ...]`` tensor of stacked target tensors (regression,
            multi-label); see :func:`collate_audio`.
        ids: the ``batch`` item ids, in row order.
    """

    waveforms: Tensor
    lengths: Tensor
    targets: Tensor | list[str]
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> AudioBatch:
        """Return a copy whose tensors live on ``device`` (strings and ids are shared)."""
        targets = self.targets
        if isinstance(targets, Tensor):
            targets = targets.to(device, non_blocking=non_blocking)
        return AudioBatch(
            waveforms=self.waveforms.to(device, non_blocking=non_blocking),
            lengths=self.lengths.to(device, non_blocking=non_blocking), targets=targets, ids=self.ids,
        )

    def pin_memory(self) -> AudioBatch:
        """Return a copy in pinned memory (called by ``DataLoader(pin_memory=True)``)."""
        targets = self.targets.pin_memory() if isinstance(self.targets, Tensor) else self.targets
        return AudioBatch(self.waveforms.pin_memory(), self.lengths.pin_memory(), targets, self.ids)

    @property
    def padding_mask(self) -> Tensor:
        """``[batch, samples]`` bool, True on valid samples and False on padding."""
        positions = torch.arange(self.waveforms.shape[1], device=self.lengths.device)
        return positions[None, :] < self.lengths[:, None]


def collate_audio(examples: Sequence[AudioExample]) -> AudioBatch:
    """Pad a list of examples into an :class:`AudioBatch`.

    The targets of a batch are all of one kind, and are batched by kind:

    * class ids (``int``): a ``[batch]`` long tensor;
    * values (``float``, or ints mixed with floats): a ``[batch]`` float32 tensor;
    * tensors or NumPy arrays of one shape ``S``: stacked into a ``[batch, *S]`` tensor (their dtype kept);
    * transcripts (``str``): a list of ``batch`` strings.

    Args:
        examples: the examples of one batch; none when all of them failed to load (``skip_bad_files``).

    Returns:
        The batch, rows in the order of ``examples``; an empty batch (``len 0``, ``waveforms [0, 0]``) for no
        examples, which the task's training step skips.

    Raises:
        ValueError: if ``examples`` mixes kinds of targets or holds tensors of different shapes.
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
    """The targets of one batch, batched by their kind (see :func:`collate_audio`).

    Args:
        targets: one target per example.
        ids: the examples' ids, named in errors.

    Raises:
        ValueError: mixed kinds, tensors of different shapes, or a target of no known kind.
    """
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
