"""Datamodules without a validation split: a plain Lightning one without ``val_dataloader`` and an ldrop one whose
``has_split("val")`` is False. Fitting on validation data and the sweep's validation headroom share one notion of
"has a validation split": without one the fit is skipped with a warning, the ``*_val`` headroom columns are left
out (never filled from a split the datamodule says it lacks) with one logged line, and the sweep is written."""

from __future__ import annotations

import functools
import logging

import lightning as L
import pytest
import torch

from ldrop.data import DatasetLayoutError, SyntheticClassificationDataModule
from ldrop.selectors import InputConditionedSelector
from ldrop.sweeps import BudgetSweep
from ldrop.tasks import ClassificationTask
from tests.helpers import quiet_trainer, tiny_classification_data


class NoValData(L.LightningDataModule):
    """A lab's plain datamodule: train and test loaders, no val_dataloader."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny_classification_data()

    def setup(self, stage=None):
        self.inner.setup(stage)

    def train_dataloader(self):
        return self.inner.train_dataloader()

    def test_dataloader(self):
        return self.inner.test_dataloader()


class SaysNoVal(SyntheticClassificationDataModule):
    """An ldrop datamodule that says it has no validation split (its val split would still build)."""

    def has_split(self, split):
        return split != "val"


class ReallyNoVal(SaysNoVal):
    def build_dataset(self, split):
        if split == "val":
            raise DatasetLayoutError("no validation list (this corpus has none)")
        return super().build_dataset(split)


def _small(kind):
    return kind(num_classes=4, num_train=16, num_val=8, num_test=16, batch_size=8, duration_range=(0.3, 0.5), seed=0)


@pytest.mark.parametrize("make_data", [NoValData, functools.partial(_small, SaysNoVal),
                                       functools.partial(_small, ReallyNoVal)], ids=["plain", "says", "really"])
def test_the_sweep_is_written_without_the_validation_headroom_columns(tmp_path, caplog, make_data):
    L.seed_everything(0)
    torch.manual_seed(0)
    model = ClassificationTask(labels=["a", "b", "c", "d"], backbone="tiny:wavlm",
                               selector=functools.partial(InputConditionedSelector, hidden_dim=16))
    sweep = BudgetSweep(budgets=[1, 2], headroom=True, directory=str(tmp_path / "sweep"))
    with caplog.at_level(logging.WARNING, logger="ldrop"):
        quiet_trainer(tmp_path, callbacks=[sweep]).test(model, make_data())
    assert (tmp_path / "sweep" / "budget_sweep.csv").is_file()
    assert [row["budget_layers"] for row in sweep.rows] == [1, 2]
    for row in sweep.rows:
        assert "acc_input_oracle" in row  # the test split's headroom
        assert not [column for column in row if column.endswith("_val")], row
    said = [r.getMessage() for r in caplog.records if "*_val" in r.getMessage()]
    assert len(said) == 1 and "no validation split" in said[0]


def test_has_validation_split():
    from ldrop.tasks.calibration import has_validation_split

    assert not has_validation_split(None) and not has_validation_split(NoValData())
    assert not has_validation_split(_small(SaysNoVal)) and has_validation_split(tiny_classification_data())
    data = tiny_classification_data()
    data.setup("fit")
    assert has_validation_split(L.LightningDataModule.from_datasets(data.dataset("train"), data.dataset("val")))
    assert not has_validation_split(L.LightningDataModule.from_datasets(data.dataset("train")))
