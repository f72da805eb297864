"""Loading trained models in plain Python and the streaming AdaptiveModel."""

from __future__ import annotations

import pytest
import torch

import ldrop
from ldrop.runtime import AdaptiveModel, TargetBudgets, load_model
from tests.helpers import padded_batch, quiet_trainer, tiny_classification_data
from tests.runtime.conftest import synthetic_profile


def test_load_model_reads_a_checkpoint_and_an_export_alike(tiny_checkpoint, tiny_export):
    from_ckpt, from_export = load_model(tiny_checkpoint), load_model(tiny_export)
    assert not from_ckpt.training and not from_export.training
    waves, lengths = padded_batch([8000, 6000, 7000])
    with torch.inference_mode():
        a, keep_a = from_ckpt(waves, lengths, 2)
        b, keep_b = from_export(waves, lengths, 2)
    assert torch.equal(keep_a, keep_b)
    torch.testing.assert_close(a, b)


def test_load_model_names_what_it_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="ldrop export"):
        load_model(tmp_path / "nothing")
    (tmp_path / "folder").mkdir()
    with pytest.raises(FileNotFoundError, match="ldrop_task_state.pt"):
        load_model(tmp_path / "folder")


def test_the_package_exports_the_runtime_entry_points():
    assert ldrop.AdaptiveModel is AdaptiveModel and ldrop.load_model is load_model
    from ldrop.runtime import load_task_checkpoint as moved
    from ldrop.runtime.checkpoints import load_task_checkpoint

    assert load_task_checkpoint is moved


def test_one_utterance_with_a_target_returns_outputs_layers_and_times(tiny_checkpoint):
    model = AdaptiveModel.from_pretrained(tiny_checkpoint, profile=synthetic_profile())
    out = model(torch.randn(12000), {"ms": 1000.0})
    assert len(out.outputs) == 1 and out.outputs[0] in {"a", "b", "c", "d"}
    assert out.keep_mask.shape == (1, 4) and int(out.layers_run[0]) == int(out.keep_mask.sum())
    assert int(out.budget[0]) == 4  # a generous deadline affords every layer
    assert out.predicted_ms > 0 and out.measured_ms > 0 and out.correction > 0
    assert out.target.kind == "ms"


def test_a_batch_gets_per_input_budgets_from_its_lengths(tiny_export):
    profile = synthetic_profile(layer=(0.0, 1e-4, 0.0))  # a layer costs 0.1 ms per frame
    model = AdaptiveModel.from_pretrained(tiny_export, profile=profile, margin=0.0, closed_loop=False)
    waves, lengths = padded_batch([4000, 16000])
    out = model(waves, {"rtf": 0.5}, lengths=lengths)
    assert out.budget.tolist() == model.controller.budgets(lengths, {"rtf": 0.5}).tolist()
    out = model(waves, {"ms": 8.0}, lengths=lengths)
    assert int(out.budget[0]) > int(out.budget[1])


def test_a_list_of_clips_and_a_plain_budget_work_too(tiny_checkpoint):
    model = AdaptiveModel.from_pretrained(tiny_checkpoint)
    out = model([torch.randn(5000), torch.randn(9000)], 2)
    assert out.budget.tolist() == [2, 2] and out.predicted_ms is None
    assert model(torch.randn(5000)).layers_run.tolist() == [4]


def test_measured_times_feed_the_closed_loop(tiny_checkpoint):
    # A profile that predicts 1000x too little: after a few calls the correction has grown, bounded.
    model = AdaptiveModel.from_pretrained(tiny_checkpoint, profile=synthetic_profile(
        fixed=(1e-7, 0, 0), layer=(1e-8, 0, 0)), correction_bounds=(0.5, 4.0))
    for _ in range(5):
        model(torch.randn(8000), {"ms": 1000.0})
    assert model.controller.correction == pytest.approx(4.0)
    open_loop = AdaptiveModel.from_pretrained(tiny_checkpoint, profile=synthetic_profile(), closed_loop=False)
    open_loop(torch.randn(8000), {"ms": 1000.0})
    assert open_loop.controller.correction == 1.0


