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


def candidate_masks(own: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """``[count, batch, layers]`` masks per input: its own mask, one-layer swaps of it, then random ones.

    Args:
        own: ``[batch, layers]`` 0/1 masks the selector chose (each row keeps the same number of layers).
        count: candidates per input, ``>= 1`` (the first is always ``own``).
        generator: seeded CPU generator (the candidates are reproducible).
    """
    own = (own > 0.5).float()
    batch, layers = own.shape
    candidates = [own]
    swaps = (count - 1 + 1) // 2  # about half one-layer swaps (near the choice), the rest random subsets
    for _ in range(min(swaps, count - 1)):
        swapped = own.clone()
        kept_noise = torch.rand(batch, layers, generator=generator).to(own.device)
        dropped_noise = torch.rand(batch, layers, generator=generator).to(own.device)
        drop = (kept_noise * own - (1 - own)).argmax(1)  # a random kept layer
        add = (dropped_noise * (1 - own) - own).argmax(1)  # a random dropped layer
        rows = torch.arange(batch, device=own.device)
        can_swap = (own.sum(1) > 0) & (own.sum(1) < layers)
        swapped[rows[can_swap], drop[can_swap]] = 0.0
        swapped[rows[can_swap], add[can_swap]] = 1.0
        candidates.append(swapped)
    while len(candidates) < count:
        scores = torch.rand(batch, layers, generator=generator).to(own.device)
        ranks = scores.argsort(1, descending=True).argsort(1)
        candidates.append((ranks < own.sum(1, keepdim=True)).float())
    return torch.stack(candidates)
