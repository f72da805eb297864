"""Hard and relaxed top-k masks, the straight-through estimator, annealing and threshold calibration."""

from __future__ import annotations

import math

import pytest
import torch

from ldrop.selectors import (
    annealed_temperature,
    calibrate_threshold,
    gumbel_like,
    hard_topk_mask,
    relaxed_topk_mask,
    straight_through_topk,
    threshold_mask,
)

NUM_LAYERS = 8


@pytest.mark.parametrize("k", range(0, NUM_LAYERS + 1))
def test_hard_topk_keeps_exactly_k_best_layers(k: int) -> None:
    scores = torch.randn(16, NUM_LAYERS, generator=torch.Generator().manual_seed(k))
    mask = hard_topk_mask(scores, torch.full((16,), k))
    assert torch.equal(mask.sum(-1), torch.full((16,), float(k)))
    if 0 < k < NUM_LAYERS:
        kept_min = torch.where(mask.bool(), scores, torch.inf).min(-1).values
        dropped_max = torch.where(mask.bool(), -torch.inf, scores).max(-1).values
        assert bool((kept_min > dropped_max).all())


def test_hard_topk_handles_a_different_k_per_sample() -> None:
    scores = torch.randn(NUM_LAYERS, NUM_LAYERS, generator=torch.Generator().manual_seed(0))
    k = torch.arange(1, NUM_LAYERS + 1)
    assert torch.equal(hard_topk_mask(scores, k).sum(-1), k.float())


def test_hard_topk_breaks_ties_towards_lower_layers() -> None:
    scores = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0, 1.0]])
    mask = hard_topk_mask(scores, torch.tensor([2]))
    assert mask.tolist() == [[0.0, 1.0, 1.0, 0.0, 0.0, 0.0]]
    assert hard_topk_mask(torch.zeros(1, 4), torch.tensor([3])).tolist() == [[1.0, 1.0, 1.0, 0.0]]


def test_sigmoid_relaxation_is_above_half_exactly_where_hard_mask_keeps() -> None:
    scores = torch.randn(32, NUM_LAYERS, generator=torch.Generator().manual_seed(1))
    k = torch.randint(1, NUM_LAYERS, (32,), generator=torch.Generator().manual_seed(2))
    soft = relaxed_topk_mask(scores, k, temperature=0.5, method="sigmoid")
    assert torch.equal((soft > 0.5).float(), hard_topk_mask(scores, k))


