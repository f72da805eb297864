"""Learning-rate schedules and budget parsing."""

from __future__ import annotations

import math

import pytest
import torch

from ldrop.budgets import budget_list, budget_to_layers, resolve_budget
from ldrop.tasks import AllocationConfig, EarlyExitConfig, OptimizerConfig, lr_schedule


def test_linear_schedule_warms_up_then_decays_to_zero():
    f = lr_schedule("linear", warmup_steps=10, total_steps=110)
    assert f(0) < f(5) < f(9) <= 1.0
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5)
    assert f(110) == 0.0


def test_tri_stage_schedule_holds_then_decays_to_five_percent():
    f = lr_schedule("tri_stage", warmup_steps=10, total_steps=100)
    assert f(20) == f(49) == 1.0
    assert 0.05 < f(75) < 1.0
    assert f(100) == pytest.approx(0.05)
    assert math.isclose(f(75), math.sqrt(0.05), rel_tol=1e-9)


def test_constant_schedule_stays_at_the_base_rate_after_warm_up():
    f = lr_schedule("constant", warmup_steps=4, total_steps=100)
    assert f(2) < 1.0 and f(4) == f(99) == 1.0


def test_unknown_schedule_is_named():
    with pytest.raises(ValueError, match="cosine"):
        lr_schedule("cosine", 0, 10)


@pytest.mark.parametrize(("group", "make", "field"), [
    ("optimization", OptimizerConfig, "schedule"), ("early_exit", EarlyExitConfig, "confidence"),
    ("allocation", AllocationConfig, "mode"),
])
def test_a_config_group_names_the_field_its_choices_and_the_bad_value(group, make, field):
    make(**{field: make.__dataclass_fields__[field].default})  # the default is one of the choices
    with pytest.raises(ValueError) as error:
        make(**{field: "bogus"})
    message = str(error.value)
    assert message.startswith(f"{group}.{field} must be one of (") and message.endswith("got 'bogus'")
    assert "\n" not in message and repr(make.__dataclass_fields__[field].default) in message


@pytest.mark.parametrize(("budget", "layers"), [(1, 1), (12, 12), (0.5, 6), (0.01, 1), (1.0, 12), (0.25, 3)])
def test_budgets_convert_to_layer_counts(budget, layers):
    assert budget_to_layers(budget, 12) == layers


def test_fraction_tensor_budgets_round_to_layers():
    assert resolve_budget(torch.tensor([0.25, 1.0]), 12, 2).tolist() == [3, 12]


@pytest.mark.parametrize("budgets", [[1, 3, 4], [0.25, 0.5, 1.0], [2, 0.5, 1], (4, 1, 2)])
def test_a_list_of_per_input_budgets_resolves_as_its_tensor_and_as_the_onnx_runtime_does(budgets):
    from ldrop.runtime.onnx_budgets import resolve_budget as resolve_array

    layers = resolve_budget(budgets, 4, 3).tolist()
    assert layers == [budget_to_layers(b, 4) for b in budgets] == resolve_array(budgets, 4, 3).tolist()
    assert all(1 <= k <= 4 for k in layers)


@pytest.mark.parametrize(("budgets", "message"), [
    ([1, 5, 2], "between 1 and 4 layers, got 5"), ([1, 2], r"shape \[\] or \[batch=3\]"),
    ([1, "2", 3], "an int, a float"), ([True, 1, 2], "got True"), ([0.5, 1.5, 1.0], r"in \(0, 1\], got 1.5"),
])
def test_a_bad_list_of_budgets_is_one_clear_error_in_both_runtimes(budgets, message):
    from ldrop.runtime.onnx_budgets import resolve_budget as resolve_array

    for resolve in (resolve_budget, resolve_array):
        with pytest.raises(ValueError, match=message):
            resolve(budgets, 4, 3)


def test_scalar_tensor_budget_is_broadcast():
    assert resolve_budget(torch.tensor(5), 12, 3).tolist() == [5, 5, 5]


def test_budget_list_defaults_to_every_depth_and_deduplicates():
    assert budget_list(None, 4) == [1, 2, 3, 4]
    assert budget_list([0.5, 2, 1.0], 4) == [2, 4]
    with pytest.raises(ValueError, match="empty"):
        budget_list([], 4)


@pytest.mark.parametrize(("arguments", "message"), [
    (dict(predict_budget=7), r"^predict_budget: budget must be between 1 and 4 layers, got 7$"),
    (dict(predict_budget={"ms": True}), r"^predict_budget: .*ms"),
    (dict(budgets={"train": [0.5, 9]}), r"^budgets\.train: budget must be between 1 and 4 layers, got 9$"),
    (dict(budgets={"validation": []}), r"^budgets\.validation: the list of budgets is empty$"),
])
def test_a_task_names_the_budget_argument_it_refuses(arguments, message):
    from ldrop.tasks import ClassificationTask

    with pytest.raises(ValueError, match=message):
        ClassificationTask(num_classes=2, backbone="tiny:wavlm", **arguments)
