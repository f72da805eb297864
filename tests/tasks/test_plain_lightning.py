"""A downstream Lightning project: ldrop's task and the default selector under a plain ``lightning.Trainer``
fed with dataloaders only (no datamodule, so no validation split the task could fit on by itself)."""

from __future__ import annotations

import functools
import logging
import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from ldrop.data import AudioExample, collate_audio
from ldrop.selectors import InputConditionedSelector
from ldrop.sweeps import BudgetSweep
from ldrop.tasks import BudgetSampling, ClassificationTask, OptimizerConfig
from tests.helpers import quiet_trainer

LABELS = ["low", "high"]


def tone_loader(count: int, seed: int) -> DataLoader:
    """The project's own data: low or high tones in noise, 0.3-0.5 s, batches of 4."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for i in range(count):
        samples = int(16000 * (0.3 + 0.2 * float(torch.rand((), generator=generator))))
        t = torch.arange(samples) / 16000
        tone = torch.sin(2 * math.pi * (300.0 if i % 2 == 0 else 2000.0) * t)
        examples.append(AudioExample(tone + 0.3 * torch.randn(samples, generator=generator), i % 2, f"tone-{seed}-{i}"))
    return DataLoader(examples, batch_size=4, collate_fn=collate_audio)


def trained_model(tmp_path, **selector_options) -> ClassificationTask:
    L.seed_everything(0)
    model = ClassificationTask(labels=LABELS, backbone="tiny:wavlm", optimization=OptimizerConfig(warmup=0),
                               budgets=BudgetSampling(validation=[2]),
                               selector=functools.partial(InputConditionedSelector, hidden_dim=16, **selector_options))
    quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0).fit(model, train_dataloaders=tone_loader(8, seed=1))
    return model


def count_fits(model: ClassificationTask) -> list[list[int]]:
    """The budgets of every ``selector.calibrate`` call from now on."""
    calls: list[list[int]] = []
    fit = model.selector.calibrate

    def recording(data, budgets):
        calls.append(sorted(int(k) for k in budgets))
        return fit(data, budgets)

    model.selector.calibrate = recording
    return calls


def test_test_and_predict_with_dataloaders_only_after_calibrate_on_dataloader(tmp_path):
    model = trained_model(tmp_path)
    model.calibrate_on_dataloader(tone_loader(8, seed=2))
    report = model.selector.report()
    assert sorted(report) == list(range(1, model.num_layers))
    fits = count_fits(model)

    sweep = BudgetSweep(directory=str(tmp_path / "sweep"), controls=True, headroom=False)
    quiet_trainer(tmp_path, callbacks=[sweep]).test(model, dataloaders=tone_loader(8, seed=3))
    predictions = quiet_trainer(tmp_path).predict(model, dataloaders=tone_loader(8, seed=3))

    assert fits == []  # fitted is fitted: neither run fits again
    assert [row["uses_input"] for row in sweep.rows] == [report[k]["uses_input"] for k in sorted(report)] + [True]
    records = [record for batch in predictions for record in batch]
    assert len(records) == 8 and all(record["output"] in LABELS for record in records)


def test_without_validation_data_the_fallback_is_off_and_a_single_line_says_so(tmp_path, caplog):
    model = trained_model(tmp_path)
    sweep = BudgetSweep(directory=str(tmp_path / "sweep"), headroom=False)
    with caplog.at_level(logging.WARNING, logger="ldrop.tasks.calibration"):
        quiet_trainer(tmp_path, callbacks=[sweep]).test(model, dataloaders=tone_loader(8, seed=3))
        quiet_trainer(tmp_path).predict(model, dataloaders=tone_loader(4, seed=3))
    warnings = [r.getMessage() for r in caplog.records if r.name == "ldrop.tasks.calibration"]
    assert len(warnings) == 2 and all("\n" not in w for w in warnings)
    assert all("fallback: false" in w and "calibrate_on_dataloader" in w for w in warnings)
    # nothing decided: every budget read the input
    assert model.selector.report() == {} and bool(model.selector.fallback.uses_input.all())
    assert len(sweep.rows) == model.num_layers and all(0.0 <= row["acc"] <= 1.0 for row in sweep.rows)


def test_a_selector_that_cannot_run_unfitted_says_how_to_fit_it(tmp_path):
    model = trained_model(tmp_path, mode="threshold")
    model.selector.calibration.thresholds.fill_(float("nan"))  # as a model never validated: nothing calibrated
    sweep = BudgetSweep(directory=str(tmp_path / "sweep"), headroom=False)
    with pytest.raises(RuntimeError, match=r"InputConditionedSelector must be fitted .*calibrate_on_dataloader"):
        quiet_trainer(tmp_path, callbacks=[sweep]).test(model, dataloaders=tone_loader(4, seed=3))


class ToneData(L.LightningDataModule):
    """The project's own DataModule, with a validation split the task fits on."""

    def train_dataloader(self):
        return tone_loader(8, seed=1)

    def val_dataloader(self):
        return tone_loader(8, seed=2)

    def test_dataloader(self):
        return tone_loader(8, seed=3)

    def predict_dataloader(self):
        return tone_loader(4, seed=3)


def test_only_budgets_not_fitted_yet_are_fitted_and_training_forgets_the_fits(tmp_path):
    model = trained_model(tmp_path)
    model.calibrate_on_dataloader(tone_loader(8, seed=2), budgets=[2])
    fits = count_fits(model)
    quiet_trainer(tmp_path, callbacks=[BudgetSweep(budgets=[2, 3], directory=str(tmp_path / "s"), headroom=False)]
                  ).test(model, datamodule=ToneData())
    assert fits == [[3]]
    quiet_trainer(tmp_path).predict(model, datamodule=ToneData())
    assert fits == [[3], [1, 4]]  # predict needs every budget: only those not fitted yet
    assert model.calibrated_budgets == frozenset({1, 2, 3, 4})
    quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model, datamodule=ToneData())
    assert model.calibrated_budgets == frozenset()
    assert torch.isnan(model.selector.fallback.metrics).all()  # training also cleared the decisions


@pytest.mark.parametrize("precision", ["bf16-true", "64-true"])
def test_true_precisions_fit_with_the_model_summary_on(tmp_path, precision):
    """Lightning's model summary (on by default) runs the example input through the model cast to bf16/fp64."""
    from tests.helpers import tiny_classification_data

    data = tiny_classification_data()
    model = ClassificationTask(labels=data.class_names, backbone="tiny:wavlm", selector=InputConditionedSelector)
    trainer = quiet_trainer(tmp_path, precision=precision, enable_model_summary=True, max_steps=1, limit_val_batches=1)
    trainer.fit(model, data)
    assert trainer.global_step == 1
    dtype = torch.bfloat16 if precision == "bf16-true" else torch.float64
    assert {p.dtype for name, p in model.named_parameters() if not name.startswith("selector.")} == {dtype}
    # the selector keeps float32 under a half-precision cast (its scores subtract a large running mean)
    assert {p.dtype for p in model.selector.parameters()} == {torch.float32 if precision == "bf16-true" else dtype}
