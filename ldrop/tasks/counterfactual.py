"""The counterfactual objective's task side: score a few alternative masks per input, then let the selector
rank them (:meth:`~ldrop.selectors.LayerSelector.counterfactual_loss`).

The straight-through path only ever evaluates the mask the selector chose. Here each input of a training batch
also runs ``selector.counterfactual_candidates`` one-layer swaps of its mask (same budget), without gradient
and on the sparse path (only the kept layers run), and its per-input task loss under each is compared with
the chosen mask's. That costs about ``candidates * k / N`` of a forward pass per step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ldrop.selectors import SelectorOutput
from ldrop.selectors.candidates import one_layer_swaps
from ldrop.tasks.gating import EncodedBatch

if TYPE_CHECKING:
    from ldrop.tasks.base import LayerDropTask


def counterfactual_loss(task: LayerDropTask, encoded: EncodedBatch, batch: Any, keep: Tensor, logits: Tensor,
                        selection: SelectorOutput) -> Tensor:
    """The selector's ranking loss of its chosen masks against one-layer swaps of them on this batch.

    Args:
        task: the task (its layers, head and per-input losses).
        encoded: the encoded batch of this training step.
        batch: the batch (targets).
        keep: ``[batch, layers]`` the masks the selector chose (sampled in training).
        logits: the task's logits with those masks (their per-input losses are reused, not recomputed).
        selection: the selector's output; its clean ``scores`` carry the gradient.
    """
    if selection.scores is None:
        raise ValueError(f"{type(task.selector).__name__} returns no scores: it cannot rank masks")
    with torch.no_grad():  # the alternatives only give targets: no graph, the sparse path
        own = (keep.detach() > 0.5).to(logits.dtype)
        own_losses = task.item_losses(logits.detach(), encoded.frame_mask, batch)
        keep_first = task.selector.prefix_layers  # layers every mask keeps: never swapped out
        candidates = torch.stack([one_layer_swaps(own, keep_first=keep_first)
                                  for _ in range(task.selector.counterfactual_candidates)])
        candidate_losses = torch.stack([
            task.item_losses(task.logits_with_mask(encoded, mask), encoded.frame_mask, batch) for mask in candidates
        ])
    return task.selector.counterfactual_loss(selection.scores, own, candidates, own_losses, candidate_losses)
