"""A benchmark given a bad count, size or input says so in one line and exits 2, as ``ldrop`` does: argparse's
usage error at parse time, or one ``python -m ldrop.bench <name>: error:`` line for what the benchmark itself
finds (a missing checkpoint, an unknown family, a budget past the model's depth); no traceback."""

from __future__ import annotations

import pytest

from ldrop.bench.__main__ import main


@pytest.mark.parametrize(("argv", "says"), [
    (["speedup", "--repeats", "0"], "argument --repeats: must be a whole number >= 1, got 0"),
    (["speedup", "--seconds", "-1"], "argument --seconds: must be a number > 0, got -1"),
    (["speedup", "--threads", "0"], "argument --threads: must be a whole number >= 1, got 0"),
    (["loading", "--epochs", "0"], "argument --epochs: must be a whole number >= 1, got 0"),
    (["loading", "--workers", "-1"], "argument --workers: must be a whole number >= 0, got -1"),
    (["overhead", "--batch-size", "-2"], "argument --batch-size: must be a whole number >= 1, got -2"),
    (["control", "--load-procs", "-1"], "argument --load-procs: must be a whole number >= 0, got -1"),
    (["gpu", "--repeats", "-1"], "argument --repeats: must be a whole number >= 1, got -1"),
    (["precision", "--seeds", "[]"], "--seeds and --precisions need at least one value each"),
])
def test_a_bad_count_or_size_is_a_usage_error(argv, says, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # what a benchmark that ran anyway would write stays there
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err, err


@pytest.mark.parametrize(("argv", "says"), [
    (["control", "--ckpt", "missing.ckpt"], "no model at 'missing.ckpt'"),
    (["onnx_parity", "--families", "foo", "--size", "tiny"], "unknown backbone family 'foo'"),
    (["speedup", "--size", "tiny", "--budgets", "99", "--repeats", "1"], "budget 99 is outside 0..4 layers"),
])
def test_what_a_benchmark_finds_wrong_is_one_line(argv, says, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LDROP_DEBUG", raising=False)
    assert main([*argv, "--json", str(tmp_path / "out.json")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"python -m ldrop.bench {argv[0]}: error: "), lines
    assert says in lines[0] and not (tmp_path / "out.json").exists(), lines
