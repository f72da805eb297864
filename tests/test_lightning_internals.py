"""The private Lightning (and jsonargparse) names that ldrop/_lightning.py wraps still exist where it reaches them.

A Lightning release that moves one fails here, naming the attribute and the installed version, rather than as
a silently inexact resume or a late AttributeError; and no other ldrop module touches a private Lightning name.
"""

from __future__ import annotations

import re
from pathlib import Path

import jsonargparse
import lightning
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.combined_loader import CombinedLoader

import ldrop
from ldrop import _lightning

VERSIONS = f"lightning {lightning.__version__}, jsonargparse {jsonargparse.__version__}"


def _require(owner: object, name: str, where: str) -> None:
    if not hasattr(owner, name):
        pytest.fail(f"{where}.{name} is gone in {VERSIONS}: update ldrop/_lightning.py", pytrace=False)


def test_every_wrapped_private_name_exists_in_the_installed_versions(tmp_path):
    from lightning.fabric.utilities import seed

    for name in ("_collect_rng_states", "_set_rng_states"):
        _require(seed, name, "lightning.fabric.utilities.seed")
    checkpoint = ModelCheckpoint(every_n_train_steps=1)
    for name in ("_every_n_train_steps", "_train_time_interval", "_last_time_checked", "_monitor_candidates",
                 "_save_topk_checkpoint", "_save_last_checkpoint", "_save_checkpoint"):
        _require(checkpoint, name, "ModelCheckpoint")
    for name in ("_run_subcommand", "_instantiate_trainer"):
        _require(LightningCLI, name, "LightningCLI")
    _require(CombinedLoader, "_load_state_dicts", "CombinedLoader")
    trainer = lightning.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False)
    _require(trainer.fit_loop, "_combined_loader", "Trainer.fit_loop")
    _require(trainer.fit_loop, "_data_fetcher", "Trainer.fit_loop")
    _require(trainer.fit_loop.epoch_loop, "_should_check_val_fx", "Trainer.fit_loop.epoch_loop")
    _require(trainer.fit_loop.epoch_loop, "_should_accumulate", "Trainer.fit_loop.epoch_loop")  # accumulating
    _require(trainer, "_signal_connector", "Trainer")  # hold_stop
    _require(trainer._signal_connector, "received_sigterm", "Trainer._signal_connector")
    _require(trainer, "_logger_connector", "Trainer")
    for name in ("on_batch_end", "update_train_step_metrics"):  # log_train_step
        _require(trainer._logger_connector, name, "Trainer._logger_connector")
    loops = trainer.fit_loop.state_dict()  # what rerun_validation rewrites in a checkpoint's "loops"/"fit_loop"
    for key, fields in (("epoch_loop.batch_progress", ("total", "current")),
                        ("epoch_loop.val_loop.batch_progress", ("total", "current", "is_last_batch"))):
        if key not in loops or not set(fields) <= set(loops[key]):
            pytest.fail(f"the fit loop's state has no {key} with {fields} in {VERSIONS}: update "
                        "ldrop/_lightning.py's rerun_validation", pytrace=False)
    _require(lightning.LightningModule(), "_trainer", "LightningModule")

    class Saved(lightning.LightningModule):
        def __init__(self, width: int = 1) -> None:
            super().__init__()
            self.save_hyperparameters()

    _require(Saved(), "_hparams_initial", "LightningModule")  # restore_initial_hparams
    from lightning.pytorch.loggers import CSVLogger

    _require(CSVLogger(str(tmp_path)).experiment, "metrics_keys", "CSVLogger.experiment")  # keep_csv_metrics
    parser = jsonargparse.ArgumentParser()
    _require(parser, "_actions", "jsonargparse.ArgumentParser")
    parser.add_subcommands()
    _require(parser, "_subcommands_action", "jsonargparse.ArgumentParser")


def test_attached_trainer_is_none_detached_and_the_trainer_once_attached():
    module = lightning.LightningModule()
    assert _lightning.attached_trainer(module) is None
    assert _lightning.attached_trainer(torch.nn.Linear(1, 1)) is None
    trainer = lightning.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False)
    module.trainer = trainer
    assert _lightning.attached_trainer(module) is trainer


def test_a_held_stop_is_not_seen_until_it_is_set_again():
    trainer = lightning.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False)
    _lightning.hold_stop(trainer, False)
    assert trainer.received_sigterm
    _lightning.hold_stop(trainer, True)
    assert not trainer.received_sigterm


def test_random_states_round_trip_through_the_wrappers():
    states = _lightning.collect_rng_states(include_cuda=False)
    first = torch.rand(3)
    _lightning.set_rng_states(states)
    assert torch.equal(torch.rand(3), first)


def test_no_other_module_names_a_private_lightning_name():
    wrapped = ("_collect_rng_states", "_set_rng_states", "_every_n_train_steps", "_train_time_interval",
               "_last_time_checked", "_monitor_candidates", "_save_topk_checkpoint", "_save_last_checkpoint", "_save_checkpoint",
               "_run_subcommand", "_instantiate_trainer", "_combined_loader", "_load_state_dicts",
               "_subcommands_action", "_trainer", "_should_accumulate", "_signal_connector")
    pattern = re.compile(r"\b(" + "|".join(wrapped) + r")\b|from lightning[\w.]* import _")
    package = Path(ldrop.__file__).parent
    offenders = [f"{path.relative_to(package.parent)}:{number}"
                 for path in package.rglob("*.py") if path.name != "_lightning.py"
                 for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, f"private Lightning names outside ldrop/_lightning.py: {offenders}"
