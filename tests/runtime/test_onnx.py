"""ONNX export and the ONNX Runtime model: parity with PyTorch per family, budgets, targets, bad folders.

Exporting is the slow part (a trace of every graph), so each family is exported once per module.
"""

from __future__ import annotations

import functools
import gc
import itertools
import json
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the ONNX runtime is the optional extra ldrop[onnx]")
pytest.importorskip("onnxscript", reason="the ONNX exporter needs the optional extra ldrop[onnx]")

from ldrop.budgets import DeviceProfile, UnmeetableTargetWarning
from ldrop.runtime import OnnxAdaptiveModel, load_model
from ldrop.runtime.onnx_export import OnnxExportError, export_onnx, folder_megabytes
from ldrop.runtime.onnx_runtime import OnnxFolderError, read_manifest
from ldrop.selectors import InputConditionedSelector, RandomSelector, StaticSelector
from ldrop.tasks import ClassificationTask, CTCTask
from tests.helpers import padded_batch
from tests.runtime.conftest import synthetic_profile

#: Three inputs of different lengths (1 s, 0.8 s, 0.6 s): padding and sub-batches of different lengths.
LENGTHS = [16000, 12800, 9600]
TOLERANCE = 1e-4


def calibrated_threshold_task() -> ClassificationTask:
    """wav2vec 2.0 in the pre-norm layout with a threshold-mode selector calibrated on random inputs."""
    torch.manual_seed(2)
    task = ClassificationTask(labels=["a", "b", "c"], backbone="tiny:wav2vec2-large",
                              selector=functools.partial(InputConditionedSelector, mode="threshold")).eval()
    waves, lengths = padded_batch([16000, 14000, 12000, 10000, 9000, 8000], seed=5)
    with torch.no_grad():
        encoded = task.encode(waves, lengths)
        scores = {k: task.selector.score(encoded.features, encoded.frame_mask, torch.full((6,), k))
                  for k in range(1, task.num_layers)}
    task.selector.calibration.set_thresholds(scores)
    return task


def fallback_task() -> ClassificationTask:
    """Data2VecAudio with a top-k selector whose validation fallback chose an input-blind mask at budget 2, batch
    independent (its positional convolutions masked)."""
    torch.manual_seed(3)
    task = ClassificationTask(num_classes=5, backbone="tiny:data2vec", selector=InputConditionedSelector,
                              batch_independent=True).eval()
    task.selector.fallback.uses_input[1] = False
    task.selector.fallback.blind_masks[1] = torch.tensor([True, False, False, True])
    task.selector.fallback.metrics[1] = torch.tensor([0.5, 0.6])
    return task


def prefix_ctc_task() -> CTCTask:
    """HuBERT CTC with a selector that reads the output of the first encoder layer (run for every input), batch
    independent (its CNN's group norm masked)."""
    torch.manual_seed(4)
    return CTCTask(labels="english", backbone="tiny:hubert", batch_independent=True,
                   selector=functools.partial(InputConditionedSelector, input="layers", read_layers=1)).eval()


FAMILIES = ("wavlm", "hubert", "wav2vec2", "data2vec")

#: ``set-up -> the classes named 'ClassificationTask' other than the class itself left right after its export``,
#: each export run with garbage collection off (see the test of the command line after an export).
LEFT_AFTER_EXPORT: dict[str, list[type]] = {}


def export_with_gc_off(name: str, task, folder: Path) -> Path:
    """``export_onnx`` with the garbage collector off, so that only the export's own collection can remove the
    tracer's same-name subclasses; records those left in :data:`LEFT_AFTER_EXPORT` under ``name``."""
    gc.disable()
    try:
        out = export_onnx(task, folder, progress=lambda line: None)
        LEFT_AFTER_EXPORT[name] = [cls for cls in ClassificationTask.__subclasses__()
                                   if cls.__name__ == "ClassificationTask"]
    finally:
        gc.enable()
    return out


