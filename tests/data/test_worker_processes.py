"""DataLoader worker processes as users start them: spawn/forkserver (macOS's and Windows' default) pickles what a
worker runs, and an ldrop error raised in a worker is still one line."""

from __future__ import annotations

import multiprocessing

import pytest
import torch

from ldrop.cli.errors import user_error_line
from ldrop.data import AudioDataModule, SyntheticClassificationDataModule
from ldrop.data.synthetic import SyntheticClassificationDataset
from ldrop.tasks import ClassificationTask
from tests.helpers import quiet_trainer


class OwnCollate(SyntheticClassificationDataModule):
    """A downstream project's DataModule with a collate of its own (the override the base class invites)."""

    def collate(self, examples):
        batch = super().collate(examples)
        self.collated = getattr(self, "collated", 0) + 1  # a method that reads its module: it is pickled whole
        return batch


@pytest.fixture
def spawned_workers():
    previous = multiprocessing.get_start_method()
    torch.multiprocessing.set_start_method("spawn", force=True)
    yield
    torch.multiprocessing.set_start_method(previous, force=True)


def test_an_own_collate_trains_in_spawned_worker_processes(tmp_path, spawned_workers):
    # Each worker received the DataModule with its trainer, and so the model, which does not pickle (its
    # parametrized modules): the fit ended in a traceback about serialization.
    data = OwnCollate(num_classes=4, num_train=8, num_val=4, num_test=4, batch_size=4, num_workers=1, seed=0)
    task = ClassificationTask(labels=data.class_names, backbone="tiny:wavlm")
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=1)
    trainer.fit(task, data)
    assert trainer.global_step == 2 and data.trainer is trainer  # the module itself keeps its trainer


class MixedTargets(SyntheticClassificationDataset):
    def load(self, index):
        example = super().load(index)
        example.target = "a transcript" if index % 2 else 1  # ldrop's collate refuses a batch of both kinds
        return example


class MixedTargetsData(SyntheticClassificationDataModule):
    def build_dataset(self, split):
        dataset = super().build_dataset(split)
        dataset.__class__ = MixedTargets
        return dataset


class FailingCollate(SyntheticClassificationDataModule):
    def collate(self, examples):
        raise ValueError("a bug in the project's own collate")


@pytest.mark.parametrize("num_workers", [0, 1])
def test_an_ldrop_error_in_a_worker_process_is_one_line_and_a_projects_own_error_its_traceback(num_workers):
    def error(data: AudioDataModule) -> BaseException:
        with pytest.raises(ValueError) as caught:
            next(iter(data.val_dataloader()))
        return caught.value

    kwargs = dict(num_train=4, num_val=4, num_test=4, batch_size=4, num_workers=num_workers, seed=0)
    line = user_error_line(error(MixedTargetsData(**kwargs)))  # raised in a worker: a multi-line error of PyTorch's
    assert line is not None and line.startswith("a batch's targets must all be") and "\n" not in line, line
    assert user_error_line(error(FailingCollate(**kwargs))) is None  # not ldrop's message: the full traceback