def test_the_first_call_already_sees_a_slow_machine_in_its_fixed_part(tiny_checkpoint):
    # A profile about 100x too fast: open loop trusts it; the closed loop sees the fixed part's time first.
    fast = synthetic_profile(fixed=(1e-5, 0, 0), layer=(1e-5, 0, 0))
    closed = AdaptiveModel.from_pretrained(tiny_checkpoint, profile=fast)
    blind = AdaptiveModel.from_pretrained(tiny_checkpoint, profile=fast, closed_loop=False)
    wave = torch.randn(8000)
    assert int(blind(wave, {"ms": 0.1}).budget[0]) == 4
    with pytest.warns(UserWarning, match="cannot be met"):
        first = closed(wave, {"ms": 0.1})
    assert int(first.budget[0]) == 1 and closed.controller.planned > 4 and closed.controller.probe > 8


def fake_clock(steps):
    """A clock that returns 0, then advances by each of ``steps`` in turn (the last one repeated)."""
    state = {"t": 0.0, "calls": 0}

    def clock() -> float:
        now = state["t"]
        state["t"] += steps[min(state["calls"], len(steps) - 1)]
        state["calls"] += 1
        return now

    return clock


def test_the_guard_starts_no_layer_that_would_end_past_the_target(tiny_checkpoint):
    # The profile says 10 ms for the fixed part and per layer; a 45 ms target plans 3 layers. The fixed part
    # takes the 10 ms predicted, then each layer takes 25 ms: the guard runs one and skips the other two.
    profile = synthetic_profile(fixed=(0.010, 0, 0), layer=(0.010, 0, 0))
    model = AdaptiveModel.from_pretrained(tiny_checkpoint, profile=profile)
    model.clock = fake_clock([0.010, 0.025])
    wave = torch.randn(8000)
    out = model(wave, {"ms": 45.0})
    assert int(out.budget[0]) == 3 and int(out.layers_run[0]) == 1 and model.controller.probe == pytest.approx(1.0)
    with torch.inference_mode():
        encoded = model.model.encode(wave[None], torch.tensor([8000]))
        expected = model.model.logits_with_mask(encoded, out.keep_mask)
    assert torch.allclose(out.logits, expected, atol=1e-5)  # the reported mask is the one that ran
    unguarded = AdaptiveModel.from_pretrained(tiny_checkpoint, profile=profile, guard=False)
    unguarded.clock = fake_clock([0.010, 0.025])
    assert int(unguarded(wave, {"ms": 45.0}).layers_run[0]) == 3


def test_a_time_target_without_a_profile_measures_a_quick_one(tiny_checkpoint):
    model = AdaptiveModel.from_pretrained(tiny_checkpoint)
    model.ensure_profile(seconds=(0.5, 1.0), batch_sizes=(1, 2), repeats=1)
    assert model.profile is not None and model.profile.num_layers == 4
    assert model(torch.randn(8000), {"rtf": 10.0}).layers_run.tolist() == [4]


def test_the_sweep_over_targets_reports_layers_latency_misses_and_the_metric(tiny_checkpoint):
    model = AdaptiveModel.from_pretrained(tiny_checkpoint, profile=synthetic_profile())
    data = tiny_classification_data()
    data.setup("test")
    batches = list(data.test_dataloader())
    rows = model.sweep(batches, [{"ms": 1000.0}, {"gflops_per_second": 1e-3}, 2])
    assert [r["target"] for r in rows] == ["ms=1000", "gflops_per_second=0.001", "2"]
    assert rows[0]["layers_run"] == 4 and rows[2]["layers_run"] == 2
    assert rows[2]["miss_rate"] is None and 0 <= rows[0]["miss_rate"] <= 1
    assert all(0 <= r["acc"] <= 1 and r["ms_per_batch"] > 0 for r in rows)


def test_predict_takes_a_target_as_its_budget(tiny_checkpoint, tmp_path):
    model = load_model(tiny_checkpoint)
    model.hparams.predict_budget = {"gflops_per_second": 1e-6}  # unmeetable: one layer, with a warning
    trainer = quiet_trainer(tmp_path, callbacks=[TargetBudgets()])
    with pytest.warns(UserWarning, match="cannot be met"):
        predictions = trainer.predict(model, datamodule=tiny_classification_data())
    records = [r for batch in predictions for r in batch]
    assert records and all(len(r["executed_layers"]) == 1 for r in records)
    assert model.budget_provider is None  # the task keeps no controller after the run


