"""A selector that reads the first j encoder layers (input="layers"): the prefix runs once per batch, every
mask keeps it, and it counts in the budget and the FLOPs, in training, the sweep, predict and the runtime."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch

from ldrop.engine import count_forward_flops, run_gated_layers
from ldrop.selectors import InputConditionedSelector, build_selector
from ldrop.sweeps import BudgetSweep
from ldrop.tasks import BudgetSampling, ClassificationTask, CTCTask, DistillationConfig, OptimizerConfig
from tests.helpers import quiet_trainer, tiny_classification_data, tiny_ctc_data

N = 4  # layers of the tiny backbones


def _selector(read_layers: int = 1):
    return functools.partial(InputConditionedSelector, hidden_dim=16, input="layers", read_layers=read_layers)


def _classifier(read_layers: int = 1, **kwargs) -> ClassificationTask:
    torch.manual_seed(0)
    base = dict(labels=["a", "b", "c", "d"], backbone="tiny:wavlm",
                optimization=OptimizerConfig(lr=3e-3, head_lr=1e-2, warmup=0, schedule="constant"),
                budgets=BudgetSampling(validation=[1, 2, 4]), selector=_selector(read_layers),
                backbone_overrides={"hidden_size": 48})  # not the CNN width: the selector must get this one
    base.update(kwargs)
    return ClassificationTask(**base)


def _batch(split: str = "test"):
    data = tiny_classification_data()
    data.setup(split)
    loader = data.test_dataloader() if split == "test" else data.train_dataloader()
    return next(iter(loader))


def _count_layer_calls(model) -> list[int]:
    """Record the index of every ``backbone.run_layer`` call from now on."""
    calls: list[int] = []
    original = model.backbone.run_layer

    def counting(index, *args, **kwargs):
        calls.append(index)
        return original(index, *args, **kwargs)

    model.backbone.run_layer = counting
    return calls


@pytest.mark.parametrize("backbone", ["tiny:wavlm", "tiny:hubert"])
def test_the_selector_reads_the_hidden_size_and_the_detached_prefix(backbone):
    model = _classifier(backbone=backbone).eval()
    assert model.selector.feature_dim == model.backbone.hidden_size != model.backbone.feature_dim
    assert model.prefix_layers == 1
    batch = _batch()
    encoded = model.encode(batch.waveforms, batch.lengths)
    assert encoded.prefix_layers == 1 and encoded.prefix is not None
    assert encoded.features.shape == encoded.hidden.shape
    assert torch.equal(encoded.features, encoded.prefix) and not encoded.features.requires_grad


def test_a_spec_dict_builds_the_same_selector_width_as_a_checkpoint_does():
    spec = {"class_path": "InputConditionedSelector", "init_args": {"input": "layers", "hidden_dim": 8}}
    assert build_selector(spec, 4, 512, hidden_size=32).feature_dim == 32
    assert build_selector({"class_path": "InputConditionedSelector"}, 4, 512, hidden_size=32).feature_dim == 512
    with pytest.raises(ValueError, match="hidden size 32"):
        build_selector(lambda n, d: InputConditionedSelector(n, 7, input="layers"), 4, 512, hidden_size=32)


@pytest.mark.parametrize("read_layers", [1, 2])
def test_every_budget_keeps_the_prefix_and_counts_it(read_layers):
    model = _classifier(read_layers).eval()
    batch = _batch()
    with torch.no_grad():
        encoded = model.encode(batch.waveforms, batch.lengths)
        for k in range(1, N + 1):
            _, keep, _ = model.logits_at_budget(encoded, k)
            assert bool((keep[:, :read_layers] == 1).all())
            assert torch.equal(keep.sum(1), torch.full((len(batch),), float(max(k, read_layers))))


@pytest.mark.parametrize("backbone", ["tiny:wavlm", "tiny:hubert"])
def test_the_prefix_runs_once_for_all_budgets_and_the_result_equals_a_run_from_layer_zero(backbone):
    model = _classifier(backbone=backbone).eval()
    batch = _batch()
    calls = _count_layer_calls(model)
    with torch.no_grad():
        encoded = model.encode(batch.waveforms, batch.lengths)
        results = [model.logits_at_budget(encoded, k) for k in range(1, N + 1)]
        assert calls.count(0) == 1  # layer 0 ran once, in encode, for the four budgets
        for logits, keep, _ in results:
            hidden = run_gated_layers(model.backbone, encoded.hidden, encoded.frame_mask, keep)  # from layer 0
            reference = model.compute_logits(model.head, hidden, encoded.frame_mask)
            assert (logits - reference).abs().max() <= 1e-5


def test_a_mask_without_the_prefix_runs_from_layer_zero():
    model = _classifier().eval()
    batch = _batch()
    with torch.no_grad():
        encoded = model.encode(batch.waveforms, batch.lengths)
        keep = torch.zeros(len(batch), N)
        keep[:, 1:3] = 1.0  # layer 0 skipped: the prefix cannot be reused
        calls = _count_layer_calls(model)
        logits = model.logits_with_mask(encoded, keep)
        hidden = run_gated_layers(model.backbone, encoded.hidden, encoded.frame_mask, keep)
    assert 0 not in calls
    assert (logits - model.compute_logits(model.head, hidden, encoded.frame_mask)).abs().max() <= 1e-5


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_dense_training_continues_from_the_prefix_and_the_teacher_reuses_it():
    model = _classifier(distillation=DistillationConfig(weight=1.0),
                        budgets=BudgetSampling(train=[2], full_depth_prob=0.0, validation=[1, 2, 4])).train()
    batch = _batch("fit")
    calls = _count_layer_calls(model)
    out = model.training_step(batch, 0)
    assert calls.count(0) == 1  # student (dense path) and teacher both continue from encode's prefix
    out["loss"].backward()
    selector_grads = [p.grad for p in model.selector.parameters() if p.grad is not None]
    layer0_grads = [p.grad for p in model.backbone.layers[0].parameters() if p.grad is not None]
    assert selector_grads and any(float(g.abs().sum()) > 0 for g in selector_grads)
    assert layer0_grads and any(float(g.abs().sum()) > 0 for g in layer0_grads)  # through the task loss


def test_predict_flops_include_the_prefix_layers():
    model = _classifier(read_layers=2, predict_budget=1).eval()
    batch = _batch()
    with torch.no_grad():
        records = model.predict_step(batch, 0)
    keep = torch.zeros(len(batch), N)
    keep[:, :2] = 1.0
    frames = model.backbone.frame_lengths(batch.lengths)
    expected = count_forward_flops(model.backbone.config, batch.lengths, keep, model.selector.flops(frames)).total
    for i, record in enumerate(records):
        assert record["executed_layers"] == [0, 1]
        assert record["gflops"] == pytest.approx(float(expected[i]) / 1e9, rel=1e-6)


def test_chunked_predict_runs_with_the_prefix():
    model = _classifier(predict_budget=2, predict_chunk_seconds=0.2, predict_chunk_overlap_seconds=0.05).eval()
    waveform = torch.randn(8000)
    with torch.no_grad():
        record = model.predict_long(waveform, "long", chunks_per_pass=2)
    assert len(record["chunks"]) > 1
    assert all(len(chunk["executed_layers"]) == 2 and 0 in chunk["executed_layers"] for chunk in record["chunks"])


def test_a_flops_target_never_asks_for_fewer_layers_than_the_prefix():
    from ldrop.budgets import TargetResolver

    model = _classifier(read_layers=2).eval()
    lengths = torch.tensor([8000, 4000])
    resolver = TargetResolver()
    budget = resolver.budget(model, lengths, {"gflops_per_second": 1e-6})
    with pytest.warns(UserWarning, match="cannot be met"):
        resolver.close()
    assert budget.tolist() == [2, 2]


def test_fit_and_test_with_the_layers_input(tmp_path):
    L.seed_everything(0)
    data = tiny_classification_data()
    model = _classifier()
    quiet_trainer(tmp_path, max_steps=4, limit_val_batches=1).fit(model, data)
    calls = _count_layer_calls(model)
    sweep = BudgetSweep(budgets=[1, 2, 4], directory=str(tmp_path / "sweep"), headroom=False)
    quiet_trainer(tmp_path, callbacks=[sweep], limit_test_batches=2).test(model, data)
    # once per test batch for the three budgets, after the fallback's fit encoded the 2 validation batches once
    assert calls.count(0) == 2 + 2
    rows = {row["budget_layers"]: row for row in sweep.rows}
    assert rows[1]["executed_layers"] == 1.0 and rows[4]["executed_layers"] == 4.0
    assert rows[1]["gflops_per_utterance"] < rows[2]["gflops_per_utterance"] < rows[4]["gflops_per_utterance"]
    assert all(0.0 <= row["acc"] <= 1.0 for row in rows.values())
    # the controls and the headroom oracles pass masks without the prefix: they run from layer 0
    sweep = BudgetSweep(budgets=[2], directory=str(tmp_path / "controls"), controls=True)
    quiet_trainer(tmp_path, callbacks=[sweep], limit_test_batches=1).test(model, data)
    assert {"acc_shuffled", "acc_most_common", "acc_input_oracle"} <= set(sweep.rows[0])


def test_the_stored_hyperparameters_rebuild_the_same_selector():
    model = _classifier(read_layers=2)
    rebuilt = type(model)(**model.hparams)
    assert rebuilt.selector.prefix_layers == 2
    rebuilt.load_state_dict(model.state_dict())  # same shapes: the selector was built for the hidden size


def test_ctc_fit_with_the_layers_input(tmp_path):
    L.seed_everything(0)
    data = tiny_ctc_data()
    model = CTCTask(labels=sorted(set(data.alphabet) | {" "}), backbone="tiny:hubert", selector=_selector(),
                    budgets=BudgetSampling(validation=[1, 4]), optimization=OptimizerConfig(warmup=0))
    quiet_trainer(tmp_path, max_steps=2, limit_val_batches=1).fit(model, data)
    assert model.selector.feature_dim == model.backbone.hidden_size


def test_the_device_profile_times_the_prefix_as_layers_not_as_fixed_cost():
    from ldrop.budgets.profile import model_timers, random_batches

    model = _classifier(read_layers=2).eval()
    measure, measure_batch = model_timers(model, repeats=1, warmup=0)
    calls = _count_layer_calls(model)
    measure("fixed", 2, 30)
    assert calls == []  # the prefix layers are layers of every mask: not in the fixed part as well
    keep = torch.zeros(2, N)
    keep[:, :2] = 1.0
    measure_batch(torch.tensor([8000, 6000]), keep)
    assert calls.count(0) == 1
    for _, held_out in random_batches(4, N, (0.5, 1.0), (1, 2), prefix_layers=2):
        assert bool((held_out[:, :2] == 1).all())


def test_the_budget_controller_respects_a_minimum_budget():
    from ldrop.budgets import BudgetController
    from ldrop.engine.flops import count_forward_flops

    model = _classifier().eval()
    lengths = torch.tensor([16000])
    controller = BudgetController(N, flops_config=model.backbone.config, min_budget=2)
    per_layer = count_forward_flops(model.backbone.config, lengths).per_layer[0, 0]
    fixed = count_forward_flops(model.backbone.config, lengths).fixed[0]
    affordable_one = float(fixed + 1.5 * per_layer) / 1e9  # GFLOPs per second of audio: one layer fits
    with pytest.warns(UserWarning, match="even with 2 layer"):
        decision = controller.decide(lengths, {"gflops_per_second": affordable_one})
    assert decision.budget.tolist() == [2] and not bool(decision.meets_target.any())
    with pytest.raises(ValueError, match="min_budget"):
        BudgetController(N, min_budget=N + 1)
