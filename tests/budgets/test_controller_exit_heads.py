"""A FLOPs target's controller plans the exit heads confidence early exit passes, as its cost counts them."""

from __future__ import annotations

import pytest
import torch

from ldrop.budgets.controller import TargetResolver
from ldrop.engine.flops import count_forward_flops
from ldrop.tasks import CTCTask, EarlyExitConfig
from ldrop.tasks.cost import BatchCost


def _calibrated(inputs: int = 16):
    """A tiny confidence early exit (an exit at every layer) calibrated on its own equally long inputs, so
    that at budget ``k`` they run ``k`` layers on average."""
    torch.manual_seed(0)
    model = CTCTask(labels="english", backbone="tiny:wavlm", early_exit=EarlyExitConfig(policy="confidence")).eval()
    lengths = torch.full((inputs,), 16000)
    waves = torch.randn(inputs, 16000)
    with torch.no_grad():
        encoded = model.encode(waves, lengths)
        confidences = torch.stack([model.depth.confidence(x, encoded.frame_mask)
                                   for x in model.depth.exit_logits(model, encoded)], 1)
    achieved = model.depth.set_thresholds(confidences)
    assert all(abs(achieved[k] - k) < 1e-9 for k in achieved)
    return model, encoded, lengths, waves


def _layers_only_gflops_per_second(model, lengths, k: int) -> float:
    """The rate of ``k`` layers and the fixed part, without any head passed (what the old controller planned)."""
    keep = (torch.arange(model.num_layers) < k).float()[None]
    flops = count_forward_flops(model.backbone.config, lengths[:1], keep).total[0]
    return float(flops) / 1e9 / (float(lengths[0]) / 16000)


@pytest.mark.parametrize("k", [2, 3])
def test_the_predicted_flops_at_the_chosen_budget_are_the_counted_ones_heads_included(k):
    model, encoded, lengths, _ = _calibrated()
    target = {"gflops_per_second": _layers_only_gflops_per_second(model, lengths, k) * 1.0001}
    decision = TargetResolver().decide(model, lengths, target)
    budget = decision.budget
    assert bool(decision.meets_target.all()) and len(set(budget.tolist())) == 1
    with torch.no_grad():
        _, keep, _ = model.logits_at_budget(encoded, budget)
    counted = BatchCost.of(model, encoded, keep, budget).gflops
    # equally long inputs calibrated on themselves: their mean cost is the cost of k layers and k - 1 heads
    assert float(keep.sum(1).mean()) == pytest.approx(float(budget[0]), abs=1e-9)
    assert float(decision.predicted_seconds.mean()) == pytest.approx(float(counted.mean()), rel=1e-6)
    # k layers and their passed heads cost more than the target: the controller plans one layer fewer
    assert int(budget[0]) == k - 1
    allowance = float(decision.allowance.mean())
    assert float(counted.mean()) <= allowance * (1 + 1e-9)


def test_a_runtime_binds_its_models_heads_and_meets_a_flops_target():
    from ldrop.runtime import AdaptiveModel
    from ldrop.tasks.cost import own_flops

    model, _, lengths, waves = _calibrated()
    runtime = AdaptiveModel(model, closed_loop=False)
    target = {"gflops_per_second": _layers_only_gflops_per_second(model, lengths, 3) * 1.0001}
    out = runtime(waves, target, lengths=lengths)
    assert set(out.budget.tolist()) == {2}
    own = own_flops(model, out.keep_mask, out.frame_mask.sum(1).cpu(), out.budget)
    counted = count_forward_flops(model.backbone.config, lengths, out.keep_mask, own).total / 1e9
    planned = runtime.controller.decide(lengths, target).predicted_seconds
    assert float(planned.mean()) == pytest.approx(float(counted.mean()), rel=1e-6)


def test_a_selector_or_budget_exit_plans_layers_only():
    torch.manual_seed(0)
    model = CTCTask(labels="english", backbone="tiny:wavlm", early_exit=EarlyExitConfig(policy="budget")).eval()
    lengths = torch.full((2,), 16000)
    target = {"gflops_per_second": _layers_only_gflops_per_second(model, lengths, 3) * 1.0001}
    decision = TargetResolver().decide(model, lengths, target)
    assert decision.budget.tolist() == [3, 3]