@pytest.fixture(scope="module")
def from_checkpoint(tiny_checkpoint) -> OnnxAdaptiveModel:
    """The trained tiny WavLM checkpoint on ONNX Runtime, exported on the fly by ``from_pretrained``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(not been (fitted|calibrated)|uncalibrated decisions)")
        return OnnxAdaptiveModel.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def exports(tiny_checkpoint, from_checkpoint, tmp_path_factory) -> dict[str, tuple[object, Path]]:
    """``family -> (the PyTorch task, its ONNX export folder)``, one model per family, each a different set-up:
    WavLM from a trained checkpoint (top-k, CNN features), HuBERT CTC reading a prefix layer, wav2vec 2.0
    pre-norm with calibrated thresholds, Data2VecAudio with fallback decisions."""
    root = tmp_path_factory.mktemp("onnx")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(not been (fitted|calibrated)|uncalibrated decisions)")
        out = {"wavlm": (load_model(tiny_checkpoint), from_checkpoint.folder)}
        for family, task in (("hubert", prefix_ctc_task()), ("wav2vec2", calibrated_threshold_task())):
            out[family] = (task, export_onnx(task, root / family))
        out["data2vec"] = (task := fallback_task(), export_with_gc_off("fallback", task, root / "data2vec"))
    return out


@pytest.fixture(scope="module")
def fbank_export(tmp_path_factory) -> tuple[ClassificationTask, Path]:
    """A top-k selector on its own filterbank (WavLM), exported once (garbage collection off) for the tests
    of its parity and of the command line after an export."""
    from tests.runtime.test_adaptive import _fbank_task

    task = _fbank_task().eval()
    return task, export_with_gc_off("filterbank", task, tmp_path_factory.mktemp("fbank") / "fbank")


def torch_forward(task, waves, lengths, budget):
    with torch.inference_mode():
        logits, keep = task(waves, lengths, budget)
    return logits.numpy(), (keep > 0.5).numpy()


# ---------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_logits_and_masks_match_pytorch_at_one_half_and_all_layers(exports, family):
    task, folder = exports[family]
    model = OnnxAdaptiveModel(folder)
    n = task.num_layers
    waves, lengths = padded_batch(LENGTHS, seed=11)
    budgets = [torch.full((3,), 1), torch.full((3,), n // 2), torch.full((3,), n), torch.tensor([1, n // 2, n])]
    distinct_masks = set()
    for budget in budgets:
        expected, expected_keep = torch_forward(task, waves, lengths, budget)
        logits, keep, _ = model.forward(waves.numpy(), lengths.numpy(), budget.numpy())
        assert np.array_equal(keep, expected_keep), f"budget {budget.tolist()}"
        assert np.abs(logits - expected).max() <= TOLERANCE, f"budget {budget.tolist()}"
        distinct_masks |= {tuple(row) for row in keep.tolist()}
    assert len(distinct_masks) >= 3  # masks differ between budgets and inputs


@pytest.mark.parametrize("family", ["hubert", "data2vec"])
def test_a_batch_independent_export_gives_each_input_what_it_gets_alone(exports, family):
    model = OnnxAdaptiveModel(exports[family][1])
    waves, lengths = padded_batch(LENGTHS, seed=11)
    budget = np.array([2, 2, 2])
    logits, keep, _ = model.forward(waves.numpy(), lengths.numpy(), budget)
    for i, n in enumerate(LENGTHS):
        alone, alone_keep, _ = model.forward(waves[i : i + 1, :n].numpy(), lengths[i : i + 1].numpy(), budget[:1])
        frames = alone.shape[1] if alone.ndim == 3 else None  # CTC: the padded batch has more frames
        assert np.array_equal(keep[i], alone_keep[0])
        assert np.abs(logits[i, :frames] - alone[0]).max() <= TOLERANCE


@pytest.mark.parametrize("family", FAMILIES)
def test_explicit_per_input_masks_match_pytorch(exports, family):
    task, folder = exports[family]
    model = OnnxAdaptiveModel(folder)
    waves, lengths = padded_batch(LENGTHS, seed=12)
    keep = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.float32)
    with torch.inference_mode():
        expected = task.logits_with_mask(task.encode(waves, lengths), keep).numpy()
    got = model.run_with_mask(waves.numpy(), lengths.numpy(), keep.numpy())
    assert np.abs(got - expected).max() <= TOLERANCE


def test_the_folder_holds_one_graph_per_part_and_a_manifest(exports):
    _, folder = exports["wavlm"]
    manifest = read_manifest(folder)
    assert manifest["graphs"]["layers"] == [f"layers/layer_{i:02d}.onnx" for i in range(4)]
    assert manifest["graphs"]["context"] == "context.onnx"  # WavLM's position bias, computed once
    assert "position_bias" in manifest["io"]["layer"]["inputs"]
    assert manifest["preprocessing"] == {"sample_rate": 16000, "do_normalize": False, "padding_value": 0.0,
                                         "mono": True}
    assert manifest["task"]["labels"] == ["a", "b", "c", "d"] and manifest["opset"] >= 18
    assert manifest["layer_order"] == [0, 1, 2, 3] and manifest["quantize"] is None
    assert exports["hubert"][1].joinpath("manifest.json").is_file()
    assert read_manifest(exports["hubert"][1])["graphs"]["context"] is None  # only WavLM shares a context


def test_a_service_loop_keeps_no_memory_plan_per_length_and_its_options_are_its_own(exports):
    """ONNX Runtime kept a memory plan for every input shape it saw: a service fed inputs of many lengths grew by
    about 1.6 MB per 1000 calls for good. ``sample_rate`` and ``min_budget`` collided with the controller's own
    (a TypeError naming OnnxBudgetController)."""
    folder = exports["wavlm"][1]
    model = OnnxAdaptiveModel(folder, sample_rate=16000, min_budget=2)
    assert model._fixed.get_session_options().enable_mem_pattern is False
    unmeetable = {"gflops_per_second": 1e-9}
    with pytest.warns(UnmeetableTargetWarning):
        assert int(model(np.zeros(16000, dtype=np.float32), unmeetable).budget[0]) == 2  # at least min_budget
    with pytest.raises(ValueError, match="sample_rate=8000, but the export reads 16000 Hz audio"):
        OnnxAdaptiveModel(folder, sample_rate=8000)
    task = exports["wavlm"][0]
    from ldrop.runtime import AdaptiveModel

    with pytest.warns(UnmeetableTargetWarning):
        assert int(AdaptiveModel(task, min_budget=3)(torch.zeros(16000), unmeetable).budget[0]) == 3


def test_graphs_take_any_batch_and_length(exports):
    import onnxruntime

    _, folder = exports["hubert"]
    for name in ("fixed.onnx", "layers/layer_02.onnx", "head.onnx", "selector.onnx"):
        session = onnxruntime.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])
        for value in session.get_inputs():
            assert all(not isinstance(dim, int) for dim in value.shape[:2]), (name, value.name, value.shape)


def test_ctc_outputs_decode_to_the_same_transcripts(exports):
    task, folder = exports["hubert"]
    waves, lengths = padded_batch(LENGTHS, seed=13)
    out = OnnxAdaptiveModel(folder)(waves.numpy(), 2, lengths=lengths.numpy())
    with torch.inference_mode():
        logits, _ = task(waves, lengths, 2)
        frame_mask = task.encode(waves, lengths).frame_mask
    assert out.outputs == task.decode(logits, frame_mask)
    assert out.frame_mask.shape == tuple(frame_mask.shape) and np.array_equal(out.frame_mask, frame_mask.numpy())


# ---------------------------------------------------------------------------------------------- the call
def test_a_checkpoint_and_its_export_folder_give_the_same_call(from_checkpoint):
    from_folder = OnnxAdaptiveModel.from_pretrained(from_checkpoint.folder, profile=_cost(synthetic_profile(), True))
    from_checkpoint.controller.profile = _cost(synthetic_profile(), True)
    waveform = np.random.default_rng(0).standard_normal(12000).astype(np.float32)
    a, b = from_folder(waveform, {"ms": 1000.0}), from_checkpoint(waveform, {"ms": 1000.0})
    assert a.outputs == b.outputs and a.outputs[0] in {"a", "b", "c", "d"}
    assert np.array_equal(a.keep_mask, b.keep_mask) and int(a.budget[0]) == 4  # a generous deadline: every layer
    assert np.array_equal(a.logits, b.logits)
    assert a.predicted_ms > 0 and a.measured_ms > 0 and a.correction > 0 and a.target.kind == "ms"


def test_budgets_and_targets_are_chosen_as_the_pytorch_runtime_does(exports):
    from ldrop.runtime import AdaptiveModel

    task, folder = exports["wavlm"]
    profile = synthetic_profile(layer=(0.0, 1e-4, 0.0))
    with pytest.warns(UserWarning, match="not measured on ONNX Runtime"):
        onnx_model = OnnxAdaptiveModel(folder, profile=_cost(profile), margin=0.0, closed_loop=False)
    torch_model = AdaptiveModel(task, profile=profile, margin=0.0, closed_loop=False)
    waves, lengths = padded_batch([4000, 16000, 30000], seed=14)
    for target in ({"rtf": 0.5}, {"ms": 8.0}, {"gflops_per_second": 0.05}, 0.5, 3, [1, 2, 4]):
        torch_target = torch.tensor(target) if isinstance(target, list) else target
        expected = torch_model(waves, torch_target, lengths=lengths)
        got = onnx_model(waves.numpy(), np.array(target) if isinstance(target, list) else target, lengths=lengths.numpy())
        assert got.budget.tolist() == expected.budget.tolist(), target
        assert np.array_equal(got.keep_mask, expected.keep_mask.numpy()), target
        assert got.outputs == expected.outputs


def test_an_unmeetable_target_warns_at_the_callers_line_on_both_runtimes(exports):
    import inspect

    from ldrop.runtime import AdaptiveModel

    task, folder = exports["wavlm"]
    profile = synthetic_profile()
    models = [AdaptiveModel(task, profile=profile), OnnxAdaptiveModel(folder, profile=_cost(profile, True))]
    waves = np.random.default_rng(5).standard_normal(8000).astype(np.float32)
    for model, target in itertools.product(models, ({"ms": 1e-6}, {"rtf": 1e-9}, {"gflops_per_second": 1e-9})):
        inputs = torch.from_numpy(waves) if isinstance(model, AdaptiveModel) else waves
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            line = inspect.currentframe().f_lineno + 1
            model(inputs, target)
        [warning] = [w for w in caught if issubclass(w.category, UnmeetableTargetWarning)]
        assert (warning.filename, warning.lineno) == (__file__, line), (type(model).__name__, target)


def open_loop_pair(task, folder):
    """``(ONNX runtime, PyTorch runtime)`` of one model, open loop, no margin, on one profile (measured on ONNX
    Runtime as far as the ONNX side knows): their budgets must agree."""
    from ldrop.runtime import AdaptiveModel

    profile = synthetic_profile(layer=(0.0, 1e-4, 0.0))
    return (OnnxAdaptiveModel(folder, profile=_cost(profile, True), margin=0.0, closed_loop=False),
            AdaptiveModel(task, profile=profile, margin=0.0, closed_loop=False))


def _cost(profile, measured_on_onnxruntime: bool = False):
    cost = DeviceProfile.from_dict(profile.to_dict())
    if measured_on_onnxruntime:
        cost.device["runtime"] = "onnxruntime"
    return cost


def test_the_closed_loop_lowers_the_depth_when_calls_run_slower_than_the_profile(exports):
    _, folder = exports["wavlm"]
    # a profile that claims every part is 100x faster than it is: the measured times correct it
    fast = synthetic_profile(fixed=(1e-5, 0.0, 0.0), layer=(1e-5, 0.0, 0.0))
    model = OnnxAdaptiveModel(folder, profile=_cost(fast, True))
    waveform = np.zeros(16000, dtype=np.float32)
    open_loop = model.with_controller(_cost(fast, True), closed_loop=False)
    assert int(open_loop(waveform, {"ms": 0.1}).budget[0]) == 4  # affordable in full by the profile's account
    with pytest.warns(UnmeetableTargetWarning):
        first = model(waveform, {"ms": 0.1})  # the fixed part's measured time is seen before the budget
        planned = model.controller.planned
        for _ in range(4):
            out = model(waveform, {"ms": 0.1})
    assert int(first.budget[0]) < 4 and planned > 4
    assert out.correction > 4 and int(out.budget[0]) < 4


def test_audio_files_are_read_at_the_models_rate(exports, tmp_path):
    import soundfile

    _, folder = exports["wavlm"]
    model = OnnxAdaptiveModel(folder)
    clip = 0.1 * np.random.default_rng(1).standard_normal((12000, 2)).astype(np.float32)
    soundfile.write(tmp_path / "a.wav", clip, 16000)
    soundfile.write(tmp_path / "b.wav", clip, 8000)
    from_file = model([tmp_path / "a.wav"], 2)
    from_array = model(soundfile.read(tmp_path / "a.wav", dtype="float32")[0].mean(1), 2)
    assert np.abs(from_file.logits - from_array.logits).max() <= 1e-6
    with pytest.raises(ValueError, match="8000 Hz; this model takes 16000 Hz"):
        model([tmp_path / "b.wav"], 2)
    with pytest.raises(ValueError, match=r"no audio file at '.*missing.wav'$"):  # not libsndfile's "System error"
        model(tmp_path / "missing.wav", 2)
    with pytest.raises(ValueError, match="at least 400 samples"):
        model(np.zeros(200, dtype=np.float32), 2)
    with pytest.raises(ValueError, match="between 1 and 4 layers"):
        model(np.zeros(1600, dtype=np.float32), 9)
    with pytest.raises(ValueError, match=r"\[12000, 2\] look like \[samples, channels\] audio"):
        model(soundfile.read(tmp_path / "a.wav", dtype="float32")[0], 2)
    clips = [clip[:, 0].copy(), clip[:, 1].copy()]
    clips[1][100] = np.nan
    with pytest.raises(ValueError, match=r"waveforms \[1\] hold NaN or inf samples"):
        model(clips, 2)
    with pytest.raises(ValueError, match=r"clip 1 of the list has shape \[12000, 2\]: each clip must be one channel"):
        model([clip[:, 0], clip], 2)  # was flattened into one clip of interleaved channels
    one_channel = model([clip[:, :1], clip[None, :, 1]], 2).logits  # [samples, 1] and [1, samples]
    assert np.abs(one_channel - model([clip[:, 0], clip[:, 1]], 2).logits).max() <= 1e-6
    ragged = np.empty(2, dtype=object)  # clips of two lengths in one numpy array (was a ValueError from numpy)
    ragged[0], ragged[1] = clip[:, 0], clip[:9000, 1]
    assert model(ragged, 2).layers_run.tolist() == [2, 2]
    with pytest.raises(ValueError, match="waveforms is a list of numbers"):
        model(clip[:, 0].tolist(), 2)  # was 12000 clips of one sample each
    with pytest.raises(ValueError, match=r"lengths must be \[batch=2\] values <= 12000"):
        model(np.stack([clip[:, 0], clip[:, 1]]), 2, lengths=[12000])
    pcm = (clip[:, 0] * 32767).astype(np.int16)  # raw PCM would run 32768 times too loud
    for given in (pcm, [pcm], pcm[None]):
        with pytest.raises(ValueError, match=r"int16 samples: give float audio in \[-1, 1\]"):
            model(given, 2)


def test_an_empty_or_unreadable_audio_file_is_named_with_what_is_wrong(tmp_path):
    from ldrop.runtime.onnx_runtime import read_audio_file

    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "noise.wav").write_bytes(bytes(range(200)))
    with pytest.raises(ValueError, match=r"empty\.wav': the file is empty \(0 bytes\)$"):
        read_audio_file(tmp_path / "empty.wav", 16000)
    with pytest.raises(ValueError, match=r"noise\.wav': not a readable audio file \(libsndfile: Format not recognised\)$"):
        read_audio_file(tmp_path / "noise.wav", 16000)


def test_the_runtime_imports_and_runs_without_torch(exports):
    task, folder = exports["wav2vec2"]
    script = f"""
