"""Refresh a selector's running statistics on recent training inputs, as a callback (like
``torch.optim.swa_utils.update_bn``: running averages lag behind the weights), before each validation pass in
training and at the end of training; a callback, so that how often one checkpoints never changes training."""

from __future__ import annotations

import collections
from typing import Any

import lightning as L
import torch

from ldrop.tasks.precision import precision_context


class SelectorStatistics(L.Callback):
    """Re-estimates ``pl_module.selector``'s statistics (if it :attr:`tracks_statistics`) on the last ``batches``
    encoded training batches (``training_step`` returns them as ``outputs["encoded"]``)."""

    def __init__(self, batches: int = 16) -> None:
        self.recent: collections.deque = collections.deque(maxlen=batches)

    @staticmethod
    def _tracks(pl_module: Any) -> bool:
        selector = getattr(pl_module, "selector", None)
        return selector is not None and selector.tracks_statistics

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        encoded = outputs.get("encoded") if isinstance(outputs, dict) else None
        if encoded is not None and self._tracks(pl_module):
            # the waveforms the forward's selector read (normalised when the backbone asks), not the batch's raw ones
            self.recent.append((encoded.features.detach(), encoded.frame_mask, encoded.waveforms.detach(),
                                encoded.lengths))

    @torch.no_grad()
    def refresh(self, pl_module: Any) -> None:
        """Reset the statistics and fold the kept batches back in."""
        if not self._tracks(pl_module) or not self.recent:
            return
        selector = pl_module.selector
        selector.reset_statistics()
        with precision_context(pl_module):  # outside the step methods: the trainer's precision, as in training
            for features, frame_mask, waveforms, lengths in self.recent:
                selector.update_statistics(features, frame_mask, waveforms=waveforms, lengths=lengths)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self.refresh(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.refresh(pl_module)
