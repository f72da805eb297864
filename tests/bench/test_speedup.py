"""The speed-up benchmark's plumbing on a tiny backbone (no timing assertions)."""

from __future__ import annotations

import json

import pytest
import torch

from ldrop.bench import __main__ as bench_cli
from ldrop.bench.speedup import keep_masks, parse_budgets, results_table

RECORD_FIELDS = {
    "benchmark",
    "backbone",
    "size",
    "config",
    "num_layers",
    "budget",
    "budget_fraction",
    "batch_size",
    "seconds",
    "frames",
    "dtype",
    "repeats",
    "machine",
    "time_s",
    "times_s",
    "speedup",
    "ideal_speedup",
    "realized_over_ideal",
    "realized_over_ideal_paired",
    "flops",
}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "speedup.json"
    argv = ["speedup", "--size", "tiny", "--backbone", "hubert", "--batch-size", "2", "--seconds", "0.5"]
    argv += ["--budgets", "1,0.5,4", "--repeats", "1", "--warmup", "0", "--threads", "1", "--json", str(path)]
    assert bench_cli.main(argv) == 0
    return json.loads(path.read_text())


def test_one_record_per_budget(records):
    assert [r["budget"] for r in records] == [1, 2, 4]


def test_records_carry_machine_config_times_and_speedups(records):
    for record in records:
        assert RECORD_FIELDS <= set(record)
        assert {"cpu", "threads", "torch", "device_name"} <= set(record["machine"])
        assert record["machine"]["threads"] == 1
        assert record["config"]["num_hidden_layers"] == record["num_layers"] == 4
        assert set(record["time_s"]) == {"full", "fixed", "per_sample", "shared"}
        assert all(len(values) == 1 for values in record["times_s"].values())
        assert set(record["speedup"]) == set(record["realized_over_ideal"]) == {"per_sample", "shared"}


def test_full_budget_has_an_ideal_and_flops_ratio_of_one(records):
    full = records[-1]
    assert full["ideal_speedup"] == pytest.approx(1.0)
    assert full["flops"]["ideal_speedup"] == pytest.approx(1.0)
    assert records[0]["flops"]["ideal_speedup"] > 1.0


def test_results_table_has_a_row_per_record(records):
    lines = results_table(records).splitlines()
    assert len(lines) == 2 + len(records)
    assert all(line.startswith("|") and line.endswith("|") for line in lines)


def test_budget_fractions_are_converted_to_layers():
    assert parse_budgets("0.25,0.5,0.75", 12) == [3, 6, 9]
    assert parse_budgets("3, 6,6", 12) == [3, 6]


@pytest.mark.parametrize("text", ["13", "1.5", "-1", ""])
def test_budgets_outside_the_depth_are_rejected(text):
    with pytest.raises(ValueError):
        parse_budgets(text, 12)


def test_keep_masks_keep_k_layers_per_sample():
    masks = keep_masks(5, 12, 4, torch.Generator().manual_seed(0))
    assert masks["per_sample"].sum(1).tolist() == [4.0] * 5
    assert (masks["shared"] == masks["shared"][0]).all()
    assert masks["shared"].sum(1).tolist() == [4.0] * 5


def test_dispatcher_explains_a_missing_benchmark(monkeypatch, capsys):
    monkeypatch.setitem(bench_cli.BENCHMARKS, "absent", ("ldrop.bench.absent_benchmark", "not written yet"))
    assert bench_cli.main(["absent"]) == 2
    assert "not available" in capsys.readouterr().err


def test_dispatcher_rejects_an_unknown_benchmark(capsys):
    assert bench_cli.main(["nonsense"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


def test_machine_info_names_the_device_and_the_libraries():
    from ldrop.budgets.machine import machine_info

    info = machine_info("cpu")
    assert info["device"] == "cpu" and info["device_name"] == info["cpu"]
    assert {"cpu_count", "threads", "torch", "transformers", "python"} <= set(info)
