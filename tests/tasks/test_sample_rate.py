"""Data at another sample rate than the model takes is refused from Python too (plain ``Trainer.fit``, ``test``,
``predict``), not only by the CLI: a backbone trained on audio it was not made for is a silently wrong model."""

from __future__ import annotations

import pytest

from ldrop.tasks import ClassificationTask
from tests.helpers import quiet_trainer, tiny_classification_data


def _task(**kwargs) -> ClassificationTask:
    return ClassificationTask(labels=["a", "b", "c", "d"], backbone="tiny:wavlm", **kwargs)


@pytest.mark.parametrize("run", ["fit", "test", "predict"])
def test_data_at_another_rate_than_the_backbones_is_refused(tmp_path, run):
    trainer = quiet_trainer(tmp_path, max_steps=1)
    with pytest.raises(ValueError, match=r"the datamodule's sample_rate 8000: the backbone 'tiny:wavlm' takes 16000 "
                                         r"Hz audio .*set the datamodule's sample_rate 16000"):
        getattr(trainer, run)(_task(), datamodule=tiny_classification_data(sample_rate=8000))


def test_matching_rates_run_and_a_selectors_features_must_match_too(tmp_path):
    quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(_task(), datamodule=tiny_classification_data())
    fbank = _task(selector={"class_path": "ldrop.selectors.InputConditionedSelector",
                            "init_args": {"input": "fbank", "sample_rate": 8000}})
    with pytest.raises(ValueError, match=r"log-mel features are computed for 8000 Hz audio; set the selector's "
                                         r"sample_rate 16000"):
        quiet_trainer(tmp_path, max_steps=1).fit(fbank, datamodule=tiny_classification_data())


class OwnSetupTask(ClassificationTask):
    """A downstream task whose ``setup`` does its own thing and does not call ``super().setup(stage)``."""

    def setup(self, stage: str) -> None:
        self.stages = [*getattr(self, "stages", []), stage]


@pytest.mark.parametrize("run", ["fit", "test", "predict"])
def test_a_subclass_whose_setup_skips_super_still_refuses_data_at_another_rate(tmp_path, run):
    model = OwnSetupTask(labels=["a", "b", "c", "d"], backbone="tiny:wavlm")
    trainer = quiet_trainer(tmp_path, max_steps=1)
    with pytest.raises(ValueError, match=r"^the datamodule's sample_rate 8000: the backbone 'tiny:wavlm' takes 16000 "
                                         r"Hz audio .*set the datamodule's sample_rate 16000"):
        getattr(trainer, run)(model, datamodule=tiny_classification_data(sample_rate=8000))
    assert model.stages  # its own setup ran


def test_a_subclass_whose_setup_skips_super_runs_at_the_right_rate(tmp_path):
    model = OwnSetupTask(labels=["a", "b", "c", "d"], backbone="tiny:wavlm")
    quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model, datamodule=tiny_classification_data())
    assert model.stages == ["fit"]
