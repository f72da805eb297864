"""Refresh a selector's running statistics on recent training inputs, as a callback (like
``torch.optim.swa_utils.update_bn``: running averages lag behind the weights), before each validation pass in
training and at the end of training; a callback, so that how often one checkpoints never changes training.
Checkpoints hold the kept inputs, so a resumed run refreshes on what the uninterrupted one would."""

from __future__ import annotations

import collections
import logging
from typing import Any

import lightning as L
import torch

from ldrop._lightning import attached_trainer
from ldrop.tasks.precision import precision_context

log = logging.getLogger(__name__)


class SelectorStatistics(L.Callback):
    """Re-estimates ``pl_module.selector``'s statistics (if it :attr:`tracks_statistics`) on the last ``batches``
    encoded training batches (``training_step`` returns them as ``outputs["encoded"]``). Under DDP, rank 0
    keeps and folds its batches and every rank takes its statistics, which are those a checkpoint saves."""

    def __init__(self, batches: int = 16) -> None:
        self.recent: collections.deque = collections.deque(maxlen=batches)
        self._said_no_encoded = False

    @staticmethod
    def _tracks(pl_module: Any) -> bool:
        selector = getattr(pl_module, "selector", None)
        return selector is not None and selector.tracks_statistics

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        encoded = outputs.get("encoded") if isinstance(outputs, dict) else None
        if not self._tracks(pl_module) or not (trainer is None or trainer.is_global_zero):
            return
        if encoded is None:  # a skipped (empty) batch has none; a training_step override may have dropped it
            if not self._said_no_encoded and not (hasattr(batch, "__len__") and len(batch) == 0):
                self._said_no_encoded = True
                log.warning("%s: training_step's outputs hold no 'encoded' batch (an override that returns only the "
                            "loss?), so the selector's running statistics are not refreshed: return the dict of "
                            "super().training_step(...), changing its 'loss'", type(pl_module).__name__)
            return
        # the waveforms the forward's selector read (normalised when the backbone asks), not the batch's raw
        # ones; none for a selector that reads only the features
        read = pl_module.selector.reads_waveforms
        self.recent.append((encoded.features.detach(), encoded.frame_mask,
                            encoded.waveforms.detach() if read else None, encoded.lengths if read else None))

    @torch.no_grad()
    def refresh(self, pl_module: Any) -> None:
        """Reset the statistics and fold the kept batches back in (none kept: the statistics stay)."""
        if not self._tracks(pl_module):
            return
        selector, trainer = pl_module.selector, attached_trainer(pl_module)
        if self.recent and (trainer is None or trainer.is_global_zero):
            selector.reset_statistics()
            with precision_context(pl_module):  # outside the step methods: the trainer's precision, as in training
                for kept in self.recent:
                    features, frame_mask, waveforms, lengths = (t if t is None else t.to(pl_module.device)
                                                                for t in kept)
                    selector.update_statistics(features, frame_mask, waveforms=waveforms, lengths=lengths)
        if trainer is not None and trainer.world_size > 1:
            state = trainer.strategy.broadcast({name: b.cpu() for name, b in selector.named_buffers()})
            for name, buffer in selector.named_buffers():
                buffer.copy_(state[name])

    def state_dict(self) -> dict[str, Any]:
        """The kept batches (on the CPU), so that a resumed run refreshes on the same inputs."""
        return {"recent": [[t if t is None else t.cpu() for t in kept] for kept in self.recent]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.recent.clear()
        self.recent.extend(tuple(kept) for kept in state_dict.get("recent", []))

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:  # every rank loaded rank 0's batches from the checkpoint
            self.recent.clear()

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self.refresh(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.refresh(pl_module)
