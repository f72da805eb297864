"""Without a progress bar (``--trainer.enable_progress_bar false``, a batch job's log), a run still says where it
is: each validation of a fit its metrics, and training and prediction a line every ``interval`` seconds."""

from __future__ import annotations

import logging
import sys

import pytest

from ldrop.cli import main
from ldrop.cli.callbacks import ProgressLines
from tests.cli.common import QUICKSTART, SMALL


def test_a_fit_without_a_progress_bar_logs_each_validations_metrics(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="ldrop.progress"):
        assert main(["fit", "--config", QUICKSTART, *SMALL, "--trainer.max_epochs", "2",
                     "--trainer.logger.init_args.save_dir", str(tmp_path)]) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("validation at epoch")]
    assert [line.split(":")[0] for line in lines] == ["validation at epoch 0, step 2", "validation at epoch 1, step 4"]
    assert all("val/acc " in line and "val/loss " in line for line in lines), lines


def test_training_and_prediction_speak_every_interval(tmp_path, caplog):
    from ldrop.selectors import InputConditionedSelector
    from ldrop.tasks import ClassificationTask
    from tests.helpers import quiet_trainer, tiny_classification_data

    model = ClassificationTask(labels=["a", "b", "c", "d"], backbone="tiny:wavlm", selector=InputConditionedSelector)
    data = tiny_classification_data()
    with caplog.at_level(logging.INFO, logger="ldrop.progress"):
        quiet_trainer(tmp_path, max_steps=3, limit_val_batches=0, callbacks=[ProgressLines(interval=0)]).fit(model, data)
        quiet_trainer(tmp_path, callbacks=[ProgressLines(interval=0)]).predict(model, datamodule=data)
    messages = [r.getMessage() for r in caplog.records]
    assert [m.split(",")[1] for m in messages if m.startswith("training:")] == [" step 1 of 3", " step 2 of 3",
                                                                                 " step 3 of 3"]
    predicting = [m for m in messages if m.startswith("predicting:")]
    assert predicting and predicting[-1].endswith(f"{len(predicting)} of {len(predicting)} batches"), predicting


@pytest.mark.parametrize("terminal, asked, expected", [
    (False, [], "lines"),  # a batch job's log, nohup, a pipe: the bar would print nothing until the end
    (True, [], "bar"),
    (False, ["--trainer.enable_progress_bar", "true"], "bar"),  # asked for
])
def test_the_bar_is_the_default_in_a_terminal_only(tmp_path, monkeypatch, terminal, asked, expected):
    from lightning.pytorch.callbacks import ProgressBar

    import ldrop.cli.lightning as cli

    seen = {}

    class Out:  # a stand-in for sys.stdout that says whether it is a terminal
        def __getattr__(self, name):
            return getattr(sys.__stdout__, name)

        def isatty(self):
            return terminal

    def record(self, *args, **kwargs):
        seen["callbacks"] = self.trainer.callbacks
        seen["saved"] = self.config["fit"]["trainer"]["enable_progress_bar"]

    monkeypatch.setattr(cli.sys, "stdout", Out())
    monkeypatch.setattr(cli.LdropCLI, "after_fit", record)
    at = SMALL.index("--trainer.enable_progress_bar")
    small = SMALL[:at] + SMALL[at + 2:]
    assert main(["fit", "--config", QUICKSTART, *small, *asked, "--trainer.max_steps", "1",
                 "--trainer.logger.init_args.save_dir", str(tmp_path)]) == 0
    kinds = {"bar": any(isinstance(c, ProgressBar) for c in seen["callbacks"]),
             "lines": any(isinstance(c, ProgressLines) for c in seen["callbacks"])}
    assert [k for k, on in kinds.items() if on] == [expected]
    assert seen["saved"] is (True if asked else None)  # the run's config keeps what was given
