"""``python -m ldrop.bench batching``: test clips batched against alone, with and without ``batch_independent``."""

from __future__ import annotations

import json

import torch

from ldrop.bench.batching import main
from ldrop.selectors import InputConditionedSelector
from ldrop.tasks import ClassificationTask
from tests.helpers import quiet_trainer, tiny_classification_data

CONFIG = """data:
  class_path: SyntheticClassificationDataModule
  init_args: {num_train: 16, num_val: 16, num_test: 24, num_classes: 4, batch_size: 8, duration_range: [0.4, 1.2]}
"""


def _rows(checkpoint, tmp_path) -> list[dict]:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    out = tmp_path / f"{checkpoint.stem}.json"
    assert main(["--ckpt", str(checkpoint), "--config", str(config), "--json", str(out)]) == 0
    return json.loads(out.read_text())["rows"]


def test_batching_changes_a_default_model_and_not_a_batch_independent_one(tiny_checkpoint, tmp_path):
    torch.manual_seed(0)
    task = ClassificationTask(labels=["a", "b", "c", "d"], backbone="tiny:wavlm", selector=InputConditionedSelector,
                              batch_independent=True)
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(task, datamodule=tiny_classification_data())
    trainer.save_checkpoint(tmp_path / "independent.ckpt")

    default, independent = _rows(tiny_checkpoint, tmp_path), _rows(tmp_path / "independent.ckpt", tmp_path)
    assert {(r["k"], r["batching"]) for r in default} == {(k, b) for k in range(1, 5) for b in ("test loader", "shuffled")}
    assert all(r["clips"] == 24 for r in default + independent)
    # clips of 0.4-1.2 s share batches of 8: padding moves the default model's logits (by about 0.1 on tiny
    # random models), not the batch-independent one's
    assert max(r["max_logit_change"] for r in default if r["batching"] == "shuffled") > 1e-2
    assert all(r["layers_changed"] == r["predictions_changed"] == 0 and r["max_logit_change"] < 1e-4
               for r in independent)
