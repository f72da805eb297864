"""ONNX export and runtime of early-exit models: parity with PyTorch under both exit policies (layers run
included), the export command, time targets, old folders and a depth policy that is still refused."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the ONNX runtime is the optional extra ldrop[onnx]")
pytest.importorskip("onnxscript", reason="the ONNX exporter needs the optional extra ldrop[onnx]")

from ldrop.runtime import OnnxAdaptiveModel, load_model
from ldrop.runtime.onnx_export import OnnxExportError, export_onnx
from ldrop.runtime.onnx_runtime import read_manifest
from ldrop.tasks import ClassificationTask, CTCTask, EarlyExitConfig, SelectedLayers
from tests.helpers import padded_batch, quiet_trainer, tiny_classification_data
from tests.runtime.test_onnx import LENGTHS, TOLERANCE, open_loop_pair, torch_forward

#: Six inputs of different lengths: per-input exits and sub-batches of different lengths.
MANY = [16000, 6000, 12800, 8000, 9600, 14000]


def calibrate(task, seed: int):
    """Thresholds from every exit's confidences on random inputs (what ``EarlyExit.calibrate`` does on
    validation data), on other inputs than the tests'."""
    waves, lengths = padded_batch([16000, 7000, 15000, 12000, 6000, 11000, 9000, 13000], seed=seed)
    with torch.no_grad():
        encoded = task.encode(waves, lengths)
        depth = task.depth
        confidences = torch.stack([depth.confidence(x, encoded.frame_mask) for x in depth.exit_logits(task, encoded)], 1)
    depth.set_thresholds(confidences)
    return task


