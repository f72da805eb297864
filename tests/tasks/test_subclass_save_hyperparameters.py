"""A downstream subclass whose ``__init__`` calls ``self.save_hyperparameters()`` (a Lightning habit), built from
Python with a selector class and argument groups as dataclasses, writes checkpoints that load through every path:
``load_from_checkpoint``, ``ldrop.load_model``, ``AdaptiveModel.from_pretrained`` and ``ldrop export``. A checkpoint
that holds a pickled class (written before) says so in one line."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ldrop
from ldrop._io import CheckpointError
from ldrop.cli import main
from ldrop.runtime import AdaptiveModel
from ldrop.selectors import InputConditionedSelector
from ldrop.tasks import BudgetSampling, ClassificationTask, OptimizerConfig
from ldrop.tasks.checkpointing import record_checkpoint
from ldrop.tasks.config import as_dict
from tests.helpers import quiet_trainer, tiny_classification_data

SPEC = {"class_path": "ldrop.selectors.input_conditioned.InputConditionedSelector", "init_args": {}}


class SaveHPClassifier(ClassificationTask):
    """A lab's subclass: its own option, and save_hyperparameters() after super().__init__()."""

    def __init__(self, dropout: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.drop = nn.Dropout(dropout)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("savehp")
    model = SaveHPClassifier(dropout=0.3, labels=["a", "b", "c", "d"], backbone="tiny:wavlm",
                             selector=InputConditionedSelector, budgets=BudgetSampling(validation=[2, 4]),
                             optimization=OptimizerConfig(warmup=0))
    trainer = quiet_trainer(root, max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=tiny_classification_data())
    path = root / "savehp.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_its_hyperparameters_and_checkpoint_hold_no_pickled_class(checkpoint):
    model = SaveHPClassifier(labels=["a", "b"], selector=InputConditionedSelector, budgets=BudgetSampling())
    assert model.hparams.selector == SPEC  # not the class: what ldrop stores
    assert isinstance(model.hparams.budgets, dict) and isinstance(model.hparams.optimization, dict)
    # hyper-parameters changed by hand after __init__: stored in the serialisable form all the same
    saved = {model.CHECKPOINT_HYPER_PARAMS_KEY: {"selector": InputConditionedSelector, "budgets": BudgetSampling()}}
    record_checkpoint(model, saved)
    assert saved[model.CHECKPOINT_HYPER_PARAMS_KEY] == {"selector": SPEC, "budgets": as_dict(BudgetSampling())}
    stored = torch.load(checkpoint, weights_only=True)[ClassificationTask.CHECKPOINT_HYPER_PARAMS_KEY]
    assert stored["selector"] == SPEC and stored["dropout"] == 0.3


def test_it_loads_through_every_path(checkpoint, tmp_path):
    for loaded in (SaveHPClassifier.load_from_checkpoint(checkpoint), ldrop.load_model(checkpoint),
                   AdaptiveModel.from_pretrained(checkpoint).model):
        assert type(loaded) is SaveHPClassifier and loaded.hparams.dropout == 0.3
        assert isinstance(loaded.selector, InputConditionedSelector)
        assert loaded.budgets.validation == [2, 4]
    assert main(["export", str(checkpoint), str(tmp_path / "exported")]) == 0
    exported = ldrop.load_model(tmp_path / "exported")
    assert type(exported) is SaveHPClassifier and exported.hparams.dropout == 0.3


def test_a_checkpoint_holding_a_pickled_class_says_so_in_one_line(checkpoint, tmp_path):
    state = torch.load(checkpoint, weights_only=False)
    state[ClassificationTask.CHECKPOINT_HYPER_PARAMS_KEY]["selector"] = InputConditionedSelector  # as written before
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    for load in (SaveHPClassifier.load_from_checkpoint, ldrop.load_model):
        with pytest.raises(CheckpointError, match="pickled Python object") as raised:
            load(old)
        message = str(raised.value)
        assert "\n" not in message and str(old) in message and "InputConditionedSelector" in message
        assert message.count(str(old)) == 1
    # trusted, it still loads, and the loaded model's hyper-parameters are serialisable again
    assert SaveHPClassifier.load_from_checkpoint(old, weights_only=False).hparams.selector == SPEC
    with pytest.raises(TypeError, match="instance"):  # Lightning's guard stays
        ldrop.load_model(checkpoint).load_from_checkpoint(checkpoint)
