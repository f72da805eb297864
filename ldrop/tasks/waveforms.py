"""Waveforms as a task takes them: ``([batch, samples], lengths [batch])`` tensors from one clip, a padded batch
(tensor or array), a list of clips or audio file paths, with the checks of :mod:`ldrop._waveforms`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ldrop._waveforms import as_batch as numpy_batch
from ldrop._waveforms import check_float_audio, check_lengths, check_not_channels


def as_batch(waveforms: Tensor | Sequence[Any] | Any, lengths: Tensor | Sequence[int] | None = None,
             sample_rate: int = 16_000) -> tuple[Tensor, Tensor]:
    """``([batch, samples], lengths [batch])`` from one utterance ``[samples]``, a padded batch (a tensor stays
    on its device, in its dtype), or an array, a list of 1-D clips or audio file paths (at ``sample_rate``)."""
    if not isinstance(waveforms, Tensor):
        waves, lengths = numpy_batch(waveforms, lengths, sample_rate)
        return torch.from_numpy(waves), torch.from_numpy(lengths)
    check_float_audio(waveforms.dtype)
    if waveforms.dim() == 1:
        waveforms = waveforms[None]
    if waveforms.dim() != 2:
        raise ValueError(f"waveforms must be [samples] or [batch, samples], got shape {tuple(waveforms.shape)}")
    if lengths is None:
        check_not_channels(tuple(waveforms.shape))
        lengths = torch.full((waveforms.shape[0],), waveforms.shape[1], dtype=torch.long, device=waveforms.device)
    lengths = torch.as_tensor(lengths).to(torch.long).reshape(-1)
    check_lengths(lengths, *waveforms.shape)
    finite = torch.isfinite(waveforms).all(dim=1)
    if not bool(finite.all()):  # a host sync (as the lengths check): a NaN input would give a confident wrong answer
        raise ValueError(f"waveforms {(~finite).nonzero().flatten().tolist()} hold NaN or inf samples")
    return waveforms, lengths


def model_batch(model: torch.nn.Module, waveforms: Any, lengths: Any = None,
                sample_rate: int = 16_000) -> tuple[Tensor, Tensor]:
    """:func:`as_batch` on ``model``'s device, the waveforms in its parameters' dtype (``model.bfloat16()`` leaves
    a LightningModule's ``dtype`` as it was)."""
    waveforms, lengths = as_batch(waveforms, lengths, sample_rate)
    param = next(model.parameters())
    return waveforms.to(param.device, param.dtype), lengths.to(param.device)

