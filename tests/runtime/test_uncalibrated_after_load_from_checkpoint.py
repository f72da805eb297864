"""A downstream task loaded the plain Lightning way (``MyTask.load_from_checkpoint``) warns as ``ldrop.load_model``
does: once, at the first call below full depth before its selector is fitted; ``Trainer.test`` and
``Trainer.predict`` from the checkpoint (which fit it first, and call no ``forward``) never warn."""

from __future__ import annotations

import sys
import warnings

import lightning as L
import pytest
import torch
from torch import nn

from ldrop.runtime import UncalibratedSelectorWarning
from ldrop.selectors import InputConditionedSelector
from ldrop.sweeps import BudgetSweep
from ldrop.tasks import ClassificationTask
from tests.helpers import quiet_trainer, tiny_classification_data

WAVES = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))
LABELS = ["a", "b", "c", "d"]


class MLPHeadTask(ClassificationTask):
    def configure_head(self) -> nn.Module:
        hidden = self.backbone.hidden_size
        return nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, self.num_classes))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    L.seed_everything(0)
    root = tmp_path_factory.mktemp("mlp")
    model = MLPHeadTask(labels=LABELS, backbone="tiny:wavlm", selector=InputConditionedSelector)
    trainer = quiet_trainer(root, max_steps=2, limit_val_batches=0)
    trainer.fit(model, datamodule=tiny_classification_data())
    trainer.save_checkpoint(root / "mlp.ckpt")
    return root / "mlp.ckpt"


def _unfitted(caught) -> list[warnings.WarningMessage]:
    return [w for w in caught if issubclass(w.category, UncalibratedSelectorWarning)]


def test_load_from_checkpoint_warns_once_at_the_first_call_below_full_depth(checkpoint):
    model = MLPHeadTask.load_from_checkpoint(checkpoint).eval()
    assert not model.selector.calibrated
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        model(WAVES)  # full depth: the fit changes nothing
        line = sys._getframe().f_lineno + 1
        model(WAVES, None, 2)
        model(WAVES, None, budget=0.5)
    [warning] = _unfitted(caught)
    assert (warning.filename, warning.lineno) == (__file__, line)  # the user's call
    assert "calibrate_on_dataloader" in str(warning.message)


def test_test_and_predict_from_the_checkpoint_do_not_warn(checkpoint, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = MLPHeadTask(labels=LABELS, backbone="tiny:wavlm", selector=InputConditionedSelector)
        sweep = BudgetSweep(budgets=[1, 2], headroom=False, directory=str(tmp_path / "sweep"))
        quiet_trainer(tmp_path, callbacks=[sweep], limit_test_batches=1).test(
            model, tiny_classification_data(), ckpt_path=checkpoint, verbose=False)
        quiet_trainer(tmp_path, limit_predict_batches=1).predict(model, tiny_classification_data(),
                                                                 ckpt_path=checkpoint)
        with torch.no_grad():  # fitted (every budget, before predict): no warning after it either
            model.eval()(WAVES, None, 2)
    assert model.selector.calibrated
    assert not _unfitted(caught)


def test_a_fit_resumed_from_the_checkpoint_warns_as_a_fresh_fit_does(checkpoint, tmp_path):
    runs = {}
    for name, resume in (("fresh", None), ("resumed", checkpoint)):
        model = MLPHeadTask(labels=LABELS, backbone="tiny:wavlm", selector=InputConditionedSelector)
        quiet_trainer(tmp_path / name, max_steps=3, limit_val_batches=0).fit(
            model, datamodule=tiny_classification_data(), ckpt_path=resume)
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            model.eval()(WAVES, None, 2)
        runs[name] = len(_unfitted(caught))
    assert runs == {"fresh": 0, "resumed": 0}  # a model being trained is not "a loaded model used unfitted"
