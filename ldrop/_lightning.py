"""Every private name of Lightning (and jsonargparse) that ldrop needs, wrapped here and nowhere else:
``tests/test_lightning_internals.py`` names any that a release moved. Imports nothing from ldrop."""

from __future__ import annotations

import csv
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import ArgumentParser
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

collect_rng_states = _collect_rng_states  # (include_cuda) -> torch, CUDA, NumPy and Python random states
set_rng_states = _set_rng_states  # restores what collect_rng_states returned


def attached_trainer(module: Any) -> L.Trainer | None:
    """The trainer ``module`` is attached to, or ``None`` (``LightningModule.trainer`` raises when detached; a
    plain ``nn.Module`` has none)."""
    return getattr(module, "_trainer", None)


def restore_initial_hparams(module: L.LightningModule, values: dict[str, Any]) -> None:
    """Put ``values`` back into the hyper-parameters a module was built with (``hparams_initial``, what the loggers
    record), where they are among them: for a model built with other arguments than the ones given."""
    initial = getattr(module, "_hparams_initial", None)
    for key, value in values.items():
        if initial is not None and key in initial:
            initial[key] = value


def keep_csv_metrics(logger: Any) -> None:
    """Lightning's ``CSVLogger`` deletes the ``metrics.csv`` of a folder it continues (a resumed fit's): put it back,
    its columns known to the logger's writer, so that a resumed run's metrics stay one file. Rank 0, before logging."""
    path = Path(logger.log_dir, "metrics.csv") if isinstance(logger, CSVLogger) else None
    if path is None or not path.is_file():
        return
    kept = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "... Previous log files in this directory will be deleted ..."
        writer = logger.experiment
    path.write_bytes(kept)
    with path.open(newline="", encoding="utf-8") as file:
        header = next(csv.reader(file), [])
    writer.metrics_keys = sorted(set(writer.metrics_keys) | set(header))


def restore_train_loader_states(trainer: L.Trainer, states: list[dict[str, Any]]) -> None:
    """Hand the fit loop's (lazy) train loaders their saved positions, before the first batch is drawn."""
    combined = trainer.fit_loop._combined_loader
    if combined is not None:
        combined._load_state_dicts(states)


def validation_due(trainer: L.Trainer) -> bool:
    """Whether the fit loop validates after the training batch that is ending (asked in ``on_train_batch_end``)."""
    return trainer.fit_loop.epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher)


def accumulating(trainer: L.Trainer) -> bool:
    """Whether the training batch that is ending only accumulated its gradients (``accumulate_grad_batches``): the
    optimizer steps at a later batch (asked in ``on_train_batch_end``, or in a validation that the fit loop runs
    after it)."""
    return trainer.fit_loop.epoch_loop._should_accumulate()


def hold_stop(trainer: L.Trainer, held: bool) -> None:
    """Clear (``held``) or set again the flag a SIGTERM set (``trainer.received_sigterm``), which Lightning's loops
    stop at: a held stop is not seen until it is set again."""
    trainer._signal_connector.received_sigterm = not held


def log_train_step(trainer: L.Trainer) -> None:
    """Send the ending training step's logged metrics to the loggers (when ``log_every_n_steps`` says so), as the
    fit loop does after ``on_train_batch_end``: for a fit that stops inside that hook, whose resume does not train
    this step again."""
    connector = trainer._logger_connector
    connector.on_batch_end()
    connector.update_train_step_metrics()


def rerun_validation(checkpoint: dict[str, Any]) -> None:
    """Make a fit resumed from ``checkpoint`` run the validation that was due at its step and did not complete
    (Lightning skips it when the checkpoint was written at the training batch's end, and resumes one stopped
    midway only if it failed inside a step): the training batch counts as done, the validation as restarted
    at its first batch (Lightning then runs it whole)."""
    loop = checkpoint["loops"]["fit_loop"]
    train, val = loop["epoch_loop.batch_progress"], loop["epoch_loop.val_loop.batch_progress"]
    for counts in (train["total"], train["current"]):
        counts["completed"] = counts["processed"]
    done = val["total"]["completed"]
    val["total"] = {"ready": done + 1, "started": done + 1, "processed": done, "completed": done}
    val["current"] = dict.fromkeys(val["current"], 0)
    val["is_last_batch"] = False


def subcommand_parsers(parser: ArgumentParser) -> Any:
    """The subcommands action of a jsonargparse parser (``None`` without subcommands)."""
    return getattr(parser, "_subcommands_action", None)


def set_subcommand_help(parser: ArgumentParser, helps: dict[str, str]) -> None:
    """Replace the one-line summaries ``--help`` lists for subcommands (LightningCLI takes the ``Trainer``
    methods' docstrings; argparse keeps them on private pseudo-actions)."""
    for action in getattr(subcommand_parsers(parser), "_choices_actions", ()):
        if action.dest in helps:
            action.help = helps[action.dest]


def describe_method_options(parser: ArgumentParser, subcommand: str, title: str, ckpt_help: str) -> None:
    """Retitle a subcommand's group of ``Trainer`` method options and say what its ``--ckpt_path`` takes
    (LightningCLI copies the method's docstring; argparse keeps parsers and groups privately)."""
    sub = getattr(subcommand_parsers(parser), "_name_parser_map", {}).get(subcommand)
    for group in getattr(sub, "_action_groups", ()):
        for action in group._group_actions:
            if "--ckpt_path" in action.option_strings:
                group.title, action.help = title, ckpt_help


def parser_actions(parser: ArgumentParser) -> list[Any]:
    """The actions (options, positionals, subcommands) of an argparse/jsonargparse parser."""
    return list(parser._actions)


class CheckpointSteps(ModelCheckpoint):
    """``ModelCheckpoint`` with its private steps under public names; override :meth:`write_last` and
    :meth:`on_written`."""

    def on_written(self, trainer: L.Trainer, filepath: str) -> None:
        """Called after each checkpoint file this callback writes."""

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        self.on_written(trainer, filepath)

    @property
    def every_n_train_steps(self) -> int:
        return self._every_n_train_steps

    @property
    def train_time_interval(self) -> timedelta | None:
        return self._train_time_interval

    @property
    def last_time_checked(self) -> float | None:  # when the time trigger last fired (set at train start)
        return self._last_time_checked

    @last_time_checked.setter
    def last_time_checked(self, value: float | None) -> None:
        self._last_time_checked = value

    def monitor_candidates(self, trainer: L.Trainer) -> dict[str, Any]:
        return self._monitor_candidates(trainer)

    def write_topk(self, trainer: L.Trainer, candidates: dict[str, Any]) -> None:
        self._save_topk_checkpoint(trainer, candidates)

    def write_last(self, trainer: L.Trainer, candidates: dict[str, Any]) -> None:
        super()._save_last_checkpoint(trainer, candidates)

    def _save_last_checkpoint(self, trainer: L.Trainer, candidates: dict[str, Any]) -> None:
        self.write_last(trainer, candidates)  # Lightning's own calls go through the override too


class CLISteps(LightningCLI):
    """``LightningCLI`` with its private steps under public names: :meth:`run_subcommand`, :meth:`build_trainer`."""

    def run_subcommand(self, subcommand: str) -> None:
        super()._run_subcommand(subcommand)

    def _run_subcommand(self, subcommand: str) -> None:
        self.run_subcommand(subcommand)

    def build_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> L.Trainer:
        return super()._instantiate_trainer(config, callbacks)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> L.Trainer:
        return self.build_trainer(config, callbacks)
