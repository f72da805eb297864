"""The BudgetSweep callback: repeats for random selectors, controls only where masks depend on the input."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch

from ldrop.selectors import InputConditionedSelector, RandomSelector
from ldrop.sweeps import BudgetSweep
from ldrop.tasks import ClassificationTask
from tests.helpers import quiet_trainer, tiny_classification_data


def _sweep(tmp_path, selector, **options) -> list[dict]:
    L.seed_everything(0)
    torch.manual_seed(0)
    model = ClassificationTask(labels=["a", "b", "c", "d"], backbone="tiny:wavlm", selector=selector)
    sweep = BudgetSweep(budgets=[1, 4], directory=str(tmp_path / "sweep"), **options)
    quiet_trainer(tmp_path, callbacks=[sweep], limit_test_batches=2).test(model, tiny_classification_data())
    assert (tmp_path / "sweep" / "budget_sweep.csv").is_file()
    return sweep.rows


def test_repeats_of_a_random_selector_report_a_spread(tmp_path):
    rows = _sweep(tmp_path, RandomSelector, repeats=3)
    assert all("acc_std" in row and row["acc_std"] >= 0.0 for row in rows)
    assert [row["utterances"] for row in rows] == [16, 16]


def test_controls_are_scored_for_input_dependent_selectors_only(tmp_path):
    rows = _sweep(tmp_path, functools.partial(InputConditionedSelector, hidden_dim=16), controls=True)
    assert {"acc_shuffled", "acc_most_common"} <= set(rows[0])
    rows = _sweep(tmp_path, RandomSelector, controls=True)
    assert "acc_shuffled" not in rows[0] and "acc_std" not in rows[0]  # one repeat by default


def test_repeats_must_be_positive():
    with pytest.raises(ValueError, match="repeats"):
        BudgetSweep(repeats=0)


def test_sweep_sums_keep_double_precision():
    from ldrop.sweeps.callback import _sum

    total = _sum(torch.device("cpu"))
    for _ in range(3):
        total.update(0.123456789123)  # seconds of audio: not a float32 number
    assert float(total.compute()) == 3 * 0.123456789123


def test_a_flops_target_gets_the_layers_it_affords_and_is_never_exceeded(tmp_path):
    full = _sweep(tmp_path, functools.partial(InputConditionedSelector, hidden_dim=16))
    one_layer, all_layers = full[0]["gflops_per_second"], full[1]["gflops_per_second"]
    target = {"gflops_per_second": (one_layer + all_layers) / 2}
    L.seed_everything(0)
    torch.manual_seed(0)
    model = ClassificationTask(labels=["a", "b", "c", "d"], backbone="tiny:wavlm",
                               selector=functools.partial(InputConditionedSelector, hidden_dim=16))
    sweep = BudgetSweep(budgets=[4], directory=str(tmp_path / "targets"), targets=[target])
    quiet_trainer(tmp_path, callbacks=[sweep], limit_test_batches=2).test(model, tiny_classification_data())
    (row,) = sweep.target_rows
    assert row["over_target"] == 0.0  # the controller's FLOPs count is exact
    assert 1.0 < row["executed_layers"] < 4.0
    assert row["gflops_per_utterance"] < sweep.rows[0]["gflops_per_utterance"]
    assert (tmp_path / "targets" / "target_sweep.csv").is_file()
    assert (tmp_path / "targets" / "target_sweep.json").is_file()


def test_bad_targets_fail_when_the_sweep_is_built():
    with pytest.raises(ValueError, match="unknown target key"):
        BudgetSweep(targets=[{"fps": 3}])


def test_a_time_target_after_a_flops_target_gets_its_own_profile(tmp_path):
    L.seed_everything(0)
    model = ClassificationTask(labels=["a", "b", "c", "d"], backbone="tiny:wavlm",
                               selector=functools.partial(InputConditionedSelector, hidden_dim=16))
    sweep = BudgetSweep(budgets=[4], directory=str(tmp_path / "targets"),
                        targets=[{"gflops_per_second": 1e6}, {"rtf": 1e6}])
    with pytest.warns(UserWarning, match="without a profile"):  # the time target measures a quick one
        quiet_trainer(tmp_path, callbacks=[sweep], limit_test_batches=1).test(model, tiny_classification_data())
    assert [row["executed_layers"] for row in sweep.target_rows] == [4.0, 4.0]  # generous targets: every layer
    assert [row["over_target"] for row in sweep.target_rows] == [0.0, 0.0]


def test_headroom_oracles_bracket_the_selectors_own_result(tmp_path):
    rows = _sweep(tmp_path, functools.partial(InputConditionedSelector, hidden_dim=16))  # on by default
    low, full = rows
    assert low["acc_input_oracle"] >= low["acc"] - 1e-6  # the selector's own mask is a candidate (float32 metric)
    assert 0.0 <= low["acc_static_oracle"] <= 1.0
    # at full depth there is one mask: both oracles are the selector's own result
    assert full["acc_input_oracle"] == pytest.approx(full["acc"]) == pytest.approx(full["acc_static_oracle"])
    # the same on the validation split
    assert low["acc_input_oracle_val"] >= low["acc_val"] and 0.0 <= low["acc_static_oracle_val"] <= 1.0
    assert full["acc_input_oracle_val"] == full["acc_val"] == full["acc_static_oracle_val"]


def test_headroom_for_ctc_uses_per_utterance_word_errors(tmp_path):
    from ldrop.tasks import CTCTask
    from tests.helpers import tiny_ctc_data

    L.seed_everything(0)
    data = tiny_ctc_data()
    model = CTCTask(labels=sorted(set(data.alphabet) | {" "}), backbone="tiny:wavlm",
                    selector=functools.partial(InputConditionedSelector, hidden_dim=16))
    sweep = BudgetSweep(budgets=[1, 4], directory=str(tmp_path / "sweep"))
    quiet_trainer(tmp_path, callbacks=[sweep], limit_test_batches=1).test(model, data)
    low, full = sweep.rows
    assert low["wer_input_oracle"] <= low["wer"] + 1e-6
    assert full["wer_input_oracle"] == pytest.approx(full["wer"]) == pytest.approx(full["wer_static_oracle"])


def test_headroom_is_off_for_input_blind_selectors_unless_asked(tmp_path):
    assert "acc_input_oracle" not in _sweep(tmp_path, RandomSelector)[0]
    assert "acc_input_oracle" in _sweep(tmp_path, RandomSelector, headroom=True)[0]
