"""The counterfactual objective: ranking masks of the same input by their loss, instead of (or besides) the
straight-through gradient of the chosen mask."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from ldrop.selectors import InputConditionedSelector, LearnedScheduleSelector, mask_diversity
from ldrop.selectors.candidates import candidate_masks, one_layer_swaps, random_subsets_like
from tests.selectors.inputs import FEATURE_DIM, NUM_LAYERS, random_inputs
from tests.selectors.test_input_conditioned_selector import eval_masks, two_type_batch


def train_by_ranking(selector, utility: Tensor, budget: int, steps: int = 300, loss_noise: float = 0.5) -> None:
    """Train with the counterfactual loss alone on a toy loss: ``-(kept utility) + noise`` per input.

    ``utility [types, layers]``; the noise (drawn per input and mask) makes the comparisons as noisy as the
    task losses of real masks.
    """
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(selector.parameters(), lr=1e-2)
    selector.train()
    for step in range(steps):
        selector.set_progress(step / steps)
        features, frame_mask, input_type = two_type_batch(32, generator)
        out = selector(features, frame_mask, torch.full((32,), budget))
        own = out.keep_mask.detach()

        def toy_loss(mask: Tensor, input_type: Tensor = input_type) -> Tensor:
            return -(mask * utility[input_type]).sum(-1) + loss_noise * torch.randn(32, generator=generator)

        candidates = torch.stack([one_layer_swaps(own, generator) for _ in range(2)])
        loss = selector.counterfactual_loss(out.scores, own, candidates, toy_loss(own),
                                            torch.stack([toy_loss(c) for c in candidates]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    selector.eval()


def counterfactual_selector(**options) -> InputConditionedSelector:
    torch.manual_seed(0)
    return InputConditionedSelector(NUM_LAYERS, FEATURE_DIM, hidden_dim=32, objective="counterfactual", **options)


def test_finds_the_best_layers_of_each_input_type():
    # type A is best served by layers {0, 1}, type B by {2, 3}: only reading the input can serve both
    utility = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]])
    selector = counterfactual_selector()
    train_by_ranking(selector, utility, budget=2)
    keep_mask, input_type = eval_masks(selector, 2)
    got_best = (keep_mask == utility[input_type]).all(-1)
    assert got_best[input_type == 0].float().mean() >= 0.95
    assert got_best[input_type == 1].float().mean() >= 0.95


@pytest.mark.parametrize("min_alpha", [0.0, 0.1])
def test_returns_one_schedule_with_a_margin_when_the_input_does_not_matter(min_alpha):
    # Both types rank the layers alike: every input must get {0, 1}. The k-th best score of every input
    # beats the (k+1)-th by a wide margin (2.2-2.3 across initialisations), so rounding on another CPU
    # cannot flip one input's mask.
    utility = torch.tensor([[3.0, 2.0, 1.0, 0.0, 0.0, 0.0], [3.0, 2.0, 1.0, 0.0, 0.0, 0.0]])
    selector = counterfactual_selector(min_alpha=min_alpha)
    train_by_ranking(selector, utility, budget=2)
    keep_mask, _ = eval_masks(selector, 2)
    assert mask_diversity(keep_mask)["num_distinct"] == 1
    assert keep_mask[0].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    features, frame_mask, _ = two_type_batch(200, torch.Generator().manual_seed(1))
    with torch.no_grad():
        ranked = selector.score(features, frame_mask, torch.full((200,), 2)).sort(-1, descending=True).values
    assert (ranked[:, 1] - ranked[:, 2]).min() > 1.0


def test_a_learned_schedule_learns_the_best_fixed_mask_by_ranking():
    utility = torch.tensor([[3.0, 0.0, 2.0, 1.0, 0.0, 0.0], [3.0, 0.0, 2.0, 1.0, 0.0, 0.0]])
    torch.manual_seed(0)
    schedule = LearnedScheduleSelector(NUM_LAYERS, FEATURE_DIM, objective="counterfactual")
    train_by_ranking(schedule, utility, budget=2)
    assert schedule.schedule()[2] == [0, 2]


def test_pairs_with_equal_losses_teach_nothing():
    selector = counterfactual_selector()
    scores = torch.randn(4, NUM_LAYERS, requires_grad=True)
    own = torch.zeros(4, NUM_LAYERS)
    own[:, :2] = 1.0
    candidates = one_layer_swaps(own, torch.Generator().manual_seed(0)).unsqueeze(0)
    losses = torch.ones(4)
    loss = selector.counterfactual_loss(scores, own, candidates, losses, losses.unsqueeze(0))
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.count_nonzero(scores.grad) == 0


def test_a_step_raises_the_margin_of_the_better_mask():
    selector = counterfactual_selector(counterfactual_weight=2.0)
    scores = torch.zeros(1, NUM_LAYERS, requires_grad=True)
    own = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    candidate = torch.tensor([[[1.0, 0.0, 1.0, 0.0, 0.0, 0.0]]])  # layer 1 swapped for layer 2
    # the candidate is better (lower loss): the gradient must favour layer 2 over layer 1
    loss = selector.counterfactual_loss(scores, own, candidate, torch.tensor([1.0]), torch.tensor([[0.5]]))
    loss.backward()
    assert scores.grad[0, 2] < 0 < scores.grad[0, 1]  # descent raises layer 2's score, lowers layer 1's
    assert scores.grad[0, [0, 3, 4, 5]].abs().max() == 0
    assert float(loss.detach()) == pytest.approx(2.0 * 0.5 * float(torch.nn.functional.softplus(torch.tensor(0.0))))


def test_counterfactual_only_training_gives_hard_masks_without_gradient():
    selector = counterfactual_selector()
    assert not selector.differentiable
    selector.train()
    features, frame_mask = random_inputs(8)
    out = selector(features, frame_mask, torch.full((8,), 3))
    assert not out.keep_mask.requires_grad
    assert set(out.keep_mask.unique().tolist()) <= {0.0, 1.0}
    assert (out.keep_mask.sum(-1) == 3).all()
    assert out.scores.requires_grad  # the ranking loss trains the scores


@pytest.mark.parametrize("objective, differentiable, candidates", [
    ("straight_through", True, 0), ("both", True, 2), ("counterfactual", False, 2),
])
def test_objective_sets_the_training_path_and_the_candidates(objective, differentiable, candidates):
    selector = InputConditionedSelector(NUM_LAYERS, FEATURE_DIM, objective=objective)
    assert selector.differentiable is differentiable
    assert selector.counterfactual_candidates == candidates


@pytest.mark.parametrize("options", [
    dict(objective="ranking"), dict(objective="both", counterfactual_candidates=0),
    dict(counterfactual_weight=-1.0),
])
def test_invalid_objective_options_raise(options):
    with pytest.raises(ValueError, match="objective|counterfactual"):
        InputConditionedSelector(NUM_LAYERS, FEATURE_DIM, **options)


def test_swaps_and_random_subsets_keep_each_rows_layer_count():
    generator = torch.Generator().manual_seed(0)
    own = torch.zeros(16, NUM_LAYERS)
    for row in range(16):
        own[row, torch.randperm(NUM_LAYERS, generator=generator)[: 1 + row % NUM_LAYERS]] = 1.0
    swapped = one_layer_swaps(own, generator)
    assert torch.equal(swapped.sum(1), own.sum(1))
    changed = (swapped != own).sum(1)
    full = own.sum(1) == NUM_LAYERS
    assert (changed[~full] == 2).all() and (changed[full] == 0).all()
    assert torch.equal(random_subsets_like(own, generator).sum(1), own.sum(1))
    candidates = candidate_masks(own, 5, generator)
    assert candidates.shape == (5, 16, NUM_LAYERS) and torch.equal(candidates[0], own)


def test_candidates_keep_the_prefix_layers():
    generator = torch.Generator().manual_seed(0)
    own = torch.zeros(32, NUM_LAYERS)
    own[:, 0] = 1.0
    own[torch.arange(32), 1 + torch.randint(0, NUM_LAYERS - 1, (32,), generator=generator)] = 1.0
    for candidates in (candidate_masks(own, 6, generator, keep_first=1), one_layer_swaps(own, generator, 1)[None]):
        assert (candidates[..., 0] == 1).all()
        assert torch.equal(candidates.sum(-1), own.sum(-1).expand(candidates.shape[:-1]))


def test_the_schedule_mask_is_the_second_candidate_of_every_input():
    generator = torch.Generator().manual_seed(0)
    own = torch.zeros(8, NUM_LAYERS)
    own[:, :2] = 1.0
    schedule = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    candidates = candidate_masks(own, 4, generator, schedule=schedule)
    assert candidates.shape == (4, 8, NUM_LAYERS)
    assert torch.equal(candidates[0], own) and (candidates[1] == schedule).all()


@pytest.mark.parametrize("read_layers", [None, 1, 2])
def test_schedule_mask_is_the_priors_choice_with_the_prefix(read_layers):
    options = {} if read_layers is None else {"input": "layers", "read_layers": read_layers}
    selector = InputConditionedSelector(NUM_LAYERS, FEATURE_DIM, **options)
    with torch.no_grad():
        selector.prior.copy_(torch.linspace(0.0, 1.0, NUM_LAYERS).expand_as(selector.prior))  # last layers best
    j = read_layers or 0
    for budget in range(1, NUM_LAYERS + 1):
        mask = selector.schedule_mask(budget)
        assert mask.sum() == max(budget, j) and (mask[:j] == 1).all()
        assert (mask[NUM_LAYERS - (budget - j):] == 1).all() if budget > j else True
    schedule = LearnedScheduleSelector(NUM_LAYERS, FEATURE_DIM)
    assert schedule.schedule_mask(3).nonzero().flatten().tolist() == schedule.schedule()[3]
    assert InputConditionedSelector(NUM_LAYERS, FEATURE_DIM, score_mode="raw").schedule_mask(2) is None
