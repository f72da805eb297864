"""FullSelector: the unpruned reference."""

from __future__ import annotations

import torch

from ldrop.selectors import FullSelector
from tests.selectors.inputs import FEATURE_DIM, NUM_LAYERS, random_inputs


def test_keeps_every_layer_whatever_the_budget() -> None:
    features, frame_mask = random_inputs(NUM_LAYERS)
    keep_mask = FullSelector(NUM_LAYERS, FEATURE_DIM)(
        features, frame_mask, torch.arange(1, NUM_LAYERS + 1)
    ).keep_mask
    assert torch.equal(keep_mask, torch.ones(NUM_LAYERS, NUM_LAYERS))


def test_costs_nothing_and_learns_nothing() -> None:
    selector = FullSelector(NUM_LAYERS, FEATURE_DIM)
    assert list(selector.parameters()) == [] and not selector.differentiable
    assert torch.equal(selector.flops(torch.tensor([50, 100])), torch.zeros(2, dtype=torch.float64))
