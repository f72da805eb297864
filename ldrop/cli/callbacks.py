"""Lightning callbacks and plugins the CLI installs: atomic checkpoints, best-metric checkpointing, random
states for exact resume, JSONL predictions, a prompt stop on SIGTERM."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ldrop._io import (
    DAMAGED_CHECKPOINT_ERRORS,
    _umask,
    atomic_torch_save,
    check_writable_folder,
    damaged_checkpoint_error,
    load_checkpoint_file,
    raise_if_disk_full,
    remove_stale_temporaries,
    temporary_prefix,
)
from ldrop._lightning import (
    CheckpointSteps,
    accumulating,
    collect_rng_states,
    hold_stop,
    log_train_step,
    rerun_validation,
    restore_train_loader_states,
    set_rng_states,
    validation_due,
)
from ldrop._progress import note
from ldrop.data.base import AUDIO_EXTENSIONS
from ldrop.tasks.base import metric_properties

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes checkpoints atomically (a crash leaves the previous one intact) and reads them with errors
    naming the file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = "cpu", weights_only: bool | None = None
                        ) -> dict[str, Any]:
        # on the CPU, as Lightning's own default: its strategy moves the state to the device (a GPU's checkpoint
        # then loads on a machine without one)
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except DAMAGED_CHECKPOINT_ERRORS as err:
            raise damaged_checkpoint_error(path, err) from err


class TaskCheckpoint(CheckpointSteps):
    """``ModelCheckpoint`` that monitors the task's own validation metric (``val/acc`` max, ``val/wer`` min).

    Also keeps ``last.ckpt`` for ``ldrop fit --ckpt_path``: a step trigger (``every_n_train_steps``) only
    refreshes ``last.ckpt``, while ``best-*.ckpt`` is written right after a validation, so its score is
    measured on the weights it holds. Temporaries a killed run left behind are removed at start-up, and so, when a
    fit resumes from this folder's ``last.ckpt``, are the best checkpoints of its step or later that its state does
    not track (a killed run wrote them after it; the resumed run writes them again).

    Args:
        save_top_k: best checkpoints to keep.
        save_last: also keep ``last.ckpt``.
        monitor: the metric that ranks the best checkpoints; ``None``: the task's own (``val/acc``, ``val/wer``).
        mode: ``min`` or ``max``; ``None``: the direction of the monitored metric, the task's primary one from
            the task's ``higher_is_better`` (``val/acc`` and ``val/acc@3`` max, ``val/wer`` min), another from
            its torchmetrics ``higher_is_better``; ``min`` for a loss; else required.
        **kwargs: other ``ModelCheckpoint`` arguments (``dirpath``, ``every_n_epochs``, ...).
    """

    def __init__(self, save_top_k: int = 1, save_last: bool = True, monitor: str | None = None,
                 mode: Literal["min", "max"] | None = None, **kwargs: Any) -> None:
        if kwargs.get("filename") is None:
            kwargs["filename"] = "best-epoch{epoch}-step{step}"
            kwargs["auto_insert_metric_name"] = False
        super().__init__(save_top_k=save_top_k, save_last=save_last, monitor=monitor, mode=mode or "min", **kwargs)
        self.mode_given = mode
        self._last_saved_step: int | None = None
        self._stage: str | None = None
        #: the fit's identity, kept across resumes and saved in every checkpoint it writes
        self.run_id: str | None = None
        self._resumed: tuple[int, Path, str] | None = None  # (step, file, run id) of the checkpoint a fit resumes from
        #: the checkpoint that holds the step a stopped (SIGTERM) fit reached, to resume from
        self.stop_checkpoint: Path | None = None
        #: the checkpoint files this run wrote (in the order written; some may be replaced since)
        self.written: list[Path] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if hasattr(pl_module, "metric_names"):
            self.monitor = self.monitor or f"val/{pl_module.metric_names[0]}"
            # only a fit ranks checkpoints: evaluation needs no direction (an unknown one is an error there only)
            mode = self.mode_given or (self.metric_mode(pl_module) if stage == "fit" else self.mode)
            if mode != self.mode:
                self.mode, self.kth_value = mode, torch.tensor(float("inf") if mode == "min" else -float("inf"))
        super().setup(trainer, pl_module, stage)
        self._stage = stage
        self.written = []
        self.run_id = uuid.uuid4().hex if stage == "fit" else None  # a resumed fit takes its checkpoint's
        if self.dirpath:
            # absolute: the state saved in a checkpoint then names the folder whatever the working directory
            self.dirpath = os.path.abspath(self.dirpath)
        if stage == "fit" and trainer.is_global_zero and self.dirpath and Path(self.dirpath).is_dir():
            remove_stale_temporaries(self.dirpath)

    def metric_mode(self, pl_module: L.LightningModule) -> str:
        """The direction of :attr:`monitor`: a task metric's own (also per budget: ``val/acc@3``), ``min`` for a
        loss; raises ``ValueError`` when it cannot be known (a metric that declares no ``higher_is_better``)."""
        name = self.monitor[4:].split("@")[0] if self.monitor.startswith("val/") else None
        if name == pl_module.metric_names[0]:  # the primary metric: the task's own attribute
            return "max" if pl_module.higher_is_better else "min"
        if name in pl_module.metric_names:
            higher = metric_properties(pl_module)[name]["higher_is_better"]
            if higher is not None:
                return "max" if higher else "min"
        elif "loss" in self.monitor.rsplit("/", 1)[-1]:
            return "min"
        raise ValueError(f"--checkpoint.monitor {self.monitor!r}: its direction is unknown ("
                         + ("its metric declares no higher_is_better" if name in pl_module.metric_names else
                            f"not a loss nor one of the task's metrics {list(pl_module.metric_names)}")
                         + "); give --checkpoint.mode max or min")

    RUN_ID_KEY = "ldrop_run_id"

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self.run_id is not None:
            checkpoint[self.RUN_ID_KEY] = self.run_id

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        resumed = checkpoint.get(self.RUN_ID_KEY) if self._stage == "fit" else None
        self.run_id = resumed or self.run_id
        fit = resumed and trainer.is_global_zero and trainer.ckpt_path and self.dirpath
        self._resumed = (checkpoint.get("global_step", 0), Path(trainer.ckpt_path).resolve(), resumed) if fit else None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the best-checkpoint tracking also when the run's folder moved (files are looked up by
        name)."""
        saved = state_dict.get("dirpath")
        if not saved or not self.dirpath or saved == self.dirpath:
            super().load_state_dict(state_dict)
            return self._remove_untracked()
        here = Path(self.dirpath)

        def moved(path: str | None) -> str | None:
            return str(here / Path(path).name) if path and (here / Path(path).name).is_file() else None

        best_k = {moved(path): score for path, score in (state_dict.get("best_k_models") or {}).items()}
        paths = ("best_model_path", "kth_best_model_path", "last_model_path")
        if None in best_k or (state_dict.get("best_model_path") and not moved(state_dict["best_model_path"])):
            # not this run's folder (an evaluation run, or only last.ckpt was copied): Lightning's behaviour
            if self._stage == "fit":
                log.warning("the best checkpoints tracked in %s are not in %s: best-checkpoint tracking restarts "
                            "with the next validation", saved, self.dirpath)
            found = {"best_model_score": None, "best_k_models": {}, "kth_value": self.kth_value} | dict.fromkeys(paths, "")
            self._resumed = None  # its files are not this run's to remove
        else:
            found = {"best_k_models": best_k} | {key: moved(state_dict.get(key)) or "" for key in paths}
        super().load_state_dict({**state_dict, "dirpath": self.dirpath, **found})
        self._remove_untracked()

    def _remove_untracked(self) -> None:
        """Resumed from this folder's last checkpoint: delete the best checkpoints (named as this callback names
        them) that the same run wrote at its step or later and that the restored state does not track. Another
        run's files (a shared ``dirpath``) and checkpoints without a run id are never deleted."""
        resumed, self._resumed = self._resumed, None
        if resumed is None or not self.last_model_path or Path(self.last_model_path).resolve() != resumed[1]:
            return
        tracked = {Path(path).resolve() for path in [*self.best_k_models, self.best_model_path, resumed[1]] if path}
        parts = re.split(r"\{[^}]*\}", self.filename or "")
        named = re.compile(".*".join(map(re.escape, parts)) + r"(-v\d+)?" + re.escape(self.FILE_EXTENSION))
        for path in Path(self.dirpath).glob(f"*{self.FILE_EXTENSION}"):
            if path.resolve() in tracked or not named.fullmatch(path.name) or path.name.startswith(self.CHECKPOINT_NAME_LAST):
                continue
            try:
                written = load_checkpoint_file(path, weights_only=True, mmap=True, verify=False)
            except (OSError, ValueError, RuntimeError):
                continue
            step = written.get("global_step", -1) if isinstance(written, dict) else -1
            if step >= resumed[0] and written.get(self.RUN_ID_KEY) == resumed[2]:
                path.unlink()
                log.info("removed %s: written at step %d by the run that stopped after step %d, where this one "
                         "resumes (it writes it again)", path, step, resumed[0])

    @property
    def _step_triggered(self) -> bool:
        return self.every_n_train_steps >= 1 or self.train_time_interval is not None

    def _may_save(self, trainer: L.Trainer) -> bool:
        """Fitting, past the sanity check, not a ``fast_dev_run`` (unlike Lightning's check, a second save at the
        same step is allowed: a validation right after a step-triggered save still records its score)."""
        return not trainer.fast_dev_run and trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.received_sigterm:
            # Stopped at this step: last.ckpt is written here, where a step trigger writes it (after every other
            # callback's hook: checkpoint callbacks run last), so that a resume from it continues exactly. The
            # step's metrics are logged first, as the fit loop would after this hook: the resume starts after it.
            self.save_on_stop(trainer)
            log_train_step(trainer)
            raise SIGTERMException

    def _on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.monitor is None or not pl_module.automatic_optimization or not self._step_triggered:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self._may_save(trainer) or self._last_saved_step == trainer.global_step:
            return
        due = self.every_n_train_steps >= 1 and trainer.global_step % self.every_n_train_steps == 0
        if self.train_time_interval is not None:
            now = time.monotonic()
            elapsed = self.last_time_checked is not None and (
                now - self.last_time_checked >= self.train_time_interval.total_seconds()
            )
            if trainer.strategy.broadcast(elapsed):  # rank 0 decides, so that no rank waits for the others
                self.last_time_checked, due = now, True
        if due:
            # The last validation scored older weights: refresh last.ckpt only, best-* waits for a validation.
            self.write_last(trainer, self.monitor_candidates(trainer))

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.monitor is None or not self._step_triggered:
            return super().on_validation_end(trainer, pl_module)
        if self._may_save(trainer):
            candidates = self.monitor_candidates(trainer)
            self.write_topk(trainer, candidates)
            self.write_last(trainer, candidates)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.monitor is None or not self._step_triggered:
            super().on_train_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        # Whatever the trigger, the final weights are in last.ckpt (Lightning only writes it if it never did).
        if self.save_last and self._may_save(trainer) and self._last_saved_step != trainer.global_step:
            self.write_last(trainer, self.monitor_candidates(trainer))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            # stopped elsewhere than at a training step's end (a validation pass, an epoch's end)
            self.save_on_stop(trainer)

    def save_on_stop(self, trainer: L.Trainer) -> None:
        """Write ``last.ckpt`` at the step reached when a fit is stopped (SIGTERM), unless it already holds that
        step or nothing was trained."""
        if (self.save_last and self._may_save(trainer) and trainer.global_step > 0
                and self._last_saved_step != trainer.global_step):
            self.write_last(trainer, self.monitor_candidates(trainer))
        if trainer.global_step > 0 and self._last_saved_step == trainer.global_step and self.last_model_path:
            self.stop_checkpoint = Path(self.last_model_path)

    def on_written(self, trainer: L.Trainer, filepath: str) -> None:
        self.written.append(Path(filepath))

    def write_last(self, trainer, monitor_candidates) -> None:
        if self.save_last and not self.last_model_path:
            # last.ckpt already in the folder (a resumed run that was copied or moved) is replaced, not kept
            # beside a new last-v1.ckpt.
            self.last_model_path = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
        super().write_last(trainer, monitor_candidates)
        if self.save_last:
            self._last_saved_step = trainer.global_step


