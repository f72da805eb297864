"""The methods benchmark on a tiny setting: files, table, resumption, a failing stage's error.

The stages run in this process (``launch`` replaced by a call of ``ldrop.cli.main``): the protocol and the
``ldrop`` arguments are the real ones, without paying a fresh interpreter per stage. One test runs a stage
through the real child process.
"""

from __future__ import annotations

import contextlib
import json
import traceback
from pathlib import Path

import pytest
import torch
import yaml

import ldrop.bench
from ldrop.bench import methods
from ldrop.bench.methods import Variant, main, overrides_to_args

METHOD_DIR = Path(__file__).resolve().parents[2] / "configs" / "method"


def in_process_launch(args, log: Path, threads: int | None = None) -> int:
    """``ldrop <args>`` in this process, its output in ``log``; exit status as the console script's."""
    from ldrop.cli import main as ldrop_main

    with open(log, "w", encoding="utf-8") as handle, contextlib.redirect_stdout(handle), \
            contextlib.redirect_stderr(handle), one_thread():
        try:
            return int(ldrop_main(list(args)) or 0)
        except SystemExit as exit_:
            return int(exit_.code or 0)
        except Exception:  # noqa: BLE001 (the child process would print it and exit 1)
            traceback.print_exc()
            return 1


@contextlib.contextmanager
def one_thread():
    # One torch thread: on a busy shared CPU, spinning OpenMP threads make these tiny fits 10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def bench_config(tmp_path):
    """A benchmark config: a 4-layer tiny WavLM, a few generated mixed-cue items, one epoch per stage."""
    base = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "enable_progress_bar": False, "logger": False,
                    "enable_model_summary": False, "num_sanity_val_steps": 0},
        "model": {"class_path": "ClassificationTask", "init_args": {"backbone": "tiny:wavlm",
                                                                     "optimization": {"lr": 0.002},
                                                                     "budgets": {"validation": [1.0]}}},
        "data": {"class_path": "SyntheticMixedClassificationDataModule",
                 "init_args": {"num_classes": 3, "num_train": 16, "num_val": 8, "num_test": 8, "batch_size": 8,
                               "duration_range": [0.3, 0.4]}},
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    config = {
        "base": [str(tmp_path / "base.yaml")],
        "methods": ["input-conditioned"],
        "variant": [],  # not the shipped default's variants
        "method_dir": str(METHOD_DIR),
        "finetune": {"model.init_args.freeze": "cnn"},
        "sweep": {"controls": True, "repeats": 2, "headroom_candidates": 2},
        "threads": 1,
        "out": str(tmp_path / "out"),
    }
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_variants_parse_from_a_string_or_a_mapping():
    variant = Variant.parse("ic-fbank=input-conditioned:model.init_args.selector.init_args.input=fbank"
                            ":model.init_args.backbone=tiny:wavlm:trainer.max_epochs=2")
    assert variant == Variant("ic-fbank", "input-conditioned", {
        "model.init_args.selector.init_args.input": "fbank", "model.init_args.backbone": "tiny:wavlm",
        "trainer.max_epochs": 2})
    assert Variant.parse("random") == Variant("random", "random", {})
    assert Variant.parse({"name": "a", "method": "static", "overrides": {"x.y": [1, 2]}}).overrides == {"x.y": [1, 2]}
    assert overrides_to_args({"x.y": [1, 2], "z": "fbank", "b": True}) == ["--x.y=[1, 2]", "--z=fbank", "--b=true"]
    with pytest.raises(ValueError, match="variant name"):
        Variant.parse("a/b=random")


