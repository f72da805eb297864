"""The methods (input-conditioned, schedule, random, static, early exit, full) as Lightning modules."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch

from ldrop.selectors import (
    InputConditionedSelector,
    LearnedScheduleSelector,
    RandomSelector,
    StaticSelector,
)
from ldrop.tasks import (
    AllocationConfig,
    BudgetSampling,
    ClassificationTask,
    CTCTask,
    DistillationConfig,
    EarlyExitConfig,
    OptimizerConfig,
)
from tests.helpers import quiet_trainer, tiny_classification_data, tiny_ctc_data

FAST = OptimizerConfig(lr=3e-3, head_lr=1e-2, warmup=0, schedule="constant")

METHODS = {
    "input_conditioned": dict(selector=functools.partial(InputConditionedSelector, hidden_dim=16)),
    "input_conditioned_counterfactual": dict(
        selector=functools.partial(InputConditionedSelector, hidden_dim=16, objective="counterfactual")),
    "input_conditioned_both": dict(selector=functools.partial(InputConditionedSelector, hidden_dim=16,
                                                              objective="both")),
    "schedule": dict(selector=LearnedScheduleSelector),
    "random": dict(selector=RandomSelector),
    "static": dict(selector=StaticSelector),
    "early_exit": dict(early_exit=EarlyExitConfig()),
    "allocate": dict(selector=functools.partial(InputConditionedSelector, hidden_dim=16, fallback=False),
                     allocation=AllocationConfig(hidden_dim=16)),
    "full": dict(),
}


def _classifier(**kwargs) -> ClassificationTask:
    torch.manual_seed(0)
    base = dict(labels=["a", "b", "c", "d"], backbone="tiny:wavlm", optimization=FAST, budgets=BudgetSampling(validation=[2, 4]))
    base.update(kwargs)
    return ClassificationTask(**base)


@torch.no_grad()
def _eval_loss(model, batches, budget) -> float:
    model.eval()
    losses = []
    for batch in batches:
        logits, _ = model(batch.waveforms, batch.lengths, budget)
        losses.append(float(model.task_loss(logits, torch.ones(1, 1, dtype=torch.bool), batch)))
    model.train()
    return sum(losses) / len(losses)


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_trains_with_the_loss_going_down(tmp_path, method):
    L.seed_everything(0)
    data = tiny_classification_data()
    data.setup("fit")
    batches = list(data.train_dataloader())
    model = _classifier(**METHODS[method])
    before = _eval_loss(model, batches, 4)
    quiet_trainer(tmp_path, max_steps=24, limit_val_batches=0).fit(model, data)
    after = _eval_loss(model, batches, 4)
    assert after < before - 0.05


def test_ctc_task_trains_with_the_loss_going_down(tmp_path):
    L.seed_everything(0)
    data = tiny_ctc_data()
    data.setup("fit")
    batches = list(data.train_dataloader())
    model = CTCTask(labels=sorted(set(data.alphabet) | {" "}), backbone="tiny:hubert", optimization=FAST,
                    selector=RandomSelector, budgets=BudgetSampling(validation=[4]))

    @torch.no_grad()
    def loss() -> float:
        model.eval()
        total = 0.0
        for batch in batches:
            encoded = model.encode(batch.waveforms, batch.lengths)
            logits, _, _ = model.logits_at_budget(encoded, 4)
            total += float(model.task_loss(logits, encoded.frame_mask, batch))
        model.train()
        return total / len(batches)

    before = loss()
    quiet_trainer(tmp_path, max_steps=24, limit_val_batches=0).fit(model, data)
    assert loss() < before - 0.1


@pytest.mark.parametrize("budget", [1, 2, 3, 0.5])
def test_top_k_selection_runs_exactly_k_layers_per_sample(budget):
    model = _classifier(selector=InputConditionedSelector).eval()
    waves = torch.randn(5, 4000)
    _, keep = model(waves, None, budget)
    k = budget if isinstance(budget, int) else round(budget * model.num_layers)
    assert keep.sum(1).tolist() == [k] * 5


@pytest.mark.parametrize("budget", [0, 5, -1, 1.5, 0.0, True])
def test_invalid_budgets_are_clear_errors(budget):
    model = _classifier(selector=RandomSelector).eval()
    with pytest.raises(ValueError, match="budget"):
        model(torch.randn(2, 4000), None, budget)


def test_budget_tensor_of_the_wrong_shape_is_rejected():
    model = _classifier(selector=RandomSelector).eval()
    with pytest.raises(ValueError, match=r"\[batch=2\]"):
        model(torch.randn(2, 4000), None, torch.tensor([1, 2, 3]))


def test_per_sample_budget_tensor_gives_per_sample_layer_counts():
    model = _classifier(selector=LearnedScheduleSelector).eval()
    _, keep = model(torch.randn(3, 4000), None, torch.tensor([1, 3, 4]))
    assert keep.sum(1).tolist() == [1, 3, 4]


def test_input_conditioned_selector_gives_different_inputs_different_masks(tmp_path):
    L.seed_everything(0)
    data = tiny_classification_data(num_train=64)
    model = _classifier(selector=functools.partial(InputConditionedSelector, hidden_dim=16))
    quiet_trainer(tmp_path, max_steps=16, limit_val_batches=0).fit(model, data)
    data.setup("test")
    model.eval()
    masks = []
    with torch.no_grad():
        for batch in data.test_dataloader():
            masks.append(model(batch.waveforms, batch.lengths, 2)[1])
    assert torch.cat(masks).unique(dim=0).shape[0] > 1


def test_threshold_mode_meets_the_calibrated_mean_budget(tmp_path):
    L.seed_everything(0)
    data = tiny_classification_data(num_val=48)
    model = _classifier(selector=functools.partial(InputConditionedSelector, hidden_dim=16, mode="threshold"))
    quiet_trainer(tmp_path, max_steps=8, limit_val_batches=0).fit(model, data)
    data.setup("validate")
    model.eval()
    model.calibrate_on_dataloader(data.val_dataloader())
    for k in range(1, model.num_layers + 1):
        counts = []
        with torch.no_grad():
            for batch in data.val_dataloader():
                counts.append(model(batch.waveforms, batch.lengths, k)[1].sum(1))
        assert abs(float(torch.cat(counts).mean()) - k) <= 0.5


def test_early_exit_at_full_depth_equals_the_full_model_head_output():
    model = _classifier(early_exit=EarlyExitConfig()).eval()
    waves = torch.randn(3, 6400)
    with torch.no_grad():
        logits, keep = model(waves, None, model.num_layers)
        hidden, frame_mask = model.backbone(waves)
        reference = model.compute_logits(model.depth.head_for(model.num_layers), hidden, frame_mask)
    assert keep.sum(1).tolist() == [model.num_layers] * 3
    assert torch.allclose(logits, reference, atol=1e-5)


def test_early_exit_budget_k_runs_the_first_k_layers():
    model = _classifier(early_exit=EarlyExitConfig(layers=[2, 4])).eval()
    with torch.no_grad():
        _, keep = model(torch.randn(2, 4000), None, 3)
    assert keep.tolist() == [[1.0, 1.0, 0.0, 0.0]] * 2  # budget 3 -> the deepest exit within it is 2


def test_dynamic_early_exit_meets_the_calibrated_mean_exit(tmp_path):
    L.seed_everything(0)
    data = tiny_classification_data(num_val=48)
    model = _classifier(early_exit=EarlyExitConfig(policy="confidence"))
    quiet_trainer(tmp_path, max_steps=8, limit_val_batches=0).fit(model, data)
    data.setup("validate")
    model.eval()
    model.calibrate_on_dataloader(data.val_dataloader())
    with torch.no_grad():
        keeps = [model(b.waveforms, b.lengths, 2)[1] for b in data.val_dataloader()]
    keep = torch.cat(keeps)
    assert abs(float(keep.sum(1).mean()) - 2) <= 0.5
    # every input runs a prefix of the stack
    assert all(row[: int(row.sum())].all() for row in keep.bool())


def test_dynamic_early_exit_needs_calibration():
    model = _classifier(early_exit=EarlyExitConfig(policy="confidence")).eval()
    with pytest.raises(RuntimeError, match="calibrate"):
        model(torch.randn(2, 4000), None, 2)


def test_early_exit_and_a_selector_are_mutually_exclusive():
    with pytest.raises(ValueError, match="early_exit"):
        _classifier(early_exit=EarlyExitConfig(), selector=RandomSelector)


def test_static_search_installs_a_subset_per_budget(tmp_path):
    L.seed_everything(0)
    data = tiny_classification_data()
    model = _classifier(selector=functools.partial(StaticSelector, search=True))
    data.setup("validate")
    model.calibrate_on_dataloader(data.val_dataloader(), [1, 2, 3])
    subsets = {k: v for k, v in model.selector.subsets.items() if k in (1, 2, 3)}  # the searched budgets
    assert {k: len(v) for k, v in subsets.items()} == {1: 1, 2: 2, 3: 3}
    with torch.no_grad():
        _, keep = model.eval()(torch.randn(2, 4000), None, 2)
    assert keep[0].nonzero().flatten().tolist() == sorted(subsets[2])


def test_self_distillation_adds_a_loss_term(tmp_path):
    L.seed_everything(0)
    data = tiny_classification_data()
    model = _classifier(selector=RandomSelector, distillation=DistillationConfig(weight=1.0),
                        budgets=BudgetSampling(full_depth_prob=0.0, validation=[2, 4]))
    logged = {}

    class Capture(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            logged.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    quiet_trainer(tmp_path, max_steps=3, limit_val_batches=0, callbacks=[Capture()]).fit(model, data)
    assert logged["train/distill_loss"] > 0


def _saved_then_loaded(tmp_path, model):
    """``model`` validated and saved as a checkpoint, then loaded back with :func:`ldrop.load_model`."""
    from ldrop import load_model

    trainer = quiet_trainer(tmp_path, limit_val_batches=1)
    trainer.validate(model, tiny_classification_data(), verbose=False)
    trainer.save_checkpoint(tmp_path / "saved.ckpt")
    return load_model(tmp_path / "saved.ckpt")


@pytest.mark.parametrize("method", ["full", "early_exit"])
def test_distillation_without_a_selector_is_refused_at_fit_and_its_checkpoints_still_load(tmp_path, method):
    # every layer trains: the teacher would be the student itself (a KL of 0 for one more forward pass)
    model = _classifier(**METHODS[method], distillation=DistillationConfig(weight=1.0))
    with pytest.raises(ValueError, match="distillation.weight is 1.0 but the model has no selector"):
        quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model, tiny_classification_data())
    loaded = _saved_then_loaded(tmp_path, model)  # a checkpoint saved with it (before this check) predicts
    with torch.no_grad():
        logits, keep = loaded.eval()(torch.randn(2, 4000), None, 2)
    assert logits.shape == (2, 4) and torch.isfinite(logits).all() and keep.shape == (2, 4)


@pytest.mark.parametrize("method", ["full", "early_exit"])
def test_without_a_selector_every_training_batch_runs_and_logs_full_depth(tmp_path, method):
    L.seed_everything(0)
    model = _classifier(**METHODS[method], budgets=BudgetSampling(train=[1], full_depth_prob=0.0, validation=[2]))
    budgets = []

    class Capture(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            budgets.append(float(trainer.callback_metrics["train/budget"]))

    quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=[Capture()]).fit(
        model, tiny_classification_data())
    assert budgets == [4.0, 4.0]


def test_diversity_weight_with_the_counterfactual_objective_is_refused_at_fit_only(tmp_path):
    selector = functools.partial(InputConditionedSelector, hidden_dim=16, objective="counterfactual",
                                 diversity_weight=0.5)
    model = _classifier(selector=selector)  # that objective has no relaxed mask for the loss to act on
    with pytest.raises(ValueError, match="diversity_weight 0.5 does nothing with objective 'counterfactual'"):
        quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model, tiny_classification_data())
    assert _saved_then_loaded(tmp_path, model).selector.diversity_weight == 0.5  # old checkpoints still load
    both = _classifier(selector=functools.partial(selector, objective="both"))  # "both" has the relaxed mask
    quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(both, tiny_classification_data())


def test_predict_step_reports_output_layers_and_flops():
    model = _classifier(selector=InputConditionedSelector, predict_budget=2).eval()
    data = tiny_classification_data()
    data.setup("test")
    batch = next(iter(data.test_dataloader()))
    with torch.no_grad():
        records = model.predict_step(batch, 0)
    assert len(records) == len(batch)
    assert {r["output"] for r in records} <= {"a", "b", "c", "d"}
    assert all(len(r["executed_layers"]) == 2 and r["gflops"] > 0 for r in records)
    assert [r["id"] for r in records] == batch.ids


def test_setting_predict_budget_on_the_model_changes_what_it_predicts_at():
    """``model.predict_budget = 1`` set an attribute that nothing read: predict still ran the budget given at
    construction, silently. It is now the budget (``hparams.predict_budget``), checked as the argument is."""
    model = _classifier(selector=InputConditionedSelector, predict_budget=3).eval()
    data = tiny_classification_data()
    data.setup("test")
    batch = next(iter(data.test_dataloader()))
    model.predict_budget = 1
    assert model.hparams.predict_budget == 1 == model.predict_budget  # what a checkpoint of it saves
    with torch.no_grad():
        assert {len(r["executed_layers"]) for r in model.predict_step(batch, 0)} == {1}
    for bad, says in ((9, "predict_budget: "), ({"rtf": 0.1, "profile": "/no/such.json"}, "/no/such.json")):
        with pytest.raises((ValueError, FileNotFoundError), match=says):
            model.predict_budget = bad
    assert model.predict_budget == 1  # a refused budget leaves the last one
    with pytest.raises(ValueError, match="predict_chunk_seconds"):
        _classifier(selector=InputConditionedSelector, predict_chunk_seconds=1.0, predict_chunk_overlap_seconds=2.0)


def test_ctc_decoding_collapses_repeats_and_drops_blanks():
    model = CTCTask(labels=list(" ab"), backbone="tiny:wavlm")
    # frames: a a blank a b b blank space b  -> "aab b"
    ids = torch.tensor([[2, 2, 0, 2, 3, 3, 0, 1, 3]])
    logits = torch.nn.functional.one_hot(ids, 4).float()
    assert model.decode(logits, torch.ones(1, 9, dtype=torch.bool)) == ["aab b"]


def test_ctc_vocabulary_must_hold_the_word_separator():
    with pytest.raises(ValueError, match="space"):
        CTCTask(labels=list("ab"), backbone="tiny:wavlm")


def test_classifier_needs_labels_or_a_class_count():
    with pytest.raises(ValueError, match="num_classes"):
        ClassificationTask(backbone="tiny:wavlm")


@pytest.mark.parametrize(("weight", "temperature"), [(1.0, 1.0), (0.5, 2.0)])
def test_the_distillation_loss_is_the_weighted_tempered_kl_over_real_frames(weight, temperature):
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 3, generator=generator), torch.randn(2, 5, 3, generator=generator)
    frame_mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    config = DistillationConfig(weight=weight, temperature=temperature)

    def kl(s, t):  # KL(teacher || student) of one frame's tempered class distributions
        p, q = (t / temperature).softmax(-1), (s / temperature).softmax(-1)
        return float((p * (p.log() - q.log())).sum())

    per_item = [sum(kl(student[b, f], teacher[b, f]) for f in range(5) if frame_mask[b, f]) / int(frame_mask[b].sum())
                for b in range(2)]
    expected = weight * temperature**2 * sum(per_item) / 2
    assert float(config.loss(student, teacher, frame_mask)) == pytest.approx(expected, rel=1e-5)
    assert float(config.loss(teacher, teacher, frame_mask)) == pytest.approx(0.0, abs=1e-6)
    # padded frames do not count: changing the student there changes nothing
    changed = student.clone()
    changed[1, 2:] += 10.0
    assert float(config.loss(changed, teacher, frame_mask)) == pytest.approx(expected, rel=1e-5)


def test_init_from_a_lightning_checkpoint_starts_from_its_weights(tmp_path):
    full = _classifier()
    with torch.no_grad():  # weights that are not the seeded initialisation a new model gets anyway
        for parameter in full.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    trainer = quiet_trainer(tmp_path, limit_val_batches=1)
    trainer.validate(full, tiny_classification_data(), verbose=False)
    trainer.save_checkpoint(tmp_path / "full.ckpt")
    saved = torch.load(tmp_path / "full.ckpt", weights_only=False)["state_dict"]
    drop = _classifier(**METHODS["input_conditioned"], init_from=str(tmp_path / "full.ckpt"))
    backbone = {name: value for name, value in drop.state_dict().items() if name.startswith("backbone.")}
    assert len(backbone) > 10 and all(torch.equal(value, saved[name]) for name, value in backbone.items())
    assert torch.equal(drop.head.weight, saved["head.weight"])
    assert not torch.equal(_classifier(**METHODS["input_conditioned"]).head.weight, saved["head.weight"])
