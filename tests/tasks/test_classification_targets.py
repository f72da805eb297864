"""A downstream datamodule whose classification targets are not class ids (the words themselves, floats) gets
one ValueError naming what the targets must be, wherever they are first read (validation's metrics, the loss)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ldrop.data import SyntheticClassificationDataModule
from ldrop.tasks import ClassificationTask
from tests.helpers import quiet_trainer


class WordTargets(SyntheticClassificationDataModule):
    """Targets as the class names, as many keyword lists give them."""

    def collate(self, examples):
        batch = super().collate(examples)
        return dataclasses.replace(batch, targets=[self.class_names[i] for i in batch.targets.tolist()])


class FloatTargets(SyntheticClassificationDataModule):
    def collate(self, examples):
        batch = super().collate(examples)
        return dataclasses.replace(batch, targets=batch.targets.float())


def _data(kind):
    return kind(num_classes=4, num_train=16, num_val=8, num_test=8, batch_size=8, duration_range=(0.3, 0.5), seed=0)


@pytest.mark.parametrize(("kind", "got"), [(WordTargets, "a list of str"), (FloatTargets, "a tensor of float32")])
def test_targets_that_are_not_class_ids_are_one_clear_line(tmp_path, kind, got):
    data = _data(kind)
    model = ClassificationTask(labels=data.class_names, backbone="tiny:wavlm", selector=None)
    with pytest.raises(ValueError, match="targets must be class ids in 0..3, a LongTensor") as raised:
        quiet_trainer(tmp_path, limit_val_batches=1).validate(model, data, verbose=False)  # update_metrics
    assert got in str(raised.value) and "\n" not in str(raised.value)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    with pytest.raises(ValueError, match="targets must be class ids"):  # the loss, beside the range check
        model.task_loss(torch.zeros(len(batch), 4), None, batch)


class Int32Targets(SyntheticClassificationDataModule):
    def collate(self, examples):
        batch = super().collate(examples)
        return dataclasses.replace(batch, targets=batch.targets.int())


def test_integer_ids_of_another_dtype_are_taken_as_class_ids(tmp_path):
    data = _data(Int32Targets)
    model = ClassificationTask(labels=data.class_names, backbone="tiny:wavlm", selector=None)
    [metrics] = quiet_trainer(tmp_path, limit_val_batches=1).validate(model, data, verbose=False)
    assert 0.0 <= metrics["val/acc"] <= 1.0
