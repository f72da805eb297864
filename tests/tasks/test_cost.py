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


class ContextHead(torch.nn.Module):
    """A downstream CTC head whose cost is not linear in frames (self-attention over them, then 15 frames of
    context)."""

    def __init__(self, width: int, vocab: int) -> None:
        super().__init__()
        self.attention = torch.nn.MultiheadAttention(width, 2, batch_first=True)
        self.context = torch.nn.Conv1d(width, width, 15, padding=7)
        self.out = torch.nn.Linear(width, vocab)

    def forward(self, hidden):
        hidden = hidden + self.attention(hidden, hidden, hidden, need_weights=False)[0]
        return self.out(self.context(hidden.transpose(1, 2)).transpose(1, 2))


def test_passed_heads_are_counted_per_input_at_its_own_frames_whatever_the_head():
    torch.manual_seed(0)
    model = CTCTask(labels="english", backbone="tiny:wavlm",
                    early_exit=EarlyExitConfig(layers=[1, 2, 3], policy="confidence")).eval()
    width, vocab = model.backbone.config.hidden_size, model.depth.head_for().out_features
    model.depth.heads = torch.nn.ModuleDict({k: ContextHead(width, vocab) for k in model.depth.heads})
    model.depth.thresholds[:] = 2.0  # never confident
    model.depth.thresholds[2] = float("inf")  # budget 3: calibrated to run every layer, so no exit is checked
    lengths = torch.tensor([16000, 9600, 12000])
    waves = torch.randn(3, 16000) * (torch.arange(16000) < lengths[:, None])
    budget = torch.tensor([2, 2, 3])
    with torch.no_grad():
        encoded = model.encode(waves, lengths)
        _, keep, _ = model.logits_at_budget(encoded, budget)
    batch = BatchCost.of(model, encoded, keep, budget).flops
    for i in range(3):  # alone, no padding: what the counter sees run is what the cost says, plus the head read
        with torch.no_grad():
            alone = model.encode(waves[i:i + 1, :int(lengths[i])], lengths[i:i + 1])
        ran = counted_flops(lambda alone=alone, i=i: model.logits_at_budget(alone, budget[i:i + 1]))
        read = counted_flops(lambda alone=alone: model.compute_logits(model.depth.head_for(), alone.hidden,
                                                                      alone.frame_mask))
        fixed = count_forward_flops(model.backbone.config, alone.lengths, torch.zeros(1, 4)).fixed
        assert float(batch[i] - fixed) + read == pytest.approx(ran, rel=1e-9), i
    heads = batch - count_forward_flops(model.backbone.config, encoded.lengths, keep).total
    assert heads[0] > heads[1] > 0 and heads[2] == 0  # longer, dearer; budget 3 read one head
    model.train()
    assert torch.equal(BatchCost.of(model, encoded, keep, budget).flops,  # training reads one head an input
                       count_forward_flops(model.backbone.config, encoded.lengths, keep).total)