def test_the_whole_benchmark_writes_one_table_one_plot_and_resumes(bench_config, monkeypatch, capsys):
    monkeypatch.setattr(ldrop.bench, "launch", in_process_launch)
    # one shipped method and one named variant of another, with an override passed through
    argv = ["--config", str(bench_config), "--variant", "rnd=random:model.init_args.selector.init_args.train_mode=bernoulli"]
    assert main(argv) == 0
    out = bench_config.parent / "out"
    assert (out / "compare.png").stat().st_size > 0 and (out / "methods.md").is_file()
    summary = json.loads((out / "methods.json").read_text())
    assert summary["command"][:4] == ["python", "-m", "ldrop.bench", "methods"] and summary["machine"]["cpu"]
    assert [row["k"] for row in summary["table"]] == [1, 2, 3, 4]
    columns = list(summary["table"][0])
    ic_sweep = json.loads((out / "input-conditioned" / "sweep" / "budget_sweep.json").read_text())
    varies = any(r["distinct_masks"] > 1 for r in ic_sweep)  # the controls repeat the run where it does not
    assert columns == ["k", "input-conditioned",
                       *(["input-conditioned: shuffled", "input-conditioned: most common"] if varies else []),
                       "input-conditioned: input oracle", "input-conditioned: static oracle",
                       "input-conditioned: depth oracle", "rnd", "rnd: depth oracle"]
    assert "±" in str(summary["table"][0]["rnd"])  # random masks: mean ± spread over the repeats
    table = (out / "methods.md").read_text()
    assert table.startswith("| k | input-conditioned | ") and len(table.split("\n\n")[0].strip().splitlines()) == 2 + 4
    assert "At equal GFLOPs" in table
    equal = {(r["run"], r["at"]): r for r in summary["equal_gflops"]}
    assert {("input-conditioned", "N/2"), ("rnd", "N/2")} <= set(equal) and equal[("rnd", "N/2")]["vs best input-blind"] is None
    # rnd: the only input-blind run; where the selector's GFLOPs reach its points, a paired interval
    cells = [r["vs best input-blind"] for (run, _), r in equal.items() if run == "input-conditioned"]
    assert all(c is None or c.endswith("] (rnd)") for c in cells) and any(cells)
    assert {p["against"] for p in summary["paired"]} == {"rnd"}
    assert (out / "rnd" / "fit.log").is_file() and (out / "rnd" / "sweep" / "budget_sweep.csv").is_file()
    fit_args = json.loads((out / "rnd" / "fit.stage.json").read_text())["command"]
    assert "--model.init_args.selector.init_args.train_mode=bernoulli" in fit_args
    assert any(a.startswith("--model.init_args.init_from=") and "stage1" in a for a in fit_args)
    assert all(not r["skipped"] for r in summary["stages"])

    capsys.readouterr()
    assert main(argv) == 0  # a rerun skips every finished stage
    rerun = json.loads((out / "methods.json").read_text())
    assert [r["skipped"] for r in rerun["stages"]] == [True] * 5 + [False]  # only compare redraws
    assert "stage 1: full depth: done earlier" in capsys.readouterr().out

    (out / "rnd" / "test.stage.json").unlink()  # an unfinished stage runs again, the others are kept
    assert main(argv) == 0
    again = {r["stage"]: r["skipped"] for r in json.loads((out / "methods.json").read_text())["stages"]}
    assert again["stage 2: rnd sweep"] is False and again["stage 2: rnd fit"] is True

    base = bench_config.parent / "base.yaml"  # a changed config file: every stage that reads it runs again
    base.write_text(base.read_text().replace("lr: 0.002", "lr: 0.001"))
    assert main(argv) == 0
    assert not any(r["skipped"] for r in json.loads((out / "methods.json").read_text())["stages"])


def test_a_failing_stage_names_the_stage_and_its_log(bench_config, capsys):
    # the real child process: stage 1 gets an option ldrop rejects
    argv = ["--config", str(bench_config), "--full_depth", '{"model.init_args.freeze": "everything"}']
    assert main(argv) == 1
    error = capsys.readouterr().err
    log = bench_config.parent / "out" / "stage1" / "fit.log"
    assert "stage 'stage 1: full depth' failed" in error and str(log) in error
    assert "freeze" in log.read_text()
    assert not (bench_config.parent / "out" / "stage1" / "fit.stage.json").exists()


def test_an_unknown_method_fails_before_any_stage(bench_config, capsys):
    assert main(["--config", str(bench_config), "--methods", '["no-such-method"]']) == 1
    assert "no-such-method.yaml" in capsys.readouterr().err
    assert not (bench_config.parent / "out" / "stage1").exists()