def test_predict_under_a_target_without_the_callback_says_how(tiny_checkpoint, tmp_path):
    model = load_model(tiny_checkpoint)
    model.hparams.predict_budget = {"gflops_per_second": 1.0}
    with pytest.raises(ValueError, match=r"gflops_per_second=1\): add the ldrop.runtime.TargetBudgets callback"):
        quiet_trainer(tmp_path).predict(model, datamodule=tiny_classification_data())


def test_a_bad_predict_target_fails_at_construction():
    from ldrop.tasks import ClassificationTask

    with pytest.raises(ValueError, match="unknown target key"):
        ClassificationTask(labels=["a", "b"], predict_budget={"seconds": 1})


def test_an_export_without_a_recorded_task_class_is_one_clear_error(tiny_export, tmp_path):
    import shutil

    from ldrop._io import CheckpointError
    from ldrop.tasks.checkpointing import EXPORT_STATE_FILE

    old = tmp_path / "old"
    shutil.copytree(tiny_export, old)
    payload = torch.load(old / EXPORT_STATE_FILE, weights_only=False)
    del payload["task_class"]
    torch.save(payload, old / EXPORT_STATE_FILE)
    with pytest.raises(CheckpointError, match="does not say its task class"):
        load_model(old)


def test_load_model_warns_when_the_selector_still_needs_its_validation_fit(tiny_checkpoint):
    model = load_model(tiny_checkpoint)
    with pytest.warns(UserWarning, match="calibrate_on_dataloader"), torch.no_grad():
        model(torch.randn(1, 8000), None, 2)  # at the first use below full depth, not at load
    assert not model.selector.calibrated
    data = tiny_classification_data()
    data.setup("validate")
    model.calibrate_on_dataloader(data.val_dataloader())
    assert model.selector.calibrated and set(model.selector.report()) == set(range(1, model.num_layers))


def _fbank_task():
    import functools

    from ldrop.selectors import InputConditionedSelector
    from ldrop.tasks import ClassificationTask

    torch.manual_seed(0)
    return ClassificationTask(labels=["a", "b"], backbone="tiny:wavlm", selector=functools.partial(
        InputConditionedSelector, input="fbank", hidden_dim=8, fallback=False))


@pytest.mark.parametrize("precision", ["bf16 weights", "autocast"])
def test_a_bf16_model_or_autocast_runs_targets_end_to_end_with_float32_logits(precision):
    task = _fbank_task()  # its filterbank stays float32 inside a bf16 model
    model = (AdaptiveModel(task.to(torch.bfloat16)) if precision == "bf16 weights"
             else AdaptiveModel(task, autocast=torch.bfloat16))
    for target in ({"gflops_per_second": 0.025}, {"rtf": 1.0}):  # the rtf target measures a quick profile
        out = model(torch.randn(16000), target)
        assert out.outputs[0] in ("a", "b") and out.logits.dtype == torch.float32
    assert model.profile.device["dtype"] == ("bfloat16" if precision == "bf16 weights" else "float32")


def test_autocast_must_be_a_dtype():
    with pytest.raises(ValueError, match="autocast must be a torch dtype"):
        AdaptiveModel(_fbank_task(), autocast="bf16")


@pytest.mark.parametrize(("class_path", "message"), [
    ("ldrop_missing_pkg.tasks.PitchTask", r"cannot be imported: .*put the folder that holds ldrop_missing_pkg on PYTHONPATH"),
    ("__main__.PitchTask", r"defined in a script \(__main__\).*PitchTask.load_from_checkpoint"),
])
def test_a_task_class_that_cannot_be_imported_is_one_line_naming_the_checkpoint(tiny_checkpoint, tmp_path, class_path,
                                                                                  message):
    from ldrop._io import CheckpointError

    checkpoint = torch.load(tiny_checkpoint, weights_only=False)
    checkpoint["ldrop_task_class"] = class_path  # a downstream task whose package is not importable here
    moved = tmp_path / "downstream.ckpt"
    torch.save(checkpoint, moved)
    with pytest.raises(CheckpointError, match=message) as err:
        load_model(moved)
    assert str(moved) in str(err.value) and "\n" not in str(err.value)


def test_per_input_budgets_as_a_list_run_as_their_tensor(tiny_checkpoint):
    model = AdaptiveModel(load_model(tiny_checkpoint))
    waves = torch.randn(3, 8000, generator=torch.Generator().manual_seed(3))
    as_list, as_tensor = model(waves, [1, 0.5, 4]), model(waves, torch.tensor([1, 2, 4]))
    assert as_list.layers_run.tolist() == as_tensor.layers_run.tolist() == [1, 2, 4]
    assert torch.equal(as_list.logits, as_tensor.logits)


