"""What every selector shares: the constructor, budget validation, the keep mask, the waveform keywords."""

from __future__ import annotations

import pytest
import torch

from ldrop.engine.host_syncs import HostSyncCounter
from ldrop.selectors import (
    InputConditionedSelector,
    LearnedScheduleSelector,
    RandomSelector,
    StaticSelector,
)
from tests.selectors.inputs import FEATURE_DIM, NUM_LAYERS, random_inputs

SELECTORS = [InputConditionedSelector, LearnedScheduleSelector, RandomSelector, StaticSelector]
BATCH_SIZE = 4


@pytest.mark.parametrize("selector_class", SELECTORS)
@pytest.mark.parametrize(
    "budget",
    [
        torch.zeros(BATCH_SIZE, dtype=torch.long),
        torch.full((BATCH_SIZE,), NUM_LAYERS + 1),
        torch.full((BATCH_SIZE, 1), 2),
        torch.full((BATCH_SIZE + 1,), 2),
        torch.full((BATCH_SIZE,), 2.0),
        2,
    ],
    ids=["zero", "above_num_layers", "two_dims", "wrong_batch", "float", "python_int"],
)
@pytest.mark.parametrize("training", [True, False])
def test_invalid_budget_raises_value_error_naming_budget(selector_class, budget, training: bool) -> None:
    selector = selector_class(NUM_LAYERS, FEATURE_DIM).train(training)
    features, frame_mask = random_inputs(BATCH_SIZE)
    with pytest.raises(ValueError, match="budget"):
        selector(features, frame_mask, budget)


@pytest.mark.parametrize("selector_class", SELECTORS)
def test_every_selector_keeps_a_zero_one_mask_of_budget_shape(selector_class) -> None:
    selector = selector_class(NUM_LAYERS, FEATURE_DIM).eval()
    features, frame_mask = random_inputs(BATCH_SIZE)
    keep_mask = selector(features, frame_mask, torch.full((BATCH_SIZE,), 3)).keep_mask
    assert keep_mask.shape == (BATCH_SIZE, NUM_LAYERS) and keep_mask.dtype == torch.float32
    assert set(keep_mask.unique().tolist()) <= {0.0, 1.0}
    assert keep_mask.sum(1).tolist() == [3.0] * BATCH_SIZE  # exactly the budget


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("selector_class", SELECTORS)
def test_every_selector_keeps_each_inputs_own_budget(selector_class, training) -> None:
    selector = selector_class(NUM_LAYERS, FEATURE_DIM).train(training)
    features, frame_mask = random_inputs(BATCH_SIZE)
    budget = torch.arange(BATCH_SIZE) % NUM_LAYERS + 1  # a different budget per input
    with torch.no_grad():
        keep_mask = selector(features, frame_mask, budget).keep_mask
    assert keep_mask.sum(1).tolist() == budget.float().tolist()


@pytest.mark.parametrize("selector_class", SELECTORS)
def test_every_selector_accepts_the_waveform_keywords_the_task_may_pass(selector_class) -> None:
    selector = selector_class(NUM_LAYERS, FEATURE_DIM).eval()
    features, frame_mask = random_inputs(BATCH_SIZE)
    waveforms, lengths = torch.randn(BATCH_SIZE, 8000), torch.full((BATCH_SIZE,), 8000)
    output = selector(
        features, frame_mask, torch.full((BATCH_SIZE,), 3), waveforms=waveforms, lengths=lengths
    )
    assert output.keep_mask.shape == (BATCH_SIZE, NUM_LAYERS)


@pytest.mark.parametrize("selector_class", SELECTORS)
def test_flops_are_float64_per_sample(selector_class) -> None:
    flops = selector_class(NUM_LAYERS, FEATURE_DIM).flops(torch.tensor([50, 100, 150]))
    assert flops.shape == (3,) and flops.dtype == torch.float64 and bool((flops >= 0).all())


@pytest.mark.parametrize(
    "selector_class", [LearnedScheduleSelector, RandomSelector, StaticSelector]
)
def test_selectors_without_statistics_accept_refresh_calls_as_no_ops(selector_class) -> None:
    selector = selector_class(NUM_LAYERS, FEATURE_DIM)
    state = {name: tensor.clone() for name, tensor in selector.state_dict().items()}
    selector.reset_statistics()
    selector.update_statistics(*random_inputs(BATCH_SIZE))
    assert not selector.tracks_statistics
    assert all(torch.equal(state[name], tensor) for name, tensor in selector.state_dict().items())


@pytest.mark.parametrize("selector_class", SELECTORS)
@pytest.mark.parametrize("training", [True, False])
def test_a_forward_reads_the_budget_on_the_host_at_most_once(selector_class, training: bool) -> None:
    selector = selector_class(NUM_LAYERS, FEATURE_DIM).train(training)
    features, frame_mask = random_inputs(BATCH_SIZE)
    budget = torch.tensor([1, 2, 3, NUM_LAYERS])
    with torch.no_grad(), HostSyncCounter() as syncs:
        selector(features, frame_mask, budget)
    assert syncs.count_in("ldrop/selectors/base.py") <= 1, syncs.where()
    with pytest.raises(ValueError, match=rf"in 1\.\.{NUM_LAYERS} \(num_layers\), got min 0, max {NUM_LAYERS + 1}$"):
        selector(features, frame_mask, torch.tensor([0, 2, 3, NUM_LAYERS + 1]))
