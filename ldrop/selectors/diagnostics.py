"""How input-dependent a selector's masks are: diversity measures and the shuffled-mask controls."""

from __future__ import annotations

import torch
from torch import Tensor


def _check_masks(masks: Tensor) -> Tensor:
    if masks.dim() != 2 or masks.shape[0] < 1:
        raise ValueError(f"masks must have shape [inputs, layers] with inputs >= 1, got {list(masks.shape)}")
    return masks.detach().round().to(torch.long)


def mask_diversity(masks: Tensor) -> dict[str, float | int | Tensor]:
    """Summarise how much the keep masks of a set of inputs differ.

    A collapsed selector (a fixed schedule) gives one distinct mask, mean Hamming distance 0 and a most
    common share of 1.

    Args:
        masks: ``[inputs, layers]`` 0/1 keep masks (e.g. all test inputs at one budget).

    Returns:
        ``num_distinct`` (int): distinct masks.
        ``mean_pairwise_hamming`` (float): mean number of differing layers over all unordered pairs of
        inputs (not normalised; divide by ``layers`` for a fraction), exact, in ``O(inputs * layers)`` from
        per-layer keep counts ``c``: ``sum(c * (M - c)) / (M * (M - 1) / 2)``; 0 for one input.
        ``most_common_share`` (float): fraction of inputs with the most common mask.
        ``most_common_mask`` (Tensor): ``[layers]`` that mask (ties: the lexicographically smallest).
    """
    masks = _check_masks(masks)
    num_inputs = masks.shape[0]
    distinct, counts = torch.unique(masks, dim=0, return_counts=True)
    kept = masks.sum(0).double()
    num_pairs = num_inputs * (num_inputs - 1) / 2
    hamming = float((kept * (num_inputs - kept)).sum() / num_pairs) if num_pairs else 0.0
    top = int(torch.argmax(counts))
    return {
        "num_distinct": int(distinct.shape[0]),
        "mean_pairwise_hamming": hamming,
        "most_common_share": float(counts[top]) / num_inputs,
        "most_common_mask": distinct[top].float(),
    }


def shuffle_masks(masks: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The "same masks, wrong inputs" control: the rows of ``masks`` randomly permuted across inputs.

    Keeps every mask and the layer usage; if the selector's choices depend on the input, accuracy with
    shuffled masks drops.

    Args:
        masks: ``[inputs, layers]`` keep masks.
        generator: optional CPU generator for a reproducible permutation.

    Returns:
        ``[inputs, layers]`` permuted copy.
    """
    _check_masks(masks)
    permutation = torch.randperm(masks.shape[0], generator=generator).to(masks.device)
    return masks[permutation]


def most_common_mask_for_all(masks: Tensor) -> Tensor:
    """The "best fixed mask among the selector's own" control: every input gets the most common mask.

    Args:
        masks: ``[inputs, layers]`` keep masks.

    Returns:
        ``[inputs, layers]`` with every row the most common mask, same dtype and device as ``masks``.
    """
    common = mask_diversity(masks)["most_common_mask"]
    return common.to(masks).unsqueeze(0).expand_as(masks).clone()
