"""Gated execution of a backbone's encoder layers under a per-sample keep mask.

``dense`` (differentiable) runs every layer on the whole batch and blends, ``h = h + g * (layer(h) - h)``;
``sparse`` runs each layer only on the samples that keep it, gathered and trimmed to their longest, and
scatters back (out of place under autograd). Both agree for a 0/1 mask; ``mode="auto"`` picks ``sparse``
without autograd. Layers every sample runs (a selector's prefix) run once with :func:`run_prefix_layers`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Literal

import torch
from torch import Tensor

from ldrop.backbones.adapter import LayerContext, SpeechBackbone

ExecutionMode = Literal["auto", "dense", "sparse"]
#: ``guard(layer index, inputs keeping it, their longest frames) -> bool``: may this layer start now?
LayerGuard = Callable[[int, int, int], bool]
_GUARD: contextvars.ContextVar[LayerGuard | None] = contextvars.ContextVar("ldrop_layer_guard", default=None)


@contextlib.contextmanager
def layer_guard(guard: LayerGuard | None) -> Iterator[None]:
    """Within the block, the sparse path asks ``guard`` before each layer it would run; a layer it refuses is
    skipped by every input (a deadline that the next layer would overrun, see
    :class:`~ldrop.budgets.DeadlineGuard`)."""
    token = _GUARD.set(guard)
    try:
        yield
    finally:
        _GUARD.reset(token)


def check_keep_mask(keep_mask: Tensor, batch: int, num_layers: int) -> None:
    """Raise a ``ValueError`` naming the problem if ``keep_mask`` is not ``[batch, num_layers]``."""
    if keep_mask.dim() != 2 or tuple(keep_mask.shape) != (batch, num_layers):
        raise ValueError(
            f"keep_mask must be [batch, layers] = [{batch}, {num_layers}], got {tuple(keep_mask.shape)}"
        )


def _sparse_plan(keep: Tensor, frame_lengths: Tensor) -> tuple[list[int], list[int], list[int], Tensor]:
    """What the sparse path needs on the host, in one device-to-host copy: ``counts``, ``longest`` and
    ``shortest`` kept lengths per layer (lists), and ``rows [layers, batch]`` on the device, each starting with
    the ascending indices of the samples that keep that layer."""
    lengths = frame_lengths[:, None].expand_as(keep)
    longest = torch.where(keep, lengths, 0).amax(dim=0)
    shortest = torch.where(keep, lengths, torch.iinfo(lengths.dtype).max).amin(dim=0)
    counts, longest, shortest = torch.stack([keep.sum(dim=0), longest, shortest]).tolist()
    rows = torch.argsort((~keep).to(torch.uint8), dim=0, stable=True).t().contiguous()
    return counts, longest, shortest, rows


def _sparse_layers(
    backbone: SpeechBackbone, hidden: Tensor, frame_mask: Tensor, keep: Tensor, context: LayerContext,
    collect: list[Tensor] | None, start_layer: int = 0,
) -> Tensor:
    batch, frames, _ = hidden.shape
    if batch == 0:
        if collect is not None:
            collect.extend(hidden for _ in range(start_layer, backbone.num_layers))
        return hidden
    # One host sync for the whole stack (sub-batch sizes and lengths); the row indices stay on the device,
    # so no layer waits for the host (a host-built index would be one blocking copy per layer on CUDA), and
    # a sub-batch without padding runs without a mask.
    counts, longest, shortest, rows_by_layer = _sparse_plan(keep, frame_mask.sum(dim=1))
    if start_layer and min(counts[:start_layer]) < batch:
        raise ValueError(f"start_layer={start_layer}: every sample must keep layers 0..{start_layer - 1}")
    # In place only when nothing keeps a reference to an earlier state (return_all collects them).
    in_place = collect is None and not torch.is_grad_enabled()
    if in_place:
        hidden = hidden.clone()
    guard = _GUARD.get()
    for index in range(start_layer, backbone.num_layers):
        kept, sub_frames = counts[index], longest[index]
        if kept == 0 or (guard is not None and not guard(index, kept, sub_frames)):
            pass  # every input skips the layer
        elif kept == batch and sub_frames == frames:
            hidden = backbone.run_layer(index, hidden, frame_mask if shortest[index] < frames else None, context)
        else:
            rows = rows_by_layer[index, :kept]
            sub_hidden = hidden.index_select(0, rows)[:, :sub_frames]
            sub_mask = frame_mask.index_select(0, rows)[:, :sub_frames] if shortest[index] < sub_frames else None
            out = backbone.run_layer(index, sub_hidden, sub_mask, context).to(hidden.dtype)
            if in_place:
                hidden[:, :sub_frames].index_copy_(0, rows, out)
            else:
                rest = hidden.index_select(0, rows)[:, sub_frames:]
                hidden = hidden.index_copy(0, rows, torch.cat([out, rest], dim=1))
        if collect is not None:
            collect.append(hidden)
    return hidden


def run_gated_layers(
    backbone: SpeechBackbone, hidden: Tensor, frame_mask: Tensor, keep_mask: Tensor,
    mode: ExecutionMode = "auto", return_all: bool = False, start_layer: int = 0,
    context: LayerContext | None = None,
) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Run the backbone's encoder layers, each sample only through the layers it keeps (a skipped layer is the
    identity).

    Padding frames of the output are zero and the post-stack norm is applied. Returns ``[batch, frames,
    hidden]``, and with ``return_all`` the list of per-layer states too.

    Args:
        keep_mask: ``[batch, layers]``; 0/1 for ``sparse``, soft or straight-through values for ``dense``.
        mode: ``"auto"`` (sparse without autograd, dense with it), ``"dense"`` or ``"sparse"``.
        start_layer: continue from the output of :func:`run_prefix_layers` (every sample must keep those
            layers).
        context: the batch's layer context when already prepared; ``None``: ``backbone.prepare_layers``.
    """
    batch = hidden.shape[0]
    check_keep_mask(keep_mask, batch, backbone.num_layers)
    if not 0 <= start_layer <= backbone.num_layers:
        raise ValueError(f"start_layer must be in 0..{backbone.num_layers}, got {start_layer}")
    if start_layer and return_all:
        raise ValueError("return_all needs every layer's state: run from start_layer=0")
    if mode == "auto":
        mode = "dense" if torch.is_grad_enabled() else "sparse"
    # The sparse path checks the prefix within its one host sync; the dense path has no other.
    if start_layer and mode != "sparse" and not bool((keep_mask[:, :start_layer] > 0.5).all()):
        raise ValueError(f"start_layer={start_layer}: every sample must keep layers 0..{start_layer - 1}")
    if context is None:
        context = backbone.prepare_layers(frame_mask)
    collect: list[Tensor] | None = [] if return_all else None
    if mode == "sparse":
        hidden = _sparse_layers(backbone, hidden, frame_mask, keep_mask > 0.5, context, collect, start_layer)
    elif mode == "dense":  # every layer on the whole batch, blended by its gate
        for index in range(start_layer, backbone.num_layers):
            gate = keep_mask[:, index].to(hidden.dtype)[:, None, None]
            out = backbone.run_layer(index, hidden, frame_mask if context.padded else None, context)
            hidden = hidden + gate * (out.to(hidden.dtype) - hidden)
            if collect is not None:
                collect.append(hidden)
    else:
        raise ValueError(f"mode must be 'auto', 'dense' or 'sparse', got {mode!r}")
    hidden = backbone.finalize(hidden).masked_fill(~frame_mask[..., None], 0.0)
    return (hidden, collect) if return_all else hidden


def run_prefix_layers(
    backbone: SpeechBackbone, hidden: Tensor, frame_mask: Tensor, num_layers: int, context: LayerContext
) -> Tensor:
    """Run encoder layers ``0..num_layers-1`` on the whole batch, before the final norm.

    Continued by :func:`run_gated_layers` with ``start_layer=num_layers`` and the same ``context``, it equals
    one run from layer 0 under a mask that keeps the prefix.
    """
    if not 0 <= num_layers <= backbone.num_layers:
        raise ValueError(f"num_layers must be in 0..{backbone.num_layers}, got {num_layers}")
    for index in range(num_layers):
        hidden = backbone.run_layer(index, hidden, frame_mask if context.padded else None, context)
    return hidden
