"""Fixtures of the run-time tests: a tiny trained checkpoint, its export, and synthetic profiles."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ldrop.budgets import DeviceProfile, PartFit
from ldrop.selectors import InputConditionedSelector
from ldrop.tasks import ClassificationTask
from tests.helpers import quiet_trainer, tiny_classification_data


def synthetic_profile(num_layers: int = 4, fixed=(0.002, 1e-5, 0.0), layer=(0.001, 2e-5, 1e-8)) -> DeviceProfile:
    """A profile with a known cost law (no timing), with the tiny configs' CNN layout."""
    return DeviceProfile(fixed=PartFit(*fixed), layer=PartFit(*layer), num_layers=num_layers,
                         conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2])


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny classification model trained for two steps and saved the way Lightning does."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("ckpt")
    model = ClassificationTask(labels=["a", "b", "c", "d"], backbone="tiny:wavlm", selector=InputConditionedSelector)
    trainer = quiet_trainer(root, max_steps=2, limit_val_batches=0)
    trainer.fit(model, datamodule=tiny_classification_data())
    path = root / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def tiny_export(tiny_checkpoint, tmp_path_factory) -> Path:
    from ldrop.cli import main

    out = tmp_path_factory.mktemp("export") / "model"
    assert main(["export", str(tiny_checkpoint), str(out)]) == 0
    return out


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Commands run in-process with ``--threads`` change torch's global thread count: put it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