import json, sys
sys.modules["torch"] = None  # any import of torch now fails
import numpy as np
from ldrop.runtime import OnnxAdaptiveModel
model = OnnxAdaptiveModel({str(folder)!r})
waves = np.random.default_rng(3).standard_normal((2, 12000)).astype(np.float32)
out = model(waves, 2)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "lightning", "transformers", "torchaudio")
               and sys.modules[m] is not None)
print(json.dumps({{"logits": out.logits.tolist(), "keep": out.keep_mask.tolist(), "heavy": heavy}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["heavy"] == []
    waves = torch.from_numpy(np.random.default_rng(3).standard_normal((2, 12000)).astype(np.float32))
    expected, keep = torch_forward(task, waves, None, 2)
    assert np.abs(np.array(data["logits"]) - expected).max() <= TOLERANCE and np.array_equal(data["keep"], keep)


@pytest.mark.parametrize("make_task", ["fallback", "filterbank", "failed export"])
def test_after_an_export_the_cli_in_the_same_process_still_resolves_a_task_by_its_class_name(request, tmp_path, capsys,
                                                                                               make_task, monkeypatch):
    """torch.export's tracer subclasses the traced task's class under the same name; unless the export collects
    them, LightningCLI refuses 'class_path: ClassificationTask' as ambiguous (garbage collection is off from the
    export to the check, so that only the export's own collection can remove them). An export that fails after
    its trace collects too. The fallback and filterbank exports are the module's own (``exports``,
    ``fbank_export``), run with garbage collection off and the classes left counted right after them."""
    from ldrop.cli import main

    def fail(*args):
        raise OnnxExportError("parity check failed (forced by the test)")

    if make_task == "failed export":
        monkeypatch.setattr("ldrop.runtime.onnx_export._check_parity", fail)
    else:
        _, folder = request.getfixturevalue("exports")["data2vec"] if make_task == "fallback" else \
            request.getfixturevalue("fbank_export")
    gc.disable()
    try:
        if make_task == "failed export":
            with pytest.raises(OnnxExportError):
                export_onnx(fallback_task(), tmp_path / "export", progress=lambda line: None)  # after the trace
            assert not (tmp_path / "export").exists()
            same_name = [cls for cls in ClassificationTask.__subclasses__() if cls.__name__ == "ClassificationTask"]
        else:
            assert folder.joinpath("manifest.json").is_file()
            same_name = LEFT_AFTER_EXPORT[make_task]
        with pytest.raises(SystemExit) as exit:
            main(["fit", "--config", str(Path(__file__).resolve().parents[2] / "configs/quickstart.yaml"),
                  "--print_config"])
    finally:
        gc.enable()
    assert same_name == [] and exit.value.code == 0, capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- commands
TINY_GRID = ["--seconds", "0.5,1", "--batch-sizes", "1,2", "--repeats", "1", "--warmup", "0", "--validate", "2"]


def test_ldrop_profile_times_the_export_on_onnx_runtime(exports, tmp_path):
    from ldrop.cli import main

    _, folder = exports["hubert"]  # with a prefix layer: the fixed part leaves it out, as on PyTorch
    out = tmp_path / "profile.json"
    assert main(["profile", str(folder), "--runtime", "onnx", *TINY_GRID, "--threads", "1", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["device"]["runtime"] == "onnxruntime" and data["device"]["threads"] == 1
    assert len(data["measurements"]) == 2 * 2 * 2 and len(data["validation"]["batches"]) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # measured on ONNX Runtime: no warning about another runtime's times
        model = OnnxAdaptiveModel(folder, profile=out)
    assert int(model(np.zeros(16000, dtype=np.float32), {"rtf": 100.0}).budget[0]) == 4


def test_the_speedup_benchmark_times_onnx_runtime_against_pytorch(exports, tmp_path):
    from ldrop.bench.__main__ import main

    _, folder = exports["wavlm"]  # a tiny WavLM export: reused instead of exporting the benchmark's own
    out = tmp_path / "speed.json"
    assert main(["speedup", "--runtime", "onnx", "--size", "tiny", "--batch-size", "2", "--seconds", "0.5",
                 "--budgets", "1,2", "--repeats", "1", "--warmup", "0", "--threads", "1", "--export-dir", str(folder),
                 "--json", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [r["budget"] for r in records] == [1, 2] and {r["runtime"] for r in records} == {"onnx"}
    assert all(r["time_s"]["onnx_full"] > 0 and r["onnx_vs_torch"]["full"] > 0 for r in records)


def test_the_control_benchmark_runs_every_policy_on_onnx_runtime(exports, tiny_checkpoint, tmp_path):
    from ldrop.bench.__main__ import main

    _, folder = exports["wavlm"]  # the export of this checkpoint
    out = tmp_path / "control.json"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(not been (fitted|calibrated)|cannot be met)")
        assert main(["control", "--runtime", "onnx", "--export-dir", str(folder), "--ckpt", str(tiny_checkpoint),
                     "--utterances", "6", "--seconds-range", "0.5,0.8", "--load-procs", "1", "--max-load-seconds", "5",
                     "--profile-repeats", "1", "--threads", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["runtime"] == "onnx" and data["profile"]["fixed"]["overhead"] >= 0
    assert set(data["summary"]) == {"full", "fixed", "open_loop", "closed_loop"}
    assert all(len(records) == 6 for records in data["records"].values())
    assert all(r["layers_run"] == 4 for r in data["records"]["full"])


# ---------------------------------------------------------------------------------------------- int8
def test_dynamic_int8_quantizes_the_layers_only_and_keeps_the_predictions_close(exports, tmp_path):
    import onnx

    from ldrop.runtime.onnx_export import quantize_export

    task, folder = exports["data2vec"]
    quantized = tmp_path / "int8"
    quantize_export(folder, quantized)
    manifest = read_manifest(quantized)
    assert manifest["quantize"] == "dynamic"
    assert folder_megabytes(quantized / "layers") < folder_megabytes(folder / "layers")
    assert onnx.load(str(quantized / "fixed.onnx")).graph == onnx.load(str(folder / "fixed.onnx")).graph
    waves, lengths = padded_batch(LENGTHS, seed=15)
    fp32 = OnnxAdaptiveModel(folder).forward(waves.numpy(), lengths.numpy(), np.array([4, 4, 4]))[0]
    int8 = OnnxAdaptiveModel(quantized).forward(waves.numpy(), lengths.numpy(), np.array([4, 4, 4]))[0]
    assert 0 < np.abs(int8 - fp32).max() < 0.1 * np.abs(fp32).max()
    # another export: a graph copied between the fp32 and the int8 folder is refused, both ways
    assert manifest["export_id"] != read_manifest(folder)["export_id"]
    for source, target in ((quantized, folder), (folder, quantized)):
        mixed = shutil.copytree(target, tmp_path / f"mixed-{target.name}")
        shutil.copy(source / "layers" / "layer_01.onnx", mixed / "layers" / "layer_01.onnx")
        with pytest.raises(OnnxFolderError, match=r"layer_01.onnx' is another export, not the layers/layer_01.onnx"):
            OnnxAdaptiveModel(mixed)


def test_the_int8_copy_leaves_the_fp32_profile_behind_and_a_profile_of_the_other_graphs_warns(exports, tmp_path):
    from ldrop.runtime.onnx_export import quantize_export

    _, folder = exports["data2vec"]
    fp32 = tmp_path / "fp32"
    shutil.copytree(folder, fp32)
    profile = synthetic_profile()
    profile.device, profile.model = {"runtime": "onnxruntime"}, {"quantize": None}
    profile.save(fp32 / "profile.json")
    said: list[str] = []
    quantize_export(fp32, tmp_path / "int8", progress=said.append)
    assert not (tmp_path / "int8" / "profile.json").exists()
    assert any("profile.json (of the fp32 graphs) not copied" in line for line in said), said
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fp32 folder's own profile is of its graphs: no warning
        OnnxAdaptiveModel(fp32)
    with pytest.warns(UserWarning, match=r"measured on fp32 layer graphs, this folder's are int8 \(dynamic\)"):
        OnnxAdaptiveModel(tmp_path / "int8", profile=fp32 / "profile.json")
    with pytest.warns(UserWarning, match=r"measured on int8 \(dynamic\) layer graphs, this folder's are fp32"):
        OnnxAdaptiveModel(fp32).with_controller(replace(profile, model={"quantize": "dynamic"}))


def test_an_export_and_both_runtimes_take_the_sample_rate_of_the_backbone(tmp_path):
    from ldrop.backbones import load_backbone
    from ldrop.budgets.controller import TargetResolver
    from ldrop.runtime import AdaptiveModel

    backbone = tmp_path / "backbone-8k"
    load_backbone("tiny:wavlm").save_pretrained(backbone)
    config = json.loads((backbone / "preprocessor_config.json").read_text())
    (backbone / "preprocessor_config.json").write_text(json.dumps({**config, "sampling_rate": 8000}))
    torch.manual_seed(0)
    task = ClassificationTask(num_classes=2, backbone=str(backbone), pretrained=False, selector=StaticSelector).eval()
    folder = export_onnx(task, tmp_path / "model", progress=lambda line: None)
    assert read_manifest(folder)["preprocessing"]["sample_rate"] == 8000
    import soundfile

    soundfile.write(tmp_path / "16k.wav", np.zeros(16000, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match=r"16k.wav' is at 16000 Hz; this model takes 8000 Hz audio \(resample it "
                                         r"first, e.g. with ffmpeg -ar 8000\)"):
        OnnxAdaptiveModel(folder)(str(tmp_path / "16k.wav"), 2)
    # a second of audio is 8000 samples on both runtimes: rates of audio (rtf, FLOPs per second) agree
    onnx_model, torch_model = OnnxAdaptiveModel(folder, closed_loop=False), AdaptiveModel(task, closed_loop=False)
    assert onnx_model.sample_rate == torch_model.sample_rate == task.sample_rate == 8000
    lengths = np.array([16000, 8000])
    fixed, layer = (x.numpy() for x in torch_model.controller.flops_costs(lengths))
    for k in (1, 2, 3):
        target = {"gflops_per_second": float(((fixed + k * layer) / (lengths / 8000)).max()) * 1.0001}
        expected = onnx_model.controller.decide(lengths, target, warn=False).budget.tolist()
        assert torch_model.controller.decide(torch.from_numpy(lengths), target, warn=False).budget.tolist() == expected
        assert TargetResolver().decide(task, torch.from_numpy(lengths), target).budget.tolist() == expected
        assert max(expected) == k  # the rate of k layers on the longest input: k layers


# ---------------------------------------------------------------------------------------------- bad folders
@pytest.fixture
def copied(exports, tmp_path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(exports["hubert"][1], target)
    return target


def _edit_manifest(folder: Path, **changes) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_a_missing_layer_file_is_named(copied):
    (copied / "layers" / "layer_02.onnx").unlink()
    with pytest.raises(OnnxFolderError, match=r"incomplete: layers/layer_02.onnx listed in manifest.json is missing"):
        OnnxAdaptiveModel(copied)


def test_a_manifest_of_another_format_version_is_refused(copied):
    _edit_manifest(copied, format_version=2, ldrop_version="9.0")
    with pytest.raises(OnnxFolderError, match=r"format version 2 \(written by ldrop 9.0\); this ldrop reads version 1"):
        OnnxAdaptiveModel(copied)


@pytest.mark.parametrize(("entry", "value", "said"), [
    ("selector", None, "'selector' must be an object, got None"), ("task", [1], "'task' must be an object"),
    ("preprocessing", {"sample_rate": "16k"}, "'preprocessing.sample_rate' must be an integer >= 1, got '16k'"),
])
def test_a_manifest_entry_that_is_missing_or_of_another_type_is_named(copied, entry, value, said):
    _edit_manifest(copied, **{entry: value})
    with pytest.raises(OnnxFolderError, match=re.escape(f"{str(copied / 'manifest.json')!r}: {said}")):
        OnnxAdaptiveModel(copied)


def test_an_opset_the_runtime_does_not_run_is_refused(copied):
    _edit_manifest(copied, opset=7)
    with pytest.raises(OnnxFolderError, match="opset 7 is not one this runtime runs"):
        OnnxAdaptiveModel(copied)


def test_a_graph_with_an_unknown_opset_is_named(copied):
    import onnx

    path = copied / "head.onnx"
    model = onnx.load(str(path))
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = 99
    onnx.save(model, str(path))
    with pytest.raises(OnnxFolderError, match=r"cannot load .*head.onnx' with onnxruntime"):
        OnnxAdaptiveModel(copied)


def test_graphs_mixed_from_another_export_or_swapped_are_named(copied, exports):
    shutil.copy(exports["data2vec"][1] / "head.onnx", copied / "head.onnx")  # takes and gives the same names
    with pytest.raises(OnnxFolderError, match=r"head.onnx' is another export, not the head.onnx that manifest.json"):
        OnnxAdaptiveModel(copied)
    shutil.copy(exports["hubert"][1] / "head.onnx", copied / "head.onnx")
    layers = copied / "layers"
    (layers / "layer_00.onnx").rename(layers / "swap")
    (layers / "layer_01.onnx").rename(layers / "layer_00.onnx")
    (layers / "swap").rename(layers / "layer_01.onnx")
    with pytest.raises(OnnxFolderError, match=r"layer_00.onnx' is this export's layers/layer_01.onnx, not the "
                                              r"layers/layer_00.onnx"):
        OnnxAdaptiveModel(copied)


def test_a_folder_that_is_not_an_export_is_named(tmp_path):
    with pytest.raises(OnnxFolderError, match="no ONNX export folder"):
        OnnxAdaptiveModel(tmp_path / "nothing")
    with pytest.raises(OnnxFolderError, match="has no manifest.json"):
        OnnxAdaptiveModel(tmp_path)
    with pytest.raises(OnnxFolderError, match="has no manifest.json"):  # a folder is not taken for a checkpoint
        OnnxAdaptiveModel.from_pretrained(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(OnnxFolderError, match="not valid JSON"):
        OnnxAdaptiveModel(tmp_path)


def test_export_refuses_an_occupied_folder_and_unsupported_models(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    task = ClassificationTask(labels=["a", "b"], backbone="tiny:wavlm")
    with pytest.raises(OnnxExportError, match="not an empty folder"):
        export_onnx(task, tmp_path / "taken")
    random_selector = ClassificationTask(labels=["a", "b"], backbone="tiny:wavlm", selector=RandomSelector)
    with pytest.raises(OnnxExportError, match="random at evaluation"):
        export_onnx(random_selector, tmp_path / "random")
    assert not (tmp_path / "random").exists()


def test_the_export_command_writes_a_folder_and_names_bad_input(tmp_path, capsys):
    from ldrop.cli import main

    assert main(["export", str(tmp_path / "missing.ckpt"), str(tmp_path / "out"), "--format", "onnx"]) == 2
    assert "no model at" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_input_blind_selectors_export_their_mask_per_budget():
    from ldrop.runtime.onnx_export import selector_description

    task = ClassificationTask(labels=["a", "b"], backbone="tiny:wavlm",
                              selector=functools.partial(StaticSelector, subsets="first"))
    table = selector_description(task)
    assert table["kind"] == "table"
    assert table["table"] == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]


def test_the_guard_skips_layers_that_would_end_past_the_target_on_onnxruntime(exports):
    from tests.runtime.test_adaptive import fake_clock

    _, folder = exports["wavlm"]
    profile = _cost(synthetic_profile(fixed=(0.010, 0.0, 0.0), layer=(0.010, 0.0, 0.0)), True)
    model = OnnxAdaptiveModel(folder, profile=profile)
    model.clock = fake_clock([0.010, 0.025])  # the fixed part as predicted, then 25 ms per layer
    wave = np.random.default_rng(0).standard_normal(8000).astype(np.float32)
    out = model(wave, {"ms": 45.0})
    assert int(out.budget[0]) == 3 and int(out.layers_run[0]) == 1
    expected = model.run_with_mask(wave[None], np.array([8000]), out.keep_mask)
    assert np.abs(out.logits - expected).max() <= 1e-5


def test_a_filterbank_selector_exports_with_its_filterbank_in_the_fixed_graph(fbank_export):
    task, folder = fbank_export
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["selector"]["input"] == "fbank"
    model = OnnxAdaptiveModel(folder)
    waves, lengths = padded_batch(LENGTHS, seed=5)
    n = task.num_layers
    for budget in (torch.full((3,), 1), torch.full((3,), n // 2), torch.tensor([1, n // 2, n])):
        expected, expected_keep = torch_forward(task, waves, lengths, budget)
        logits, keep, _ = model.forward(waves.numpy(), lengths.numpy(), budget.numpy())
        assert np.abs(logits - expected).max() <= TOLERANCE and (keep == expected_keep).all()


@pytest.mark.parametrize("sized", [True, False], ids=["loader", "loader-without-length"])
def test_the_onnx_parity_accuracy_loop_shows_progress_per_test_batch(tiny_checkpoint, tmp_path, caplog, monkeypatch,
                                                                     sized):
    import logging

    from ldrop.bench import onnx_parity
    from tests.helpers import tiny_classification_data

    def tiny_data(config):
        data = tiny_classification_data(num_test=8, batch_size=4)
        data.setup("fit")
        data.setup("test")
        if not sized:  # a datamodule of one's own over an iterable dataset: its loader has no len()
            loader = data.test_dataloader()
            data.test_dataloader = lambda: (batch for batch in loader)
        return data

    monkeypatch.setattr(onnx_parity, "config_datamodule", tiny_data)
    with caplog.at_level(logging.INFO, logger="ldrop.progress"):
        record = onnx_parity.accuracy_record(str(tiny_checkpoint), "unused.yaml", tmp_path, say=lambda line: None)
    assert record["test_items"] == 8
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("test accuracy at ")]
    assert not sized or any("2/2 test batches" in line for line in lines), lines  # without a length: no last step
    assert lines[-1].split(": ")[1].startswith("done in ")


def test_an_onnx_call_plans_with_its_targets_profile_while_another_call_switches_the_models(exports, tmp_path):
    from tests.runtime.test_adaptive import _switching_clock

    _, folder = exports["wavlm"]
    fast = str(_cost(synthetic_profile(fixed=(0.001, 0, 0), layer=(0.001, 0, 0)), True).save(tmp_path / "f.json"))
    slow = str(_cost(synthetic_profile(fixed=(0.001, 0, 0), layer=(0.010, 0, 0)), True).save(tmp_path / "s.json"))
    model = OnnxAdaptiveModel(folder, closed_loop=False, margin=0.0)
    wave = np.random.default_rng(0).standard_normal(8000).astype(np.float32)
    fast_target, slow_target = {"ms": 20.0, "profile": fast}, {"ms": 20.0, "profile": slow}
    assert (int(model(wave, fast_target).budget[0]), int(model(wave, slow_target).budget[0])) == (4, 1)
    model.clock = _switching_clock(model, wave, slow_target)
    out = model(wave, fast_target)
    assert int(out.budget[0]) == 4 and model.profile.path == slow
    assert out.predicted_ms == pytest.approx(5.0, rel=1e-6)
