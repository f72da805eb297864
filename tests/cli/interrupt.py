"""A callback that stands a training run still at a given step, so that a test can kill it there."""

from __future__ import annotations

import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class StallAtStep(Callback):
    """Writes ``marker`` and sleeps once the trainer reaches ``step`` (the test then kills the process).

    Checkpoint callbacks run after this one, so the checkpoints of earlier steps are on disk by then.
    """

    def __init__(self, step: int, marker: str, seconds: float = 600.0) -> None:
        self.step, self.marker, self.seconds = step, marker, seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            Path(self.marker).write_text(str(self.step))
            time.sleep(self.seconds)


class CheckpointProbe(Callback):
    """Records, at each validation start, the step stored in ``last.ckpt`` (``None`` when there is none yet)."""

    seen: list[tuple[int, int | None]] = []

    def on_validation_start(self, trainer, pl_module) -> None:
        import torch

        if trainer.sanity_checking:
            return
        last = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"
        step = torch.load(last, weights_only=True)["global_step"] if last.is_file() else None
        CheckpointProbe.seen.append((trainer.global_step, step))


class SaveSelectorStatistics(Callback):
    """Saves each rank's selector statistics when fit ends (after every ``on_train_end``) to
    ``<folder>/statistics-<rank>.pt``."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_fit_end(self, trainer, pl_module) -> None:
        import torch

        buffers = {"mean": pl_module.selector.running_mean, "var": pl_module.selector.running_var}
        torch.save(buffers, Path(self.folder) / f"statistics-{trainer.global_rank}.pt")
