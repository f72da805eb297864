"""What one encoded batch costs at a keep mask: layers run, FLOPs (backbone and selector) and wall time.

The one place that turns a keep mask into FLOPs; the budget sweep, its targets and prediction records read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ldrop.engine.flops import count_forward_flops, decision_flops


@dataclass(frozen=True)
class BatchCost:
    """The cost of one encoded batch run with one keep mask: ``mask`` ``[batch, layers]`` (1 where an input ran a
    layer), ``flops`` ``[batch]`` float64 (the backbone at each input's length and mask plus the selector's own)
    and ``seconds``, the wall time of the whole batch (each of its inputs waits for all of it; 0 if untimed)."""

    mask: Tensor
    flops: Tensor
    seconds: float = 0.0

    @classmethod
    def of(cls, task: Any, encoded: Any, keep: Tensor, seconds: float = 0.0) -> BatchCost:
        """``encoded`` (the task's ``EncodedBatch``) run on ``task`` with ``keep`` (``[batch, layers]``, soft or
        hard: thresholded at 0.5, as sparse execution runs it)."""
        mask = (keep.detach() > 0.5).float()
        own = decision_flops(task, encoded.frame_mask.sum(1))
        return cls(mask, count_forward_flops(task.backbone.config, encoded.lengths, mask, own).total, seconds)

    @property
    def layers(self) -> Tensor:
        """``[batch]`` layers each input ran."""
        return self.mask.sum(1)

    @property
    def gflops(self) -> Tensor:
        """``[batch]`` GFLOPs of each input."""
        return self.flops / 1e9
