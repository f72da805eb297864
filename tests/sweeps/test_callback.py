"""The BudgetSweep callback: repeats for random selectors, controls only where masks depend on the input."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch

from ldrop.selectors import InputConditionedSelector, RandomSelector
from ldrop.sweeps import BudgetSweep
from ldrop.tasks import BudgetSampling, ClassificationTask
from tests.helpers import quiet_trainer, tiny_classification_data

SWEEP_LAYERS = [1, 2, 3, 4]  # every budget of the tiny backbone


def _sweep(tmp_path, selector, **options) -> list[dict]:
    L.seed_everything(0)
    torch.manual_seed(0)
    model = ClassificationTask(labels=["a", "b", "c", "d"], backbone="tiny:wavlm", selector=selector)
    sweep = BudgetSweep(**{"budgets": [1, 4], "directory": str(tmp_path / "sweep"), **options})
    quiet_trainer(tmp_path, callbacks=[sweep], limit_test_batches=2).test(model, tiny_classification_data())
    assert (tmp_path / "sweep" / "budget_sweep.csv").is_file()
    return sweep.rows


@pytest.fixture(scope="module")
def input_conditioned_rows(tmp_path_factory) -> list[dict]:
    """One sweep of the input-conditioned selector at budgets 1 and 4, with controls and (on by default for an
    input-dependent selector) the headroom oracles: the tests that only read its rows share it."""
    return _sweep(tmp_path_factory.mktemp("input-conditioned"), functools.partial(InputConditionedSelector,
                                                                                  hidden_dim=16), controls=True)


def test_repeats_of_a_random_selector_report_a_spread(tmp_path):
    rows = _sweep(tmp_path, RandomSelector, repeats=3)
    assert all("acc_std" in row and row["acc_std"] >= 0.0 for row in rows)
    assert rows[-1]["acc_std"] == 0.0  # at full depth every repeat runs every layer: the same run three times
    assert [row["utterances"] for row in rows] == [16, 16]  # repeats are not counted as more utterances


def test_a_random_selectors_seed_decides_the_masks_a_sweep_draws(tmp_path):
    """The sweep reseeded the selector from (repeat, batch) alone: every seed drew the same masks, so a sweep over
    seeds had no spread, and the seed a run's config recorded was never used."""
    def usage(seed: int, name: str) -> torch.Tensor:
        sweep = BudgetSweep(budgets=[1, 2], directory=str(tmp_path / name))
        model = ClassificationTask(labels=["a", "b", "c", "d"], backbone="tiny:wavlm",
                                   selector=functools.partial(RandomSelector, seed=seed))
        quiet_trainer(tmp_path, callbacks=[sweep], limit_test_batches=2).test(model, tiny_classification_data())
        return torch.cat([sweep.budget_scorer.usage(model, k) for k in (1, 2)])

    first = usage(0, "a")
    assert first.shape == (32, 4) and torch.equal(usage(0, "b"), first)  # a seed repeats its draws
    assert (usage(5, "c") != first).any(dim=1).sum() >= 8  # another seed: other masks for many of the 32 inputs


def test_a_random_selectors_item_errors_pool_to_its_rows_metric_the_mean_of_its_repeats(tmp_path):
    # the paired intervals of ldrop compare read these errors: they must be of the metric printed beside them
    import json

    L.seed_everything(0)
    model = ClassificationTask(labels=["a", "b", "c", "d"], backbone="tiny:wavlm", selector=RandomSelector,
                               optimization={"lr": 1e-2, "warmup": 0})
    data = tiny_classification_data(num_test=48)
    quiet_trainer(tmp_path, max_steps=30, limit_val_batches=0).fit(model, data)  # masks then matter
    sweep = BudgetSweep(budgets=[1, 2, 3], directory=str(tmp_path / "sweep"), repeats=3)
    quiet_trainer(tmp_path, callbacks=[sweep]).test(model, data)
    rows = sweep.rows
    items = json.loads((tmp_path / "sweep" / "budget_items.json").read_text())
    assert any(row["acc_std"] > 0 for row in rows)  # the repeats differ: the first alone is not the mean
    for row in rows:
        errors = items["errors"][str(row["budget_layers"])]
        assert 1 - sum(errors) / sum(items["counts"]) == pytest.approx(row["acc"], abs=1e-6)


