"""Callbacks that stand a run still at a given step, or send it a signal there, so that a test can stop it."""

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


class StallBeforeLast(StallAtStep):
    """Stands still (as :class:`StallAtStep`) in the second checkpoint write after the validation at ``step``:
    ``best-*.ckpt`` is on disk, ``last.ckpt`` not yet (it holds the step-triggered write before the validation)."""

    saves: int | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pass

    def on_validation_end(self, trainer, pl_module) -> None:  # before the checkpoint callbacks' own
        self.saves = 0 if trainer.global_step == self.step and not trainer.sanity_checking else None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.saves is not None:
            self.saves += 1
            if self.saves == 2:
                super().on_train_batch_end(trainer, pl_module, None, None, 0)


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


class SignalAt(Callback):
    """Sends its own process ``signal`` (default SIGTERM) once, at ``hook``: ``test_start`` (before the budget
    sweep's own ``on_test_start``), or ``train``, ``validation``, ``test``, ``predict``: at the end of that batch,
    the training one at global step ``step``, the others at batch ``step``; ``train_batch``: at the end of the training
    batch ``step`` (of the epoch: one that only accumulates gradients too); never in the sanity check. The
    trainer's run has installed Lightning's SIGTERM handler by then, so an in-process test is not killed. With
    ``group``, another process sends it to this process's whole group (as ``scancel`` or ``kill -- -PGID`` do, to
    the DataLoader workers too): only for a run in a session of its own."""

    def __init__(self, hook: str, step: int = 0, signal: str = "SIGTERM", group: bool = False) -> None:
        self.hook, self.step, self.signal, self.sent, self.group = hook, step, signal, False, group

    def _send(self, hook: str, step: int, trainer=None) -> None:
        import os
        import signal

        if self.sent or hook != self.hook or step != self.step or (trainer is not None and trainer.sanity_checking):
            return
        self.sent = True
        if self.group:
            import subprocess
            import sys

            subprocess.run([sys.executable, "-c", f"import os; os.killpg({os.getpgid(0)}, {int(getattr(signal, self.signal))})"],
                           check=True, start_new_session=True)
        else:
            os.kill(os.getpid(), getattr(signal, self.signal))

    def on_test_start(self, trainer, pl_module) -> None:
        self._send("test_start", self.step)  # before the sweep fits the selector on validation data

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._send("train", trainer.global_step, trainer)
        self._send("train_batch", batch_idx, trainer)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._send("validation", batch_idx, trainer)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._send("test", batch_idx, trainer)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._send("predict", batch_idx, trainer)
