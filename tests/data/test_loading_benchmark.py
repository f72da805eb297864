"""ldrop.bench.dataloading: the loading benchmark runs on fixture-scale data and reports audio throughput."""

from __future__ import annotations

import json

import pytest

from ldrop.bench.dataloading import DATASETS, benchmark_loading, main


def test_benchmark_reports_audio_throughput_of_the_train_loader(tmp_path):
    result = benchmark_loading("speechcommands", workers=0, epochs=1, scale=0.1, root=tmp_path)
    assert result["items"] > 0 and result["batches"] > 0
    assert result["audio_seconds"] > 0 and result["audio_seconds_per_second"] > 0
    assert list(tmp_path.iterdir()) == []  # the temporary tree is removed


def test_main_writes_json_results(tmp_path, capsys):
    out = tmp_path / "loading.json"
    assert (
        main(
            [
                "--dataset",
                "synthetic-ctc",
                "--workers",
                "0",
                "--epochs",
                "1",
                "--scale",
                "0.05",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert [r["dataset"] for r in report["results"]] == ["synthetic-ctc"]
    assert "cpu" in report["machine"]
    assert "| synthetic-ctc |" in capsys.readouterr().out


def test_unknown_dataset_is_rejected():
    with pytest.raises(ValueError, match="unknown dataset"):
        benchmark_loading("timit")
    assert "all" not in DATASETS
