"""LearnedScheduleSelector: an input-blind learned top-k schedule per budget."""

from __future__ import annotations

import pytest
import torch

from ldrop.selectors import LearnedScheduleSelector, mask_diversity
from tests.selectors.inputs import FEATURE_DIM, NUM_LAYERS, random_inputs


def make_selector(**options) -> LearnedScheduleSelector:
    torch.manual_seed(0)
    selector = LearnedScheduleSelector(NUM_LAYERS, FEATURE_DIM, **options)
    torch.nn.init.normal_(selector.schedule_scores)
    return selector


@pytest.mark.parametrize("training", [True, False])
def test_keeps_exactly_budget_layers_with_mixed_budgets(training: bool) -> None:
    selector = make_selector().train(training)
    features, frame_mask = random_inputs(NUM_LAYERS * 2)
    budget = torch.arange(1, NUM_LAYERS + 1).repeat(2)
    assert torch.equal(selector(features, frame_mask, budget).keep_mask.sum(-1), budget.float())


def test_keep_mask_forward_values_are_exactly_zero_or_one_in_training() -> None:
    selector = make_selector().train()
    features, frame_mask = random_inputs(16)
    keep_mask = selector(features, frame_mask, torch.full((16,), 2)).keep_mask
    assert set(keep_mask.unique().tolist()) == {0.0, 1.0}


def test_gradients_reach_the_schedule_through_keep_mask_in_training() -> None:
    selector = make_selector().train()
    features, frame_mask = random_inputs(16)
    keep_mask = selector(features, frame_mask, torch.full((16,), 3)).keep_mask
    (keep_mask * torch.randn(16, NUM_LAYERS)).sum().backward()
    assert selector.schedule_scores.grad[2].abs().sum() > 0
    assert selector.schedule_scores.grad[torch.arange(NUM_LAYERS) != 2].abs().sum() == 0


def test_every_input_gets_the_same_mask_in_eval() -> None:
    selector = make_selector().eval()
    features, frame_mask = random_inputs(32)
    keep_mask = selector(features, frame_mask, torch.full((32,), 3)).keep_mask
    assert mask_diversity(keep_mask)["num_distinct"] == 1


def test_training_samples_masks_with_gumbel_noise() -> None:
    selector = make_selector().train()
    features, frame_mask = random_inputs(32)
    torch.manual_seed(0)
    keep_mask = selector(features, frame_mask, torch.full((32,), 3)).keep_mask
    assert mask_diversity(keep_mask)["num_distinct"] > 1


def test_set_progress_anneals_temperature() -> None:
    selector = make_selector(tau_start=1.0, tau_end=0.01)
    selector.set_progress(0.0)
    start = selector.temperature
    selector.set_progress(1.0)
    assert (start, selector.temperature) == (pytest.approx(1.0), pytest.approx(0.01))


def test_schedule_lists_the_eval_layers_per_budget() -> None:
    selector = make_selector().eval()
    features, frame_mask = random_inputs(1)
    for budget, layers in selector.schedule().items():
        keep_mask = selector(features, frame_mask, torch.tensor([budget])).keep_mask[0]
        assert torch.nonzero(keep_mask).flatten().tolist() == layers


def test_state_dict_round_trip_reproduces_outputs() -> None:
    selector = make_selector().eval()
    restored = LearnedScheduleSelector(NUM_LAYERS, FEATURE_DIM).eval()
    restored.load_state_dict(selector.state_dict())
    features, frame_mask = random_inputs(NUM_LAYERS)
    budget = torch.arange(1, NUM_LAYERS + 1)
    assert torch.equal(
        selector(features, frame_mask, budget).keep_mask, restored(features, frame_mask, budget).keep_mask
    )


def test_its_training_options_are_topk_selectors_own(monkeypatch) -> None:
    # one list of options, TopKSelector's: the config parser sees every one with its default, and one added there
    # reaches the schedule without a copy of the list to keep in step
    from jsonargparse import ArgumentParser

    from ldrop.selectors import TopKSelector

    def options(cls: type) -> dict:
        parser = ArgumentParser()
        parser.add_class_arguments(cls, "s", skip={"num_layers", "feature_dim"})
        return vars(parser.get_defaults().s)

    assert options(LearnedScheduleSelector) == options(TopKSelector) and len(options(TopKSelector)) >= 7
    init, seen = TopKSelector.__init__, {}

    def with_a_new_option(self, num_layers, feature_dim, *, new_option=0, **training) -> None:
        seen["new_option"] = new_option
        init(self, num_layers, feature_dim, **training)

    monkeypatch.setattr(TopKSelector, "__init__", with_a_new_option)
    selector = LearnedScheduleSelector(NUM_LAYERS, new_option=3, tau_start=2.0)
    assert seen == {"new_option": 3} and selector.tau_start == 2.0 and selector.feature_dim == 1