class StopOnSigterm(Callback):
    """Stops ``validate``, ``test`` and ``predict`` at the start or end of a batch once SIGTERM arrived, the last
    batch included, by raising Lightning's ``SIGTERMException`` (Lightning's evaluation loop lets the last batch
    finish, its prediction loop never stops); callbacks' ``on_exception`` then run as on any failure, so outputs
    stay complete or absent. In ``fit``, :class:`TaskCheckpoint` stops training steps (after writing
    ``last.ckpt``), and this callback the validation passes.

    In ``fit``, a stop between two batches whose gradients are accumulated is left to :class:`ExactResume`, which
    holds it until the optimizer step."""

    def _stop(self, trainer: L.Trainer) -> None:
        if trainer.received_sigterm and not _accumulating_in_fit(trainer):
            raise SIGTERMException

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._stop(trainer)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._stop(trainer)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._stop(trainer)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._stop(trainer)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._stop(trainer)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._stop(trainer)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._stop(trainer)  # before the sweep (a later callback) is written

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        self._stop(trainer)


class ExactResume(Callback):
    """Makes ``fit --ckpt_path`` continue exactly where the checkpoint was taken, even mid-epoch.

    Saves every random generator (torch, CUDA, NumPy, Python, the task's ``torch.Generator``s) and restores
    them after the sanity check; also hands the train dataloader its saved position, which Lightning skips
    when the task asked for ``trainer.estimated_stepping_batches``. A checkpoint written before the validation due at
    its step completed (at the training batch's end, or stopped during the validation) says so, and the resumed fit
    runs that validation first, as the uninterrupted run did.

    A stop (SIGTERM) that arrives while the training batches only accumulate gradients
    (``--trainer.accumulate_grad_batches``), or during a validation run between two such batches, is held until the
    batch that steps the optimizer (at the latest the epoch's last): a checkpoint written between the two would lose
    the accumulated gradients, and its resume would differ from the uninterrupted run. (This callback's training
    batch hook runs after the user's callbacks and before the checkpoint callbacks', which write ``last.ckpt`` at a
    stop.)
    """

    KEY = "ldrop_rng_states"
    VALIDATION_KEY = "ldrop_validation_pending"

    def __init__(self) -> None:
        self._rng_states: dict[str, Any] | None = None
        self._loader_states: list[dict[str, Any]] | None = None
        #: ``global_step`` of the checkpoint a fit resumed from (``None``: not resumed); equal to the trainer's
        #: after the fit when the run was already complete.
        self.resumed_step: int | None = None
        #: a validation is due at this step and not complete (what a checkpoint written now records)
        self.validation_pending = False
        #: the resumed fit ran the validation its checkpoint's step was due
        self.validation_rerun = False
        #: a stop that arrived between two accumulated batches, held until the optimizer steps
        self.stop_held = False

    def _hold_stop(self, trainer: L.Trainer, held: bool) -> None:
        self.stop_held = held
        hold_stop(trainer, held)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # before the checkpoint callbacks' hooks
        if trainer.received_sigterm or self.stop_held:
            self._hold_stop(trainer, accumulating(trainer))  # released at the batch that steps the optimizer
        self.validation_pending = validation_due(trainer)

    def on_validation_start(self, trainer, pl_module) -> None:
        self.validation_pending = not trainer.sanity_checking

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.received_sigterm and _accumulating_in_fit(trainer):
            self._hold_stop(trainer, True)  # the validation completes, and the training batches up to the step

    def on_validation_end(self, trainer, pl_module) -> None:
        self.validation_pending = False  # complete: the checkpoint callbacks write best-*.ckpt and last.ckpt next
        self.on_validation_batch_end(trainer, pl_module, None, None, 0)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        states = collect_rng_states(include_cuda=torch.cuda.is_available())
        kind, keys, pos, has_gauss, gauss = states["numpy"]
        # Plain lists and tensors only, so that the checkpoint still loads with torch.load(weights_only=True).
        states["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, gauss]
        states["python"] = list(states["python"])
        states["modules"] = {name: g.get_state() for name, g in _module_generators(pl_module).items()}
        checkpoint[self.KEY] = states
        checkpoint[self.VALIDATION_KEY] = self.validation_pending

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self.resumed_step = checkpoint.get("global_step") if trainer.state.fn == TrainerFn.FITTING else None
        self.validation_rerun = self.resumed_step is not None and bool(checkpoint.get(self.VALIDATION_KEY))
        if self.validation_rerun:
            rerun_validation(checkpoint)  # before Lightning restores its loops from it
        self._rng_states = checkpoint.get(self.KEY)
        fit_loop_state = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
        self._loader_states = fit_loop_state.get("combined_loader")

    def on_train_end(self, trainer, pl_module) -> None:
        if self.stop_held:  # the fit ended between two accumulated batches (a Timer, EarlyStopping): still a stop
            self._hold_stop(trainer, False)

    def on_train_start(self, trainer, pl_module) -> None:
        self.stop_held = False
        loader_states, self._loader_states = self._loader_states, None
        if loader_states:
            restore_train_loader_states(trainer, loader_states)  # before the first batch is drawn
        states, self._rng_states = self._rng_states, None
        if not states:
            return
        kind, keys, pos, has_gauss, gauss = states["numpy"]
        modules = states.get("modules", {})
        if not torch.cuda.is_available():
            states = {k: v for k, v in states.items() if k != "torch.cuda"}
        elif "torch.cuda" in states:  # a checkpoint of a machine with more GPUs: the ones there are
            states = {**states, "torch.cuda": list(states["torch.cuda"])[: torch.cuda.device_count()]}
        set_rng_states({**states, "numpy": (kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss)})
        for name, generator in _module_generators(pl_module).items():
            if name in modules:
                generator.set_state(modules[name])


def _accumulating_in_fit(trainer: L.Trainer) -> bool:
    """Fitting (past the sanity check), between two training batches whose gradients are accumulated."""
    return trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and accumulating(trainer)


def _module_generators(module: torch.nn.Module) -> dict[str, torch.Generator]:
    """Every ``torch.Generator`` held as an attribute by ``module`` or its submodules, by dotted name."""
    return {
        f"{prefix}.{attr}" if prefix else attr: value
        for prefix, sub in module.named_modules()
        for attr, value in vars(sub).items()
        if isinstance(value, torch.Generator)
    }


class JsonlPredictionWriter(BasePredictionWriter):
    """Writes ``predict`` outputs as JSON lines (one per input: id, output, executed layers, GFLOPs).

    Tensors and numpy values in a record (a task's ``decode`` returning a tensor) are written as their
    ``tolist()``; any other object that JSON cannot hold fails the run with a line naming its type. NaN and
    infinity, which strict JSON cannot hold, are written as ``null`` and counted in the closing line.

    The folder is checked before any inference; records go to a hidden temporary that becomes the output when
    every batch is done (a failed run keeps them as ``<output>.partial``).

    Args:
        output: the JSONL file; default ``predictions.jsonl`` in the run's log directory.
    """

    def __init__(self, output: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output = output
        self.written: Path | None = None
        self.count = 0
        #: records with a NaN or infinity, written as ``null``
        self.nonfinite = 0
        self._handle: Any = None
        self._tmp: Path | None = None
        self._target: Path | None = None
        #: where a failed run kept the predictions it had written (``<output>.partial``), if any
        self.kept: Path | None = None

    def target(self, trainer: L.Trainer) -> Path:
        """The file this rank writes (``<output>.rank<N>`` per rank under multi-process prediction)."""
        target = Path(self.output) if self.output else Path(trainer.log_dir or trainer.default_root_dir) / "predictions.jsonl"
        return target.with_name(f"{target.name}.rank{trainer.global_rank}") if trainer.world_size > 1 else target

    def check_writable(self, trainer: L.Trainer, inputs: Sequence[str] = ()) -> Path:
        """Check that the output can be written (creating nothing), and is neither one of the ``inputs`` nor an
        existing audio file; returns its path or raises ``OSError``."""
        target = self.target(trainer)
        if target.is_dir():
            raise IsADirectoryError(f"the predictions output {str(target)!r} is a folder, not a file")
        if target.resolve() in {Path(p).resolve() for p in inputs}:
            raise FileExistsError(f"{str(target)!r} is one of the --inputs it predicts on: give a new .jsonl file")
        if target.is_file() and target.suffix.lower() in AUDIO_EXTENSIONS:
            raise FileExistsError(f"{str(target)!r} is an existing audio file, which predictions would replace: give "
                                  "a .jsonl file")
        check_writable_folder(target.parent)
        return target

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "predict":
            self.check_writable(trainer)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._target = self.check_writable(trainer)
        self._target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self._target.parent, [self._target.name])
        fd, tmp = tempfile.mkstemp(dir=self._target.parent, prefix=temporary_prefix(self._target), suffix=".tmp")
        self._tmp, self._handle, self.count, self.written = Path(tmp), os.fdopen(fd, "w", encoding="utf-8"), 0, None
        self._whole = 0
        self.nonfinite = 0
        self.kept = None

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        try:
            lines = [_json_line(record) for record in prediction]
        except (TypeError, ValueError) as err:  # the whole batch or none of it: no half-written batch is kept
            raise ValueError(f"{type(pl_module).__name__}'s decode/predict_step output cannot be written as JSON: "
                             f"{err} (return numbers, strings, lists or dicts of them)") from err
        nonfinite = sum(changed for _, changed in lines)
        lines = "".join(line for line, _ in lines)
        try:
            self._handle.write(lines)
            self._handle.flush()  # on disk as they come: a later failure keeps them (as .partial)
        except OSError as err:
            raise_if_disk_full(err, self._target)
            raise
        self._whole = self._handle.buffer.tell()  # the end of the last whole batch (in bytes)
        self.count += len(prediction)
        self.nonfinite += nonfinite

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        handle, self._handle = self._handle, None
        try:
            os.fsync(handle.fileno())
            handle.close()
            os.chmod(self._tmp, 0o666 & ~_umask())
            os.replace(self._tmp, self._target)
        except OSError as err:
            self._tmp.unlink(missing_ok=True)
            raise_if_disk_full(err, self._target)
            raise
        self._partial_path().unlink(missing_ok=True)  # an earlier failed run's records: superseded
        self.written = self._target
        nonfinite = f" ({self.nonfinite} held NaN or infinity, written as null)" if self.nonfinite else ""
        print(f"wrote {self.count} predictions to {self._target}{nonfinite}")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        handle, self._handle = self._handle, None
        if handle is None:
            return
        with contextlib.suppress(OSError):  # a full disk: closing flushes the failed batch's lines again
            handle.close()
        with contextlib.suppress(OSError):
            os.truncate(self._tmp, self._whole)  # no part of a batch that failed to be written
        if self.count:
            os.replace(self._tmp, self._partial_path())
            self.kept = self._partial_path()
            if not isinstance(exception, SIGTERMException):  # the SIGTERM line names the file itself
                print(f"kept the {self.count} predictions written before the error in {self._partial_path()}")
        else:
            self._tmp.unlink(missing_ok=True)

    def _partial_path(self) -> Path:
        return self._target.with_name(self._target.name + ".partial")


def _json_line(record: Any) -> tuple[str, bool]:
    """One record as a strict JSON line, and whether a NaN or infinity in it became ``null``."""
    try:
        return json.dumps(record, default=_json_value, allow_nan=False) + "\n", False
    except ValueError as err:
        if "Out of range float" not in str(err):
            raise
    return json.dumps(_finite(json.loads(json.dumps(record, default=_json_value))), allow_nan=False) + "\n", True


def _finite(value: Any) -> Any:
    """``value`` (as ``json.loads`` reads it) with each NaN or infinity replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    return [_finite(item) for item in value] if isinstance(value, list) else value


def _json_value(value: Any) -> Any:
    """What ``json`` cannot write itself in a prediction record: a tensor or numpy array/scalar as its ``tolist()``
    (a 0-d one as its number); any other object is a ``TypeError`` naming its type."""
    if isinstance(value, torch.Tensor | np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"an object of type {type(value).__qualname__}")


class ProgressLines(Callback):
    """Progress as lines (``ldrop.progress``) for a run without a progress bar (``--trainer.enable_progress_bar
    false``, as in a batch job's log): training and prediction say where they are every ``interval`` seconds, and
    each validation of a fit its metrics, so that a log is never minutes of silence."""

    def __init__(self, interval: float = 30.0) -> None:
        self.interval = float(interval)
        self._last = time.perf_counter()

    def _due(self) -> bool:
        now = time.perf_counter()
        if now - self._last < self.interval:
            return False
        self._last = now
        return True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._due():
            loss, total = trainer.callback_metrics.get("train/loss"), trainer.estimated_stepping_batches
            note(f"training: epoch {trainer.current_epoch}, step {trainer.global_step}"
                 + (f" of {total}" if math.isfinite(total) else "")  # inf: --trainer.max_epochs -1
                 + (f", train/loss {float(loss):.4g}" if loss is not None else ""))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and v.numel() == 1}
        note(f"validation at epoch {trainer.current_epoch}, step {trainer.global_step}: "
             + ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())))

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._due():
            total = trainer.num_predict_batches[dataloader_idx] if trainer.num_predict_batches else None
            note(f"predicting: {batch_idx + 1}" + (f" of {total}" if isinstance(total, int) else "") + " batches")
