"""A model that cannot skip layers (no selector, no early exits: the full-depth baseline) says so once when it
is asked for fewer layers, on both runtimes and in predict, instead of running every layer without a word."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

from ldrop.runtime import AdaptiveModel
from ldrop.tasks import ClassificationTask
from tests.helpers import quiet_trainer, tiny_classification_data

WAVES = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))


def _full_model() -> ClassificationTask:
    torch.manual_seed(0)
    return ClassificationTask(labels=["a", "b"], backbone="tiny:wavlm", selector=None).eval()


def _said(caught) -> list[warnings.WarningMessage]:
    return [w for w in caught if "runs all 4 layers whatever the budget" in str(w.message)]


def test_adaptive_model_warns_once_at_the_callers_line_and_still_runs_every_layer():
    model = AdaptiveModel(_full_model())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(WAVES)  # every layer: nothing to say
        model(WAVES, 4)
        assert not _said(caught)
        line = inspect.currentframe().f_lineno + 1
        out = model(WAVES, 2)
        again = model(WAVES, {"gflops_per_second": 1e-6})
    [warning] = _said(caught)
    assert (warning.filename, warning.lineno) == (__file__, line)
    assert "train it with a selector" in str(warning.message)
    assert out.layers_run.tolist() == [4, 4] and again.layers_run.tolist() == [4, 4]


def test_a_flops_target_on_a_full_model_warns_too():
    model = AdaptiveModel(_full_model())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = model(WAVES, "gflops_per_second=1e-6")  # planned: the minimum budget (and a warning of its own)
    [warning] = _said(caught)
    assert "(gflops_per_second=1e-6)" in str(warning.message) and out.layers_run.tolist() == [4, 4]


def test_a_model_with_a_selector_does_not_warn(tiny_checkpoint):
    model = AdaptiveModel.from_pretrained(tiny_checkpoint)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = model(WAVES, 2)
    assert not _said(caught)
    assert out.layers_run.tolist() == [2, 2]


def test_predict_below_full_depth_on_a_full_model_warns_once(tmp_path):
    model = _full_model()
    model.hparams.predict_budget = 0.5
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictions = quiet_trainer(tmp_path).predict(model, datamodule=tiny_classification_data())
    assert len(_said(caught)) == 1
    records = [r for batch in predictions for r in batch]
    assert len(records) > 1 and all(r["budget"] == 2 and len(r["executed_layers"]) == 4 for r in records)


def test_an_onnx_export_of_a_full_model_warns_once(tmp_path):
    pytest.importorskip("onnxruntime", reason="the ONNX runtime is the optional extra ldrop[onnx]")
    pytest.importorskip("onnxscript", reason="the ONNX exporter needs the optional extra ldrop[onnx]")
    from ldrop.runtime import OnnxAdaptiveModel
    from ldrop.runtime.onnx_export import export_onnx

    folder = export_onnx(_full_model(), tmp_path / "full", progress=lambda line: None)
    model = OnnxAdaptiveModel(folder)
    waves = WAVES.numpy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(waves)
        out = model(waves, 2)
        model(waves, 1)
    assert len(_said(caught)) == 1
    assert out.layers_run.tolist() == [4, 4]
