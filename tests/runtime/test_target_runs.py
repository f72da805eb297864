"""Targets over a whole run: what each prediction record says about its budget, and one unmeetable-target
warning per run with the run's counts (issue 16, item 5)."""

from __future__ import annotations

import warnings

import pytest
import torch

from ldrop.budgets import TargetResolver, UnmeetableTargetWarning
from ldrop.runtime import TargetBudgets, load_model
from ldrop.sweeps import BudgetSweep
from tests.helpers import quiet_trainer, tiny_classification_data
from tests.runtime.conftest import synthetic_profile


@pytest.fixture
def model(tiny_checkpoint):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not fitted on validation data: the runs below fit it
        return load_model(tiny_checkpoint)


def _predict(model, tmp_path, budget) -> tuple[list[dict], list[str]]:
    model.hparams.predict_budget = budget
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictions = quiet_trainer(tmp_path, callbacks=[TargetBudgets()]).predict(model, datamodule=tiny_classification_data())
    unmeetable = [str(w.message) for w in caught if issubclass(w.category, UnmeetableTargetWarning)]
    return [record for batch in predictions for record in batch], unmeetable


def test_records_say_which_budget_target_and_predicted_time_applied(model, tmp_path):
    profile = synthetic_profile().save(tmp_path / "profile.json")
    records, unmeetable = _predict(model, tmp_path, {"ms": 1000.0, "profile": str(profile)})
    assert len(records) == 16 and not unmeetable
    for record in records:
        assert record["target"] == "ms=1000" and record["meets_target"] is True
        assert 1 <= record["budget"] <= model.num_layers and len(record["executed_layers"]) == record["budget"]
        assert 0 < record["predicted_ms"] <= 0.9 * 1000.0  # planned within the target less its margin
    records, _ = _predict(model, tmp_path, 2)
    assert all(r["budget"] == 2 and "target" not in r and "predicted_ms" not in r for r in records)


def test_an_unmeetable_target_is_warned_once_with_the_whole_predict_run_counted(model, tmp_path):
    records, unmeetable = _predict(model, tmp_path, {"gflops_per_second": 1e-6})  # two batches of 8
    assert len(unmeetable) == 1 and "16 of the 16 inputs of this predict run" in unmeetable[0], unmeetable
    assert all(r["meets_target"] is False and r["budget"] == 1 and "predicted_ms" not in r for r in records)


def test_an_unmeetable_target_is_warned_once_for_the_whole_target_sweep(model, tmp_path):
    sweep = BudgetSweep(budgets=[4], targets=[{"gflops_per_second": 1e-6}], directory=str(tmp_path / "s"),
                        headroom=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_trainer(tmp_path, callbacks=[sweep]).test(model, datamodule=tiny_classification_data())
    unmeetable = [str(w.message) for w in caught if issubclass(w.category, UnmeetableTargetWarning)]
    assert len(unmeetable) == 1 and "16 of the 16 inputs of the target sweep" in unmeetable[0], unmeetable
    assert sweep.target_rows[0]["over_target"] == 1.0


def test_a_long_input_predicted_in_chunks_sums_its_predicted_time(model, tmp_path):
    profile = synthetic_profile().save(tmp_path / "profile.json")
    model.hparams.predict_budget = {"rtf": 10.0, "profile": str(profile)}
    model.hparams.predict_chunk_seconds, model.hparams.predict_chunk_overlap_seconds = 0.4, 0.05
    resolver = TargetResolver()
    model.budget_provider = lambda lengths: resolver.decide(model, lengths, model.predict_target())
    with torch.no_grad():
        record = model.predict_long(torch.randn(16000), "long", chunks_per_pass=2)
    chunks = record["chunks"]
    assert len(chunks) > 1 and all(1 <= chunk["budget"] <= model.num_layers for chunk in chunks)
    assert record["budget"] == min(chunk["budget"] for chunk in chunks) and record["target"] == "rtf=10"
    assert record["predicted_ms"] > 0 and record["meets_target"] is True


def test_a_quick_profile_measured_for_a_target_sweep_is_not_timed_as_its_first_batch(model, tmp_path, monkeypatch):
    import time

    def measure(*args, **kwargs):  # a quick profile takes seconds on a real model
        time.sleep(2.0)
        return synthetic_profile()

    monkeypatch.setattr("ldrop.budgets.controller.profile_model", measure)
    sweep = BudgetSweep(budgets=[4], targets=[{"rtf": 1.0}, {"rtf": 1.0}], directory=str(tmp_path / "s"),
                        headroom=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "a time target without a profile: measuring a quick one now"
        quiet_trainer(tmp_path, callbacks=[sweep]).test(model, datamodule=tiny_classification_data())
    first, second = (row["ms_per_utterance"] for row in sweep.target_rows)
    # the same target twice: the 2 s measurement would add 125 ms to each of the first row's 16 utterances
    assert abs(first - second) < 60.0, (first, second)
