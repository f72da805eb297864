"""The target -> budget controller: largest affordable k, per-input budgets, online correction, bad targets."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from ldrop.backbones import tiny_config
from ldrop.budgets import BudgetController, DeadlineGuard, Target, UnmeetableTargetWarning
from ldrop.engine.flops import count_forward_flops
from tests.runtime.conftest import synthetic_profile


def controller(**kwargs) -> BudgetController:
    return BudgetController(4, synthetic_profile(), margin=0.0, **kwargs)


@pytest.mark.parametrize("target_ms", [6.5, 9.2, 10.0, 13.0, 50.0])
def test_the_chosen_budget_is_the_largest_that_meets_an_ms_target(target_ms):
    profile = synthetic_profile()
    lengths = torch.tensor([32000])
    k = int(controller().budgets(lengths, {"ms": target_ms})[0])

    def cost(layers: int) -> float:
        keep = torch.zeros(1, 4)
        keep[0, :layers] = 1
        return 1000 * profile.predict(lengths, keep)

    assert cost(k) <= target_ms
    assert k == 4 or cost(k + 1) > target_ms


def test_longer_inputs_get_fewer_layers_under_a_per_utterance_target():
    budget = controller().budgets(torch.tensor([8000, 16000, 48000]), {"ms": 6.0})
    assert budget.tolist() == sorted(budget.tolist(), reverse=True)
    assert int(budget[0]) > int(budget[-1])


def test_an_rtf_target_grows_the_allowance_with_the_duration():
    ctl = controller()
    lengths = torch.tensor([16000, 48000])
    fixed, layer, allowance = ctl.costs(lengths, Target("rtf", 0.01))
    assert allowance.tolist() == pytest.approx([0.01, 0.03])
    budget = ctl.budgets(lengths, "rtf=0.01")
    assert torch.equal(budget, torch.floor((allowance - fixed) / layer).clamp(1, 4).long())


def test_a_gflops_target_uses_the_exact_flops_count():
    config = tiny_config("wavlm")
    ctl = BudgetController(4, flops_config=config)
    lengths = torch.tensor([16000, 32000])
    full = count_forward_flops(config, lengths)
    per_second = full.fixed / 1e9 + 2.5 * full.per_layer[:, 0] / 1e9  # afford 2.5 layers of a 1 s input
    target = float(per_second[0])
    budget = ctl.budgets(lengths, {"gflops_per_second": target})
    for row, k in enumerate(budget.tolist()):
        keep = torch.zeros(1, 4)
        keep[0, :k] = 1
        seconds = int(lengths[row]) / 16000
        assert float(count_forward_flops(config, lengths[row:row + 1], keep).total[0]) <= target * 1e9 * seconds
    assert int(budget[0]) == 2


def test_a_slow_down_lowers_the_budget_and_a_speed_up_restores_it():
    ctl = controller()
    lengths = torch.tensor([32000])
    before = int(ctl.budgets(lengths, {"ms": 14.0})[0])
    for _ in range(10):
        ctl.observe(predicted_seconds=0.01, measured_seconds=0.02)  # the machine is twice as slow
    assert ctl.correction == pytest.approx(2.0, rel=0.05)
    slowed = int(ctl.budgets(lengths, {"ms": 14.0})[0])
    assert slowed < before
    for _ in range(60):
        ctl.observe(predicted_seconds=0.01, measured_seconds=0.01)
    assert ctl.correction == pytest.approx(1.0, rel=0.05)
    assert int(ctl.budgets(lengths, {"ms": 14.0})[0]) == before


def test_the_correction_reacts_faster_to_a_slow_down_than_to_a_speed_up():
    up, down = controller(), controller()
    up.observe(0.01, 0.02)
    down.observe(0.01, 0.005)
    assert math.log(up.correction) > abs(math.log(down.correction)) > 0


def test_the_correction_stays_within_its_bounds():
    ctl = controller(correction_bounds=(0.5, 3.0))
    for _ in range(50):
        ctl.observe(0.01, 1.0)
    assert ctl.correction == pytest.approx(3.0)
    for _ in range(200):
        ctl.observe(0.01, 0.0001)
    assert ctl.correction == pytest.approx(0.5)
    ctl.observe(0.01, 0.0)  # a non-positive time is ignored
    assert ctl.correction == pytest.approx(0.5)


def test_open_loop_ignores_measurements():
    ctl = controller(closed_loop=False)
    ctl.observe(0.01, 0.05)
    assert ctl.correction == 1.0


def test_the_margin_keeps_part_of_the_target_free():
    tight = BudgetController(4, synthetic_profile(), margin=0.3)
    loose = controller()
    lengths = torch.tensor([32000])
    assert int(tight.budgets(lengths, {"ms": 14.0})[0]) < int(loose.budgets(lengths, {"ms": 14.0})[0])


@pytest.mark.parametrize("target, message", [
    ({"ms": -5}, "above 0"),
    ({"ms": 0}, "above 0"),
    ({"rtf": float("nan")}, "above 0"),
    ({"rtf": "fast"}, "must be a number"),
    ({"latency": 10}, "unknown target key"),
    ({}, "exactly one"),
    ({"ms": 10, "rtf": 0.1}, "exactly one"),
    ("ms", "KEY=VALUE"),
    (["ms", 10], "a target is a dict"),
])
def test_bad_targets_are_clear_errors(target, message):
    with pytest.raises(ValueError, match=message):
        controller().budgets(torch.tensor([16000]), target)


def test_an_unmeetable_target_runs_one_layer_and_warns():
    ctl = controller()
    with pytest.warns(UnmeetableTargetWarning, match="cannot be met by 1 of 2"):
        decision = ctl.decide(torch.tensor([8000, 160000]), {"ms": 10.0})
    assert decision.budget.tolist()[1] == 1
    assert decision.meets_target.tolist() == [True, False]


def test_an_unmeetable_target_is_warned_once_per_kind_however_often_it_varies():
    """A service that passes each request's time left as ``{"ms": ...}`` got one warning per call: the message
    held the value and the counts, so Python's once-per-message rule never held it back."""
    ctl = controller()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for ms in (10.0, 9.0, 8.5, 7.0):
            assert ctl.decide(torch.tensor([160000]), {"ms": ms}).meets_target.tolist() == [False]
        ctl.decide(torch.tensor([160000]), {"rtf": 1e-4})
    messages = [str(w.message) for w in caught if issubclass(w.category, UnmeetableTargetWarning)]
    assert len(messages) == 2 and "ms=10 cannot be met" in messages[0] and "not warned again" in messages[0]
    assert "rtf=0.0001" in messages[1]