@pytest.fixture(scope="module")
def ee_checkpoint(tmp_path_factory) -> Path:
    """A tiny confidence early-exit classifier trained for two steps, calibrated on validation data, saved."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("ee-ckpt")
    model = ClassificationTask(labels=["a", "b", "c", "d"], backbone="tiny:wavlm",
                               early_exit=EarlyExitConfig(policy="confidence"))
    data = tiny_classification_data()
    trainer = quiet_trainer(root, max_steps=2, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    data.setup("validate")
    model.calibrate_on_dataloader(data.val_dataloader())
    trainer.save_checkpoint(root / "ee.ckpt")
    return root / "ee.ckpt"


@pytest.fixture(scope="module")
def ee_exports(ee_checkpoint, tmp_path_factory) -> dict[str, tuple[object, Path]]:
    """``name -> (the PyTorch task, its export)``: WavLM with policy ``budget`` and exits at layers 2 and 4;
    HuBERT CTC with policy ``confidence`` on the entropy (every layer an exit); the trained checkpoint
    (confidence, max_prob), exported by ``ldrop export``."""
    from ldrop.cli import main

    root = tmp_path_factory.mktemp("ee-onnx")
    torch.manual_seed(5)
    budget = ClassificationTask(labels=["a", "b", "c"], backbone="tiny:wavlm",
                                early_exit=EarlyExitConfig(layers=[2])).eval()
    torch.manual_seed(6)
    entropy = calibrate(CTCTask(labels="english", backbone="tiny:hubert",
                                early_exit=EarlyExitConfig(policy="confidence", confidence="entropy")).eval(), seed=7)
    assert main(["export", str(ee_checkpoint), str(root / "checkpoint"), "--format", "onnx"]) == 0
    return {"budget": (budget, export_onnx(budget, root / "budget")),
            "entropy": (entropy, export_onnx(entropy, root / "entropy")),
            "checkpoint": (load_model(ee_checkpoint).eval(), root / "checkpoint")}


@pytest.mark.parametrize("name", ["budget", "entropy", "checkpoint"])
def test_early_exit_logits_and_layers_run_match_pytorch(ee_exports, name):
    task, folder = ee_exports[name]
    model, n = OnnxAdaptiveModel(folder), task.num_layers
    per_input_depths = set()
    for lengths, seed in ((LENGTHS, 21), (MANY, 22)):
        waves, lengths = padded_batch(lengths, seed=seed)
        batch = len(lengths)
        mixed = [n - torch.arange(batch) % 2, 1 + torch.arange(batch) % n]  # one budget per input
        for budget in (torch.full((batch,), 1), torch.full((batch,), n // 2), torch.full((batch,), n), *mixed):
            expected, expected_keep = torch_forward(task, waves, lengths, budget)
            logits, keep, _ = model.forward(waves.numpy(), lengths.numpy(), budget.numpy())
            assert np.array_equal(keep, expected_keep), f"budget {budget.tolist()}"
            assert np.abs(logits - expected).max() <= TOLERANCE, f"budget {budget.tolist()}"
            depths = keep.sum(1)
            assert all(row[:k].all() for row, k in zip(keep, depths, strict=True))  # a prefix of the stack
            if name == "budget":  # budgets 1, 2 and 3 exit at layer 2, budget 4 at 4: each input its own
                assert depths.tolist() == [task.depth.exit_layer_for(k) for k in budget.tolist()]
            per_input_depths.add(tuple(sorted(set(depths.tolist()))))
    if name == "budget":
        assert per_input_depths == {(2,), (4,), (2, 4)}
    else:  # the confidence policy stops inputs at different layers within one batch
        assert any(len(depths) >= 2 for depths in per_input_depths), per_input_depths


def test_the_export_command_lists_every_exit_head_and_the_calibrated_thresholds(ee_exports):
    task, folder = ee_exports["checkpoint"]
    manifest = read_manifest(folder)
    assert manifest["graphs"]["exit_heads"] == {"1": "heads/exit_01.onnx", "2": "heads/exit_02.onnx",
                                                "3": "heads/exit_03.onnx", "4": "head.onnx"}
    depth = manifest["depth"]
    assert depth["kind"] == "early_exit" and depth["exit_layers"] == [1, 2, 3, 4]
    assert depth["policy"] == "confidence" and depth["confidence"] == "max_prob"
    assert depth["thresholds"] == task.depth.thresholds.tolist() and None not in depth["thresholds"]
    assert read_manifest(ee_exports["budget"][1])["depth"]["thresholds"] == [None] * 4  # never calibrated


@pytest.mark.filterwarnings("ignore:target ms=8 cannot be met")
def test_time_targets_run_early_exit_per_input_as_the_pytorch_runtime_does(ee_exports):
    task, folder = ee_exports["checkpoint"]
    onnx_model, torch_model = open_loop_pair(task, folder)
    waves, lengths = padded_batch([4000, 16000, 30000], seed=14)
    for target in ({"rtf": 0.5}, {"ms": 8.0}, [1, 2, 4]):
        expected = torch_model(waves, torch.tensor(target) if isinstance(target, list) else target, lengths=lengths)
        got = onnx_model(waves.numpy(), np.array(target) if isinstance(target, list) else target, lengths=lengths.numpy())
        assert got.budget.tolist() == expected.budget.tolist(), target
        assert np.array_equal(got.keep_mask, expected.keep_mask.numpy()), target
        assert got.layers_run.tolist() == expected.layers_run.tolist() and got.outputs == expected.outputs
        assert np.abs(got.logits - expected.logits.numpy()).max() <= TOLERANCE, target
    assert got.budget.tolist() == [1, 2, 4] and got.layers_run.tolist()[2] == 4  # the full budget: every layer
    # without a profile one is measured on this runtime at the first time target
    out = OnnxAdaptiveModel(folder)(waves.numpy()[0], {"ms": 50.0})
    assert out.outputs[0] in {"a", "b", "c", "d"} and 1 <= int(out.layers_run[0]) <= 4


def test_flops_targets_plan_the_passed_exit_heads_as_the_pytorch_runtime_does(ee_exports):
    from ldrop.engine.flops import passed_head_flops

    task, folder = ee_exports["entropy"]  # confidence, an exit at every layer, calibrated
    onnx_model, torch_model = open_loop_pair(task, folder)
    law = onnx_model.controller.flops
    lengths = np.array([4000, 16000, 30000, 1_000_000])  # the last beyond the law's table of frames
    expected = passed_head_flops(task, torch.from_numpy(law.frames(lengths))).numpy()
    assert expected[:, 1:-1].min() > 0 and not expected[:, -1].any()  # heads passed below full depth only
    assert np.allclose(law.per_budget(lengths), expected, rtol=1e-6, atol=1e-3)
    assert len(json.dumps(read_manifest(folder)["flops"]["budget"])) < 100 * task.num_layers  # 3 numbers a budget
    waves, lengths = padded_batch([4000, 16000, 30000], seed=14)
    fixed, layer = (x.numpy() for x in torch_model.controller.flops_costs(lengths.numpy()))
    seconds = lengths.numpy() / 16000
    below_layers_only = 0
    for k in range(1, task.num_layers + 1):  # the rate of k layers without heads: their heads do not fit
        target = {"gflops_per_second": float(((fixed + k * layer) / seconds).max()) * 1.0001}
        expected = torch_model.controller.decide(lengths, target, warn=False)
        got = onnx_model.controller.decide(lengths.numpy(), target, warn=False)
        assert got.budget.tolist() == expected.budget.tolist(), target
        assert np.allclose(got.predicted_seconds, expected.predicted_seconds.numpy(), rtol=1e-9), target
        below_layers_only += int((got.budget < np.floor((target["gflops_per_second"] * seconds - fixed) / layer)
                                  .clip(1, task.num_layers)).sum())
    assert below_layers_only > 0  # the heads changed some decision


def test_a_law_without_the_budget_entry_plans_layers_only():
    from ldrop.runtime.onnx_budgets import FlopsLaw

    law = FlopsLaw(cnn=[[10, 5, 1.0]], frames_table=[0.0, 1.0], frames_slope=1.0, layer=[1.0, 0.0])
    assert law.per_budget(np.array([16000])) is None  # exports from before it


def test_exit_heads_whose_flops_are_not_quadratic_in_frames_warn_at_export():
    from ldrop.runtime.onnx_export import budget_law

    class CubicHeads(ClassificationTask):  # a downstream head reading frame-by-frame similarities twice
        def compute_logits(self, head, hidden, frame_mask):
            similar = hidden @ hidden.transpose(1, 2)
            return super().compute_logits(head, hidden + 0 * (similar @ similar).mean(-1, keepdim=True), frame_mask)

    torch.manual_seed(8)
    for cls, warns in ((ClassificationTask, False), (CubicHeads, True)):
        task = calibrate(cls(labels=["a", "b"], backbone="tiny:wavlm",
                             early_exit=EarlyExitConfig(policy="confidence")).eval(), seed=9)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            law = budget_law(task)
        said = [str(w.message) for w in caught if "not c + a T + b T" in str(w.message)]
        assert law is not None and bool(said) == warns, said


def test_a_folder_without_a_depth_entry_loads_as_a_one_head_model(ee_exports, tmp_path):
    task, folder = ee_exports["budget"]
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["depth"], manifest["graphs"]["exit_heads"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    waves, lengths = padded_batch(LENGTHS, seed=23)
    logits, keep, _ = OnnxAdaptiveModel(old).forward(waves.numpy(), lengths.numpy(), np.array([1, 1, 1]))
    assert keep.all()  # no selector, one head: every layer
    assert np.abs(logits - torch_forward(task, waves, lengths, task.num_layers)[0]).max() <= TOLERANCE


def test_an_uncalibrated_confidence_budget_and_a_depth_policy_the_exporter_does_not_know_are_named(ee_exports, tmp_path):
    task, folder = ee_exports["entropy"]
    copy = tmp_path / "uncalibrated"
    shutil.copytree(folder, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["depth"]["thresholds"][1] = None
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RuntimeError, match="no confidence threshold calibrated for budget 2"):
        OnnxAdaptiveModel(copy)(np.zeros(16000, dtype=np.float32), 2)

    class Downstream(SelectedLayers):  # a downstream project's depth policy, not reproduced by the runtime
        onnx_exportable = False

        def __str__(self) -> str:
            return "a downstream depth policy"

    task = ClassificationTask(labels=["a", "b"], backbone="tiny:wavlm")
    task.depth = Downstream(task.selector, task.head)
    with pytest.raises(OnnxExportError, match="a downstream depth policy is not exported"):
        export_onnx(task, tmp_path / "downstream")
    assert not (tmp_path / "downstream").exists()


def test_inputs_at_full_budget_in_a_confidence_batch_read_only_the_last_head(ee_exports):
    """As in PyTorch: the exit heads before the last run only for the inputs whose budget has a threshold."""
    task, folder = ee_exports["entropy"]
    model, n = OnnxAdaptiveModel(folder), task.num_layers
    rows_read = []
    head = model.head
    model.head = lambda hidden, frame_mask, exit_layer=None: (rows_read.append((exit_layer, len(hidden))),
                                                              head(hidden, frame_mask, exit_layer))[1]
    waves, lengths = padded_batch(MANY, seed=23)
    budget = np.array([n, 1, n, 1, n, 1])
    logits, keep, _ = model.forward(waves.numpy(), lengths.numpy(), budget)
    expected, _ = torch_forward(task, waves, lengths, torch.from_numpy(budget))
    assert np.abs(logits - expected).max() <= TOLERANCE and keep[budget == n].all()
    assert rows_read and all(rows <= 3 for exit_layer, rows in rows_read if exit_layer < n)
    assert rows_read[-1][0] == n
