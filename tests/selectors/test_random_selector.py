"""RandomSelector: the LayerDrop baseline, seeded and reproducible at inference."""

from __future__ import annotations

import pytest
import torch

from ldrop.selectors import RandomSelector
from tests.selectors.inputs import FEATURE_DIM, random_inputs

NUM_LAYERS = 12


def eval_masks(selector: RandomSelector, budget: int, batch_size: int = 32) -> torch.Tensor:
    features, frame_mask = random_inputs(batch_size)
    return selector.eval()(features, frame_mask, torch.full((batch_size,), budget)).keep_mask


def test_has_no_parameters_and_no_gradient_path() -> None:
    selector = RandomSelector(NUM_LAYERS, FEATURE_DIM)
    assert list(selector.parameters()) == [] and not selector.differentiable


def test_same_seed_gives_the_same_eval_masks() -> None:
    first = eval_masks(RandomSelector(NUM_LAYERS, FEATURE_DIM, seed=3), 4)
    second = eval_masks(RandomSelector(NUM_LAYERS, FEATURE_DIM, seed=3), 4)
    assert torch.equal(first, second)


def test_eval_masks_are_random_subsets_of_exactly_budget_layers() -> None:
    masks = eval_masks(RandomSelector(NUM_LAYERS, FEATURE_DIM), 4)
    assert torch.equal(masks.sum(-1), torch.full((32,), 4.0))
    assert masks.unique(dim=0).shape[0] > 1


def test_reseed_changes_the_masks_and_restores_them() -> None:
    selector = RandomSelector(NUM_LAYERS, FEATURE_DIM, seed=0)
    original = eval_masks(selector, 4)
    selector.reseed(0, 1)  # a sweep's repeat 0, batch 1
    drawn = eval_masks(selector, 4)
    assert not torch.equal(drawn, original)
    selector.reseed()
    assert torch.equal(eval_masks(selector, 4), original)
    selector.reseed(0, 1)
    assert torch.equal(eval_masks(selector, 4), drawn)
    selector.reseed(1, 0)  # not the same draw as (0, 1), nor (0, 1000) as (1, 0)
    assert not torch.equal(eval_masks(selector, 4), drawn)
    other = RandomSelector(NUM_LAYERS, FEATURE_DIM, seed=5)
    other.reseed(0, 1)
    assert not torch.equal(eval_masks(other, 4), drawn) and selector.seed == 0 and other.seed == 5
    negative = RandomSelector(NUM_LAYERS, FEATURE_DIM, seed=-1)  # any int the constructor takes
    negative.reseed(0, 1)
    assert eval_masks(negative, 4).sum(-1).eq(4).all()


@pytest.mark.parametrize(
    ("budget", "layers"), [(1, [0]), (2, [0, 11]), (4, [0, 4, 7, 11]), (12, list(range(12)))]
)
def test_evenly_spaced_eval_keeps_rounded_linspace_positions(budget: int, layers: list[int]) -> None:
    masks = eval_masks(RandomSelector(NUM_LAYERS, FEATURE_DIM, eval_mode="evenly_spaced"), budget, 3)
    for mask in masks:
        assert torch.nonzero(mask).flatten().tolist() == layers


def test_subset_training_keeps_exactly_budget_layers_per_sample() -> None:
    selector = RandomSelector(NUM_LAYERS, FEATURE_DIM, train_mode="subset").train()
    features, frame_mask = random_inputs(NUM_LAYERS)
    budget = torch.arange(1, NUM_LAYERS + 1)
    assert torch.equal(selector(features, frame_mask, budget).keep_mask.sum(-1), budget.float())


def test_bernoulli_training_keeps_at_least_one_layer() -> None:
    selector = RandomSelector(NUM_LAYERS, FEATURE_DIM, train_mode="bernoulli").train()
    features, frame_mask = random_inputs(512)
    torch.manual_seed(0)
    kept = selector(features, frame_mask, torch.ones(512, dtype=torch.long)).keep_mask.sum(-1)
    assert kept.min().item() >= 1
    assert kept.max().item() > 1  # independent layers, not a fixed count


def test_bernoulli_training_keeps_budget_over_layers_on_average() -> None:
    selector = RandomSelector(NUM_LAYERS, FEATURE_DIM, train_mode="bernoulli").train()
    features, frame_mask = random_inputs(2000)
    torch.manual_seed(0)
    kept = selector(features, frame_mask, torch.full((2000,), 6)).keep_mask.sum(-1)
    assert kept.mean().item() == pytest.approx(6.0, abs=0.2)
