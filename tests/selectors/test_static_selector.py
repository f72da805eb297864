"""StaticSelector and greedy_subset_search: the best input-blind fixed subsets."""

from __future__ import annotations

import pytest
import torch

from ldrop.selectors import StaticSelector, greedy_subset_search
from tests.selectors.inputs import FEATURE_DIM, NUM_LAYERS, random_inputs


def kept_layers(selector: StaticSelector, budget: int) -> list[list[int]]:
    features, frame_mask = random_inputs(3)
    keep_mask = selector(features, frame_mask, torch.full((3,), budget)).keep_mask
    return [torch.nonzero(row).flatten().tolist() for row in keep_mask]


@pytest.mark.parametrize(
    ("subsets", "expected"),
    [("first", [0, 1, 2]), ("last", [3, 4, 5]), ("evenly_spaced", [0, 3, 5]), ({3: [1, 2, 4]}, [1, 2, 4])],
)
def test_every_input_gets_the_subset_of_its_budget(subsets, expected: list[int]) -> None:
    assert kept_layers(StaticSelector(NUM_LAYERS, FEATURE_DIM, subsets=subsets), 3) == [expected] * 3


def test_a_budget_without_a_subset_raises() -> None:
    selector = StaticSelector(NUM_LAYERS, FEATURE_DIM, subsets={2: [0, 5]})
    with pytest.raises(RuntimeError, match=r"no subset for budgets \[3\]"):
        kept_layers(selector, 3)


@pytest.mark.parametrize("subsets", [{2: [0]}, {2: [1, 1]}, {2: [0, NUM_LAYERS]}, {0: []}])
def test_invalid_subsets_raise(subsets) -> None:
    with pytest.raises(ValueError, match="subsets"):
        StaticSelector(NUM_LAYERS, FEATURE_DIM, subsets=subsets)


def test_set_subsets_replaces_only_the_named_budgets() -> None:
    selector = StaticSelector(NUM_LAYERS, FEATURE_DIM, subsets="first")
    selector.set_subsets({2: [4, 5]})
    assert selector.subsets[2] == [4, 5] and selector.subsets[3] == [0, 1, 2]


def test_subsets_survive_a_state_dict_round_trip() -> None:
    selector = StaticSelector(NUM_LAYERS, FEATURE_DIM, subsets={1: [4], 2: [1, 3]})
    restored = StaticSelector(NUM_LAYERS, FEATURE_DIM, subsets="first")
    restored.load_state_dict(selector.state_dict())
    assert restored.subsets == {1: [4], 2: [1, 3]}
    assert kept_layers(restored, 2) == [[1, 3]] * 3


def additive_metric(weights: list[float]):
    """A metric whose best subset of size k is the k layers with the largest weights."""
    calls = []

    def evaluate(layers: list[int]) -> float:
        calls.append(list(layers))
        return sum(weights[layer] for layer in layers)

    return evaluate, calls


def test_greedy_search_finds_the_known_best_subset_per_budget() -> None:
    weights = [0.5, 3.0, 0.1, 2.0, 1.0, 4.0]
    evaluate, calls = additive_metric(weights)
    found = greedy_subset_search(evaluate, NUM_LAYERS, budgets=range(1, NUM_LAYERS + 1))
    for budget in range(1, NUM_LAYERS + 1):
        best = sorted(sorted(range(NUM_LAYERS), key=lambda layer: -weights[layer])[:budget])
        assert found[budget] == best
    assert all(layers == sorted(layers) for layers in calls)
    assert len(calls) == sum(range(2, NUM_LAYERS + 1))  # N + (N-1) + ... + 2 evaluations


def test_greedy_search_minimises_when_lower_is_better() -> None:
    weights = [0.5, 3.0, 0.1, 2.0, 1.0, 4.0]
    evaluate, _ = additive_metric(weights)
    found = greedy_subset_search(evaluate, NUM_LAYERS, budgets=[2], higher_is_better=False)
    assert found == {2: [0, 2]}


def test_greedy_search_stops_at_the_smallest_requested_budget() -> None:
    evaluate, calls = additive_metric([1.0] * NUM_LAYERS)
    found = greedy_subset_search(evaluate, NUM_LAYERS, budgets=[4, 5])
    assert set(found) == {4, 5} and len(calls) == NUM_LAYERS + NUM_LAYERS - 1


def test_greedy_search_finds_a_pair_that_only_works_together() -> None:
    # layers 2 and 4 are worth a lot together and nothing alone; backward elimination keeps both
    def evaluate(layers: list[int]) -> float:
        return 10.0 * (2 in layers and 4 in layers) + 0.1 * len(layers)

    assert greedy_subset_search(evaluate, NUM_LAYERS, budgets=[2])[2] == [2, 4]


def test_searched_subsets_install_as_subsets() -> None:
    evaluate, _ = additive_metric([0.5, 3.0, 0.1, 2.0, 1.0, 4.0])
    selector = StaticSelector(NUM_LAYERS, FEATURE_DIM, subsets=greedy_subset_search(evaluate, NUM_LAYERS, [1, 3]))
    assert selector.subsets == {1: [5], 3: [1, 3, 5]}
