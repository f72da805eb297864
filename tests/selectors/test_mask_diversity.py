"""Diagnostics of how input-dependent a set of keep masks is."""

from __future__ import annotations

import itertools

import pytest
import torch

from ldrop.selectors import mask_diversity, most_common_mask_for_all, shuffle_masks


def random_masks(inputs: int = 40, layers: int = 6, seed: int = 0) -> torch.Tensor:
    return (torch.rand(inputs, layers, generator=torch.Generator().manual_seed(seed)) < 0.5).float()


def test_a_fixed_schedule_has_one_distinct_mask_and_zero_distance() -> None:
    masks = torch.tensor([[1.0, 0.0, 1.0]]).repeat(10, 1)
    diversity = mask_diversity(masks)
    assert diversity["num_distinct"] == 1
    assert diversity["mean_pairwise_hamming"] == 0.0
    assert diversity["most_common_share"] == 1.0
    assert diversity["most_common_mask"].tolist() == [1.0, 0.0, 1.0]


def test_counts_distinct_masks_and_the_most_common_one() -> None:
    masks = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    diversity = mask_diversity(masks)
    assert diversity["num_distinct"] == 3
    assert diversity["most_common_share"] == 0.5
    assert diversity["most_common_mask"].tolist() == [0.0, 1.0]


def test_mean_pairwise_hamming_equals_the_brute_force_mean_over_pairs() -> None:
    masks = random_masks()
    pairs = list(itertools.combinations(range(masks.shape[0]), 2))
    brute_force = sum((masks[i] != masks[j]).sum().item() for i, j in pairs) / len(pairs)
    assert mask_diversity(masks)["mean_pairwise_hamming"] == pytest.approx(brute_force)


def test_a_single_input_has_zero_pairwise_distance() -> None:
    assert mask_diversity(torch.ones(1, 4))["mean_pairwise_hamming"] == 0.0


def test_shuffle_keeps_the_masks_and_moves_them_across_inputs() -> None:
    masks = random_masks()
    shuffled = shuffle_masks(masks, torch.Generator().manual_seed(0))
    assert not torch.equal(shuffled, masks)
    assert sorted(map(tuple, shuffled.tolist())) == sorted(map(tuple, masks.tolist()))
    assert torch.equal(shuffled, shuffle_masks(masks, torch.Generator().manual_seed(0)))


def test_most_common_mask_for_all_repeats_the_most_common_mask() -> None:
    masks = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert most_common_mask_for_all(masks).tolist() == [[0.0, 1.0]] * 3


def test_masks_of_the_wrong_shape_raise() -> None:
    with pytest.raises(ValueError, match="masks"):
        mask_diversity(torch.ones(4))
