"""The input-conditioned selector's fallback in a task: ``ldrop test`` fits it on validation data, and on
that data every budget is at least as good as the best input-blind candidate (issue 11, item 3)."""

from __future__ import annotations

import functools

import lightning as L
import torch

from ldrop.selectors import InputConditionedSelector
from ldrop.sweeps import BudgetSweep
from ldrop.sweeps.report import load_sweep, primary_metric
from ldrop.tasks import BudgetSampling, ClassificationTask, OptimizerConfig
from ldrop.tasks.calibration import _TaskCalibrationData
from tests.helpers import quiet_trainer, tiny_classification_data


def test_ldrop_test_fits_the_fallback_and_no_budget_is_below_the_best_blind_mask_on_the_fitting_data(tmp_path):
    L.seed_everything(0)
    data = tiny_classification_data(num_val=24)
    torch.manual_seed(0)
    model = ClassificationTask(labels=["a", "b", "c", "d"], backbone="tiny:wavlm",
                               optimization=OptimizerConfig(lr=3e-3, head_lr=1e-2, warmup=0, schedule="constant"),
                               budgets=BudgetSampling(validation=[2]),
                               selector=functools.partial(InputConditionedSelector, hidden_dim=16))
    quiet_trainer(tmp_path, max_steps=8, limit_val_batches=0).fit(model, data)
    selector = model.selector
    assert selector.needs_calibration and not selector.calibrates_at_validation and selector.report() == {}

    sweep = BudgetSweep(directory=str(tmp_path / "sweep"), headroom=False)
    quiet_trainer(tmp_path, callbacks=[sweep], limit_test_batches=1).test(model, data)
    n = model.num_layers
    report = selector.report()
    assert sorted(report) == list(range(1, n))  # fitted before the test for every swept budget but N
    assert [row["uses_input"] for row in sweep.rows] == [report[k]["uses_input"] for k in range(1, n)] + [True]
    assert primary_metric(load_sweep(tmp_path / "sweep")) == "acc"

    model.eval()
    fitting = _TaskCalibrationData(model, lambda: data.val_dataloader())
    for k, decision in report.items():
        def chosen(encoded, k=k):  # the fitted selector as evaluation runs it, fallback included
            budget = torch.full((encoded.features.shape[0],), k, dtype=torch.long)
            return selector(encoded.features, encoded.frame_mask, budget).keep_mask

        value = fitting.metric_with_masks(chosen)
        assert value >= decision["blind"] - 1e-6
        assert abs(value - max(decision["input"], decision["blind"])) < 1e-6
        assert decision["uses_input"] == (decision["input"] > decision["blind"])


def test_the_validation_fit_reads_the_whole_split_when_the_users_loader_shards_it(tmp_path, monkeypatch):
    """A datamodule whose validation loader has torch's DistributedSampler (one rank's shard): the fit before
    predict still reads every validation clip, as every DDP rank must."""
    from torch.utils.data import DataLoader, DistributedSampler

    from ldrop.data import SyntheticClassificationDataModule
    from ldrop.tasks import calibration

    class ShardedValidation(SyntheticClassificationDataModule):
        def val_dataloader(self):
            loader = super().val_dataloader()
            sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=1, shuffle=False)
            return DataLoader(loader.dataset, batch_size=4, sampler=sampler, collate_fn=loader.collate_fn)

    seen = []
    fit = calibration.calibrate_on_batches

    def counting(task, batches, budgets, **kwargs):
        seen.append(sum(len(batch) for batch in batches()))
        return fit(task, batches, budgets, **kwargs)

    monkeypatch.setattr(calibration, "calibrate_on_batches", counting)
    data = ShardedValidation(num_classes=4, num_train=8, num_val=10, num_test=4, batch_size=4,
                             duration_range=(0.3, 0.5), seed=0)
    torch.manual_seed(0)
    model = ClassificationTask(labels=["a", "b", "c", "d"], backbone="tiny:wavlm",
                               selector=functools.partial(InputConditionedSelector, hidden_dim=16))
    quiet_trainer(tmp_path, limit_predict_batches=1).predict(model, data)
    assert seen == [10]
    assert sorted(model.selector.report()) == list(range(1, model.num_layers))
