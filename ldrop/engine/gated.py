"""Gated execution of a backbone's encoder layers under a per-sample keep mask.

Two paths give the same result for a hard (0/1) mask:

* ``dense`` (differentiable): every layer runs on the whole batch and its output is blended,
  ``h = h + g * (layer(h) - h)``, so soft or straight-through keep values pass gradients to a selector.
* ``sparse`` (real savings): each layer runs only on the samples that keep it, gathered into a sub-batch
  whose padding is trimmed to its longest sample, and the result is scattered back. A layer that no sample
  keeps costs nothing, and there is no Python loop over samples. With autograd on, the scatter is
  out-of-place so gradients still reach the layers that ran (used for non-differentiable selectors).

``mode="auto"`` picks ``sparse`` whenever autograd is off (``torch.no_grad`` / ``torch.inference_mode``)
and ``dense`` otherwise.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ldrop.backbones.adapter import LayerContext, SpeechBackbone

ExecutionMode = Literal["auto", "dense", "sparse"]


def check_keep_mask(keep_mask: Tensor, batch: int, num_layers: int) -> None:
    """Raise a ``ValueError`` naming the problem if ``keep_mask`` is not ``[batch, num_layers]``."""
    if keep_mask.dim() != 2 or tuple(keep_mask.shape) != (batch, num_layers):
        raise ValueError(
            f"keep_mask must be [batch, layers] = [{batch}, {num_layers}], got {tuple(keep_mask.shape)}"
        )


def _sparse_layers(
    backbone: SpeechBackbone,
    hidden: Tensor,
    frame_mask: Tensor,
    keep: Tensor,
    context: LayerContext,
    collect: list[Tensor] | None,
) -> Tensor:
    frame_lengths = frame_mask.sum(dim=1)
    batch, frames, _ = hidden.shape
    in_place = not torch.is_grad_enabled()
    if in_place:
        hidden = hidden.clone()
    # One host sync for the whole stack instead of one per layer.
    keep_cpu = keep.detach().to("cpu", torch.bool)
    lengths_cpu = frame_lengths.detach().to("cpu")
    all_rows = torch.arange(batch)
    for index in range(backbone.num_layers):
        rows_cpu = all_rows[keep_cpu[:, index]]
        if rows_cpu.numel() == 0:
            if collect is not None:
                collect.append(hidden)
            continue
        sub_frames = int(lengths_cpu[rows_cpu].max())
        if rows_cpu.numel() == batch and sub_frames == frames:
            out = backbone.run_layer(index, hidden, frame_mask, context)
            hidden = out
        else:
            rows = rows_cpu.to(hidden.device)
            sub_hidden = hidden.index_select(0, rows)[:, :sub_frames]
            sub_mask = frame_mask.index_select(0, rows)[:, :sub_frames]
            out = backbone.run_layer(index, sub_hidden, sub_mask, context)
            if in_place:
                hidden[rows, :sub_frames] = out.to(hidden.dtype)
            else:
                rest = hidden.index_select(0, rows)[:, sub_frames:]
                hidden = hidden.index_copy(0, rows, torch.cat([out.to(hidden.dtype), rest], dim=1))
        if collect is not None:
            collect.append(hidden)
    return hidden


def _dense_layers(
    backbone: SpeechBackbone,
    hidden: Tensor,
    frame_mask: Tensor,
    keep: Tensor,
    context: LayerContext,
    collect: list[Tensor] | None,
) -> Tensor:
    for index in range(backbone.num_layers):
        gate = keep[:, index].to(hidden.dtype)[:, None, None]
        out = backbone.run_layer(index, hidden, frame_mask, context)
        hidden = hidden + gate * (out.to(hidden.dtype) - hidden)
        if collect is not None:
            collect.append(hidden)
    return hidden


def run_gated_layers(
    backbone: SpeechBackbone,
    hidden: Tensor,
    frame_mask: Tensor,
    keep_mask: Tensor,
    mode: ExecutionMode = "auto",
    return_all: bool = False,
) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Run the backbone's encoder layers, each sample only through the layers it keeps.

    A skipped layer is the identity for that sample. Padding frames of the output are zero, and the
    post-stack norm (pre-norm backbones) is applied.

    Args:
        backbone: the adapter whose layers run.
        hidden: ``[batch, frames, hidden]``, the output of ``backbone.frontend``.
        frame_mask: ``[batch, frames]`` bool, True on real frames.
        keep_mask: ``[batch, layers]``; 0/1 for ``sparse``, soft or straight-through values for ``dense``.
        mode: ``"auto"`` (sparse without autograd, dense with it), ``"dense"`` or ``"sparse"``.
        return_all: also return the hidden states after every layer (before the final norm), e.g. for
            early-exit heads.

    Returns:
        ``[batch, frames, hidden]``, or that and the list of ``num_layers`` per-layer states.
    """
    batch = hidden.shape[0]
    check_keep_mask(keep_mask, batch, backbone.num_layers)
    if mode == "auto":
        mode = "dense" if torch.is_grad_enabled() else "sparse"
    context = backbone.prepare_layers(frame_mask)
    collect: list[Tensor] | None = [] if return_all else None
    if mode == "sparse":
        hidden = _sparse_layers(backbone, hidden, frame_mask, keep_mask > 0.5, context, collect)
    elif mode == "dense":
        hidden = _dense_layers(backbone, hidden, frame_mask, keep_mask, context, collect)
    else:
        raise ValueError(f"mode must be 'auto', 'dense' or 'sparse', got {mode!r}")
    hidden = backbone.finalize(hidden).masked_fill(~frame_mask[..., None], 0.0)
    if return_all:
        return hidden, collect
    return hidden