def test_controls_are_scored_for_input_dependent_selectors_only(input_conditioned_rows, tmp_path):
    rows = input_conditioned_rows
    assert {"acc_shuffled", "acc_most_common"} <= set(rows[0])
    rows = _sweep(tmp_path, RandomSelector, controls=True)
    assert "acc_shuffled" not in rows[0] and "acc_std" not in rows[0]  # one repeat by default


def test_repeats_must_be_positive():
    with pytest.raises(ValueError, match="repeats"):
        BudgetSweep(repeats=0)


def test_sweep_sums_keep_double_precision():
    from ldrop.sweeps.scorers import _sum

    total = _sum(torch.device("cpu"))
    for _ in range(3):
        total.update(0.123456789123)  # seconds of audio: not a float32 number
    assert float(total.compute()) == 3 * 0.123456789123


def test_a_flops_target_gets_the_layers_it_affords_and_is_never_exceeded(input_conditioned_rows, tmp_path):
    full = input_conditioned_rows
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
    from ldrop.sweeps import check_sweep_set

    assert {"target_sweep.csv", "target_sweep.json"} <= set(check_sweep_set(tmp_path / "targets"))  # one set


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


def test_headroom_oracles_bracket_the_selectors_own_result(input_conditioned_rows):
    rows = input_conditioned_rows  # headroom on by default for an input-dependent selector
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


def test_each_phase_of_ldrop_test_shows_progress_lines(tmp_path, caplog):
    from pathlib import Path

    from ldrop.cli import main

    quickstart = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
    with caplog.at_level("INFO", logger="ldrop.progress"):
        main(["test", "--config", str(quickstart), "--data.init_args.num_val", "8", "--data.init_args.num_test", "8",
              "--data.init_args.duration_range", "[0.3, 0.5]", "--trainer.logger", "false",
              "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path),
              "--model.init_args.selector.init_args.fallback_search", "true", "--sweep.headroom", "true"])
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "ldrop.progress")
    for phase in ("fitting InputConditionedSelector on validation data", "greedy subset search",
                  "input-conditioned fallback", "budget sweep: 4 budget(s) + headroom oracles",
                  "headroom on the validation split"):
        assert f"{phase}" in text and text.count(f"{phase}") >= 2, phase  # a start line and an end line
    assert "budget sweep: 4 budget(s) + headroom oracles: done in" in text


def test_the_stock_python_path_runs_under_bf16_mixed(tmp_path):
    L.seed_everything(0)
    model = ClassificationTask(labels=["a", "b", "c", "d"], backbone="tiny:wavlm", budgets=BudgetSampling(validation=[2]),
                               selector=functools.partial(InputConditionedSelector, hidden_dim=16))
    data = tiny_classification_data()
    sweep = BudgetSweep(budgets=[1, 2, 4], controls=True, headroom=True, directory=str(tmp_path / "sweep"),
                        targets=[{"gflops_per_second": 0.02}])
    trainer = quiet_trainer(tmp_path, precision="bf16-mixed", max_steps=2, limit_val_batches=1, callbacks=[sweep])
    trainer.fit(model, data)
    trainer.test(model, data)
    predictions = trainer.predict(model, data)
    assert [row["budget_layers"] for row in sweep.rows] == [1, 2, 4]
    for column in ("acc", "acc_shuffled", "acc_most_common", "acc_input_oracle", "acc_static_oracle", "acc_val"):
        assert all(0.0 <= row[column] <= 1.0 for row in sweep.rows), column
    assert sweep.target_rows and 0.0 <= sweep.target_rows[0]["acc"] <= 1.0
    assert len([r for batch in predictions for r in batch]) == 16


