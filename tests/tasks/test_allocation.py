"""Depth allocation as a task's depth policy: the depth signal in training, the mean budget at evaluation (per
batch exactly, per stream as calibrated), and clear errors."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch

from ldrop.selectors import InputConditionedSelector, LearnedScheduleSelector
from ldrop.tasks import AllocatedLayers, AllocationConfig, BudgetSampling, ClassificationTask, OptimizerConfig
from tests.helpers import quiet_trainer, tiny_classification_data

SELECTOR = functools.partial(InputConditionedSelector, hidden_dim=16, fallback=False)


def _model(mode: str = "batch", selector=SELECTOR) -> ClassificationTask:
    torch.manual_seed(0)
    return ClassificationTask(labels=["a", "b", "c", "d"], backbone="tiny:wavlm", selector=selector,
                              allocation=AllocationConfig(mode=mode, hidden_dim=16),
                              optimization=OptimizerConfig(lr=3e-3, head_lr=1e-2, warmup=0, schedule="constant"),
                              budgets=BudgetSampling(validation=[2]))


def test_training_scores_the_selectors_masks_one_layer_smaller_and_larger(monkeypatch):
    L.seed_everything(0)
    data = tiny_classification_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    model = _model()
    assert isinstance(model.depth, AllocatedLayers)
    sizes = []
    original = model.logits_with_mask
    monkeypatch.setattr(model, "logits_with_mask", lambda encoded, keep: (sizes.append(keep.sum(1)), original(encoded, keep))[1])
    monkeypatch.setattr(model, "sample_train_budget", lambda: 2)
    model.train()
    tracked = int(model.selector.num_batches_tracked)
    losses, keep, k = model.depth.training_losses(model, model.encode(batch.waveforms, batch.lengths), batch)
    assert k == 2 and torch.isfinite(losses["depth"]) and float(losses["depth"]) > 0
    observed = sorted({int(s) for mask_sizes in sizes for s in mask_sizes})
    assert {1, 3} <= set(observed), observed  # k - 1 and k + 1 (the one-layer swaps keep k = 2)
    assert int(model.selector.num_batches_tracked) == tracked + 1  # the extra passes left the statistics alone
    losses["depth"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.depth_head.parameters())


def test_batch_allocation_runs_the_mean_budget_exactly_with_different_depths(tmp_path, monkeypatch):
    L.seed_everything(0)
    data = tiny_classification_data()
    model = _model()
    # One epoch (4 steps) trains the depth head; every assertion below is exact (the budget's layers in sum),
    # whatever the head learnt, so more steps only cost time.
    quiet_trainer(tmp_path, max_steps=4, limit_val_batches=0).fit(model, data)
    data.setup("validate")
    model.eval()
    depths = []
    with torch.no_grad():
        for batch in data.val_dataloader():
            for k in range(1, model.num_layers + 1):
                keep = model(batch.waveforms, batch.lengths, k)[1]
                assert int(keep.sum()) == k * len(batch)
                depths.append(keep.sum(1))
            per_input = torch.arange(len(batch)) % model.num_layers + 1
            assert int(model(batch.waveforms, batch.lengths, per_input)[1].sum()) == int(per_input.sum())
    assert len(torch.cat(depths).unique()) > 1

    # The tiny trained head may give every input the same depth; a head whose predicted gain per layer grows
    # with the input's feature energy must split one batch into different depths, the budget's layers in sum.
    def predicted_losses(features, frame_mask):
        energy = (features.abs().mean(-1) * frame_mask).sum(1) / frame_mask.sum(1)
        return energy[:, None] * torch.arange(model.num_layers, 0, -1, dtype=features.dtype)

    monkeypatch.setattr(model.depth_head, "forward", predicted_losses)
    batch = next(iter(data.val_dataloader()))
    with torch.no_grad():
        keep = model(batch.waveforms, batch.lengths, 2)[1]
    assert int(keep.sum()) == 2 * len(batch) and len(keep.sum(1).unique()) > 1, keep.sum(1)


def test_stream_allocation_meets_the_calibrated_mean_and_says_when_uncalibrated(tmp_path):
    L.seed_everything(0)
    data = tiny_classification_data(num_val=48)
    model = _model("stream", LearnedScheduleSelector)  # any selector picks the layers at a depth
    quiet_trainer(tmp_path, max_steps=8, limit_val_batches=0).fit(model, data)
    data.setup("validate")
    model.eval()
    batch = next(iter(data.val_dataloader()))
    with pytest.raises(RuntimeError, match="no gain threshold for budgets \\[2\\]"):
        model(batch.waveforms, batch.lengths, 2)
    model.calibrate_on_dataloader(data.val_dataloader())
    for k in range(1, model.num_layers + 1):
        with torch.no_grad():
            counts = torch.cat([model(b.waveforms, b.lengths, k)[1].sum(1) for b in data.val_dataloader()])
        assert abs(float(counts.mean()) - k) <= 0.5


def test_allocation_needs_a_selector_that_picks_layers_without_validation_data():
    with pytest.raises(ValueError, match="allocation needs a selector"):
        ClassificationTask(num_classes=2, backbone="tiny:wavlm", allocation=AllocationConfig())
    with pytest.raises(ValueError, match="fallback: false"):
        _model(selector=InputConditionedSelector)
    with pytest.raises(ValueError, match="allocation.mode"):
        AllocationConfig(mode="greedy")



def test_the_gain_signal_regresses_loss_drops_not_levels(monkeypatch):
    from ldrop.tasks.allocation import depth_signal_loss

    torch.manual_seed(0)
    predicted = torch.rand(5, 4).cumsum(1).flip(1)
    observed = {1: torch.rand(5) + 2, 2: torch.rand(5) + 1, 3: torch.rand(5)}
    shifted = {d: v + torch.arange(5.0) for d, v in observed.items()}  # each input harder by its own constant
    gain, level = depth_signal_loss(predicted, observed, "gain"), depth_signal_loss(predicted, observed)
    assert torch.isclose(depth_signal_loss(predicted, shifted, "gain"), gain, atol=1e-6)
    assert depth_signal_loss(predicted, shifted) > level + 0.5  # the level signal moves with who is hard
    drops = {d: observed[d] - observed[d + 1] for d in (1, 2)}
    matched = torch.stack([torch.zeros(5), drops[1], drops[1] + drops[2], drops[1] + drops[2]], 1).neg() + 5
    assert float(depth_signal_loss(matched, observed, "gain")) < 1e-10  # the drops predicted exactly: no loss
    with pytest.raises(ValueError, match="allocation.signal"):
        AllocationConfig(signal="errors")

    # in training, the gain signal scores the clean masks at k - 1, k and k + 1, and reaches the depth head
    sizes = []
    model, batch = _signal_model("gain", monkeypatch)
    original = model.logits_with_mask
    monkeypatch.setattr(model, "logits_with_mask", lambda encoded, keep: (sizes.append(keep.sum(1)), original(encoded, keep))[1])
    _depth_loss_reaches_the_head(model, batch)
    assert [sorted({int(s) for s in mask_sizes}) for mask_sizes in sizes] == [[1], [2], [3]]  # k's clean mask too


def _signal_model(signal: str, monkeypatch):
    """A training-mode allocation model with ``signal`` at a sampled k = 2, and a training batch."""
    L.seed_everything(0)
    data = tiny_classification_data()
    data.setup("fit")
    model = _model()
    model.depth.config = AllocationConfig(hidden_dim=16, signal=signal)
    monkeypatch.setattr(model, "sample_train_budget", lambda: 2)
    return model.train(), next(iter(data.train_dataloader()))


def _depth_loss_reaches_the_head(model, batch) -> None:
    losses, _, _ = model.depth.training_losses(model, model.encode(batch.waveforms, batch.lengths), batch)
    assert torch.isfinite(losses["depth"])
    losses["depth"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.depth_head.parameters())


def test_the_error_signal_regresses_drops_of_the_metrics_errors(monkeypatch):
    scored = []
    model, batch = _signal_model("error", monkeypatch)
    original = model.item_errors
    monkeypatch.setattr(model, "item_errors", lambda *a: (scored.append(1), original(*a))[1])
    monkeypatch.setattr(model, "item_losses", lambda *a: pytest.fail("the error signal reads no loss"))
    _depth_loss_reaches_the_head(model, batch)
    assert len(scored) == 3  # k - 1, k and k + 1, from the clean masks
    monkeypatch.setattr(type(model), "has_item_errors", False)
    with pytest.raises(ValueError, match="signal: error needs a task with per-item errors"):
        model.depth.training_losses(model, model.encode(batch.waveforms, batch.lengths), batch)


def test_the_gain_all_signal_scores_every_depth(monkeypatch):
    sizes = []
    model, batch = _signal_model("gain_all", monkeypatch)
    original = model.logits_with_mask
    monkeypatch.setattr(model, "logits_with_mask", lambda encoded, keep: (sizes.append(keep.sum(1)), original(encoded, keep))[1])
    _depth_loss_reaches_the_head(model, batch)
    assert [sorted({int(s) for s in mask_sizes}) for mask_sizes in sizes] == [[d] for d in range(1, model.num_layers + 1)]
