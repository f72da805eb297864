"""Paired, per-item statistics of sweeps (plain numpy): a metric from its per-item error terms, paired bootstrap
intervals of a difference, per-item interpolation and area along the GFLOPs axis, and the depth oracle (the
best per-input depths at a mean depth)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def metric_from_errors(errors, counts, higher_is_better: bool) -> float:
    """``1 - sum(errors) / sum(counts)`` (accuracy) or ``sum(errors) / sum(counts)`` (WER)."""
    rate = float(np.sum(errors)) / max(float(np.sum(counts)), 1e-12)
    return 1.0 - rate if higher_is_better else rate


def paired_bootstrap(errors_a, errors_b, counts, higher_is_better: bool, resamples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """``metric(a) - metric(b)`` on the same items, and its percentile interval over ``resamples`` draws of the
    items with replacement: ``{diff, low, high}``."""
    a, b, c = (np.asarray(x, dtype=np.float64) for x in (errors_a, errors_b, counts))
    if not a.shape == b.shape == c.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"errors_a, errors_b and counts must be equal-length 1-D, got {a.shape}, {b.shape}, {c.shape}")
    sign = -1.0 if higher_is_better else 1.0  # metric(a) - metric(b) = sign * (sum a - sum b) / sum c
    rng, diffs = np.random.default_rng(seed), []
    for start in range(0, resamples, 256):  # [draws, items] weights, a chunk at a time
        weights = rng.multinomial(len(a), np.full(len(a), 1.0 / len(a)), size=min(256, resamples - start))
        diffs.append(sign * (weights @ (a - b)) / np.maximum(weights @ c, 1e-12))
    low, high = np.quantile(np.concatenate(diffs), [(1 - level) / 2, (1 + level) / 2])
    return {"diff": sign * float((a - b).sum()) / max(float(c.sum()), 1e-12), "low": float(low), "high": float(high)}


def interpolate_items(points: Sequence[tuple[float, np.ndarray]], gflops: float) -> np.ndarray | None:
    """Per-item errors at ``gflops``, linear between a method's per-budget points ``[(mean GFLOPs, errors)]``
    (sorted by GFLOPs); ``None`` outside their range."""
    if not points:
        return None
    xs = [float(x) for x, _ in points]
    tol = 1e-9 * max(1.0, abs(xs[-1]))
    if gflops < xs[0] - tol or gflops > xs[-1] + tol:
        return None
    i = int(np.searchsorted(xs, min(max(gflops, xs[0]), xs[-1]), side="right"))  # xs[i - 1] <= gflops < xs[i]
    if i == len(xs):
        return np.asarray(points[-1][1], dtype=np.float64)
    w = max(0.0, (gflops - xs[i - 1]) / (xs[i] - xs[i - 1]))
    return (1 - w) * np.asarray(points[i - 1][1], dtype=np.float64) + w * np.asarray(points[i][1], dtype=np.float64)


def area_under_curve(points: Sequence[tuple[float, np.ndarray]], low: float, high: float) -> np.ndarray | None:
    """Per item, the mean of its interpolated errors over ``[low, high]`` GFLOPs (trapezoids between the
    breakpoints: exact for the piecewise-linear curve); its metric is the mean metric over the range."""
    xs = sorted({low, high, *(float(x) for x, _ in points if low < float(x) < high)})
    values = [interpolate_items(points, x) for x in xs]
    if any(v is None for v in values):
        return None
    if high <= low:
        return values[0]
    area = sum((x1 - x0) * (v0 + v1) / 2 for x0, x1, v0, v1 in zip(xs, xs[1:], values, values[1:], strict=False))
    return area / (high - low)


def depth_oracle(errors, counts, mean_layers: float, min_layers: int = 1) -> tuple[float, np.ndarray]:
    """The best per-input depths with mean depth ``<= mean_layers``: ``(total errors, depths [items])``.

    ``errors[i, d - 1]`` is item ``i``'s error at depth ``d`` (``1..N``, its errors at the method's fixed-``d``
    masks). Every item starts at ``min_layers``; the segments of the lower convex hull of each item's ``(depth,
    errors)`` are taken greedily by error reduction per layer, whole segments only, one that does not fit is
    skipped (and the item's later ones with it). Exact for 0/1 errors (the items right at the fewest layers
    first); the result is never worse than every input at one depth within the budget.
    """
    e = np.asarray(errors, dtype=np.float64)
    if e.ndim != 2 or len(np.asarray(counts)) != len(e):
        raise ValueError(f"errors must be [items, layers] and counts [items], got {e.shape} and {np.shape(counts)}")
    items, n = e.shape
    if not 1 <= min_layers <= mean_layers + 1e-9 or min_layers > n:
        raise ValueError(f"mean_layers must be >= min_layers ({min_layers}) and min_layers <= {n}, got {mean_layers}")
    segments = []  # (-reduction per layer, item, order, end depth, length, reduction)
    for i in range(items):
        hull = [min_layers]  # lower convex hull from min_layers down to the item's lowest error
        last = min_layers + int(np.argmin(e[i, min_layers - 1:]))
        for d in range(min_layers + 1, last + 1):
            while len(hull) >= 2 and ((e[i, hull[-1] - 1] - e[i, hull[-2] - 1]) * (d - hull[-2])
                                      >= (e[i, d - 1] - e[i, hull[-2] - 1]) * (hull[-1] - hull[-2])):
                hull.pop()
            hull.append(d)
        for order, (d0, d1) in enumerate(zip(hull, hull[1:], strict=False)):
            gain = e[i, d0 - 1] - e[i, d1 - 1]
            segments.append((-gain / (d1 - d0), i, order, d1, d1 - d0, gain))
    depths = np.full(items, min_layers)
    left, blocked = mean_layers * items - min_layers * items + 1e-9, set()
    for _, i, _, end, length, _ in sorted(segments):
        if i in blocked or length > left:
            blocked.add(i)
            continue
        depths[i], left = end, left - length
    total = float(e[np.arange(items), depths - 1].sum())
    for k in range(min_layers, int(np.floor(mean_layers + 1e-9)) + 1):  # everyone at one depth, if better
        if float(e[:, k - 1].sum()) < total:
            total, depths = float(e[:, k - 1].sum()), np.full(items, k)
    return total, depths


def depth_oracle_metric(fixed: dict[int, np.ndarray], counts, num_layers: int, mean_layers: float,
                        higher_is_better: bool) -> float | None:
    """The metric of :func:`depth_oracle` at ``mean_layers`` from per-item errors at each fixed depth
    (``{k: errors}``); ``None`` unless every ``k`` in ``1..num_layers`` is there."""
    if any(k not in fixed for k in range(1, num_layers + 1)):
        return None
    matrix = np.stack([np.asarray(fixed[k], dtype=np.float64) for k in range(1, num_layers + 1)], axis=1)
    return metric_from_errors(depth_oracle(matrix, counts, mean_layers)[0], counts, higher_is_better)
