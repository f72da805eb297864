"""Waveforms as a task takes them: ``([batch, samples], lengths [batch])`` tensors from one clip, a padded batch
(tensor or array) or a list of clips, with the checks of :mod:`ldrop._waveforms`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ldrop._waveforms import check_clip, check_float_audio, check_lengths, check_not_channels, list_of_clips


def as_batch(waveforms: Tensor | Sequence[Any], lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``([batch, samples], lengths [batch])`` from one utterance ``[samples]``, a padded batch (tensor or
    array) or a list of 1-D clips."""
    clips = None if isinstance(waveforms, Tensor) else list_of_clips(waveforms, lengths)
    if clips is None and not isinstance(waveforms, Tensor):  # an array: a batch or one clip, not a list
        check_float_audio(np.asarray(waveforms).dtype)
        waveforms = torch.from_numpy(np.ascontiguousarray(waveforms, dtype=np.float32))
    if clips is None:
        check_float_audio(waveforms.dtype)
        if waveforms.dim() == 1:
            waveforms = waveforms[None]
        if waveforms.dim() != 2:
            raise ValueError(f"waveforms must be [samples] or [batch, samples], got {tuple(waveforms.shape)}")
        if lengths is None:
            check_not_channels(tuple(waveforms.shape))
            lengths = torch.full((waveforms.shape[0],), waveforms.shape[1], dtype=torch.long)
        lengths = torch.as_tensor(lengths).to(torch.long).reshape(-1)
        check_lengths(lengths, *waveforms.shape)
    else:
        clips = [torch.as_tensor(w, device="cpu") for w in clips]
        for index, clip in enumerate(clips):
            check_float_audio(clip.dtype)
            check_clip(index, tuple(clip.shape))
        clips = [clip.to(torch.float32).flatten() for clip in clips]
        if not clips:
            raise ValueError("no waveforms given")
        waveforms = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True)
        lengths = torch.tensor([len(c) for c in clips], dtype=torch.long)
    finite = torch.isfinite(waveforms).all(dim=1)
    if not bool(finite.all()):  # a host sync (as the lengths check): a NaN input would give a confident wrong answer
        raise ValueError(f"waveforms {(~finite).nonzero().flatten().tolist()} hold NaN or inf samples")
    return waveforms, lengths
