"""What one encoded batch costs at a keep mask: layers run, FLOPs (backbone and selector) and wall time.

The one place that turns a keep mask into FLOPs; the budget sweep, its targets and prediction records read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ldrop.engine.flops import count_forward_flops


@dataclass(frozen=True)
class BatchCost:
    """The cost of one encoded batch run with one keep mask.

    Attributes:
        mask: ``[batch, layers]`` float, 1 where an input ran a layer (the keep mask thresholded at 0.5).
        flops: ``[batch]`` float64 FLOPs of each input: the backbone at its length with its mask, plus the
            selector's own.
        seconds: wall seconds of the whole batch (every input of a batch waits for all of it; 0 if untimed).
    """

    mask: Tensor
    flops: Tensor
    seconds: float = 0.0

    @classmethod
    def of(cls, task: Any, encoded: Any, keep: Tensor, seconds: float = 0.0) -> BatchCost:
        """The cost of ``encoded`` (a task's ``EncodedBatch``) run with ``keep`` (``[batch, layers]``, soft or
        hard) on ``task`` (its ``backbone.config`` and ``selector``)."""
        mask = (keep.detach() > 0.5).float()
        selector = task.selector
        selector_flops = selector.flops(encoded.frame_mask.sum(1)) if selector is not None else None
        flops = count_forward_flops(task.backbone.config, encoded.lengths, mask, selector_flops).total
        return cls(mask, flops, seconds)

    @property
    def layers(self) -> Tensor:
        """``[batch]`` layers each input ran."""
        return self.mask.sum(1)

    @property
    def gflops(self) -> Tensor:
        """``[batch]`` GFLOPs of each input."""
        return self.flops / 1e9
