"""Smoke test of the overhead benchmark (no timing assertions: figures belong in the README)."""

from __future__ import annotations

import json

from ldrop.bench.overhead import METHODS, main


def test_overhead_benchmark_writes_selector_and_training_records(tmp_path, capsys):
    out = tmp_path / "overhead.json"
    assert main(["--size", "tiny", "--batch-size", "2", "--seconds", "0.5", "--repeats", "1", "--warmup", "0",
                 "--threads", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["selector"]["selector_params"] > 0 and result["selector"]["flops_pct"] > 0
    assert [r["method"] for r in result["training"]] == list(METHODS)
    assert result["training"][0]["relative_to_full"] == 1.0
    progress = [line for line in capsys.readouterr().out.splitlines() if line.startswith("training step ")]
    assert len(progress) == len(METHODS) and progress[-1].startswith(f"training step {len(METHODS)}/{len(METHODS)}:")
