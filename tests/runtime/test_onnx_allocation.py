"""ONNX export and runtime of depth allocation: each input's depth and layers, and the logits, as PyTorch gives
them in batch and stream mode (a filterbank selector included); targets and the FLOPs law count the depth head;
an uncalibrated stream budget is named."""

from __future__ import annotations

import functools
import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the ONNX runtime is the optional extra ldrop[onnx]")
pytest.importorskip("onnxscript", reason="the ONNX exporter needs the optional extra ldrop[onnx]")

from ldrop.backbones.geometry import frame_lengths
from ldrop.budgets import BudgetController, Target
from ldrop.budgets.allocation import calibrate_gain_thresholds
from ldrop.runtime import OnnxAdaptiveModel
from ldrop.runtime.onnx_export import export_onnx
from ldrop.selectors import InputConditionedSelector, LearnedScheduleSelector
from ldrop.tasks import AllocationConfig, ClassificationTask, CTCTask
from tests.helpers import padded_batch
from tests.runtime.test_onnx import TOLERANCE, open_loop_pair, torch_forward

#: Six inputs of different lengths, so that the allocation gives them different depths.
MANY = [16000, 6000, 12800, 8000, 9600, 14000]


def _spread(task):
    """Larger depth-head outputs than at initialisation, so that inputs differ in their predicted gains."""
    with torch.no_grad():
        task.depth_head.out[-1].weight.mul_(100.0)
    return task.eval()


def _stream_task():
    """HuBERT CTC, an input-blind learned schedule picks the layers, stream thresholds calibrated on other
    inputs than the tests' (what ``calibrate`` does on validation data)."""
    torch.manual_seed(3)
    task = _spread(CTCTask(labels="english", backbone="tiny:hubert", selector=LearnedScheduleSelector,
                           allocation=AllocationConfig(mode="stream", hidden_dim=8)))
    waves, lengths = padded_batch([16000, 7000, 15000, 12000, 6000, 11000, 9000, 13000], seed=9)
    with torch.no_grad():
        encoded = task.encode(waves, lengths)
        gains = task.depth_head.gains(task.depth_head(encoded.features, encoded.frame_mask))
    for k, threshold in calibrate_gain_thresholds(gains, range(1, task.num_layers + 1), task.depth.min_layers).items():
        task.depth_head.thresholds[k - 1] = threshold
    return task


@pytest.fixture(scope="module")
def allocated(tmp_path_factory) -> dict[str, tuple[object, object]]:
    """``name -> (the PyTorch task, its export)``: WavLM batch mode with the input-conditioned selector, HuBERT
    stream mode with a learned schedule, and batch mode with a filterbank selector (the depth head reads the
    CNN features beside it)."""
    root = tmp_path_factory.mktemp("alloc-onnx")
    torch.manual_seed(1)
    batch = _spread(ClassificationTask(labels=["a", "b", "c"], backbone="tiny:wavlm", allocation=AllocationConfig(
        hidden_dim=8), selector=functools.partial(InputConditionedSelector, hidden_dim=8, fallback=False)))
    torch.manual_seed(2)
    fbank = _spread(ClassificationTask(labels=["a", "b"], backbone="tiny:wavlm", allocation=AllocationConfig(
        hidden_dim=8), selector=functools.partial(InputConditionedSelector, input="fbank", hidden_dim=8, fallback=False)))
    stream = _stream_task()
    return {name: (task, export_onnx(task, root / name))
            for name, task in (("batch", batch), ("stream", stream), ("fbank", fbank))}


@pytest.mark.parametrize("name", ["batch", "stream", "fbank"])
def test_each_inputs_depth_layers_and_logits_match_pytorch(allocated, name):
    task, folder = allocated[name]
    model = OnnxAdaptiveModel(folder)
    assert model.depth["kind"] == "allocated" and model.depth["mode"] == ("stream" if name == "stream" else "batch")
    n = task.num_layers
    waves, lengths = padded_batch(MANY, seed=17)
    spread = []
    budgets = [torch.full((6,), k) for k in range(1, n + 1)] + [torch.tensor([1, 2, n, 3, 1, n])]
    for budget in budgets:
        expected, expected_keep = torch_forward(task, waves, lengths, budget)
        logits, keep, _ = model.forward(waves.numpy(), lengths.numpy(), budget.numpy())
        assert (keep == expected_keep).all(), budget
        assert np.abs(logits - expected).max() <= TOLERANCE
        if name != "stream":  # batch mode spends exactly the budgets' sum
            assert int(keep.sum()) == int(budget.sum())
        spread.append(len(set(keep.sum(1).tolist())))
    assert max(spread) > 1, spread  # at one budget at least, the inputs run different depths


def test_targets_and_the_flops_law_count_the_depth_head_as_pytorch_does(allocated):
    task, folder = allocated["batch"]
    onnx_model, torch_model = open_loop_pair(task, folder)
    waves, lengths = padded_batch([4000, 16000, 30000], seed=14)
    flops = Target.parse({"gflops_per_second": 0.05})
    onnx_fixed = onnx_model.controller.costs(lengths.numpy(), flops)[0]
    torch_fixed = torch_model.controller.costs(lengths, flops)[0].numpy()
    selector_only = BudgetController(task.num_layers, flops_config=task.backbone.config,
                                     extra_fixed_flops=task.selector.flops).costs(lengths, flops)[0].numpy()
    depth_head = task.depth.flops(frame_lengths(task.backbone.config, lengths)).numpy() / 1e9
    assert (depth_head > 0).all() and np.allclose(torch_fixed, selector_only + depth_head, rtol=1e-9)
    assert np.allclose(onnx_fixed, torch_fixed, rtol=1e-6)
    for target in ({"ms": 20.0}, {"rtf": 0.5}, {"gflops_per_second": 0.05}, 3):
        expected = torch_model(waves, target, lengths=lengths)
        got = onnx_model(waves.numpy(), target, lengths=lengths.numpy())
        assert got.budget.tolist() == expected.budget.tolist(), target
        assert np.array_equal(got.keep_mask, expected.keep_mask.numpy()), target
        assert got.outputs == expected.outputs


def test_the_folder_lists_the_depth_head_and_an_uncalibrated_stream_budget_is_named(allocated, tmp_path):
    task, folder = allocated["stream"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["graphs"]["depth_head"] == "depth_head.onnx" and (folder / "depth_head.onnx").is_file()
    assert manifest["depth"]["min_layers"] == 1 and None not in manifest["depth"]["thresholds"]
    copy = tmp_path / "uncalibrated"
    shutil.copytree(folder, copy)
    manifest["depth"]["thresholds"][1] = None
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RuntimeError, match=r"no gain threshold for budgets \[2\]"):
        OnnxAdaptiveModel(copy)(np.zeros(16000, dtype=np.float32), 2)
    (copy / "depth_head.onnx").unlink()
    with pytest.raises(ValueError, match="depth_head.onnx"):
        OnnxAdaptiveModel(copy)
