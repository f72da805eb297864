"""The torch-free controller of the ONNX runtime decides exactly as the PyTorch runtime's controller."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the ONNX runtime is the optional extra ldrop[onnx]")

from ldrop.backbones.geometry import frame_lengths
from ldrop.budgets import BudgetController, DeviceProfile
from ldrop.budgets import resolve_budget as torch_resolve_budget
from ldrop.engine.flops import count_forward_flops
from ldrop.runtime.onnx_budgets import FlopsLaw, OnnxBudgetController, resolve_budget
from ldrop.runtime.onnx_export import flops_law
from ldrop.runtime.onnx_runtime import threshold_mask, topk_mask
from ldrop.selectors import InputConditionedSelector
from ldrop.selectors.topk import hard_topk_mask
from ldrop.selectors.topk import threshold_mask as torch_threshold_mask
from ldrop.tasks import ClassificationTask
from tests.runtime.conftest import synthetic_profile


def both(profile: DeviceProfile | None = None, **options) -> tuple[BudgetController, OnnxBudgetController]:
    profile = profile or synthetic_profile()
    return (BudgetController(4, profile, **options),
            OnnxBudgetController(4, DeviceProfile.from_dict(profile.to_dict()), **options))


@pytest.mark.filterwarnings("ignore:target .* cannot be met")  # unmeetable targets are compared too
def test_time_targets_give_the_same_budgets_and_the_same_closed_loop():
    reference, numpy_controller = both(margin=0.1)
    rng = np.random.default_rng(0)
    for step in range(40):
        lengths = rng.integers(4000, 80000, size=int(rng.integers(1, 5)))
        target = {"ms": float(rng.uniform(3, 20))} if step % 2 else {"rtf": float(rng.uniform(0.002, 0.02))}
        expected = reference.decide(torch.from_numpy(lengths), target)
        got = numpy_controller.decide(lengths, target)
        assert got.budget.tolist() == expected.budget.tolist()
        np.testing.assert_allclose(got.predicted_seconds, expected.predicted_seconds.numpy(), rtol=1e-12)
        ratio = (float(rng.uniform(0.1e-3, 30e-3)), float(rng.uniform(0.1e-3, 30e-3)))  # loads come and go
        assert numpy_controller.observe(*ratio) == pytest.approx(reference.observe(*ratio), rel=1e-12)


def test_the_profile_predicts_the_same_times_from_arrays_tensors_and_its_json():
    profile = synthetic_profile()
    cost = DeviceProfile.from_dict(profile.to_dict())
    lengths = torch.tensor([8000, 20000, 3000])
    keep = torch.tensor([[1, 0, 1, 0], [1, 1, 1, 1], [0, 0, 0, 1]], dtype=torch.float32)
    assert cost.predict(lengths.numpy(), keep.numpy()) == pytest.approx(profile.predict(lengths, keep), rel=1e-12)
    assert profile.frames(lengths).tolist() == frame_lengths(profile, lengths).tolist()
    fixed, layer = profile.per_input(lengths)
    np.testing.assert_allclose(np.stack(cost.per_input(lengths.numpy())), np.stack([fixed, layer]), rtol=1e-12)


@pytest.mark.parametrize("selector", [None, "cnn", "layers"])
def test_the_flops_law_counts_as_count_forward_flops(selector):
    factory = None if selector is None else functools.partial(InputConditionedSelector, input=selector)
    task = ClassificationTask(labels=["a", "b"], backbone="tiny:wavlm", selector=factory)
    law = FlopsLaw(**flops_law(task))
    lengths = torch.tensor([400, 401, 719, 720, 16000, 16319, 47999, 960000, 1_000_001])  # up to 62.5 s: beyond the table
    extra = task.selector.flops(frame_lengths(task.backbone.config, lengths)) if task.selector is not None else None
    expected = count_forward_flops(task.backbone.config, lengths, None, extra)
    np.testing.assert_allclose(law.fixed(lengths.numpy()), expected.fixed.numpy(), rtol=1e-9)
    np.testing.assert_allclose(law.per_layer(lengths.numpy()), expected.per_layer[:, 0].numpy(), rtol=1e-12)


def test_flops_targets_give_the_same_budgets():
    task = ClassificationTask(labels=["a", "b"], backbone="tiny:wavlm", selector=InputConditionedSelector)
    reference = BudgetController(4, flops_config=task.backbone.config, extra_fixed_flops=task.selector.flops)
    numpy_controller = OnnxBudgetController(4, flops=FlopsLaw(**flops_law(task)))
    lengths = np.array([4000, 16000, 32000, 64000])
    for target in np.linspace(0.05, 0.3, 11):
        spec = {"gflops_per_second": float(target)}
        assert numpy_controller.budgets(lengths, spec).tolist() == \
            reference.budgets(torch.from_numpy(lengths), spec).tolist()


@pytest.mark.parametrize("target, message", [
    ({"ms": -5}, "above 0"),
    ({"rtf": float("nan")}, "above 0"),
    ({"rtf": "fast"}, "must be a number"),
    ({"latency": 10}, "unknown target key"),
    ({"ms": 10, "rtf": 0.1}, "exactly one"),
    ("ms", "KEY=VALUE"),
    (["ms", 10], "a target is a dict"),
])
def test_bad_targets_are_the_same_clear_errors(target, message):
    with pytest.raises(ValueError, match=message):
        OnnxBudgetController(4, synthetic_profile()).budgets([16000], target)


@pytest.mark.parametrize("budget", [3, 0.5, 0.3, [1, 4, 2], [0.25, 1.0, 0.6]])
def test_plain_budgets_resolve_alike(budget):
    expected = torch_resolve_budget(torch.tensor(budget) if isinstance(budget, list) else budget, 4, 3)
    got = resolve_budget(np.array(budget) if isinstance(budget, list) else budget, 4, 3)
    assert got.tolist() == expected.tolist()
    numpy_budget = np.array(budget) if isinstance(budget, list) else np.asarray(budget)[()]  # np.int64, np.float64
    assert torch_resolve_budget(numpy_budget, 4, 3).tolist() == expected.tolist()  # both runtimes take numpy


@pytest.mark.parametrize("budget", [np.array([0.5, np.nan, 1.0]), np.array(np.nan)], ids=["nan-in-array", "nan"])
def test_a_nan_fraction_in_a_budget_array_is_refused_by_both_runtimes(budget):
    with pytest.raises(ValueError, match=r"fractions, each in \(0, 1\]"):
        resolve_budget(budget, 4, 3)
    with pytest.raises(ValueError, match=r"fractions, each in \(0, 1\]"):
        torch_resolve_budget(torch.as_tensor(budget), 4, 3)
    with pytest.raises(ValueError, match="not booleans"):
        torch_resolve_budget(torch.tensor([True, False, True]), 4, 3)


@pytest.mark.parametrize("budget, message", [(0, "between 1 and 4"), (1.5, r"in \(0, 1\]"), (np.array([1, 2]), "shape"),
                                             (np.array([1, 9, 2]), "between 1 and 4"), ("3", "an int, a float")])
def test_bad_plain_budgets_are_clear_errors(budget, message):
    with pytest.raises(ValueError, match=message):
        resolve_budget(budget, 4, 3)


def test_a_time_target_without_a_profile_says_how_to_get_one():
    with pytest.raises(ValueError, match="ldrop profile --runtime onnx"):
        OnnxBudgetController(4).budgets([16000], {"ms": 10})


def test_numpy_selection_matches_the_selectors_including_ties():
    rng = np.random.default_rng(0)
    scores = np.round(rng.standard_normal((64, 6)), 1).astype(np.float32)  # rounded: many ties
    k = rng.integers(0, 7, size=64)
    expected = hard_topk_mask(torch.from_numpy(scores), torch.from_numpy(k)).bool().numpy()
    assert np.array_equal(topk_mask(scores, k), expected)
    thresholds = rng.uniform(-1, 1, size=64)
    expected = torch_threshold_mask(torch.from_numpy(scores), torch.from_numpy(thresholds).float()).bool().numpy()
    assert np.array_equal(threshold_mask(scores, thresholds.astype(np.float32)), expected)
    assert math.isclose(float(threshold_mask(scores, np.full(64, 9.0)).sum()), 64)  # at least the best layer
