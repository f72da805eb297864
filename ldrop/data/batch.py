"""The example and batch types every ldrop DataModule produces, and the collate function between them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

__all__ = ["AudioBatch", "AudioExample", "collate_audio"]


@dataclass
class AudioExample:
    """One item of a dataset, before batching.

    Attributes:
        waveform: ``[samples]`` float32 mono waveform at the DataModule's sample rate.
        target: class id (classification) or transcript (CTC).
        id: a string that traces the item back to its source (utterance id, file path, ...).
    """

    waveform: Tensor
    target: int | str
    id: str


@dataclass
class AudioBatch:
    """A padded batch of waveforms with their lengths, targets and ids.

    Attributes:
        waveforms: ``[batch, samples]`` float32, zero-padded on the right to the longest item.
        lengths: ``[batch]`` long, number of valid samples of each row.
        targets: ``[batch]`` long class ids for classification, or the ``batch`` transcripts for CTC.
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
            lengths=self.lengths.to(device, non_blocking=non_blocking),
            targets=targets,
            ids=self.ids,
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

    Args:
        examples: examples whose targets are all class ids or all transcripts.

    Returns:
        The batch, rows in the order of ``examples``.

    Raises:
        ValueError: if ``examples`` is empty or mixes class ids and transcripts.
    """
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    lengths = torch.tensor([ex.waveform.shape[-1] for ex in examples], dtype=torch.long)
    # Datasets already zero-pad clips to their ``min_samples``; here rows are padded to the longest only.
    waveforms = pad_sequence([ex.waveform for ex in examples], batch_first=True).to(torch.float32)
    raw_targets = [ex.target for ex in examples]
    if all(isinstance(t, str) for t in raw_targets):
        targets: Tensor | list[str] = list(raw_targets)  # type: ignore[arg-type]
    elif all(isinstance(t, int) and not isinstance(t, bool) for t in raw_targets):
        targets = torch.tensor(raw_targets, dtype=torch.long)
    else:
        raise ValueError("a batch must hold only class ids or only transcripts")
    return AudioBatch(waveforms=waveforms, lengths=lengths, targets=targets, ids=[ex.id for ex in examples])