def test_adaptive_model_refuses_non_finite_samples_and_channel_last_audio(tiny_checkpoint):
    model = AdaptiveModel(load_model(tiny_checkpoint))
    clips = [torch.randn(8000), torch.randn(9000)]
    clips[1][50] = float("inf")
    with pytest.raises(ValueError, match=r"waveforms \[1\] hold NaN or inf samples"):
        model(clips, 2)
    with pytest.raises(ValueError, match=r"waveforms \[0\] hold NaN or inf samples"):
        model(torch.full((1, 8000), float("nan")), 2)
    with pytest.raises(ValueError, match=r"\[8000, 2\] look like \[samples, channels\] audio"):
        model(torch.randn(8000, 2), 2)
    pcm = (torch.rand(8000) * 2000).to(torch.int16)  # raw PCM would run 32768 times too loud
    for given in (pcm, [pcm], [pcm.numpy()]):
        with pytest.raises(ValueError, match=r"int16 samples: give float audio in \[-1, 1\]"):
            model(given, 2)


def test_an_array_is_a_batch_or_one_clip_and_a_list_holds_1d_clips(tiny_checkpoint):
    import numpy as np

    model = AdaptiveModel(load_model(tiny_checkpoint))
    waves = torch.randn(2, 8000, generator=torch.Generator().manual_seed(4))
    reference = model(waves, 2).logits
    # a numpy array as the tensor it holds (it was taken for a list: 8000 clips of one sample each)
    assert torch.allclose(model(waves.numpy(), 2).logits, reference, atol=1e-5)
    assert torch.allclose(model(waves[1].double().numpy(), 2).logits, reference[1:], atol=1e-5)
    with pytest.raises(ValueError, match=r"clip 0 of the list has shape \[2, 8000\]: each clip must be one channel"):
        model([waves], 2)  # was flattened into one clip, its channels end to end
    with pytest.raises(ValueError, match="waveforms is a list of numbers"):
        model(waves[0].tolist(), 2)
    one_channel = model([waves[0][None], waves[1][:, None].numpy()], 2).logits  # torchaudio.load: [1, samples]
    assert torch.allclose(one_channel, reference, atol=1e-6)
    ragged = np.empty(2, dtype=object)  # clips of two lengths in one numpy array
    ragged[0], ragged[1] = waves[0].numpy(), waves[1, :6000].numpy()
    assert model(ragged, 2).layers_run.tolist() == [2, 2]
    assert torch.allclose(model(waves.numpy()[:, ::-1], 2).logits, model(waves.flip(1), 2).logits, atol=1e-5)
    with pytest.raises(ValueError, match="a list's clips carry their own lengths"):
        model(list(waves), 2, lengths=torch.tensor([8000, 8000]))  # were ignored
    for lengths in ([8000], [8000, 9000], [8000, 8000, 8000]):  # a count or a length the batch does not hold
        with pytest.raises(ValueError, match=r"lengths must be \[batch=2\] values <= 8000"):
            model(waves, 2, lengths=torch.tensor(lengths))
    assert torch.allclose(model(waves, 2, lengths=torch.tensor([[8000], [8000]])).logits, reference, atol=1e-6)


def test_adaptive_model_refuses_a_sample_rate_that_it_would_not_resample_to(tiny_checkpoint):
    task = load_model(tiny_checkpoint)
    assert AdaptiveModel(task, sample_rate=16000).sample_rate == 16000
    with pytest.raises(ValueError, match="sample_rate=8000, but the model reads 16000 Hz audio and AdaptiveModel "
                                         "does not resample"):
        AdaptiveModel(task, sample_rate=8000)
    with pytest.raises(ValueError, match=r"sample_rate=16000\.5"):
        AdaptiveModel(task, sample_rate=16000.5)


