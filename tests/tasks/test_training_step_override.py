"""A downstream ``training_step`` override: one that returns ``super()``'s dict with its loss changed keeps the
selector-statistics refresh; one that returns only the loss turns it off, and the refresh says so once."""

from __future__ import annotations

import logging

import lightning as L
import pytest
import torch

from ldrop.selectors import InputConditionedSelector
from ldrop.tasks import ClassificationTask, OptimizerConfig
from ldrop.tasks.statistics import SelectorStatistics
from tests.helpers import quiet_trainer, tiny_classification_data


class L2Classifier(ClassificationTask):
    """Adds an L2 penalty on the head, keeping the base's outputs."""

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        out["loss"] = out["loss"] + 1e-4 * sum(p.pow(2).sum() for p in self.head.parameters())
        return out


class BareLossClassifier(ClassificationTask):
    """What a ``-> Tensor`` annotation suggests: the loss alone."""

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        return out["loss"] + 1e-4 * sum(p.pow(2).sum() for p in self.head.parameters())


@pytest.mark.parametrize(("task", "refreshed"), [(L2Classifier, True), (BareLossClassifier, False)])
def test_the_statistics_refresh_says_once_when_training_step_drops_the_encoded_batch(tmp_path, caplog, task,
                                                                                      refreshed):
    L.seed_everything(0)
    model = task(labels=["a", "b", "c", "d"], backbone="tiny:wavlm", selector=InputConditionedSelector,
                 optimization=OptimizerConfig(warmup=0))
    assert model.selector.tracks_statistics
    trainer = quiet_trainer(tmp_path, max_steps=3, limit_val_batches=0)
    with caplog.at_level(logging.WARNING, logger="ldrop"):
        trainer.fit(model, datamodule=tiny_classification_data())
    [statistics] = [c for c in trainer.callbacks if isinstance(c, SelectorStatistics)]
    said = [r.getMessage() for r in caplog.records if "no 'encoded'" in r.getMessage()]
    if refreshed:
        assert len(statistics.recent) == 3 and not said
    else:
        assert len(statistics.recent) == 0
        assert len(said) == 1 and "BareLossClassifier" in said[0] and "super().training_step" in said[0]
    assert torch.isfinite(model.selector.running_mean).all()
