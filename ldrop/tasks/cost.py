"""What one encoded batch costs at a keep mask: layers run, FLOPs (backbone and selector) and wall time.

The one place that turns a keep mask into FLOPs; the budget sweep, its targets and prediction records read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ldrop.engine.flops import count_forward_flops, decision_flops


def own_flops(task: Any, keep: Tensor, frame_lengths: Tensor, budget: Any) -> Tensor | None:
    """``[batch]`` FLOPs an input of ``task`` paid beside the backbone at ``budget`` with the hard ``keep`` mask:
    what decides its depth (:func:`~ldrop.engine.flops.decision_flops`) and the heads it ran besides the one
    read (:meth:`~ldrop.tasks.depth.DepthPolicy.head_flops`); ``None``: nothing."""
    own = [f for f in (decision_flops(task, frame_lengths), task.depth.head_flops(task, keep, frame_lengths, budget))
           if f is not None]
    return sum(own[1:], own[0]) if own else None


@dataclass(frozen=True)
class BatchCost:
    """The cost of one encoded batch run with one keep mask: ``mask`` ``[batch, layers]`` (1 where an input ran a
    layer), ``flops`` ``[batch]`` float64 (the backbone at each input's length and mask plus :func:`own_flops`)
    and ``seconds``, the wall time of the whole batch (each of its inputs waits for all of it; 0 if untimed)."""

    mask: Tensor
    flops: Tensor
    seconds: float = 0.0

    @classmethod
    def of(cls, task: Any, encoded: Any, keep: Tensor, budget: Any, *, seconds: float = 0.0) -> BatchCost:
        """``encoded`` (the task's ``EncodedBatch``) run on ``task`` at ``budget`` with ``keep`` (``[batch,
        layers]``, soft or hard: thresholded at 0.5, as sparse execution runs it); the heads an input ran beside
        the one read (confidence early exit's passed exits) are counted."""
        mask = (keep.detach() > 0.5).float()
        extra = own_flops(task, mask, encoded.frame_mask.sum(1), budget)
        return cls(mask, count_forward_flops(task.backbone.config, encoded.lengths, mask, extra).total, seconds)

    @property
    def layers(self) -> Tensor:
        """``[batch]`` layers each input ran."""
        return self.mask.sum(1)

    @property
    def gflops(self) -> Tensor:
        """``[batch]`` GFLOPs of each input."""
        return self.flops / 1e9
