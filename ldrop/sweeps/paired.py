"""Paired, per-item statistics of sweeps (plain numpy): a metric from its per-item error terms, paired bootstrap
intervals of a difference, per-item interpolation and area along the GFLOPs axis, and the depth oracle (the
best per-input depths at a mean depth)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
    (``{k: errors}``); ``None`` unless every ``k`` in ``1..num_layers`` is there, without NaN."""
    if any(k not in fixed or np.isnan(fixed[k]).any() for k in range(1, num_layers + 1)):
        return None
    matrix = np.stack([np.asarray(fixed[k], dtype=np.float64) for k in range(1, num_layers + 1)], axis=1)
    return metric_from_errors(depth_oracle(matrix, counts, mean_layers)[0], counts, higher_is_better)


# ---------------------------------------------------------------------------------------------- equal compute
def layer_gflops(rows: Sequence[dict], layers: float) -> float:
    """GFLOPs per utterance of ``layers`` layers run, read off a sweep's rows (on the polyline through its
    ``(executed_layers, GFLOPs)`` points, extended straight past its ends: at 0 layers, the fixed part)."""
    points = sorted({float(r["executed_layers"]): float(r["gflops_per_utterance"]) for r in rows}.items())
    if len(points) < 2:
        raise ValueError(f"reference: its sweep runs {len(points)} depth(s); GFLOPs per layer need two or more")
    i = min(max(int(np.searchsorted([x for x, _ in points], layers)), 1), len(points) - 1)
    (x0, y0), (x1, y1) = points[i - 1], points[i]
    return y0 + (y1 - y0) * (layers - x0) / (x1 - x0)


def _curve(rows: Sequence[dict], items: dict | None, metric: str, order: list[str] | None) -> dict:
    """A run's points along GFLOPs: its metric (``rows``) and, when aligned, its per-item errors."""
    rows = sorted((r for r in rows if r.get(metric) not in (None, "")), key=lambda r: float(r["gflops_per_utterance"]))
    curve = {"metric": [(float(r["gflops_per_utterance"]), np.array([float(r[metric])])) for r in rows]}
    if items is not None and order is not None:
        where = {i: n for n, i in enumerate(items["ids"])}
        pick = [where[i] for i in order]
        curve["items"] = [(float(r["gflops_per_utterance"]), np.asarray(items["errors"][str(r["budget_layers"])])[pick])
                          for r in rows if str(r["budget_layers"]) in items["errors"]]
    return curve


def _at(points: list, at: float | tuple[float, float], hold: bool) -> np.ndarray | None:
    """``points`` at a GFLOPs value or averaged over a ``(low, high)`` range; ``hold``: a run of one GFLOPs
    value (the full model) is taken as it is anywhere."""
    if hold and points and len({x for x, _ in points}) == 1:
        return np.asarray(points[-1][1], dtype=np.float64)
    return area_under_curve(points, *at) if isinstance(at, tuple) else interpolate_items(points, at)


def _points(diff: float, fraction: bool = True) -> str:
    """A difference in points x100 (a fraction: accuracy, WER), else in the metric's own units; one that rounds to
    zero keeps its sign (``-0.0``: an interval that ends below zero shows it), an exact zero is ``+0.0``."""
    return f"{100 * diff + 0.0:+.1f}" if fraction else f"{diff + 0.0:+.3g}"


def equal_compute(runs: dict[str, tuple[Sequence[dict], dict | None]], metric: str, reference: str,
                  higher_is_better: bool, baselines: dict[str, Any] | None = None,
                  resamples: int = 2000, fraction: bool = True) -> tuple[list[dict], list[dict]]:
    """Each run at the GFLOPs of ``N/4``, ``N/2`` and ``3N/4`` layers of ``reference`` (``N``: its deepest
    budget) and averaged over the GFLOPs range common to the runs of several GFLOPs values (``AUC``).

    ``runs``: label -> (sweep rows, per-item errors or None). ``baselines``: column name -> the label of the run
    each run is compared with at a point, ``f(at, values)`` (``values``: label -> metric there; default: the
    reference); a run of one GFLOPs value is held there as a baseline. The difference (points of the metric
    x100 for a ``fraction``, else in the metric's units) carries a paired 95 % bootstrap interval when both runs
    have per-item errors on the same items.
    Returns the table rows and the paired differences (``run, at, against, diff, low, high``).
    """
    ref_rows = runs[reference][0]
    n = max(int(r["budget_layers"]) for r in ref_rows)
    points: dict[str, Any] = {name: (layers, layer_gflops(ref_rows, layers))
                              for name, layers in (("N/4", n / 4), ("N/2", n / 2), ("3N/4", 3 * n / 4))}
    spans = [(min(g), max(g)) for g in ([float(r["gflops_per_utterance"]) for r in rows] for rows, _ in runs.values())
             if max(g) > min(g)]
    low, high = max(s[0] for s in spans), min(s[1] for s in spans)
    if low < high:
        points["AUC"] = (None, (low, high))
    with_items = {label: items for label, (_, items) in runs.items() if items is not None}
    first = next(iter(with_items), None)
    order = with_items[first]["ids"] if first else None
    counts = np.asarray(with_items[first]["counts"], dtype=np.float64) if first else None
    for label, items in with_items.items():
        if sorted(items["ids"]) != sorted(order) or len(set(order)) != len(order):
            raise ValueError(f"the runs' per-item errors are on different items ({label!r}: {len(items['ids'])} "
                             f"ids, {first!r}: {len(order)}): paired comparison needs the same test set")
    curves = {label: _curve(rows, items, metric, order) for label, (rows, items) in runs.items()}
    baselines = baselines or {f"vs {reference}": lambda at, values: reference}
    table, paired = [], []
    for name, (layers, at) in points.items():
        values = {label: None if (v := _at(c["metric"], at, False)) is None else float(v[0]) for label, c in curves.items()}
        for label in curves:
            row = {"run": label, "at": name, "layers": layers,
                   "gflops": f"{at[0]:.4g}-{at[1]:.4g}" if isinstance(at, tuple) else float(f"{at:.4g}"), metric: values[label]}
            for column, choose in baselines.items():
                base = choose(name, values)
                mine, theirs = values[label], (_at(curves[base]["metric"], at, True) if base in curves else None)
                if base == label or mine is None or theirs is None:
                    row[column] = None
                    continue
                row[column] = _points(mine - float(theirs[0]), fraction)
                a, b = (_at(curves[x].get("items", []), at, x == base) for x in (label, base))
                if a is not None and b is not None:
                    ci = paired_bootstrap(a, b, counts, higher_is_better, resamples)
                    diff, low, high = (_points(ci[key], fraction) for key in ("diff", "low", "high"))
                    row[column] = f"{diff} [{low}, {high}]"
                    paired.append({"run": label, "at": name, "against": base, **ci})
                row[column] += "" if column == f"vs {base}" else f" ({base})"
            table.append(row)
    return table, paired