def test_the_sweeps_ms_misses_compare_the_batch_time_with_the_batchs_allowance(tiny_checkpoint):
    """An ``ms`` target is per utterance: a batch of 4 is allowed 4 times it (as ``ldrop test`` and the
    controller's deadline count it), not the per-utterance value."""
    import dataclasses

    class Timed(AdaptiveModel):
        per_utterance_ms = 0.0

        def __call__(self, waveforms, target=None, lengths=None):
            out = super().__call__(waveforms, target, lengths=lengths)
            return dataclasses.replace(out, measured_ms=self.per_utterance_ms * len(out.layers_run))

    model = Timed(load_model(tiny_checkpoint), profile=synthetic_profile())
    data = tiny_classification_data()
    data.setup("test")
    batches = list(data.test_dataloader())
    assert max(len(b.lengths) for b in batches) > 1
    model.per_utterance_ms = 3.0  # each batch is within its allowance of 8 ms per utterance
    assert model.sweep(batches, [{"ms": 8.0}])[0]["miss_rate"] == 0.0
    model.per_utterance_ms = 9.0  # each batch is over it
    assert model.sweep(batches, [{"ms": 8.0}])[0]["miss_rate"] == 1.0


def test_the_sweeps_flops_misses_count_what_the_controller_counts_the_selector_too(tiny_checkpoint):
    """A FLOPs target just above the backbone's cost at one layer: the input with the highest such cost cannot
    meet it once its selector is counted, as the controller counts it, and the sweep must say so (counting the
    backbone alone, it said no input missed)."""
    from ldrop.budgets.loop import UnmeetableTargetWarning
    from ldrop.engine.flops import count_forward_flops

    model = AdaptiveModel.from_pretrained(tiny_checkpoint)
    data = tiny_classification_data()
    data.setup("test")
    batches = list(data.test_dataloader())
    lengths = torch.cat([b.lengths for b in batches])
    one_layer = torch.zeros(len(lengths), model.num_layers)
    one_layer[:, 0] = 1
    backbone = count_forward_flops(model.model.backbone.config, lengths, one_layer).total
    target = float((backbone / (lengths.double() / model.sample_rate)).max()) / 1e9 * 1.000001
    with pytest.warns(UnmeetableTargetWarning, match="cannot be met"):
        rows = model.sweep(batches, [{"gflops_per_second": target}])
    assert rows[0]["miss_rate"] > 0


def _switching_clock(model, wave, other_target):
    """A clock that, at this call's first reading, runs another call naming another profile: what a thread
    sharing the model does between this call's choice of profile and its plan."""
    import time

    switched = []

    def clock() -> float:
        if not switched:
            switched.append(True)
            model(wave, other_target)
        return time.perf_counter()

    return clock


@pytest.mark.filterwarnings("ignore:.*not been fitted")
def test_a_call_plans_with_its_targets_profile_while_another_call_switches_the_models(tiny_checkpoint, tmp_path):
    fast = str(synthetic_profile(fixed=(0.001, 0, 0), layer=(0.001, 0, 0)).save(tmp_path / "fast.json"))
    slow = str(synthetic_profile(fixed=(0.001, 0, 0), layer=(0.010, 0, 0)).save(tmp_path / "slow.json"))
    model = AdaptiveModel.from_pretrained(tiny_checkpoint, closed_loop=False, margin=0.0)
    wave = torch.randn(8000)
    fast_target, slow_target = {"ms": 20.0, "profile": fast}, {"ms": 20.0, "profile": slow}
    alone = int(model(wave, fast_target).budget[0]), int(model(wave, slow_target).budget[0])
    assert alone == (4, 1)  # 1 ms + k x 1 ms, or 1 ms + k x 10 ms, within 20 ms
    model.clock = _switching_clock(model, wave, slow_target)
    out = model(wave, fast_target)
    assert int(out.budget[0]) == 4 and model.profile.path == slow  # planned with its own; the other's installed
    assert out.predicted_ms == pytest.approx(1.0 + 4 * 1.0, rel=1e-6)  # predicted by its own profile too


@pytest.mark.filterwarnings("ignore:.*not been fitted")
def test_threads_first_time_target_calls_measure_one_profile(tiny_checkpoint, monkeypatch):
    import threading
    import time

    model = AdaptiveModel.from_pretrained(tiny_checkpoint)
    measured = []

    def measure(*args, **kwargs):  # a quick profile takes a while: the other threads' first calls come meanwhile
        measured.append(True)
        time.sleep(0.3)
        return synthetic_profile()

    monkeypatch.setattr("ldrop.runtime.adaptive.profile_model", measure)
    outputs = []
    threads = [threading.Thread(target=lambda: outputs.append(model(torch.randn(8000), {"rtf": 1.0})))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(outputs) == 4 and len(measured) == 1
