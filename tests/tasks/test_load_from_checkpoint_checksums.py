"""Lightning's own ``MyTask.load_from_checkpoint(path)`` on an ldrop task verifies the archive's checksums first, as
ldrop's loading does: a checkpoint whose bytes changed inside a tensor is refused, naming the entry, instead of
loading the changed weights without a word."""

from __future__ import annotations

import pytest
import torch

from ldrop._io import CheckpointError
from ldrop.selectors import InputConditionedSelector
from ldrop.tasks import ClassificationTask
from tests.cli.test_checksum import _rotted
from tests.helpers import quiet_trainer, tiny_classification_data


class MyTask(ClassificationTask):
    """A downstream user's subclass."""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("mytask")
    model = MyTask(labels=["a", "b", "c", "d"], backbone="tiny:wavlm", selector=InputConditionedSelector)
    trainer = quiet_trainer(root, max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=tiny_classification_data())
    trainer.save_checkpoint(root / "my.ckpt")
    return root / "my.ckpt"


def test_load_from_checkpoint_refuses_an_archive_changed_inside_a_tensor(checkpoint, tmp_path):
    rotted, entry = _rotted(checkpoint, tmp_path)
    assert entry.split("/")[-2] == "data"  # a stored tensor, not the pickled entries
    with pytest.raises(CheckpointError, match=f"checkpoint '{rotted}' is damaged: its entry '{entry}' fails its "
                                              "checksum"):
        MyTask.load_from_checkpoint(rotted)
    with pytest.raises(CheckpointError, match="fails its checksum"):
        MyTask.load_from_checkpoint(str(rotted), map_location="cpu")
    loaded = MyTask.load_from_checkpoint(checkpoint)  # the good one loads as before
    assert isinstance(loaded, MyTask) and loaded.num_layers == 4