def test_a_decision_carries_the_correction_it_planned_with():
    """Planned on the controller only: another thread's call could replace it before this one read it."""
    lengths = torch.tensor([32000])
    fixed = float(controller().costs(lengths, Target("ms", 14.0))[0][0])
    ctl = controller()
    slow = ctl.decide(lengths, {"ms": 14.0}, spent=(3.0 * fixed, 0))
    calm = ctl.decide(lengths, {"ms": 14.0}, spent=(fixed, 0))
    assert slow.planned_correction == pytest.approx(3.0) and calm.planned_correction == pytest.approx(1.0)
    assert ctl.planned == pytest.approx(1.0)  # the last call's, for inspection


def test_an_unmeetable_target_can_be_an_error_instead():
    ctl = controller(on_unmeetable="raise")
    with pytest.raises(ValueError, match="cannot be met"):
        ctl.budgets(torch.tensor([160000]), {"ms": 1.0})


def test_a_time_target_without_a_profile_says_how_to_get_one():
    ctl = BudgetController(4)
    with pytest.raises(ValueError, match="ldrop profile"):
        ctl.budgets(torch.tensor([16000]), {"rtf": 0.1})
    with pytest.raises(ValueError, match="flops_config"):
        ctl.budgets(torch.tensor([16000]), {"gflops_per_second": 1.0})


def test_a_profile_of_another_depth_is_rejected():
    with pytest.raises(ValueError, match="of another model .num_layers 4, not 12"):
        BudgetController(12, synthetic_profile(num_layers=4))


def test_a_meetable_target_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        controller().budgets(torch.tensor([16000]), {"ms": 100.0})


def test_a_recent_spike_is_planned_for_until_it_leaves_the_window():
    ctl = controller(window=4, quantile=1.0, recover_after=0)
    ctl.observe(0.01, 0.03)  # one call three times slower than predicted
    for _ in range(3):
        assert ctl.observe(0.01, 0.01) == pytest.approx(3.0)
    assert ctl.observe(0.01, 0.01) < 2.0  # out of the window: only the (decaying) average remains
    averaged = controller(quantile=None)
    averaged.observe(0.01, 0.03)
    assert averaged.observe(0.01, 0.01) < 3.0


