"""Paired statistics of sweeps: metrics from error terms, bootstrap intervals, interpolation, area, depth oracle."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ldrop.sweeps.paired import (
    area_under_curve,
    depth_oracle,
    depth_oracle_metric,
    interpolate_items,
    metric_from_errors,
    paired_bootstrap,
)


def test_metric_from_errors_is_accuracy_or_an_error_rate():
    assert metric_from_errors([1, 0, 0, 1], [1, 1, 1, 1], True) == 0.5
    assert metric_from_errors([2, 1], [4, 6], False) == pytest.approx(0.3)


def test_paired_bootstrap_brackets_a_real_difference_and_covers_zero_for_none():
    rng = np.random.default_rng(1)
    a = (rng.random(400) < 0.2).astype(float)  # about 80 % right
    b = np.where(rng.random(400) < 0.3, 1.0, a)  # b: a plus extra errors, about 60 % right
    ones = np.ones(400)
    result = paired_bootstrap(a, b, ones, True, resamples=500)
    assert result["diff"] == pytest.approx(metric_from_errors(a, ones, True) - metric_from_errors(b, ones, True))
    assert 0.05 < result["low"] < result["diff"] < result["high"] < 0.4
    same = paired_bootstrap(a, a, ones, True, resamples=200)
    assert same == {"diff": 0.0, "low": 0.0, "high": 0.0}
    noise = paired_bootstrap(a, rng.permutation(a), ones, True, resamples=500)  # same rate: zero inside
    assert noise["diff"] == 0.0 and noise["low"] < 0.0 < noise["high"]
    wer = paired_bootstrap([3.0, 1.0], [1.0, 1.0], [10.0, 10.0], False, resamples=300, seed=3)
    assert wer["diff"] == pytest.approx(0.1) and wer["low"] <= wer["diff"] <= wer["high"]
    with pytest.raises(ValueError, match="errors_a"):
        paired_bootstrap([1.0], [1.0, 0.0], [1.0, 1.0], True)


def test_interpolated_errors_give_the_interpolated_metric():
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 9, 30).astype(float)
    points = [(g, rng.random(30) * counts) for g in (1.0, 2.5, 4.0)]
    for g in (1.0, 1.7, 2.5, 3.2, 4.0):
        xs = [p[0] for p in points]
        ys = [metric_from_errors(e, counts, False) for _, e in points]
        assert metric_from_errors(interpolate_items(points, g), counts, False) == pytest.approx(np.interp(g, xs, ys))
    assert interpolate_items(points, 0.99) is None and interpolate_items(points, 4.01) is None
    assert interpolate_items([], 1.0) is None


def test_area_is_the_mean_metric_over_the_range():
    counts = np.ones(3)
    points = [(0.0, np.array([1.0, 1.0, 0.0])), (2.0, np.array([0.0, 1.0, 0.0]))]
    per_item = area_under_curve(points, 0.0, 2.0)
    assert per_item.tolist() == [0.5, 1.0, 0.0]
    assert metric_from_errors(per_item, counts, True) == pytest.approx(0.5)  # mean of 1/3 and 2/3
    assert area_under_curve(points, 1.0, 1.0).tolist() == [0.5, 1.0, 0.0]
    assert area_under_curve(points, 1.0, 3.0) is None  # past the curve's end
    xs = np.linspace(1.0, 1.5, 501)  # a sub-range across no breakpoint: the trapezoid is exact
    dense = np.mean([interpolate_items(points, x) for x in xs], axis=0)
    assert np.allclose(area_under_curve(points, 1.0, 1.5), dense, atol=1e-3)


def _brute_force(errors, mean_layers):
    items, n = errors.shape
    return min(errors[np.arange(items), np.array(d) - 1].sum()
               for d in itertools.product(range(1, n + 1), repeat=items) if sum(d) <= mean_layers * items + 1e-9)


def test_depth_oracle_is_exact_for_0_1_errors_and_keeps_its_budget():
    rng = np.random.default_rng(0)
    for _ in range(60):
        items, n = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        errors = (rng.random((items, n)) < 0.5).astype(float)
        mean_layers = float(rng.integers(items, n * items + 1)) / items
        total, depths = depth_oracle(errors, np.ones(items), mean_layers)
        assert total == _brute_force(errors, mean_layers)
        assert depths.mean() <= mean_layers + 1e-9 and depths.min() >= 1 and depths.max() <= n
        assert total == errors[np.arange(items), depths - 1].sum()


def test_depth_oracle_on_real_valued_errors_keeps_its_budget_and_beats_every_fixed_depth():
    rng = np.random.default_rng(1)
    for _ in range(40):
        errors = rng.random((6, 4)) * 5
        mean_layers = float(rng.uniform(1, 4))
        total, depths = depth_oracle(errors, np.ones(6), mean_layers)
        assert depths.mean() <= mean_layers + 1e-9
        assert total <= min(errors[:, k - 1].sum() for k in range(1, int(mean_layers) + 1)) + 1e-9
        assert total >= _brute_force(errors, mean_layers) - 1e-9


def test_depth_oracle_by_construction():
    # item 0 is right from 1 layer, item 1 from 2, item 2 from 4, item 3 never: at a mean of 2 layers (8 in all)
    # items 0 and 1 are right (1 + 2 = 3 layers, the rest at 1: 5 layers), item 2 needs 3 more (8 layers)
    errors = np.array([[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=float)
    total, depths = depth_oracle(errors, np.ones(4), 2.0)
    assert total == 1.0 and depths.tolist() == [1, 2, 4, 1]
    total, depths = depth_oracle(errors, np.ones(4), 1.5)  # 6 layers: item 2's 3 extra ones do not fit
    assert total == 2.0 and depths.tolist() == [1, 2, 1, 1]
    fixed = {k + 1: errors[:, k] for k in range(4)}
    assert depth_oracle_metric(fixed, np.ones(4), 4, 2.0, True) == 0.75
    assert depth_oracle_metric({1: errors[:, 0]}, np.ones(4), 4, 2.0, True) is None
    with pytest.raises(ValueError, match="mean_layers"):
        depth_oracle(errors, np.ones(4), 0.5)


def test_a_difference_that_rounds_to_zero_keeps_its_sign():
    # an interval [-1.8, -0.04] printed "[-1.8, +0.0]" would read as one that touches zero
    from ldrop.sweeps.paired import _points

    assert [_points(x) for x in (-0.0004, 0.0004, 0.0, -0.0, -0.012)] == ["-0.0", "+0.0", "+0.0", "+0.0", "-1.2"]
    assert _points(-1e-5, fraction=False) == "-1e-05"