def test_softmax_relaxation_rows_sum_to_k() -> None:
    scores = torch.randn(32, NUM_LAYERS, generator=torch.Generator().manual_seed(1))
    k = torch.randint(1, NUM_LAYERS + 1, (32,), generator=torch.Generator().manual_seed(2))
    soft = relaxed_topk_mask(scores, k, temperature=0.5, method="softmax")
    torch.testing.assert_close(soft.sum(-1), k.float(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ["sigmoid", "softmax"])
def test_relaxation_tends_to_hard_mask_at_low_temperature(method: str) -> None:
    scores = torch.randn(32, NUM_LAYERS, generator=torch.Generator().manual_seed(3))
    k = torch.randint(1, NUM_LAYERS, (32,), generator=torch.Generator().manual_seed(4))
    soft = relaxed_topk_mask(scores, k, temperature=1e-4, method=method)
    torch.testing.assert_close(soft, hard_topk_mask(scores, k), atol=1e-2, rtol=0)


@pytest.mark.parametrize("method", ["sigmoid", "softmax"])
def test_relaxation_keeps_everything_at_full_budget(method: str) -> None:
    scores = torch.randn(4, NUM_LAYERS)
    soft = relaxed_topk_mask(scores, torch.full((4,), NUM_LAYERS), temperature=1.0, method=method)
    assert torch.equal(soft, torch.ones_like(soft))


@pytest.mark.parametrize("method", ["sigmoid", "softmax"])
def test_straight_through_forward_is_hard_and_backward_is_relaxed(method: str) -> None:
    scores = torch.randn(16, NUM_LAYERS, requires_grad=True)
    k = torch.full((16,), 3)
    keep_mask, soft = straight_through_topk(scores, k, temperature=0.5, method=method)
    assert set(keep_mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(keep_mask.sum(-1), k.float())
    weights = torch.arange(NUM_LAYERS, dtype=torch.float32)
    (keep_mask * weights).sum().backward()
    assert scores.grad is not None and scores.grad.abs().sum() > 0


@pytest.mark.parametrize("method", ["sigmoid", "softmax"])
def test_straight_through_gradient_is_the_relaxed_masks_and_follows_the_temperature(method: str) -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(16, NUM_LAYERS, generator=generator)
    k = torch.full((16,), 3)
    weights = torch.randn(NUM_LAYERS, generator=generator)

    def grad(function, temperature: float) -> torch.Tensor:
        leaf = scores.clone().requires_grad_(True)
        (function(leaf, temperature) * weights).sum().backward()
        return leaf.grad

    for temperature in (0.1, 1.0):
        straight = grad(lambda s, t: straight_through_topk(s, k, t, noise_scale=0.0, method=method)[0], temperature)
        relaxed = grad(lambda s, t: relaxed_topk_mask(s, k, t, method), temperature)
        torch.testing.assert_close(straight, relaxed)
    cold = grad(lambda s, t: straight_through_topk(s, k, t, noise_scale=0.0, method=method)[0], 0.1)
    warm = grad(lambda s, t: straight_through_topk(s, k, t, noise_scale=0.0, method=method)[0], 1.0)
    assert not torch.allclose(cold, warm, rtol=0.1, atol=1e-3)  # the temperature shapes the gradient


def test_straight_through_without_noise_equals_hard_topk_of_scores() -> None:
    scores = torch.randn(16, NUM_LAYERS)
    k = torch.full((16,), 4)
    keep_mask, _ = straight_through_topk(scores, k, temperature=1.0, noise_scale=0.0)
    assert torch.equal(keep_mask, hard_topk_mask(scores, k))


def test_gumbel_noise_is_reproducible_from_a_generator() -> None:
    scores = torch.zeros(4, NUM_LAYERS)
    first, second = (gumbel_like(scores, torch.Generator().manual_seed(5)) for _ in range(2))
    assert torch.equal(first, second) and not torch.equal(first, gumbel_like(scores))


def test_straight_through_topk_compiles_with_a_dynamic_batch_size() -> None:
    # torch.compile could not trace ``torch.rand(..., generator=None)`` with a symbolic batch size.
    compiled = torch.compile(straight_through_topk, backend="eager", dynamic=True, fullgraph=True)
    for batch in (2, 3):
        scores = torch.randn(batch, NUM_LAYERS, requires_grad=True)
        keep, _ = compiled(scores, torch.full((batch,), 3), 1.0)
        assert torch.equal(keep.detach().sum(-1), torch.full((batch,), 3.0))
        keep.sum().backward()
        assert scores.grad is not None


def test_temperature_anneals_geometrically_from_start_to_end() -> None:
    assert annealed_temperature(0.0, 2.0, 0.02) == pytest.approx(2.0)
    assert annealed_temperature(0.5, 2.0, 0.02) == pytest.approx(0.2)
    assert annealed_temperature(1.0, 2.0, 0.02) == pytest.approx(0.02)
    assert annealed_temperature(7.0, 2.0, 0.02) == pytest.approx(0.02)


@pytest.mark.parametrize("target", range(1, NUM_LAYERS + 1))
def test_calibrated_threshold_meets_mean_layers_within_half_a_layer(target: int) -> None:
    scores = torch.randn(50, NUM_LAYERS, generator=torch.Generator().manual_seed(target))
    threshold, achieved = calibrate_threshold(scores, target)
    executed = threshold_mask(scores, torch.full((50,), threshold)).sum(-1)
    assert executed.mean().item() == pytest.approx(achieved)
    assert abs(achieved - target) <= 0.5


def test_calibrated_threshold_is_minus_infinity_when_every_layer_must_run() -> None:
    threshold, achieved = calibrate_threshold(torch.randn(10, NUM_LAYERS), NUM_LAYERS)
    assert threshold == -math.inf and achieved == NUM_LAYERS


def test_threshold_mask_keeps_the_best_layer_when_none_passes() -> None:
    scores = torch.tensor([[0.1, 0.5, 0.2], [2.0, 3.0, 0.0]])
    mask = threshold_mask(scores, torch.tensor([1.0, 1.0]))
    assert mask.tolist() == [[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]