def test_a_misspelt_variant_option_fails_before_any_stage(bench_config, capsys, monkeypatch):
    # the real child process (ldrop fit --print_config): the key is named in one line, nothing is trained
    argv = ["--config", str(bench_config), "--variant", "rnd=random:model.init_args.selector.init_args.train_mod=x"]
    assert main(argv) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("ldrop.bench methods: error: checking the options of variant 'rnd': "
                            "--model.init_args.selector.init_args.train_mod 'x': RandomSelector has no option "
                            "'train_mod'") and len(error.splitlines()) == 1, error
    assert not (bench_config.parent / "out" / "stage1").exists()
    monkeypatch.setenv("LDROP_DEBUG", "1")  # the child's traceback is shown, not lost with its log
    assert main(argv) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_an_output_folder_under_a_file_is_one_line_before_any_stage(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    assert main(["--out", str(tmp_path / "afile" / "bench")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("ldrop.bench methods: error:") and "not a folder" in error and "Traceback" not in error


def test_the_default_configs_parse_and_instantiate(tmp_path, monkeypatch):
    from ldrop.bench.methods import _method_file, build_parser
    from ldrop.data import SyntheticMixedClassificationDataModule
    from tests.cli.test_configs import _instantiate

    root = METHOD_DIR.parents[1]
    monkeypatch.chdir(root)  # the default config's paths are relative to the repository root
    args = build_parser().parse_args([])
    assert args.methods == methods.DEFAULT_METHODS and args.finetune["model.init_args.freeze"] == "cnn"
    for name in args.methods:
        assert Path(_method_file(args.method_dir, name)).is_file()
    cli = _instantiate([a for path in args.base for a in ("--config", path)], tmp_path)
    assert cli.model.num_layers == 8 and isinstance(cli.datamodule, SyntheticMixedClassificationDataModule)
    for path in [root / p for p in args.base] + [root / methods.DEFAULT_CONFIG]:
        lines = [line.strip() for line in path.read_text().splitlines()]
        assert lines[0].startswith("#")
        undocumented = [line for line in lines if line and not line.startswith(("#", "- ", "class_path"))
                        and not line.endswith(":") and "#" not in line
                        and line.split(":")[0] not in {"accelerator", "log_every_n_steps", "seed_everything"}]
        assert not undocumented, f"{path.name}: keys without a comment: {undocumented}"


def test_the_table_has_a_row_per_budget_and_controls_only_where_they_say_something():
    def row(k, acc, masks, **extra):
        return {"budget_layers": k, "distinct_masks": masks, "acc": acc, **extra}

    sweeps = {
        "full": [row(2, 0.9, 1)],
        "ic": [row(k, 0.5, 3, acc_shuffled=0.4, acc_most_common=0.45, acc_input_oracle=0.7, acc_static_oracle=0.6)
               for k in (1, 2)],
        "schedule": [row(k, 0.5, 1, acc_shuffled=0.5, acc_most_common=0.5, acc_input_oracle=0.6,
                         acc_static_oracle=0.55) for k in (1, 2)],
        "random": [row(k, 0.3, 8, acc_std=0.01) for k in (1, 2)],
    }
    rows, metric = methods.methods_table(sweeps)
    assert metric == "acc" and [r["k"] for r in rows] == [1, 2]
    assert list(rows[0]) == ["k", "full", "ic", "ic: shuffled", "ic: most common", "ic: input oracle",
                             "ic: static oracle", "schedule", "schedule: input oracle", "schedule: static oracle",
                             "random"]
    assert rows[0]["full"] is None and rows[1]["full"] == 0.9  # the full model: at k = N only
    assert rows[0]["random"] == "0.3000 ± 0.0100"


def test_the_equal_gflops_table_compares_with_the_best_input_blind_run_at_each_point_and_with_full():
    def rows(name, acc, layers=(1, 2, 3, 4)):
        return [{"method": name, "budget_layers": k, "executed_layers": float(k if len(layers) > 1 else 4),
                 "gflops_per_utterance": 1.0 + k, "acc": acc(k)} for k in layers]

    sweeps = {"full": rows("full", lambda k: 0.9, (4,)), "ic": rows("ic", lambda k: 0.5 + 0.1 * k),
              "static": rows("static", lambda k: 0.3 + 0.16 * k), "sched": rows("sched", lambda k: 0.45 + 0.1 * k)}
    equal, paired = methods.equal_gflops_table(sweeps, {}, "acc", {"full": "full", "ic": "input-conditioned",
                                                                   "static": "static", "sched": "schedule"})
    at = {(r["run"], r["at"]): r for r in equal}
    assert at[("ic", "N/4")]["vs best input-blind"] == "+5.0 (sched)"  # sched 0.55 beats static 0.45 at k=1
    assert at[("ic", "3N/4")]["vs best input-blind"] == "+2.0 (static)"  # at k=3 static (0.78) beats sched
    assert at[("ic", "N/2")]["vs full"] == "-20.0" and at[("full", "N/2")]["acc"] is None and not paired


def test_the_equal_gflops_table_of_a_minimised_metric_picks_the_lowest_blind_run_in_its_units():
    def rows(name, mae):
        return [{"method": name, "budget_layers": k, "executed_layers": float(k), "gflops_per_utterance": 1.0 + k,
                 "mae": mae(k)} for k in (1, 2, 3, 4)]

    sweeps = {"ic": rows("ic", lambda k: 5 - k), "static": rows("static", lambda k: 7 - 1.6 * k),
              "sched": rows("sched", lambda k: 5.5 - k)}
    equal, _ = methods.equal_gflops_table(sweeps, {}, "mae", {"ic": "input-conditioned", "static": "static",
                                                              "sched": "schedule"}, higher_is_better=False, fraction=False)
    at = {(r["run"], r["at"]): r for r in equal}
    assert at[("ic", "N/4")]["vs best input-blind"] == "-0.5 (sched)"  # sched 4.5 beats static 5.4 at k=1
    assert at[("ic", "3N/4")]["vs best input-blind"] == "-0.2 (static)"  # at k=3 static (2.2) beats sched (2.5)
