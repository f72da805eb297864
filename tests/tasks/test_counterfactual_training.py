"""The task side of the counterfactual objective: per-input losses, alternative masks, the training path."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch

from ldrop.selectors import InputConditionedSelector, RandomSelector
from ldrop.tasks import ClassificationTask, CTCTask, OptimizerConfig
from tests.helpers import quiet_trainer, tiny_classification_data, tiny_ctc_data


def _classifier(**kwargs) -> ClassificationTask:
    torch.manual_seed(0)
    return ClassificationTask(labels=["a", "b", "c", "d"], backbone="tiny:wavlm",
                              optimization=OptimizerConfig(warmup=0), **kwargs)


def _first_batch(data):
    data.setup("fit")
    return next(iter(data.train_dataloader()))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_classification_item_losses_average_to_the_task_loss(label_smoothing):
    model = _classifier(label_smoothing=label_smoothing)
    batch = _first_batch(tiny_classification_data())
    logits, _ = model(batch.waveforms, batch.lengths)
    frame_mask = torch.ones(1, 1, dtype=torch.bool)
    items = model.item_losses(logits, frame_mask, batch)
    assert items.shape == (len(batch),)
    torch.testing.assert_close(items.mean(), model.task_loss(logits, frame_mask, batch))


def test_ctc_item_losses_average_to_the_task_loss():
    data = tiny_ctc_data()
    torch.manual_seed(0)
    model = CTCTask(labels=data.alphabet, backbone="tiny:wavlm")
    batch = _first_batch(data)
    encoded = model.encode(batch.waveforms, batch.lengths)
    logits, _, _ = model.logits_at_budget(encoded, model.num_layers)
    items = model.item_losses(logits, encoded.frame_mask, batch)
    assert items.shape == (len(batch),)
    torch.testing.assert_close(items.mean(), model.task_loss(logits, encoded.frame_mask, batch))


def _training_step_layer_calls(model, batch, budget: int) -> tuple[dict[str, float], list[int]]:
    """Run one training step at ``budget``; return its losses and the batch rows each layer call saw."""
    rows: list[int] = []
    run_layer = model.backbone.run_layer

    def counting(index, hidden, frame_mask, context):
        rows.append(hidden.shape[0])
        return run_layer(index, hidden, frame_mask, context)

    model.backbone.run_layer = counting
    model.sample_train_budget = lambda: budget
    logged: dict[str, float] = {}
    model.log = lambda name, value, **kwargs: logged.__setitem__(name, float(torch.as_tensor(value).detach()))
    model.train()
    model.training_step(batch, 0)["loss"].backward()
    return logged, rows


def test_counterfactual_only_training_runs_the_chosen_layers_and_the_swaps_sparsely():
    model = _classifier(selector=functools.partial(InputConditionedSelector, hidden_dim=16,
                                                   objective="counterfactual", counterfactual_candidates=2))
    batch = _first_batch(tiny_classification_data())
    logged, rows = _training_step_layer_calls(model, batch, budget=1)
    # budget 1 of 4 layers: the chosen pass and two swaps each run one layer per input (sparse), no dense pass
    assert sum(rows) == 3 * len(batch)
    assert logged["train/selector_counterfactual_loss"] >= 0.0
    assert model.selector.score_head.weight.grad is not None


def test_both_objectives_add_the_ranking_loss_to_the_straight_through_path():
    model = _classifier(selector=functools.partial(InputConditionedSelector, hidden_dim=16, objective="both"))
    batch = _first_batch(tiny_classification_data())
    logged, rows = _training_step_layer_calls(model, batch, budget=1)
    # dense: every layer on every input; the two swaps: one layer per input each
    assert sum(rows) == model.num_layers * len(batch) + 2 * len(batch)
    assert "train/selector_counterfactual_loss" in logged


def test_no_ranking_loss_at_full_depth_or_with_the_straight_through_objective():
    batch = _first_batch(tiny_classification_data())
    model = _classifier(selector=functools.partial(InputConditionedSelector, hidden_dim=16, objective="both"))
    logged, _ = _training_step_layer_calls(model, batch, budget=model.num_layers)
    assert "train/selector_counterfactual_loss" not in logged  # nothing to choose at full depth
    model = _classifier(selector=functools.partial(InputConditionedSelector, hidden_dim=16))
    logged, _ = _training_step_layer_calls(model, batch, budget=1)
    assert "train/selector_counterfactual_loss" not in logged


def test_counterfactual_training_fits_end_to_end(tmp_path):
    L.seed_everything(0)
    model = _classifier(selector=functools.partial(InputConditionedSelector, hidden_dim=16, objective="both"))
    trainer = quiet_trainer(tmp_path, max_steps=6, limit_val_batches=1)
    trainer.fit(model, tiny_classification_data())
    assert "train/selector_counterfactual_loss" in trainer.logged_metrics


def test_selectors_without_the_objective_do_not_compare_masks():
    assert RandomSelector(4, 8).counterfactual_candidates == 0
    with pytest.raises(NotImplementedError, match="counterfactual"):
        RandomSelector(4, 8).counterfactual_loss(*(torch.zeros(1),) * 5)


def test_the_swaps_keep_the_prefix_layers_and_continue_from_them():
    model = _classifier(selector=functools.partial(InputConditionedSelector, hidden_dim=16, input="layers",
                                                   objective="counterfactual"))
    batch = _first_batch(tiny_classification_data())
    calls: list[int] = []
    run_layer = model.backbone.run_layer
    model.backbone.run_layer = lambda index, *args: calls.append(index) or run_layer(index, *args)
    model.sample_train_budget = lambda: 2
    model.log = lambda *args, **kwargs: None
    model.train()
    model.training_step(batch, 0)["loss"].backward()
    assert calls.count(0) == 1  # the prefix ran once, in encode: no swap dropped it
