"""A device profile records the precision it was measured at (the weights' dtype and the autocast it ran under)
and a model running at another precision, or on the other runtime, says so instead of planning with another
precision's times."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from ldrop.budgets import DeviceProfile, profile_model
from ldrop.cli import main
from ldrop.runtime import AdaptiveModel, TargetBudgets
from ldrop.selectors import InputConditionedSelector
from ldrop.tasks import ClassificationTask
from tests.helpers import quiet_trainer, tiny_classification_data
from tests.runtime.conftest import synthetic_profile

GRID = {"seconds": (0.5, 1.0), "batch_sizes": (1, 2), "repeats": 1, "warmup": 0, "validation_batches": 0}


def _task() -> ClassificationTask:
    torch.manual_seed(0)
    return ClassificationTask(labels=["a", "b", "c", "d"], backbone="tiny:wavlm", selector=InputConditionedSelector).eval()


def _profile_at(path, precision: str):
    profile = synthetic_profile()
    profile.device = {"dtype": "float32", "precision": precision}
    return profile.save(path)


def _precision_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "precision" in str(w.message)]


def test_a_profile_records_the_precision_it_ran_at():
    model = _task()
    assert profile_model(model, **GRID).device["precision"] == "32-true"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = profile_model(model, **GRID)
    assert (mixed.device["dtype"], mixed.device["precision"]) == ("float32", "bf16-mixed")
    assert profile_model(_task().to(torch.bfloat16), **GRID).device["precision"] == "bf16-true"


def test_adaptive_model_warns_of_a_profile_measured_at_another_precision(tmp_path):
    fp32, mixed = _profile_at(tmp_path / "fp32.json", "32-true"), _profile_at(tmp_path / "mixed.json", "bf16-mixed")
    with pytest.warns(UserWarning, match=r"fp32.json' was measured at 32-true precision but the model runs at "
                                         r"bf16-mixed.*'ldrop profile --autocast bf16'"):
        AdaptiveModel(_task(), profile=fp32, autocast=torch.bfloat16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        AdaptiveModel(_task(), profile=mixed, autocast=torch.bfloat16)
        model = AdaptiveModel(_task(), profile=fp32)
        model(torch.zeros(8000), {"rtf": 10.0})
    assert not _precision_warnings(caught)
    with pytest.warns(UserWarning, match=r"mixed.json' was measured at bf16-mixed precision but the model runs at "
                                         r"32-true"):
        model(torch.zeros(8000), {"rtf": 10.0, "profile": str(mixed)})  # a target's own profile is checked too


def test_adaptive_model_warns_of_a_profile_measured_on_onnx_runtime(tmp_path):
    profile = synthetic_profile()
    profile.device = {"runtime": "onnxruntime"}
    with pytest.warns(UserWarning, match="measured on ONNX Runtime"):
        AdaptiveModel(_task(), profile=profile.save(tmp_path / "onnx.json"))


def test_a_bf16_mixed_predict_warns_of_an_fp32_target_profile_and_measures_its_quick_one_mixed(tmp_path):
    fp32 = _profile_at(tmp_path / "fp32.json", "32-true")
    model = _task()
    model.hparams.predict_budget = {"rtf": 10.0, "profile": str(fp32)}
    trainer = quiet_trainer(tmp_path, precision="bf16-mixed", callbacks=[TargetBudgets()])
    with pytest.warns(UserWarning, match="measured at 32-true precision but the model runs at bf16-mixed"):
        trainer.predict(model, datamodule=tiny_classification_data())
    captured = {}
    model.hparams.predict_budget = {"rtf": 10.0}  # no profile: a quick one, measured as the run runs

    def keep_quick(*args, **kwargs):
        captured["profile"] = profile = real(*args, **{**kwargs, **GRID})
        return profile

    import ldrop.budgets.controller as controller

    real, controller.profile_model = controller.profile_model, keep_quick
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.predict(model, datamodule=tiny_classification_data())
    finally:
        controller.profile_model = real
    assert captured["profile"].device["precision"] == "bf16-mixed"
    assert not _precision_warnings(caught)


def test_ldrop_profile_measures_under_autocast_and_refuses_conflicting_options(tmp_path, capsys):
    grid = ["--seconds", "0.5,1", "--batch-sizes", "1,2", "--repeats", "1", "--warmup", "0", "--validate", "0"]
    out = tmp_path / "p.json"
    assert main(["profile", "--backbone", "tiny:wavlm", *grid, "--autocast", "bf16", "--out", str(out)]) == 0
    device = json.loads(out.read_text())["device"]
    assert (device["dtype"], device["precision"]) == ("float32", "bf16-mixed")
    capsys.readouterr()
    assert main(["profile", "--backbone", "tiny:wavlm", *grid, "--autocast", "bf16", "--dtype", "bf16",
                 "--out", str(out)]) == 2
    assert "leave --dtype at fp32, not bf16" in capsys.readouterr().err
    assert main(["profile", str(tmp_path), "--runtime", "onnx", "--autocast", "bf16", "--out", str(out)]) == 2
    assert "--dtype and --autocast apply to --runtime torch" in capsys.readouterr().err
    # ONNX Runtime is timed on the CPU: a --device would be a profile of another device than it says
    assert main(["profile", str(tmp_path), "--runtime", "onnx", "--device", "cuda", "--out", str(out)]) == 2
    assert "--device cuda applies to --runtime torch" in capsys.readouterr().err


@pytest.mark.parametrize(("dtype", "precision"), [("bfloat16", "bf16-true"), ("float16", "16-true"),
                                                  ("float32", "32-true"), ("float64", "64-true")])
def test_an_older_profile_recording_only_its_dtype_is_judged_as_that_dtypes_precision(tmp_path, dtype, precision):
    # written before device.precision: the weights' dtype is all it says, and ldrop profile then ran that dtype
    older, recorded = synthetic_profile(), synthetic_profile()
    older.device, recorded.device = {"dtype": dtype}, {"dtype": dtype, "precision": precision}
    older, recorded = older.save(tmp_path / "p.json"), recorded.save(tmp_path / "q" / "p.json")
    said = {}
    for path in (older, recorded):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            AdaptiveModel(_task(), profile=path, autocast=torch.bfloat16)  # at bf16-mixed: none of the three
        said[path] = _precision_warnings(caught)
    assert len(said[older]) == 1 and f"measured at {precision} precision but the model runs at bf16-mixed" in said[older][0]
    assert said[older] == [line.replace(str(recorded), str(older)) for line in said[recorded]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        AdaptiveModel(_task().to(getattr(torch, dtype)), profile=older)  # at its own precision: no warning
    assert not _precision_warnings(caught)


def test_a_target_profile_is_warned_of_with_no_controller_built_only_to_word_it(tmp_path, monkeypatch):
    import ldrop.budgets.controller as controller
    from ldrop.budgets import DeviceProfile, Target, TargetResolver

    fp32, onnx = _profile_at(tmp_path / "fp32.json", "32-true"), synthetic_profile()
    onnx.device = {"runtime": "onnxruntime"}
    built, init = [], controller.BudgetController.__init__
    monkeypatch.setattr(controller.BudgetController, "__init__",
                        lambda self, *args, **kwargs: built.append(kwargs) or init(self, *args, **kwargs))
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.warns(
            UserWarning, match="measured at 32-true precision but the model runs at bf16-mixed"):
        TargetResolver().controller(_task(), Target.parse({"rtf": 10.0, "profile": str(fp32)}))
    assert len(built) == 1 and built[0].get("closed_loop") is False  # the resolver's own controller only
    from ldrop.budgets import torch_profile_warning

    for profile in (DeviceProfile.load(fp32), onnx):  # the function and the controller's method say the same
        for precision in ("32-true", "bf16-mixed", None):
            assert torch_profile_warning(profile, precision) == controller.BudgetController(
                4, precision=precision).profile_warning(profile)
    assert torch_profile_warning(onnx, None) and torch_profile_warning(DeviceProfile.load(fp32), "32-true") is None


def test_a_64_true_model_is_told_a_profile_command_that_measures_at_its_precision(tmp_path):
    # a 64-true run warns about a 32-true profile: the command it names must measure a 64-true one
    grid = ["--seconds", "0.5,1", "--batch-sizes", "1,2", "--repeats", "1", "--warmup", "0", "--validate", "0"]
    fp32 = synthetic_profile()
    fp32.device = {"dtype": "float32", "precision": "32-true"}
    warning = fp32.precision_warning("64-true")
    assert warning is not None and "'ldrop profile --dtype fp64'" in warning
    out = tmp_path / "p64.json"
    assert main(["profile", "--backbone", "tiny:wavlm", *grid, "--dtype", "fp64", "--out", str(out)]) == 0
    device = json.loads(out.read_text())["device"]
    assert (device["dtype"], device["precision"]) == ("float64", "64-true")
    assert DeviceProfile.load(out).precision_warning("64-true") is None
