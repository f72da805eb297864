"""How many layers each input runs at a mean budget, from each input's predicted gain of one more layer.

``gains [inputs, N - 1]``: column ``d - 1`` is what going from ``d`` to ``d + 1`` layers is predicted to win
(a drop in loss). Gains are made non-increasing along depth (a running minimum), so an input's depth is the
number of its gains taken, plus ``min_layers``. Within a batch (:func:`allocate_depths`) the layers that the
budgets add up to go to the largest gains, a greedy knapsack: exactly the budgets' sum is spent. For a stream
(:func:`calibrate_gain_thresholds`, :func:`depths_from_thresholds`) each input takes the gains above a
threshold calibrated on validation inputs so that the mean depth there equals the budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ldrop.selectors import calibrate_threshold


def _eligible(gains: Tensor, min_layers: int) -> Tensor:
    """The gains an input can still take above ``min_layers``, non-increasing along depth."""
    if gains.dim() != 2:
        raise ValueError(f"gains must have shape [inputs, layers - 1], got {list(gains.shape)}")
    if not 1 <= min_layers <= gains.shape[1] + 1:
        raise ValueError(f"min_layers must be in 1..{gains.shape[1] + 1}, got {min_layers}")
    return gains[:, min_layers - 1:].detach().float().cummin(1).values


def allocate_depths(gains: Tensor, budget: Tensor, min_layers: int = 1) -> Tensor:
    """``[inputs]`` depths whose sum is ``budget.sum()`` (capped at every input running every layer): each
    input starts at ``min_layers`` and the other layers go, one at a time, to the largest gains."""
    eligible = _eligible(gains, min_layers)
    inputs, slots = eligible.shape
    if budget.shape != (inputs,):
        raise ValueError(f"budget must have shape [{inputs}], got {list(budget.shape)}")
    extra = int(budget.sum()) - min_layers * inputs
    if extra < 0:
        raise ValueError(f"the budgets sum to {int(budget.sum())} layers, below min_layers={min_layers} per input")
    depths = torch.full((inputs,), min_layers, dtype=torch.long, device=gains.device)
    extra = min(extra, inputs * slots)
    if extra:
        taken = eligible.flatten().topk(extra).indices
        depths += torch.bincount(taken // slots, minlength=inputs).to(depths.device)
    return depths


def calibrate_gain_thresholds(gains: Tensor, budgets: Sequence[int], min_layers: int = 1) -> dict[int, float]:
    """Per budget ``k``, the gain threshold at which ``gains``' inputs (validation data) run ``k`` layers on
    average (``-inf``: every layer; ``+inf``: ``min_layers``)."""
    eligible = _eligible(gains, min_layers)
    scores = torch.cat([torch.full((len(eligible), 1), torch.inf), eligible.cpu().double()], 1)
    # the always-passing first column counts for min_layers
    return {k: torch.inf if k <= min_layers else calibrate_threshold(scores, float(k - min_layers + 1))[0]
            for k in map(int, budgets)}


def depths_from_thresholds(gains: Tensor, thresholds: Tensor, min_layers: int = 1) -> Tensor:
    """``[inputs]`` depths: ``min_layers`` plus the gains at or above each input's threshold (``[inputs]``)."""
    eligible = _eligible(gains, min_layers)
    return min_layers + (eligible >= thresholds.to(eligible)[:, None]).sum(1)
