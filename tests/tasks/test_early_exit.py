"""The early-exit component: exit layers, loss weights, confidence, calibrated confidence thresholds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ldrop.tasks import EarlyExit, EarlyExitConfig


def _exit(**config) -> EarlyExit:
    return EarlyExit(EarlyExitConfig(**config), num_layers=6, make_head=nn.Identity)


def test_the_last_layer_is_always_an_exit_and_budgets_take_the_deepest_exit_within():
    early_exit = _exit(layers=[4, 2])
    assert early_exit.layers == [2, 4, 6] and set(early_exit.heads) == {"2", "4", "6"}
    assert [early_exit.exit_layer_for(k) for k in range(1, 7)] == [2, 2, 2, 4, 4, 6]


def test_linear_loss_weights_weight_exit_k_by_k():
    early_exit = _exit(layers=[2, 4], loss_weights="linear")
    losses = [torch.tensor(0.0), torch.tensor(0.0), torch.tensor(12.0)]  # exits 2, 4, 6
    assert float(early_exit.loss(losses)) == pytest.approx(6 * 12.0 / (2 + 4 + 6))
    assert float(_exit(layers=[2, 4]).loss(losses)) == pytest.approx(12.0 / 3)


@pytest.mark.parametrize("confidence", ["max_prob", "entropy"])
def test_a_peaked_prediction_is_more_confident_than_a_flat_one(confidence):
    early_exit = _exit(confidence=confidence)
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.1, 0.0, 0.1]])
    conf = early_exit.confidence(logits, torch.ones(2, 1, dtype=torch.bool))
    assert conf[0] > conf[1]


def test_calibrated_thresholds_meet_each_budget_as_mean_exit_layer():
    early_exit = _exit(layers=[1, 2, 3, 4, 5], policy="confidence")
    confidences = torch.rand(200, 6, generator=torch.Generator().manual_seed(0))
    early_exit.set_thresholds(confidences)
    exits = torch.tensor(early_exit.layers)
    for k in range(1, 7):
        passed = confidences[:, :-1] >= early_exit.threshold_for(k)
        passed = torch.cat([passed, torch.ones(200, 1, dtype=torch.bool)], dim=1)  # the last exit always
        mean_exit = exits[passed.float().argmax(1)].float().mean()  # the first exit that passes
        assert abs(float(mean_exit) - k) <= 0.05


def test_an_uncalibrated_budget_asks_for_calibration():
    with pytest.raises(RuntimeError, match="calibrate"):
        _exit(policy="confidence").threshold_for(3)


def test_a_bad_policy_names_the_setting():
    with pytest.raises(ValueError, match="early_exit.policy"):
        EarlyExitConfig(policy="sometimes")


def test_fitted_for_counts_the_calibrated_budgets_below_full_depth():
    early_exit = _exit(policy="confidence")
    assert early_exit.calibrated_for([6]) and not early_exit.calibrated_for([2, 6])
    early_exit.set_thresholds(torch.rand(50, 6, generator=torch.Generator().manual_seed(0)), budgets=[2])
    assert early_exit.calibrated_for([2, 6]) and not early_exit.calibrated_for([3])
    assert _exit(policy="budget").calibrated_for([1, 2, 3])


def test_confidence_exits_under_bf16_true_with_dataloaders_only_after_calibrate_on_dataloader(tmp_path):
    import lightning as L

    from ldrop.sweeps import BudgetSweep
    from ldrop.tasks import ClassificationTask
    from tests.helpers import quiet_trainer, tiny_classification_data

    L.seed_everything(0)
    data = tiny_classification_data()
    model = ClassificationTask(labels=["a", "b", "c", "d"], early_exit=EarlyExitConfig(policy="confidence"))
    quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0, precision="bf16-true").fit(model, data)
    data.setup("test")

    def test(name):
        sweep = BudgetSweep(budgets=[2, 4], directory=str(tmp_path / name))
        quiet_trainer(tmp_path, precision="bf16-true", callbacks=[sweep]).test(model, dataloaders=data.test_dataloader())
        return sweep.rows

    with pytest.raises(RuntimeError, match=r"early exit \(policy: confidence\) must be fitted.*calibrate_on_dataloader"):
        test("unfitted")
    model.calibrate_on_dataloader(data.val_dataloader())  # in the precision of the trainer it was last used with
    assert next(model.parameters()).dtype == torch.bfloat16 and model.depth.calibrated_for([2, 4])
    rows = test("fitted")
    assert 1.0 <= rows[0]["executed_layers"] <= 4.0 and rows[1]["executed_layers"] == 4.0


def _task(kind: str, **config):
    from ldrop.tasks import ClassificationTask, CTCTask

    torch.manual_seed(0)
    if kind == "ctc":
        return CTCTask(labels="english", backbone="tiny:hubert", early_exit=EarlyExitConfig(**config)).eval()
    return ClassificationTask(labels=["a", "b", "c"], backbone="tiny:wavlm", early_exit=EarlyExitConfig(**config)).eval()


@pytest.mark.parametrize("kind, config", [
    ("classification", dict(layers=[1, 3])), ("ctc", {}),
    ("classification", dict(policy="confidence")), ("ctc", dict(policy="confidence", confidence="entropy")),
], ids=["classification-budget", "ctc-budget", "classification-confidence", "ctc-confidence-entropy"])
def test_a_mixed_budget_batch_gives_each_input_what_it_gets_alone(kind, config):
    from tests.helpers import padded_batch

    task = _task(kind, **config)
    depth, n = task.depth, task.num_layers
    if depth.config.policy == "confidence":  # thresholds from every exit's confidences on other inputs
        with torch.no_grad():
            encoded = task.encode(*padded_batch([16000, 7000, 15000, 12000, 6000, 11000, 9000, 13000], seed=7))
            depth.set_thresholds(torch.stack([depth.confidence(x, encoded.frame_mask)
                                              for x in depth.exit_logits(task, encoded)], 1))
    waves = torch.randn(6, 9600, generator=torch.Generator().manual_seed(3))  # one length: no padding
    budgets = torch.tensor([1, n, 2, n - 1, 1, 3])
    with torch.inference_mode():
        logits, keep = task(waves, None, budgets)
        alone = [task(waves[i:i + 1], None, k) for i, k in enumerate(budgets.tolist())]
    assert torch.equal(keep, torch.cat([k for _, k in alone]))
    assert torch.allclose(logits, torch.cat([x for x, _ in alone]), atol=1e-4, rtol=1e-4)
    depths = keep.sum(1).long()
    assert all(row[:d].all() for row, d in zip(keep.bool(), depths, strict=True))  # a prefix of the stack
    if depth.config.policy == "budget":
        assert depths.tolist() == [depth.exit_layer_for(k) for k in budgets.tolist()]
    else:  # the full budget runs every layer; the others stop where their own thresholds say
        assert depths[budgets == n].eq(n).all() and len(set(depths.tolist())) >= 2


def test_a_mixed_confidence_batch_names_an_uncalibrated_budget():
    task = _task("classification", policy="confidence")
    task.depth.set_thresholds(torch.rand(50, 4, generator=torch.Generator().manual_seed(0)), budgets=[2])
    with torch.no_grad():
        assert task(torch.randn(2, 8000), None, torch.tensor([2, 4]))[1].shape == (2, 4)  # calibrated, and full
        with pytest.raises(RuntimeError, match="no confidence threshold calibrated for budget 3"):
            task(torch.randn(3, 8000), None, torch.tensor([2, 3, 4]))


def test_calibrated_thresholds_stay_float32_in_a_bf16_model():
    """``model.to(torch.bfloat16)`` (bf16-true, AdaptiveModel in bf16) rounded each threshold onto a neighbouring
    score: at budget 4 of 12 the exits then ran 3.7 layers on the data calibrated for 4."""
    from functools import partial

    from ldrop.selectors import InputConditionedSelector
    from ldrop.tasks import AllocationConfig, ClassificationTask

    values = torch.tensor([0.9731, 0.98765, 0.99312, float("nan")])
    early = ClassificationTask(labels=["a", "b"], backbone="tiny:wavlm", early_exit=EarlyExitConfig(policy="confidence"))
    allocated = ClassificationTask(labels=["a", "b"], backbone="tiny:wavlm", allocation=AllocationConfig(),
                                   selector=partial(InputConditionedSelector, fallback=False))
    threshold = InputConditionedSelector(4, 32, mode="threshold")
    holders = [early.depth, allocated.depth.depth_head, threshold.calibration]
    for holder in holders:
        holder.thresholds.copy_(values)
    for model in (early, allocated, threshold):
        model.to(torch.bfloat16)
    for holder in holders:
        assert holder.thresholds.dtype == torch.float32 and torch.equal(holder.thresholds[:3], values[:3]), holder
    assert next(allocated.parameters()).dtype == torch.bfloat16  # the rest converts as asked
