"""Headroom of input conditioning: what the best single mask for everybody (the static oracle) and the best
mask per input among a few candidates (the per-input oracle) would score at a budget.

The selector's own result sits between the two oracles: the gap between them is what reading the input can
win at that budget, and the selector's distance to the per-input oracle is what it leaves on the table.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from ldrop.selectors.candidates import candidate_masks  # noqa: F401 (the oracle's candidates)


def all_subsets(num_layers: int, budget: int, device: torch.device | str = "cpu") -> Tensor:
    """Every ``budget``-layer mask of ``num_layers`` layers, ``[C(num_layers, budget), num_layers]``."""
    subsets = list(itertools.combinations(range(num_layers), budget))
    masks = torch.zeros(len(subsets), num_layers, device=device)
    for row, layers in enumerate(subsets):
        masks[row, list(layers)] = 1.0
    return masks


def num_subsets(num_layers: int, budget: int) -> int:
    """``C(num_layers, budget)``: how many masks the static oracle would have to score."""
    return math.comb(num_layers, budget)
