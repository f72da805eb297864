"""Without the ``onnx`` extra (``pip install 'ldrop[onnx]'``), what needs it says so in one line; and the package
runs as ``python -m ldrop``."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import runpy
import sys

import pytest

from ldrop import __version__
from ldrop.cli import main
from ldrop.runtime import OnnxAdaptiveModel
from ldrop.runtime.onnx_runtime import MissingExtraError


def hide(monkeypatch, *modules: str) -> None:
    """Make ``modules`` look not installed: ``import`` raises and ``importlib.util.find_spec`` finds nothing."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_an_onnx_export_without_the_exporter_is_one_line_naming_the_extra(tiny_checkpoint, tmp_path, monkeypatch,
                                                                          capsys, recwarn):
    hide(monkeypatch, "onnxscript")
    out = tmp_path / "model-onnx"
    assert main(["export", "--format", "onnx", str(tiny_checkpoint), str(out)]) == 2
    captured = capsys.readouterr()
    error = captured.err.strip()
    assert error.startswith("ldrop: error: an ONNX export needs the onnx extra") and len(error.splitlines()) == 1
    assert re.search(r"\(no [^)]*onnxscript", error) and "pip install 'ldrop[onnx]'" in error  # (with all missing too)
    assert "Traceback" not in error
    assert not out.exists()
    assert captured.out == "" and not recwarn.list  # refused before the model is loaded (and its selector fitted)


def test_the_onnx_runtime_without_onnxruntime_names_the_extra(tmp_path, monkeypatch):
    hide(monkeypatch, "onnxruntime")
    with pytest.raises(ModuleNotFoundError, match=r"running an ONNX export \(OnnxAdaptiveModel\) needs the onnx "
                                                  r"extra.*no onnxruntime.*pip install 'ldrop\[onnx\]'") as raised:
        OnnxAdaptiveModel(tmp_path)
    assert isinstance(raised.value, MissingExtraError) and raised.value.name == "onnxruntime"
    monkeypatch.delitem(sys.modules, "onnxruntime")
    (tmp_path / "onnxruntime").mkdir()  # only a folder of that name where Python looks (a namespace package)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a, real=importlib.util.find_spec: real(name, *a)
                        if name != "onnxruntime" else importlib.machinery.PathFinder.find_spec(name, [str(tmp_path)]))
    with pytest.raises(MissingExtraError, match="no onnxruntime"):
        OnnxAdaptiveModel(tmp_path)


def test_a_benchmark_that_needs_the_extra_is_one_line_and_another_missing_module_is_not_hidden(tmp_path, monkeypatch,
                                                                                               capsys):
    from ldrop.bench.__main__ import main as bench

    hide(monkeypatch, "onnxscript")
    argv = ["speedup", "--runtime", "onnx", "--size", "tiny", "--batch-size", "1", "--seconds", "0.5", "--budgets",
            "1", "--repeats", "1", "--warmup", "0", "--threads", "1", "--json", str(tmp_path / "speed.json")]
    assert bench(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("python -m ldrop.bench speedup: error: an ONNX export needs the onnx extra"), error
    assert len(error.splitlines()) == 1
    monkeypatch.setattr("ldrop.bench.speedup.main", lambda argv: __import__("no_such_module_of_a_bug"))
    with pytest.raises(ModuleNotFoundError, match="no_such_module_of_a_bug"):  # a bug's traceback is kept
        bench(["speedup"])


def test_python_dash_m_ldrop_is_the_ldrop_command(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["ldrop", "--version"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("ldrop", run_name="__main__")
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"ldrop {__version__}"
