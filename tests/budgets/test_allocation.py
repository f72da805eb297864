"""Depth allocation: the mean-compute guarantee of the batch knapsack and of calibrated stream thresholds, and a
by-construction case where half the inputs need one layer and half need every layer."""

from __future__ import annotations

import pytest
import torch

from ldrop.budgets.allocation import allocate_depths, calibrate_gain_thresholds, depths_from_thresholds
from ldrop.tasks.allocation import DepthHead, depth_signal_loss


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("min_layers", [1, 2])
def test_the_batch_allocation_spends_exactly_the_budgets_sum(seed, min_layers):
    generator = torch.Generator().manual_seed(seed)
    n, inputs = 8, 33
    gains = torch.rand(inputs, n - 1, generator=generator)
    budget = torch.randint(min_layers, n + 1, (inputs,), generator=generator)
    depths = allocate_depths(gains, budget, min_layers)
    assert int(depths.sum()) == int(budget.sum())
    assert int(depths.min()) >= min_layers and int(depths.max()) <= n


def test_the_batch_allocation_gives_layers_to_the_largest_gains():
    gains = torch.tensor([[5.0, 4.0, 3.0], [0.1, 0.1, 0.1], [2.0, 0.0, 0.0]])
    assert allocate_depths(gains, torch.tensor([2, 2, 2])).tolist() == [4, 1, 1]  # 5, 4, 3 beat 2
    assert allocate_depths(gains, torch.tensor([3, 2, 2])).tolist() == [4, 1, 2]
    # a gain after a smaller one counts as the smaller one (the next layer must be taken first)
    assert allocate_depths(torch.tensor([[0.0, 9.0], [1.0, 0.0]]), torch.tensor([2, 1])).tolist() == [1, 2]


def test_allocation_refuses_budgets_below_the_minimum_and_bad_shapes():
    with pytest.raises(ValueError, match="min_layers=2"):
        allocate_depths(torch.rand(4, 3), torch.tensor([1, 1, 2, 2]), min_layers=2)
    with pytest.raises(ValueError, match="budget must have shape"):
        allocate_depths(torch.rand(4, 3), torch.tensor([2, 2]))
    with pytest.raises(ValueError, match="gains must have shape"):
        allocate_depths(torch.rand(4), torch.tensor([2, 2, 2, 2]))


@pytest.mark.parametrize("min_layers", [1, 2])
def test_calibrated_thresholds_meet_the_mean_budget_on_their_data_and_on_like_data(min_layers):
    generator = torch.Generator().manual_seed(0)
    n = 12
    val, test = (torch.rand(2000, n - 1, generator=generator) for _ in range(2))
    budgets = list(range(min_layers, n + 1))
    thresholds = calibrate_gain_thresholds(val, budgets, min_layers)
    for k in budgets:
        for gains, tolerance in ((val, 0.01), (test, 0.05)):  # test: a fresh draw of the same distribution
            depths = depths_from_thresholds(gains, torch.full((len(gains),), thresholds[k]), min_layers)
            assert abs(float(depths.float().mean()) - k) <= tolerance * k, (k, float(depths.float().mean()))


def _half_easy_half_hard(n: int, inputs: int, generator: torch.Generator):
    """Features that tell the groups apart, and each input's loss at depths 1..n: the easy half is right from
    the first layer (a flat low loss), the hard half's loss keeps falling until the last layer."""
    hard = torch.arange(inputs) % 2 == 1
    pattern = torch.tensor([1.0, -1.0]).repeat_interleave(4)  # the groups differ in which channels are up
    features = torch.randn(inputs, 6, 8, generator=generator) * 0.5 + torch.where(hard, 1.0, -1.0)[:, None, None] * pattern
    depth = torch.arange(1, n + 1, dtype=torch.float)
    losses = torch.where(hard[:, None], 0.05 + 2.0 * (n - depth) / (n - 1), torch.full((n,), 0.05))
    return features, torch.ones(inputs, 6, dtype=torch.bool), losses, hard


def test_a_depth_head_trained_on_the_depth_signal_gives_each_group_its_depth():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    n = 5
    head = DepthHead(8, n, hidden_dim=16)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    features, mask, losses, _ = _half_easy_half_hard(n, 64, generator)
    for _ in range(300):  # as in training: a sampled k per batch, the losses observed at k-1, k and k+1
        k = int(torch.randint(1, n + 1, (), generator=generator))
        observed = {d: losses[:, d - 1] for d in (k - 1, k, k + 1) if 1 <= d <= n}
        optimizer.zero_grad()
        depth_signal_loss(head(features, mask), observed).backward()
        optimizer.step()
    features, mask, _, hard = _half_easy_half_hard(n, 64, torch.Generator().manual_seed(1))  # held out
    with torch.no_grad():
        gains = head.gains(head(features, mask))
    k = (1 + n) // 2  # the mean of half the inputs at 1 layer and half at n
    for depths in (allocate_depths(gains, torch.full((64,), k)),
                   depths_from_thresholds(gains, torch.full((64,), calibrate_gain_thresholds(gains, [k])[k]))):
        right = torch.where(hard, depths == n, depths == 1)
        assert float(right[hard].float().mean()) >= 0.9 and float(right[~hard].float().mean()) >= 0.9, depths
