"""Lightning callbacks and plugins the CLI installs: atomic checkpoints, best-metric checkpointing, JSONL
predictions."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ldrop.sweeps import atomic_write_text


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same folder and renames it into place.

    A crash mid-write leaves the previous checkpoint intact instead of a truncated file.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class TaskCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that monitors the task's own validation metric (``val/acc`` max, ``val/wer`` min).

    Also keeps ``last.ckpt`` so that ``ldrop fit --ckpt_path last`` resumes an interrupted run.

    Args:
        save_top_k: best checkpoints to keep.
        save_last: also keep ``last.ckpt``.
        **kwargs: other ``ModelCheckpoint`` arguments (``dirpath``, ``every_n_epochs``, ...).
    """

    def __init__(self, save_top_k: int = 1, save_last: bool = True, **kwargs: Any) -> None:
        if kwargs.get("filename") is None:
            kwargs["filename"] = "best-epoch{epoch}-step{step}"
            kwargs["auto_insert_metric_name"] = False
        super().__init__(save_top_k=save_top_k, save_last=save_last, **kwargs)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.monitor is None and hasattr(pl_module, "metric_names"):
            self.monitor = f"val/{pl_module.metric_names[0]}"
            self.mode = "max" if pl_module.higher_is_better else "min"
            self.kth_value, self.kth_best_model_path = torch.tensor(float("inf") if self.mode == "min" else -float("inf")), ""
            self.best_model_score = None
        super().setup(trainer, pl_module, stage)


class JsonlPredictionWriter(BasePredictionWriter):
    """Writes ``predict`` outputs as JSON lines (one per input: id, output, executed layers, GFLOPs).

    Args:
        output: the JSONL file; default ``predictions.jsonl`` in the run's log directory.
    """

    def __init__(self, output: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output = output
        self.written: Path | None = None

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        lines = []
        for batch_outputs in predictions:
            for record in batch_outputs:
                lines.append(json.dumps(record))
        if trainer.world_size > 1:
            # Each rank writes its own shard; ids make them traceable.
            suffix = f".rank{trainer.global_rank}"
        else:
            suffix = ""
        target = Path(self.output) if self.output else Path(trainer.log_dir or trainer.default_root_dir) / "predictions.jsonl"
        target = target.with_name(target.name + suffix) if suffix else target
        atomic_write_text(target, "\n".join(lines) + ("\n" if lines else ""))
        self.written = target
        print(f"wrote {len(lines)} predictions to {target}")
