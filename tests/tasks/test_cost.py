"""BatchCost: the one place a keep mask becomes layers and FLOPs (backbone plus selector)."""

from __future__ import annotations

import functools

import torch

from ldrop.engine.flops import count_forward_flops
from ldrop.selectors import InputConditionedSelector
from ldrop.tasks import ClassificationTask
from ldrop.tasks.cost import BatchCost


def test_a_batch_cost_counts_the_thresholded_mask_and_the_selectors_own_flops():
    torch.manual_seed(0)
    model = ClassificationTask(labels=["a", "b"], backbone="tiny:wavlm",
                               selector=functools.partial(InputConditionedSelector, hidden_dim=16)).eval()
    lengths = torch.tensor([16000, 8000])
    encoded = model.encode(torch.randn(2, 16000), lengths)
    keep = torch.tensor([[0.9, 0.2, 0.7, 0.1], [1.0, 1.0, 1.0, 0.6]])  # soft: runs where above 0.5
    cost = BatchCost.of(model, encoded, keep, seconds=0.25)
    assert cost.layers.tolist() == [2.0, 4.0]
    backbone = count_forward_flops(model.backbone.config, encoded.lengths, cost.mask).total
    selector = model.selector.flops(encoded.frame_mask.sum(1))
    assert (selector > 0).all()
    assert torch.allclose(cost.flops, backbone + selector, rtol=1e-12)
    assert torch.allclose(cost.gflops * 1e9, cost.flops) and cost.seconds == 0.25
    full = BatchCost.of(model, encoded, torch.ones(2, 4))
    assert full.flops[0] > cost.flops[0] and torch.equal(full.flops[1], cost.flops[1])  # same layers, same cost
