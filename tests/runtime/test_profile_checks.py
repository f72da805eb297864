"""Device profiles against the model they are used with, on both runtimes: a target's own profile, a profile of
another model, a stale or bad one in an export folder, an ONNX export given to the PyTorch side."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ldrop.budgets import Target, TargetResolver, UnmeetableTargetWarning
from ldrop.budgets.machine import cpu_name
from ldrop.budgets.profile import model_summary
from ldrop.cli import main
from ldrop.runtime import AdaptiveModel, load_model
from ldrop.selectors import InputConditionedSelector
from ldrop.tasks import ClassificationTask
from tests.runtime.conftest import synthetic_profile

QUICKSTART = str(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml")
TINY_GRID = ["--seconds", "0.5,1", "--batch-sizes", "1,2", "--repeats", "1", "--warmup", "0", "--validate", "2"]


def write_profile(path: Path, slow: bool = False, runtime: str | None = "onnxruntime", num_layers: int = 4,
                  machine: dict | None = None, **model) -> Path:
    """A 4-layer profile of the tiny CNN: ``slow`` (10 s a layer) or fast (1 us); the ``machine`` (device
    fields) and ``model`` facts as recorded."""
    profile = synthetic_profile(num_layers, fixed=(1e-6, 0.0, 0.0), layer=(10.0 if slow else 1e-6, 0.0, 0.0))
    profile.device, profile.model = {**({"runtime": runtime} if runtime else {}), **(machine or {})}, model
    return profile.save(path)


@pytest.fixture(scope="module")
def task() -> ClassificationTask:
    torch.manual_seed(0)
    return ClassificationTask(labels=["a", "b"], backbone="tiny:wavlm", selector=InputConditionedSelector).eval()


@pytest.fixture(scope="module")
def onnx_folder(task, tmp_path_factory) -> Path:
    """The tiny task exported to ONNX, without a profile.json."""
    pytest.importorskip("onnxruntime", reason="the ONNX runtime is the optional extra ldrop[onnx]")
    pytest.importorskip("onnxscript", reason="the ONNX exporter needs the optional extra ldrop[onnx]")
    from ldrop.runtime.onnx_export import export_onnx

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not been calibrated")
        return export_onnx(task, tmp_path_factory.mktemp("onnx") / "model", check=False, progress=lambda line: None)


def with_profile(folder: Path, destination: Path, text: str) -> Path:
    """A copy of the export ``folder`` whose profile.json holds ``text``."""
    copy = Path(shutil.copytree(folder, destination))
    (copy / "profile.json").write_text(text)
    return copy


def test_a_targets_profile_is_the_one_its_call_uses_on_both_runtimes(task, onnx_folder, tmp_path):
    from ldrop.runtime import OnnxAdaptiveModel

    slow, fast = write_profile(tmp_path / "slow.json", slow=True), write_profile(tmp_path / "fast.json")
    folder = with_profile(onnx_folder, tmp_path / "with-slow", slow.read_text())  # the folder's own: slow
    models = {"torch": (AdaptiveModel(task, profile=slow, closed_loop=False), torch.zeros(16000)),
              "onnx": (OnnxAdaptiveModel(folder, closed_loop=False), np.zeros(16000, dtype=np.float32))}
    for name, (model, wave) in models.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnmeetableTargetWarning)  # the slow profile affords no layer
            assert int(model(wave, {"rtf": 1.0}).budget[0]) == 1, name  # the model's own profile
            assert int(model(wave, {"rtf": 1.0, "profile": str(fast)}).budget[0]) == 4, name  # the target's
            assert model.profile.path == str(fast), name
            assert int(model(wave, {"rtf": 1.0, "profile": str(slow)}).budget[0]) == 1, name  # another one again


def test_a_targets_profile_is_checked_and_warned_about_as_the_constructors(onnx_folder, tmp_path):
    from ldrop.runtime import OnnxAdaptiveModel

    model, wave = OnnxAdaptiveModel(onnx_folder, closed_loop=False), np.zeros(16000, dtype=np.float32)
    torch_measured = write_profile(tmp_path / "torch.json", runtime=None)
    with pytest.warns(UserWarning, match="not measured on ONNX Runtime"):
        model(wave, {"rtf": 1.0, "profile": str(torch_measured)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same file again: kept, with its correction, and not warned about again
        model(wave, {"rtf": 1.0, "profile": str(torch_measured)})
    other = write_profile(tmp_path / "big.json", hidden_size=256)
    with pytest.raises(ValueError, match=r"big.json' is of another model \(hidden_size 256, not 32\)"):
        model(wave, {"rtf": 1.0, "profile": str(other)})
    assert model.profile.path == str(torch_measured)  # a refused profile leaves the model's as it was


def test_a_profile_of_another_model_with_as_many_layers_is_refused_naming_the_file(task, onnx_folder, tmp_path):
    from ldrop.runtime import OnnxAdaptiveModel

    big = write_profile(tmp_path / "big.json", model_type="wavlm", num_hidden_layers=4, hidden_size=256,
                        num_attention_heads=4, intermediate_size=1024)
    makers = {"AdaptiveModel": lambda: AdaptiveModel(task, profile=big),
              "OnnxAdaptiveModel": lambda: OnnxAdaptiveModel(onnx_folder, profile=big),
              "ldrop predict": lambda: TargetResolver().controller(task, Target.parse({"rtf": 1, "profile": str(big)}))}
    for make in makers.values():
        with pytest.raises(ValueError, match=re.escape(f"'{big}' is of another model (hidden_size 256, not 32; ")):
            make()
    for geometry in ({"conv_kernel": [10, 3, 3]}, {"conv_stride": [5, 2, 2, 2, 2, 2, 3]}):  # another CNN
        profile = synthetic_profile()
        for key, value in geometry.items():
            setattr(profile, key, value)
        profile.conv_stride = profile.conv_stride[:len(profile.conv_kernel)]
        with pytest.raises(ValueError, match="is of another model"):
            AdaptiveModel(task, profile=profile)
    # An older profile without these facts passes, and so does a profile of this model measured on either runtime.
    for model in ({}, model_summary(task), {"family": "wavlm", "num_layers": 4, "hidden_size": 32,
                                            "num_attention_heads": 2, "stable_layer_norm": False}):
        path = write_profile(tmp_path / "ok.json", **model)
        assert AdaptiveModel(task, profile=path).profile.path == str(path)
        assert OnnxAdaptiveModel(onnx_folder, profile=path).profile.path == str(path)


@pytest.mark.parametrize(("name", "text", "says"), [
    ("stale", None, "is of another model (num_layers 6, not 4)"),
    ("bad", "{not json", "is not valid JSON"),
])
def test_ldrop_profile_replaces_a_stale_or_bad_folder_profile_that_the_model_names(onnx_folder, tmp_path, name, text,
                                                                                    says):
    from ldrop.runtime import OnnxAdaptiveModel

    text = text or write_profile(tmp_path / "six.json", num_layers=6).read_text()
    folder = with_profile(onnx_folder, tmp_path / name, text)
    with pytest.raises(ValueError, match=re.escape(f"device profile '{folder / 'profile.json'}' {says}")) as raised:
        OnnxAdaptiveModel(folder)
    if name == "bad":  # also the command that writes an ONNX folder's profile, not only the PyTorch one
        assert "('ldrop profile --runtime onnx' for an ONNX export)" in str(raised.value)
    assert main(["profile", str(folder), "--runtime", "onnx", *TINY_GRID, "--out", str(folder / "profile.json")]) == 0
    assert OnnxAdaptiveModel(folder).profile.device["runtime"] == "onnxruntime"


def test_an_onnx_export_given_to_the_pytorch_side_says_what_to_use(onnx_folder, tmp_path, capsys):
    for load in (load_model, AdaptiveModel.from_pretrained):
        with pytest.raises(FileNotFoundError, match=r"is an ONNX export \(manifest.json\): run it with OnnxAdaptiveModel"):
            load(onnx_folder)
    (tmp_path / "empty").mkdir()
    out = str(tmp_path / "p.json")
    for args, says in ((["profile", str(onnx_folder), "--out", out], "ONNX export (manifest.json): time it with --runtime onnx"),
                       (["export", str(onnx_folder), str(tmp_path / "x"), "--format", "onnx"], "export the .ckpt"),
                       (["export", str(onnx_folder), str(tmp_path / "y")], "export the .ckpt"),
                       (["profile", str(tmp_path / "empty"), "--runtime", "onnx", "--out", out], "has no manifest.json")):
        assert main(args) == 2, args
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and says in lines[0], (args, lines)


def test_a_predict_target_with_another_models_profile_fails_before_any_model_runs(tmp_path, capsys):
    six = write_profile(tmp_path / "six.json", num_layers=6)
    with pytest.raises(ValueError, match=re.escape(f"predict_budget: device profile '{six}' is of another model "
                                                   "(num_layers 6, not 4)")):
        ClassificationTask(labels=["a", "b"], backbone="tiny:wavlm", predict_budget={"rtf": 0.1, "profile": str(six)})
    # ldrop predict says so before it loads the checkpoint (here there is none)
    assert main(["predict", "--config", QUICKSTART, "--ckpt_path", str(tmp_path / "absent.ckpt"),
                 "--model.init_args.predict_budget", f"{{rtf: 0.1, profile: {six}}}",
                 "--predictions.output", str(tmp_path / "p.jsonl")]) == 2
    assert "is of another model (num_layers 6, not 4)" in capsys.readouterr().err


# ------------------------------------------------------------------------------- a profile of another machine
def _machine_warnings(make) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make()
    return [str(w.message) for w in caught if "its timings may not hold" in str(w.message)]


@pytest.mark.parametrize(("runtime", "machine", "there", "here"), [
    (None, {"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "cpu": "AMD EPYC 9654"},
     "cuda (NVIDIA H100 80GB HBM3)", "cpu ({cpu})"),
    (None, {"device": "cpu", "device_name": "ARM Cortex-A76", "cpu": "ARM Cortex-A76"}, "cpu (ARM Cortex-A76)",
     "cpu ({cpu})"),
    ("onnxruntime", {"cpu": "ARM Cortex-A76", "threads": 4}, "ARM Cortex-A76", "{cpu}"),
], ids=["torch-gpu", "torch-arm", "onnx-arm"])
def test_a_profile_measured_on_other_hardware_is_warned_of_once(task, onnx_folder, tmp_path, runtime, machine, there,
                                                                 here):
    from ldrop.runtime import OnnxAdaptiveModel

    assert cpu_name() != "ARM Cortex-A76"
    path = write_profile(tmp_path / "there.json", runtime=runtime, machine=machine)
    expected = (f"device profile '{path}' was measured on {there}, this is {here.format(cpu=cpu_name())}: its timings "
                f"may not hold; measure one here with 'ldrop profile{' --runtime onnx' if runtime else ''}'")
    if runtime:
        model, wave = OnnxAdaptiveModel(onnx_folder, closed_loop=False), np.zeros(16000, dtype=np.float32)
        assert _machine_warnings(lambda: OnnxAdaptiveModel(onnx_folder, profile=path)) == [expected]
    else:
        model, wave = AdaptiveModel(task, closed_loop=False), torch.zeros(16000)
        assert _machine_warnings(lambda: AdaptiveModel(task, profile=path)) == [expected]
        resolver = TargetResolver()
        assert _machine_warnings(lambda: resolver.controller(task, Target.parse({"rtf": 1, "profile": str(path)})))
    # a target's own profile: once, not again on the next call with the same file
    assert _machine_warnings(lambda: [model(wave, {"rtf": 1.0, "profile": str(path)}) for _ in range(2)]) == [expected]


def test_a_profile_measured_here_or_naming_no_hardware_gives_no_machine_warning(task, onnx_folder, tmp_path):
    from ldrop.budgets import profile_model
    from ldrop.runtime import OnnxAdaptiveModel
    from ldrop.runtime.onnx_profile import profile_onnx

    grid = {"seconds": (0.5, 1.0), "batch_sizes": (1, 2), "repeats": 1, "warmup": 0, "validation_batches": 0}
    here = profile_model(task, **grid).save(tmp_path / "here.json")
    onnx_here = profile_onnx(onnx_folder, **grid).save(tmp_path / "onnx-here.json")
    older = write_profile(tmp_path / "older.json", runtime=None)  # written before ldrop recorded the machine
    onnx_older = write_profile(tmp_path / "onnx-older.json")
    makers = [lambda: AdaptiveModel(task, profile=here), lambda: AdaptiveModel(task, profile=older),
              lambda: OnnxAdaptiveModel(onnx_folder, profile=onnx_here),
              lambda: OnnxAdaptiveModel(onnx_folder, profile=onnx_older)]
    assert [_machine_warnings(make) for make in makers] == [[]] * 4