def test_a_slow_fixed_part_lowers_this_calls_budget_before_any_feedback():
    lengths = torch.tensor([32000])
    fixed = float(controller().costs(lengths, Target("ms", 14.0))[0][0])
    before = int(controller().budgets(lengths, {"ms": 14.0})[0])
    slowed = controller()
    for _ in range(10):
        slowed.observe(0.01, 0.02)
    probed = controller()  # no history: only this call's fixed part, measured twice as slow as predicted
    decision = probed.decide(lengths, {"ms": 14.0}, spent=(2.0 * fixed, 0))
    assert probed.probe == pytest.approx(2.0) and probed.planned == pytest.approx(2.0)
    assert int(decision.budget[0]) == int(slowed.budgets(lengths, {"ms": 14.0})[0]) < before
    noisy = controller()  # a fixed part a little slower than predicted is noise: the history decides
    assert int(noisy.decide(lengths, {"ms": 14.0}, spent=(1.2 * fixed, 0)).budget[0]) == before
    quick = controller()  # a fixed part faster than predicted never raises the budget
    assert int(quick.decide(lengths, {"ms": 14.0}, spent=(0.5 * fixed, 0)).budget[0]) == before
    assert quick.planned == 1.0 and quick.correction == 1.0  # the probe is not remembered
    blind = controller(closed_loop=False)
    assert int(blind.decide(lengths, {"ms": 14.0}, spent=(2.0 * fixed, 0)).budget[0]) == before
    assert blind.probe is None


def test_the_slow_spell_ends_after_a_few_calls_at_the_old_speed():
    ctl = controller(window=8, recover_after=3)
    for _ in range(8):
        ctl.observe(0.01, 0.04)  # loaded: four times slower
    assert ctl.correction == pytest.approx(4.0, rel=0.05)
    ctl.observe(0.01, 0.01)
    ctl.observe(0.01, 0.011)
    assert ctl.correction > 3.0  # two quick calls may be noise
    ctl.observe(0.01, 0.01)
    assert ctl.correction == pytest.approx(1.1)  # three in a row: the load has gone
    slow = controller(window=8, recover_after=0)
    for ratio in [4.0] * 8 + [1.0] * 3:
        slow.observe(0.01, 0.01 * ratio)
    assert slow.correction > 3.0
    with pytest.raises(ValueError, match="jump must be >= 1"):
        controller(jump=0.5)


def test_the_correction_starts_from_the_profiles_own_check_on_whole_forwards():
    profile = synthetic_profile()
    profile.validation = {"batches": [{"measured_ms": 1.5 * p, "predicted_ms": p} for p in (10.0, 20.0, 30.0)]}
    ctl = BudgetController(4, profile)
    assert ctl.correction == pytest.approx(1.5)
    assert BudgetController(4, profile, closed_loop=False).correction == 1.0  # open loop trusts the profile
    ctl.observe(0.01, 0.01)
    ctl.reset()
    assert ctl.correction == pytest.approx(1.5)
    assert controller().correction == 1.0  # a profile without a check


def test_the_deadline_guard_starts_no_layer_that_would_end_late():
    times = iter([0.0, 3.0, 6.0, 9.0])
    guard = DeadlineGuard(10.0, lambda inputs, frames: 3.0, clock=lambda: next(times))
    assert [guard(i, 1, 50) for i in range(4)] == [True, True, True, False]  # 9 + 3 > 10
    assert guard.skipped == [3]
    times = iter([0.0, 6.0, 12.0])  # the layers take twice the predicted time: the guard learns it in the call
    slow = DeadlineGuard(13.0, lambda inputs, frames: 3.0, clock=lambda: next(times))
    assert [slow(i, 1, 50) for i in range(3)] == [True, True, False]  # 6 + 3 * 2 <= 13, 12 + 6 > 13
    times = iter([20.0, 21.0])  # past the deadline already: the first layer still runs (min_layers)
    late = DeadlineGuard(10.0, lambda inputs, frames: 1.0, correction=2.0, clock=lambda: next(times))
    assert [late(0, 1, 50), late(1, 1, 50)] == [True, False]


def test_a_profile_check_without_times_starts_the_correction_at_one():
    profile = synthetic_profile()
    profile.validation = {"batches": [{"batch": 1}, {"measured_ms": 5.0, "predicted_ms": 0.0}]}
    assert BudgetController(4, profile).correction == 1.0