def test_per_item_errors_are_written_with_the_sweep_and_the_depth_oracle_beats_every_fixed_depth(tmp_path):
    import json

    from ldrop.sweeps import check_sweep_set, load_items
    from ldrop.sweeps.paired import metric_from_errors

    rows = _sweep(tmp_path, functools.partial(InputConditionedSelector, hidden_dim=16), budgets=None)
    assert SWEEP_LAYERS == [row["budget_layers"] for row in rows]
    assert "budget_items.json" in check_sweep_set(tmp_path / "sweep")  # one set with the rest
    items = load_items(tmp_path / "sweep")
    assert items == json.loads((tmp_path / "sweep" / "budget_items.json").read_text())
    assert len(items["ids"]) == len(set(items["ids"])) == 16 and items["budgets"] == SWEEP_LAYERS
    fixed = {int(k): v for k, v in items["fixed_errors"].items()}
    assert fixed == {int(k): v for k, v in items["errors"].items()}  # top-k: its own masks are its fixed-k masks
    for row in rows:
        k = row["budget_layers"]
        assert metric_from_errors(items["errors"][str(k)], items["counts"], True) == pytest.approx(row["acc"], abs=1e-6)
        best_fixed = max(metric_from_errors(fixed[j], items["counts"], True) for j in range(1, k + 1))
        assert row["acc_depth_oracle"] >= best_fixed - 1e-9  # "everyone at j <= k" is one of its allocations
        assert row["acc_depth_oracle_val"] >= row["acc_val"] - 1e-9
    assert rows[-1]["acc_depth_oracle"] == pytest.approx(rows[-1]["acc"], abs=1e-6)  # full depth: nothing to pick


def test_control_masks_are_the_own_masks_permuted_and_the_most_common_one_for_all():
    from types import SimpleNamespace

    from ldrop.sweeps.scorers import ControlScorer

    seen: list[torch.Tensor] = []
    task = SimpleNamespace(
        device=torch.device("cpu"), _metrics_on_device=dict, update_metrics=lambda *args: None,
        logits_with_mask=lambda encoded, mask: seen.append(mask) or torch.zeros(len(mask), 2),
    )
    # the most common mask, [0, 1, 1, 0], is neither the first nor the last row
    own = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 1, 1]],
                       dtype=torch.float32)
    step = SimpleNamespace(task=task, encoded=SimpleNamespace(frame_mask=None), batch=None, index=3,
                           costs={2: SimpleNamespace(mask=own)})
    scorer = ControlScorer([2])
    scorer.start(task)
    scorer.batch(step)
    shuffled, common = seen
    assert sorted(map(tuple, shuffled.tolist())) == sorted(map(tuple, own.tolist()))  # the same masks...
    assert not torch.equal(shuffled, own)  # ...given to other inputs
    assert torch.equal(common, torch.tensor([[0.0, 1.0, 1.0, 0.0]]).expand(6, 4))


@pytest.mark.parametrize(("higher_is_better", "expected"), [(True, 0.8), (False, 0.2)])
def test_the_static_oracle_is_the_best_single_mask_for_everyone(higher_is_better, expected):
    from types import SimpleNamespace

    from ldrop.sweeps.headroom import HeadroomScorer
    from ldrop.sweeps.scorers import _sum

    count, input_errors = _sum(torch.device("cpu")), _sum(torch.device("cpu"))
    count.update(10.0)
    input_errors.update(1.0)
    # error sums over the whole split of three masks, each given to every input: the best one has 2 errors
    state = {"count": count, "input": input_errors, "static": torch.tensor([5.0, 2.0, 9.0], dtype=torch.float64)}
    trainer = SimpleNamespace(strategy=SimpleNamespace(reduce=lambda tensor, reduce_op: tensor))
    task = SimpleNamespace(metric_names=["m"], higher_is_better=higher_is_better)
    columns = HeadroomScorer._columns(trainer, task, state)
    assert columns["m_static_oracle"] == pytest.approx(expected)  # accuracy 1 - 2/10, or an error rate 2/10
    assert columns["m_input_oracle"] == pytest.approx(0.9 if higher_is_better else 0.1)
