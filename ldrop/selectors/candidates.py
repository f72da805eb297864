"""Alternative masks around a chosen one: what the counterfactual objective and the sweep's oracles compare.

Every helper keeps each row's number of layers, so an alternative costs the same budget as the choice, and
the first ``keep_first`` layers (a selector's prefix layers, which every mask keeps).
"""

from __future__ import annotations

import torch
from torch import Tensor


def one_layer_swaps(own: Tensor, generator: torch.Generator | None = None, keep_first: int = 0) -> Tensor:
    """``own`` with one kept layer swapped for one dropped layer, both drawn at random, per row.

    Rows that keep no layer or every layer have nothing to swap and come back unchanged.

    Args:
        own: ``[batch, layers]`` 0/1 masks.
        generator: CPU generator for reproducible draws (``None``: the global generator).
        keep_first: leading layers never swapped (kept as they are).
    """
    own = (own > 0.5).float()
    if keep_first:
        return torch.cat([own[:, :keep_first], one_layer_swaps(own[:, keep_first:], generator)], dim=1)
    batch, layers = own.shape
    kept_noise = torch.rand(batch, layers, generator=generator).to(own.device)
    dropped_noise = torch.rand(batch, layers, generator=generator).to(own.device)
    drop = (kept_noise * own - (1 - own)).argmax(1)  # a random kept layer
    add = (dropped_noise * (1 - own) - own).argmax(1)  # a random dropped layer
    rows = torch.arange(batch, device=own.device)
    can_swap = (own.sum(1) > 0) & (own.sum(1) < layers)
    swapped = own.clone()
    swapped[rows[can_swap], drop[can_swap]] = 0.0
    swapped[rows[can_swap], add[can_swap]] = 1.0
    return swapped


def random_subsets_like(own: Tensor, generator: torch.Generator | None = None, keep_first: int = 0) -> Tensor:
    """A uniformly random mask per row with as many layers as that row of ``own`` keeps (the first
    ``keep_first`` layers as in ``own``, the rest drawn)."""
    if keep_first:
        own = (own > 0.5).float()
        return torch.cat([own[:, :keep_first], random_subsets_like(own[:, keep_first:], generator)], dim=1)
    batch, layers = own.shape
    scores = torch.rand(batch, layers, generator=generator).to(own.device)
    ranks = scores.argsort(1, descending=True).argsort(1)
    return (ranks < (own > 0.5).sum(1, keepdim=True)).float()


def candidate_masks(own: Tensor, count: int, generator: torch.Generator | None = None,
                    keep_first: int = 0, schedule: Tensor | None = None) -> Tensor:
    """``[count, batch, layers]`` masks per input: its own mask, the schedule's mask (when given), one-layer
    swaps of the own mask, then random ones.

    Args:
        own: ``[batch, layers]`` 0/1 masks the selector chose.
        count: candidates per input, ``>= 1`` (the first is always ``own``).
        generator: CPU generator (the candidates are reproducible); ``None``: the global generator.
        keep_first: leading layers every candidate keeps as ``own`` does.
        schedule: ``[layers]`` the selector's input-blind schedule mask at this budget (e.g. its learned
            prior's choice), the second candidate of every input when given (then one random mask fewer).
    """
    own = (own > 0.5).float()
    swaps = min(count // 2, count - 1)  # about half near the choice, the rest anywhere
    candidates = [own] + [one_layer_swaps(own, generator, keep_first) for _ in range(swaps)]
    if schedule is not None and len(candidates) < count:
        candidates.insert(1, (schedule > 0.5).float().to(own.device).expand_as(own))
    candidates += [random_subsets_like(own, generator, keep_first) for _ in range(count - len(candidates))]
    return torch.stack(candidates)
