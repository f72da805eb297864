"""Loggers other than the default TensorBoard one: the run folder follows ``--trainer.default_root_dir``, a resumed
fit continues its folder (and its ``metrics.csv``), and a second logger leaves no empty run folder behind."""

from __future__ import annotations

import csv

import yaml

from ldrop.cli import main
from tests.cli.common import QUICKSTART, SMALL

CSV = ["--trainer.logger", "CSVLogger"]


def _rows(run) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def test_a_csv_logged_run_follows_the_root_folder_and_a_resumed_fit_continues_its_metrics(tmp_path, capsys):
    root = tmp_path / "root"
    fit = ["fit", "--config", QUICKSTART, *SMALL, *CSV, "--trainer.default_root_dir", str(root),
           "--trainer.log_every_n_steps", "1"]
    assert main([*fit, "--trainer.max_epochs", "1"]) == 0
    run = root / "ldrop" / "version_0"  # not ./runs, which only the default logger used to leave
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (tmp_path / "runs").exists()
    assert f"checkpoints written to {run / 'checkpoints'}" in capsys.readouterr().out
    first = _rows(run)
    assert {row["epoch"] for row in first if row.get("val/loss")} == {"0"}
    assert any(key.startswith("lr-AdamW/backbone") for key in first[0])  # named groups, not pg1, pg2, ...

    assert main([*fit, "--trainer.max_epochs", "2", "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]) == 0
    assert sorted(p.name for p in (root / "ldrop").iterdir()) == ["version_0"]  # the same run folder
    rows = _rows(run)
    assert rows[:len(first)] == [{**row, **{k: "" for k in rows[0].keys() - row.keys()}} for row in first]
    assert {row["epoch"] for row in rows if row.get("val/loss")} == {"0", "1"}  # both parts, one file
    saved = yaml.safe_load((run / "config.yaml").read_text())["trainer"]["logger"]["init_args"]
    assert saved["version"] is None and saved["save_dir"] == "runs"  # as given: a new fit from it is a new run


def test_two_loggers_leave_no_folder_without_outputs(tmp_path):
    config = tmp_path / "loggers.yaml"
    config.write_text(yaml.safe_dump({"trainer": {"logger": [
        {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": str(tmp_path), "name": "two"}},
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path), "name": "two"}},
    ]}}))
    common = ["--config", QUICKSTART, *SMALL, "--config", str(config)]
    assert main(["fit", *common, "--trainer.max_epochs", "1"]) == 0
    runs = tmp_path / "two"
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1"]  # one per logger
    out = tmp_path / "predictions.jsonl"
    assert main(["predict", *common, "--ckpt_path", str(runs / "version_0" / "checkpoints" / "last.ckpt"),
                 "--predictions.output", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 16
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1"]  # none left with only hparams.yaml
