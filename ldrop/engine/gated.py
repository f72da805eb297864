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

Layers that every sample runs whatever the budget (a selector reading the output of the first ``j`` layers)
run once with :func:`run_prefix_layers`; :func:`run_gated_layers` then continues from layer ``j``
(``start_layer``) with the same :class:`~ldrop.backbones.adapter.LayerContext`.
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
    start_layer: int = 0,
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
    for index in range(start_layer, backbone.num_layers):
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
    start_layer: int = 0,
) -> Tensor:
    for index in range(start_layer, backbone.num_layers):
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
    start_layer: int = 0,
    context: LayerContext | None = None,
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
            early-exit heads (only with ``start_layer=0``).
        start_layer: continue from this layer: ``hidden`` is then the output of layers ``0..start_layer-1``
            (from :func:`run_prefix_layers`), which every sample must keep in ``keep_mask``.
        context: the layer context of this batch when already prepared (with the prefix); ``None``: prepared
            here with ``backbone.prepare_layers``.

    Returns:
        ``[batch, frames, hidden]``, or that and the list of ``num_layers`` per-layer states.

    Raises:
        ValueError: a mask of the wrong shape, a ``start_layer`` out of range or not kept by every sample.
    """
    batch = hidden.shape[0]
    check_keep_mask(keep_mask, batch, backbone.num_layers)
    if not 0 <= start_layer <= backbone.num_layers:
        raise ValueError(f"start_layer must be in 0..{backbone.num_layers}, got {start_layer}")
    if start_layer and return_all:
        raise ValueError("return_all needs every layer's state: run from start_layer=0")
    if start_layer and not bool((keep_mask[:, :start_layer] > 0.5).all()):
        raise ValueError(f"start_layer={start_layer}: every sample must keep layers 0..{start_layer - 1}")
    if mode == "auto":
        mode = "dense" if torch.is_grad_enabled() else "sparse"
    if context is None:
        context = backbone.prepare_layers(frame_mask)
    collect: list[Tensor] | None = [] if return_all else None
    if mode == "sparse":
        hidden = _sparse_layers(backbone, hidden, frame_mask, keep_mask > 0.5, context, collect, start_layer)
    elif mode == "dense":
        hidden = _dense_layers(backbone, hidden, frame_mask, keep_mask, context, collect, start_layer)
    else:
        raise ValueError(f"mode must be 'auto', 'dense' or 'sparse', got {mode!r}")
    hidden = backbone.finalize(hidden).masked_fill(~frame_mask[..., None], 0.0)
    if return_all:
        return hidden, collect
    return hidden


def run_prefix_layers(
    backbone: SpeechBackbone, hidden: Tensor, frame_mask: Tensor, num_layers: int, context: LayerContext
) -> Tensor:
    """Run encoder layers ``0..num_layers-1`` on the whole batch (layers every sample runs).

    The result continues in :func:`run_gated_layers` with ``start_layer=num_layers`` and the same
    ``context``: together they equal one :func:`run_gated_layers` from layer 0 under a mask that keeps the
    prefix for every sample.

    Args:
        backbone: the adapter whose layers run.
        hidden: ``[batch, frames, hidden]``, the output of ``backbone.frontend``.
        frame_mask: ``[batch, frames]`` bool, True on real frames.
        num_layers: ``j``, the prefix length, in ``0..backbone.num_layers``.
        context: from ``backbone.prepare_layers(frame_mask)`` (WavLM's position bias).

    Returns:
        ``[batch, frames, hidden]``, the output of layer ``j - 1`` before the final norm (``hidden`` if ``j = 0``).
    """
    if not 0 <= num_layers <= backbone.num_layers:
        raise ValueError(f"num_layers must be in 0..{backbone.num_layers}, got {num_layers}")
    for index in range(num_layers):
        hidden = backbone.run_layer(index, hidden, frame_mask, context)
    return hidden
