"""``python -m ldrop.bench gpu`` in its small mode on CPU: every phase runs and lands in one JSON and one summary.

No timing is asserted: the figures of a CPU run under load mean nothing; the point is that the command a
GPU lease will run once works end to end.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from ldrop.bench import __main__ as bench_cli
from ldrop.bench.gpu import (
    _SMALL_QUICKSTART,
    Run,
    build_parser,
    run_quickstart,
    settings_for,
    summary_markdown,
)

#: The command's own default: the quickstart at bf16-mixed, as on a GPU.
PRECISION = "bf16-mixed"
#: The repository's quickstart config (the command's default is the one under the current folder).
QUICKSTART = str(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "gpu"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = bench_cli.main(["gpu", "--small", "--device", "cpu", "--out", str(out), "--precision", PRECISION,
                                 "--quickstart-config", QUICKSTART])
    return status, json.loads((out / "gpu.json").read_text()), (out / "gpu.md").read_text(), stdout.getvalue(), out


def _phase(report: dict, name: str) -> dict:
    return next(p for p in report["phases"] if p["name"] == name)


def test_every_phase_runs_and_the_command_succeeds(small_run):
    status, report, _, _, _ = small_run
    assert [(p["name"], p["status"], p.get("error")) for p in report["phases"] if p["status"] != "ok"] == []
    assert status == 0
    names = [p["name"] for p in report["phases"]]
    assert names == ["machine", "build wavlm tiny", "speedup wavlm tiny b1", "speedup wavlm tiny b2",
                     "host syncs wavlm tiny", "profile", "quickstart"]
    assert report["finished"] is True and report["mode"] == "small" and report["device"] == "cpu"


def test_the_json_names_the_machine(small_run):
    machine = small_run[1]["machine"]
    assert {"cpu", "cpu_count", "torch", "transformers", "lightning", "load_average_1min"} <= set(machine)
    assert "load_average_1min_after" in small_run[1]


def test_speedup_phases_hold_per_sample_and_shared_realized_over_ideal(small_run):
    for batch in (1, 2):
        records = _phase(small_run[1], f"speedup wavlm tiny b{batch}")["result"]
        assert [r["budget"] for r in records] == [1, 2, 3]
        for record in records:
            assert record["batch_size"] == batch and record["num_layers"] == 4
            assert set(record["realized_over_ideal"]) == {"per_sample", "shared"}


def test_host_syncs_of_the_engine_are_at_most_one_per_forward(small_run):
    syncs = _phase(small_run[1], "host syncs wavlm tiny")["result"]
    assert syncs["layers"] == 4 and syncs["cuda_sync_debug"] is None  # no CUDA here
    assert syncs["counted_in_engine"] <= 1
    assert syncs["counted"] == sum(syncs["where"].values())


def test_profile_phase_runs_ldrop_profile_and_keeps_its_fit(small_run):
    profile = _phase(small_run[1], "profile")["result"]
    assert Path(profile["path"]).is_file()
    assert {"overhead", "per_frame", "per_frame_sq"} <= set(profile["layer"])
    assert profile["held_out_batches"] == 2


def test_quickstart_phase_fits_then_sweeps_every_budget(small_run):
    quickstart = _phase(small_run[1], "quickstart")["result"]
    assert quickstart["precision"] == PRECISION and quickstart["fit_steps"] == 2
    assert [row["budget_layers"] for row in quickstart["sweep"]] == [1, 2, 3, 4]
    assert all(0.0 <= row["acc"] <= 1.0 for row in quickstart["sweep"])
    assert Path(quickstart["folder"]).is_relative_to(small_run[4])


def test_progress_lines_name_each_phase_with_the_elapsed_time(small_run):
    lines = small_run[3].splitlines()
    for name in ("speedup wavlm tiny b1", "host syncs wavlm tiny", "profile", "quickstart"):
        assert any(line.startswith("[") and " s] " in line and f"{name}: done in" in line for line in lines), name


def test_markdown_summary_has_a_table_per_phase(small_run):
    markdown = small_run[2]
    assert markdown.startswith("**`python -m ldrop.bench gpu --small")
    for heading in ("Speed-up of sparse gated execution", "Host syncs of one sparse inference forward",
                    "Device profile", f"Quickstart at {PRECISION}"):
        assert heading in markdown, heading
    assert "| wavlm tiny | 2 | 3 of 4 |" in markdown
    assert "gated.py:" in markdown  # where the syncs are


def _settings(tmp_path: Path, time_limit: float = 0.0) -> argparse.Namespace:
    return settings_for(build_parser().parse_args(["--small", "--device", "cpu", "--out", str(tmp_path), "--time-limit",
                                                   str(time_limit), "--quickstart-config", str(tmp_path / "none.yaml")]))


def test_a_failing_phase_is_recorded_and_the_next_one_still_runs(tmp_path):
    run = Run(_settings(tmp_path), [], log=lambda line: None)

    def broken() -> None:
        raise RuntimeError("CUDA error: an illegal memory access")

    assert run.phase("broken", broken) is None
    assert run.phase("fine", lambda: {"value": 1}) == {"value": 1}
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert [(p["name"], p["status"]) for p in report["phases"]] == [("broken", "failed"), ("fine", "ok")]
    assert report["phases"][0]["error"] == "RuntimeError: CUDA error: an illegal memory access"
    assert report["finished"] is False  # until the last phase
    assert "| broken | failed | RuntimeError: CUDA error" in (tmp_path / "gpu.md").read_text()


def test_a_failed_ldrop_command_is_one_row_naming_its_log_and_its_last_line(tmp_path):
    from ldrop.bench import run_ldrop

    run = Run(_settings(tmp_path), [], log=lambda line: None)
    run.phase("bad fit", lambda: run_ldrop(["fit", "--no-such-option"], tmp_path / "fit.log"))
    error = run.report["phases"][0]["error"]
    assert error.startswith("StageError: `ldrop fit --no-such-option` failed (exit status 2)") and "fit.log" in error
    row = next(line for line in (tmp_path / "gpu.md").read_text().splitlines() if line.startswith("| bad fit |"))
    assert "fit.log ... " in row and row.endswith(" |") and row.split(" ... ")[-1].strip(" |") in error.splitlines()[-1]


def test_phases_past_the_time_limit_are_skipped_and_recorded(tmp_path):
    run = Run(_settings(tmp_path, time_limit=1e-9), [], log=lambda line: None)
    ran = []
    run.phase("late", lambda: ran.append(1))
    assert ran == []
    assert run.report["phases"][0]["status"] == "skipped" and "time limit" in run.report["phases"][0]["error"]


def test_a_missing_quickstart_config_is_one_line_before_any_phase(tmp_path, capsys):
    # it was the last phase's failure, after the GPU phases had run (minutes of a lent machine)
    with pytest.raises(SystemExit) as exit_:
        bench_cli.main(["gpu", "--small", "--device", "cpu", "--out", str(tmp_path / "out"), "--quickstart-config",
                        str(tmp_path / "absent.yaml")])
    assert exit_.value.code == 2 and not (tmp_path / "out").exists()
    assert f"--quickstart-config: no file at {tmp_path / 'absent.yaml'}" in capsys.readouterr().err


def test_the_quickstart_phase_records_a_config_that_went_missing(tmp_path):
    config = tmp_path / "quickstart.yaml"
    config.write_text("{}")
    settings = settings_for(build_parser().parse_args(
        ["--small", "--device", "cpu", "--out", str(tmp_path), "--quickstart-config", str(config)]))
    config.unlink()  # removed while the earlier phases ran
    with pytest.raises(FileNotFoundError, match="no quickstart config at .*quickstart.yaml"):
        run_quickstart(settings, print)


def test_the_default_quickstart_config_is_the_current_folders_not_the_installed_packages(tmp_path, monkeypatch, capsys):
    # an installed wheel has no configs/ beside the package: the default is read from where the command runs
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        bench_cli.main(["gpu", "--small", "--device", "cpu", "--out", "out"])
    assert "no file at configs/quickstart.yaml" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_asking_for_cuda_without_it_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench_cli.main(["gpu", "--device", "cuda", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert "no CUDA device is available" in capsys.readouterr().err
    assert not (tmp_path / "gpu.json").exists()


@pytest.mark.parametrize("argv, message", [(["--skip", "speedup,tea"], "unknown phase"),
                                           (["--sizes", "huge"], "unknown size"),
                                           (["--batch-sizes", "1,many"], "invalid literal"),
                                           (["--budgets", "9"], "outside 0..4 layers")])
def test_bad_options_are_named(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        bench_cli.main(["gpu", "--small", "--out", str(tmp_path), *argv])
    assert message in capsys.readouterr().err


def test_summary_of_an_empty_report_still_names_the_command():
    report = {"command": "python -m ldrop.bench gpu", "mode": "full", "dtype": "bf16", "started": "now",
              "finished": False, "elapsed_s": 1.0, "machine": {}, "phases": []}
    assert summary_markdown(report).startswith("**`python -m ldrop.bench gpu`** (full mode, bf16)")


def test_the_help_states_the_small_quickstart_the_command_runs():
    small = dict(zip(_SMALL_QUICKSTART[::2], _SMALL_QUICKSTART[1::2], strict=True))
    text = " ".join(build_parser().format_help().split())
    assert f"small: {small['--trainer.max_steps']} steps on {small['--data.init_args.num_train']} clips)" in text
