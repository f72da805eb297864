"""Extending ldrop without touching ``tasks/``: a user's own selector with a fitting step, a task subclass
with its own module."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import Tensor, nn

from ldrop.selectors import LayerSelector, SelectorOutput, hard_topk_mask
from ldrop.sweeps import BudgetSweep
from ldrop.tasks import BudgetSampling, ClassificationTask, OptimizerConfig
from tests.helpers import quiet_trainer, tiny_classification_data


class LoudnessSelector(LayerSelector):
    """Loud inputs run the top layers, quiet ones the bottom layers; "loud" is fitted on validation data."""

    def __init__(self, num_layers: int, feature_dim: int) -> None:
        super().__init__(num_layers, feature_dim)
        self.register_buffer("threshold", torch.tensor(float("nan")))
        self.calibrated_budgets: list[list[int]] = []

    @property
    def needs_calibration(self) -> bool:
        return True

    def calibrate(self, data, budgets) -> None:
        loudness = torch.cat([self.loudness(batch.waveforms, batch.lengths) for batch in data.inputs()])
        self.threshold.fill_(float(loudness.median()))
        self.calibrated_budgets.append(list(budgets))

    @staticmethod
    def loudness(waveforms: Tensor, lengths: Tensor) -> Tensor:
        return waveforms.abs().sum(1) / lengths.clamp(min=1)

    def forward(self, features, frame_mask, budget, *, waveforms=None, lengths=None) -> SelectorOutput:
        budget = self.check_budget(budget, features.shape[0])
        if torch.isnan(self.threshold):
            raise RuntimeError("LoudnessSelector is not fitted")
        loud = (self.loudness(waveforms, lengths) > self.threshold).float()
        order = torch.arange(self.num_layers, dtype=torch.float, device=features.device)
        scores = loud[:, None] * order - (1 - loud[:, None]) * order
        return SelectorOutput(keep_mask=hard_topk_mask(scores, budget.to(features.device)))


def _classifier(**kwargs) -> ClassificationTask:
    torch.manual_seed(0)
    base = dict(labels=["a", "b", "c", "d"], backbone="tiny:wavlm",
                optimization=OptimizerConfig(lr=3e-3, head_lr=1e-2, warmup=0, schedule="constant"),
                budgets=BudgetSampling(validation=[2, 4]))
    return ClassificationTask(**{**base, **kwargs})


def test_a_user_selector_with_a_fitting_step_is_fitted_before_test(tmp_path):
    L.seed_everything(0)
    model = _classifier(selector=LoudnessSelector)
    sweep = BudgetSweep(budgets=[2, 4])
    quiet_trainer(tmp_path, callbacks=[sweep], limit_test_batches=1).test(model, tiny_classification_data())
    assert model.selector.calibrated_budgets == [[2, 4]]  # fitted once, for the swept budgets
    assert torch.isfinite(model.selector.threshold)
    assert [row["budget_layers"] for row in sweep.rows] == [2, 4]


def test_a_user_selector_with_a_fitting_step_is_fitted_before_predict(tmp_path):
    L.seed_everything(0)
    model = _classifier(selector=LoudnessSelector, predict_budget=2)
    data = tiny_classification_data()
    records = quiet_trainer(tmp_path, limit_predict_batches=1).predict(model, data)
    assert model.selector.calibrated_budgets == [[1, 2, 3, 4]]  # every budget: predict's may be chosen late
    assert all(len(r["executed_layers"]) == 2 for batch in records for r in batch)


class TaskWithAdapter(ClassificationTask):
    """A subclass that adds its own trainable module."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.adapter = nn.Linear(4, 4)


def test_every_trainable_parameter_lands_in_an_optimiser_group():
    model = TaskWithAdapter(labels=["a", "b", "c", "d"], backbone="tiny:wavlm",
                            selector=LoudnessSelector, freeze="none")
    optimizer = model.configure_optimizers()["optimizer"]
    grouped = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert len(grouped) == len(set(grouped))  # no parameter twice
    assert set(grouped) == {id(p) for p in model.parameters() if p.requires_grad}
    adapter_group = next(g for g in optimizer.param_groups if any(p is model.adapter.weight for p in g["params"]))
    assert adapter_group["lr"] == model.optimization.head_lr


class LengthSelector(LayerSelector):
    """Reads only the utterances' lengths (declares ``lengths``, not ``waveforms``): long ones run the last layers."""

    seen: list[Tensor | None] = []

    def forward(self, features, frame_mask, budget, lengths=None) -> SelectorOutput:
        budget = self.check_budget(budget, features.shape[0])
        self.seen.append(lengths)
        order = torch.arange(self.num_layers, dtype=torch.float, device=features.device)
        long = (lengths > lengths.median()).float()[:, None]
        return SelectorOutput(keep_mask=hard_topk_mask(long * order - (1 - long) * order, budget))


def test_a_selector_that_names_only_lengths_gets_them():
    model = _classifier(selector=LengthSelector).eval()
    lengths = torch.tensor([8000, 3000, 6000])
    waveforms = torch.randn(3, 8000) * (torch.arange(8000) < lengths[:, None])
    with torch.inference_mode():
        model(waveforms, lengths, 2)
    assert len(LengthSelector.seen) == 1 and torch.equal(LengthSelector.seen[0].cpu(), lengths)


def test_a_learning_rate_of_zero_freezes_its_group_and_out_of_range_options_are_named():
    optimization = OptimizerConfig(lr=1e-3, head_lr=0.0, selector_lr=0.0)
    model = TaskWithAdapter(labels=["a", "b"], backbone="tiny:wavlm", selector=LoudnessSelector, freeze="none",
                            optimization=optimization)
    optimizer = model.configure_optimizers()["optimizer"]
    backbone = {id(p) for p in model.backbone.parameters()}
    rates = {group["lr"] for group in optimizer.param_groups if not any(id(p) in backbone for p in group["params"])}
    assert rates == {0.0}  # not silently lr: 0 is a rate, None is "as lr"
    for bad in (dict(lr=-1.0), dict(lr=float("nan")), dict(head_lr=-1e-3), dict(selector_lr=float("inf")),
                dict(weight_decay=-0.1), dict(warmup=-5), dict(warmup=1.5), dict(warmup=-0.1)):
        name = next(iter(bad))
        with pytest.raises(ValueError, match=rf"optimization\.{name} "):
            OptimizerConfig(**bad)
