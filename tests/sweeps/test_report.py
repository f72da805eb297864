"""Sweep files: written atomically, read back, compared."""

from __future__ import annotations

import json

import pytest

from ldrop.sweeps import compare_sweeps, load_sweep, markdown_table, primary_metric, write_sweep

ROWS = [
    {"method": "m", "budget_layers": k, "budget_fraction": k / 4, "executed_layers": float(k),
     "gflops_per_utterance": 1.0 + k, "acc": 0.5 + 0.1 * k, "acc_std": 0.01}
    for k in (1, 2, 4)
]


def test_write_sweep_writes_csv_json_and_plots(tmp_path):
    paths = write_sweep(ROWS, tmp_path, layer_usage=[[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    assert {p.name for p in paths.values()} == {"budget_sweep.csv", "budget_sweep.json", "budget_sweep.png",
                                               "layer_usage.png"}
    assert json.loads(paths["json"].read_text()) == ROWS
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_csv_and_json_read_back_the_same_rows(tmp_path):
    write_sweep(ROWS, tmp_path)
    assert load_sweep(tmp_path / "budget_sweep.csv") == load_sweep(tmp_path / "budget_sweep.json") == ROWS


def test_a_run_directory_is_searched_for_its_sweep(tmp_path):
    write_sweep(ROWS, tmp_path / "ldrop" / "version_3")
    assert load_sweep(tmp_path) == ROWS


def test_missing_sweep_names_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match="budget_sweep"):
        load_sweep(tmp_path)


def test_primary_metric_skips_base_and_derived_columns():
    assert primary_metric(ROWS) == "acc"


def test_markdown_table_has_a_row_per_budget():
    table = markdown_table(ROWS, ["budget_layers", "acc"])
    assert table.splitlines()[0] == "| budget_layers | acc |"
    assert len(table.splitlines()) == 2 + len(ROWS)


def test_compare_labels_each_run(tmp_path):
    write_sweep(ROWS, tmp_path / "a")
    write_sweep([{**r, "method": "n", "acc": r["acc"] - 0.1} for r in ROWS], tmp_path / "b")
    table, plot = compare_sweeps([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    assert plot.is_file() and "| m |" in table and "| n |" in table
