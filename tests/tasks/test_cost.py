"""BatchCost: the one place a keep mask becomes layers and FLOPs (backbone plus selector)."""

from __future__ import annotations

import functools

import pytest
import torch

from ldrop.engine.flops import count_forward_flops, counted_flops
from ldrop.selectors import InputConditionedSelector
from ldrop.tasks import ClassificationTask, CTCTask, EarlyExitConfig
from ldrop.tasks.cost import BatchCost


def test_a_batch_cost_counts_the_thresholded_mask_and_the_selectors_own_flops():
    torch.manual_seed(0)
    model = ClassificationTask(labels=["a", "b"], backbone="tiny:wavlm",
                               selector=functools.partial(InputConditionedSelector, hidden_dim=16)).eval()
    lengths = torch.tensor([16000, 8000])
    encoded = model.encode(torch.randn(2, 16000), lengths)
    keep = torch.tensor([[0.9, 0.2, 0.7, 0.1], [1.0, 1.0, 1.0, 0.6]])  # soft: runs where above 0.5
    cost = BatchCost.of(model, encoded, keep, 2, seconds=0.25)
    assert cost.layers.tolist() == [2.0, 4.0]
    backbone = count_forward_flops(model.backbone.config, encoded.lengths, cost.mask).total
    selector = model.selector.flops(encoded.frame_mask.sum(1))
    assert (selector > 0).all()
    assert torch.allclose(cost.flops, backbone + selector, rtol=1e-12)
    assert torch.allclose(cost.gflops * 1e9, cost.flops) and cost.seconds == 0.25
    full = BatchCost.of(model, encoded, torch.ones(2, 4), 4)
    assert full.flops[0] > cost.flops[0] and torch.equal(full.flops[1], cost.flops[1])  # same layers, same cost


@pytest.mark.parametrize("task", ["ctc", "classification"])
def test_confidence_early_exit_counts_the_heads_of_the_exits_it_passed(task):
    """What the counter sees the run compute (layers and every head) equals the cost's layers plus the heads it
    counts plus the one head read (the task head, which no method's cost counts)."""
    torch.manual_seed(0)
    early_exit = EarlyExitConfig(layers=[1, 2, 3], policy="confidence")
    model = (CTCTask(labels="english", backbone="tiny:wavlm", early_exit=early_exit) if task == "ctc" else
             ClassificationTask(labels=["a", "b"], backbone="tiny:wavlm", early_exit=early_exit)).eval()
    model.depth.thresholds[:] = 2.0  # never confident: an input below full budget passes every exit but the last
    with torch.no_grad():
        encoded = model.encode(torch.randn(2, 16000), torch.tensor([16000, 16000]))
    read = counted_flops(lambda: model.compute_logits(model.depth.head_for(), encoded.hidden[:1],
                                                      encoded.frame_mask[:1]))
    assert read > 0
    fixed = count_forward_flops(model.backbone.config, encoded.lengths, torch.zeros(2, 4)).fixed
    for budget, passed_heads in ((torch.tensor([2, 4]), [3, 0]), (torch.tensor([4, 4]), [0, 0])):
        ran = counted_flops(lambda budget=budget: model.logits_at_budget(encoded, budget))
        _, keep, _ = model.logits_at_budget(encoded, budget)
        cost = BatchCost.of(model, encoded, keep, budget)
        layers = count_forward_flops(model.backbone.config, encoded.lengths, keep).total - fixed
        assert cost.layers.tolist() == [4.0, 4.0]
        assert torch.allclose(cost.flops - fixed - layers, torch.tensor(passed_heads).double() * read, rtol=1e-9)
        assert float((cost.flops - fixed).sum()) + 2 * read == pytest.approx(ran, rel=1e-9)
    model.depth.thresholds[:] = -1.0  # always confident: the first exit, whose head is the one read
    _, keep, _ = model.logits_at_budget(encoded, 2)
    assert torch.equal(BatchCost.of(model, encoded, keep, 2).flops,
                       count_forward_flops(model.backbone.config, encoded.lengths, keep).total)


def test_an_exit_head_without_parameters_is_counted_as_the_counter_sees_it():
    torch.manual_seed(0)
    model = ClassificationTask(labels=["a", "b"], backbone="tiny:wavlm",
                               early_exit=EarlyExitConfig(layers=[1, 2, 3], policy="confidence")).eval()
    model.depth.heads = torch.nn.ModuleDict({k: torch.nn.Identity() for k in model.depth.heads})  # no FLOPs
    model.depth.thresholds[:] = 2.0
    with torch.no_grad():
        encoded = model.encode(torch.randn(2, 16000), torch.tensor([16000, 16000]))
        _, keep, _ = model.logits_at_budget(encoded, 2)
    cost = BatchCost.of(model, encoded, keep, 2)
    assert torch.equal(cost.flops, count_forward_flops(model.backbone.config, encoded.lengths, keep).total)
