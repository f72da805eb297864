"""The ldrop command end to end: fit, test (budget sweep), predict, compare, export, resume, DDP."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from ldrop.cli import main
from ldrop.runtime.checkpoints import load_task_checkpoint
from ldrop.sweeps import load_sweep
from tests.cli.common import QUICKSTART, SMALL
from tests.cli.common import fit_quickstart as _fit


def test_fit_writes_best_and_last_checkpoints_and_the_resolved_config(trained):
    names = {p.name for p in (trained / "checkpoints").iterdir()}
    assert "last.ckpt" in names and any(n.startswith("best-") for n in names)
    # its logger's version is the run's own: a new fit from this config gets a new folder, not this one
    assert yaml.safe_load((trained / "config.yaml").read_text())["trainer"]["logger"]["init_args"]["version"] is None
    assert not list((trained / "checkpoints").glob(".*.tmp"))  # atomic writes leave no temporaries


def test_test_runs_the_budget_sweep_and_writes_every_file(trained, tmp_path):
    main(["test", "--config", QUICKSTART, *SMALL, "--trainer.logger.init_args.save_dir", str(tmp_path),
          "--ckpt_path", str(trained / "checkpoints" / "last.ckpt"), "--sweep.controls", "true"])
    run = next((tmp_path / "ldrop").glob("version_*"))
    for name in ("budget_sweep.csv", "budget_sweep.json", "budget_sweep.png", "layer_usage.png"):
        assert (run / name).is_file(), name
    rows = load_sweep(run)
    assert [r["budget_layers"] for r in rows] == [1, 2, 3, 4]
    assert all(r["executed_layers"] == r["budget_layers"] for r in rows)
    assert all(0.0 <= r["acc"] <= 1.0 and r["gflops_per_utterance"] > 0 for r in rows)
    assert rows[0]["gflops_per_utterance"] < rows[-1]["gflops_per_utterance"]
    assert {"acc_shuffled", "acc_most_common", "distinct_masks", "mean_hamming", "top_mask_share"} <= set(rows[0])


def test_test_budgets_argument_picks_the_swept_budgets(trained, tmp_path, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["test", "--config", QUICKSTART, *SMALL, "--trainer.logger.init_args.save_dir", str(tmp_path),
              "--ckpt_path", str(trained / "checkpoints" / "last.ckpt"), "--sweep.budgets", "[0.5, 1.0]"])
    run = next((tmp_path / "ldrop").glob("version_*"))
    rows = load_sweep(run)
    assert [(r["budget_layers"], r["budget_fraction"]) for r in rows] == [(2, 0.5), (4, 1.0)]
    assert f"budget sweep written to {run}" in capsys.readouterr().out  # says where the sweep files are
    assert not [w for w in caught if "callbacks used to create the checkpoint" in str(w.message)]
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]


def test_a_bad_budget_is_one_line_on_stderr_with_exit_status_2(tmp_path, capsys, monkeypatch):
    args = ["test", "--config", QUICKSTART, *SMALL, "--trainer.logger.init_args.save_dir", str(tmp_path),
            "--sweep.budgets", "[0]"]
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "Seed set to" not in line]
    assert len(err) == 1 and err[0].startswith("ldrop: error: ") and "budget must be between 1 and 4" in err[0]
    assert "Namespace(" not in err[0]
    monkeypatch.setenv("LDROP_DEBUG", "1")  # the full traceback on request
    with pytest.raises(Exception, match="budget must be between 1 and 4"):
        main(args)


def test_version_and_test_help_name_what_they_should(capsys):
    import ldrop

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ldrop {ldrop.__version__}" and ldrop.__version__
    with pytest.raises(SystemExit):
        main(["test", "--help"])
    assert "budget sweep" in " ".join(capsys.readouterr().out.split())


def test_version_imports_neither_torch_nor_lightning():
    # the console script's module is light: `ldrop --version` answers without loading the training stack
    code = ("import sys; from ldrop.cli import main; assert main(['--version']) == 0; "
            "print(sorted(m for m in ('torch', 'lightning', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[2]).stdout
    version, loaded = out.splitlines()
    assert version.startswith("ldrop ") and loaded == "[]"


def test_default_root_dir_moves_the_default_logger_and_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", QUICKSTART, *SMALL, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1",
          "--trainer.num_sanity_val_steps", "0", "--trainer.default_root_dir", str(tmp_path / "root")])
    assert (tmp_path / "root" / "ldrop" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "runs").exists()


def test_a_selector_option_on_the_command_line_wins_over_the_checkpoint(trained, tmp_path):
    # the checkpoint was trained in top-k mode; --ckpt_path loads its weights, the command line its method
    main(["test", "--config", QUICKSTART, *SMALL, "--trainer.logger.init_args.save_dir", str(tmp_path),
          "--ckpt_path", str(trained / "checkpoints" / "last.ckpt"),
          "--model.init_args.selector.init_args.mode", "threshold", "--sweep.budgets", "[2, 4]"])
    rows = load_sweep(next((tmp_path / "ldrop").glob("version_*")))
    assert [(r["method"], r["budget_layers"]) for r in rows] == [("InputConditioned-threshold", 2),
                                                                 ("InputConditioned-threshold", 4)]


def test_predict_writes_one_json_line_per_input(trained, tmp_path):
    out = tmp_path / "pred.jsonl"
    main(["predict", "--config", QUICKSTART, *SMALL, "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path),
          "--ckpt_path", str(trained / "checkpoints" / "last.ckpt"), "--model.init_args.predict_budget", "2",
          "--predictions.output", str(out)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 16
    assert all(len(r["executed_layers"]) == 2 and r["gflops"] > 0 and isinstance(r["output"], str) for r in records)


@pytest.fixture(scope="module")
def tested(trained, tmp_path_factory) -> Path:
    """The run folder of 'ldrop test' with the quickstart's own top-k selector on the trained checkpoint, shared by
    the compare tests (which only read it)."""
    save_dir = tmp_path_factory.mktemp("tested")
    main(["test", "--config", QUICKSTART, *SMALL, "--trainer.logger.init_args.save_dir", str(save_dir),
          "--ckpt_path", str(trained / "checkpoints" / "last.ckpt")])
    return next((save_dir / "ldrop").glob("version_*"))


def test_compare_overlays_sweeps_in_one_plot_and_table(tested, tmp_path, capsys):
    run = tested
    assert main(["compare", str(run), str(run / "budget_sweep.csv"), "--labels", "selector,again",
                 "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "compare.png").is_file()
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| selector |" in table and "| again |" in table
    assert "selector" in capsys.readouterr().out


def test_compare_two_runs_at_equal_gflops_with_paired_intervals(trained, tested, tmp_path, capsys):
    main(["test", "--config", QUICKSTART, *SMALL, "--trainer.logger.init_args.save_dir", str(tmp_path / "thr"),
          "--ckpt_path", str(trained / "checkpoints" / "last.ckpt"), "--model.init_args.selector.init_args.mode",
          "threshold"])
    runs = [str(tested), str(next((tmp_path / "thr" / "ldrop").glob("version_*")))]
    assert (Path(runs[0]) / "budget_items.json").is_file()
    assert main(["compare", *runs, "--labels", "topk,thr", "--reference", "topk", "--oracles",
                 "--out", str(tmp_path / "cmp")]) == 0
    summary = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert summary["reference"] == "topk" and "At equal GFLOPs" in (tmp_path / "cmp" / "compare.md").read_text()
    thr = {r["at"]: r for r in summary["equal_gflops"] if r["run"] == "thr"}
    assert set(thr) <= {"N/4", "N/2", "3N/4", "AUC"} and "N/2" in thr
    for point in summary["paired"]:  # same test items: every difference has its paired interval
        assert point["run"] == "thr" and point["low"] - 1e-9 <= point["diff"] <= point["high"] + 1e-9
    assert any("[" in str(r["vs topk"]) for r in thr.values())
    assert "topk" in capsys.readouterr().out
    assert main(["compare", *runs, "--reference", "nope", "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--reference 'nope'" in err[0]


def test_compare_names_a_missing_run_in_one_line(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ldrop: error: ") and "nope" in err[0]


def test_checkpoint_reload_gives_identical_predictions(trained):
    model = load_task_checkpoint(str(trained / "checkpoints" / "last.ckpt")).eval()
    again = load_task_checkpoint(str(trained / "checkpoints" / "last.ckpt")).eval()
    waves = torch.randn(3, 8000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, keep_a = model(waves, None, 2)
        b, keep_b = again(waves, None, 2)
    assert torch.equal(a, b) and torch.equal(keep_a, keep_b)


def test_export_gives_a_backbone_directory_that_a_new_run_starts_from(trained, tmp_path):
    out = tmp_path / "exported"
    assert main(["export", str(trained / "checkpoints" / "last.ckpt"), str(out)]) == 0
    assert (out / "config.json").is_file() and (out / "ldrop_task_state.pt").is_file()
    model = load_task_checkpoint(str(trained / "checkpoints" / "last.ckpt"))
    from ldrop.tasks import ClassificationTask

    second = ClassificationTask(labels=model.class_names, backbone=str(out),
                                init_from=str(out / "ldrop_task_state.pt"), selector=model.hparams.selector)
    waves = torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model.eval()(waves, None, 4)[0], second.eval()(waves, None, 4)[0], atol=1e-6)


def test_export_fits_the_selector_on_the_runs_validation_split_as_predict_does(trained, tmp_path, capsys):
    from ldrop.runtime import load_model
    from ldrop.runtime.checkpoints import config_datamodule

    checkpoint = trained / "checkpoints" / "last.ckpt"
    assert not load_model(checkpoint).selector.calibrated  # a checkpoint from training holds no fit
    assert main(["export", str(checkpoint), str(tmp_path / "exported")]) == 0
    assert "fitting" in capsys.readouterr().out
    exported = load_model(tmp_path / "exported")
    # what 'ldrop predict' fits first: the same fit, on the validation split of the run's datamodule
    reference = load_model(checkpoint)
    data = config_datamodule(trained / "config.yaml")
    data.setup("validate")
    reference.calibrate_on_dataloader(data.val_dataloader())
    assert exported.selector.calibrated and reference.selector.calibrated
    assert exported.selector.report() == reference.selector.report()
    waves = torch.randn(6, 8000, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for k in range(1, exported.num_layers):
            assert torch.equal(exported(waves, None, k)[1], reference(waves, None, k)[1]), k
    pytest.importorskip("onnxscript", reason="the ONNX exporter needs the optional extra ldrop[onnx]")
    assert main(["export", str(checkpoint), str(tmp_path / "onnx"), "--format", "onnx", "--no-check"]) == 0
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())["selector"]
    assert manifest["uses_input"] == reference.selector.fallback.uses_input.tolist()
    assert manifest["blind_masks"] == reference.selector.fallback.blind_masks.int().tolist()
    capsys.readouterr()
    assert main(["export", str(tmp_path / "exported"), str(tmp_path / "again"), "--format", "onnx", "--no-check"]) == 0
    assert "fitting" not in capsys.readouterr().out  # the folder holds its fit, as the README says
    assert json.loads((tmp_path / "again" / "manifest.json").read_text())["selector"] == manifest


@pytest.mark.parametrize("args, message", [
    (["--device", "gpu"], "--device gpu: not a device (cpu, cuda or cuda:N)"),
    (["--device", "mps"], "--device mps: the fit runs on cpu, cuda or cuda:N"),  # a torch device, not one here
    (["--device", "cuda:0", "--no-fit"], "--device cuda:0 is where the validation fit runs, and --no-fit skips it"),
])
def test_a_bad_export_device_is_one_line_before_anything_is_loaded(trained, tmp_path, capsys, args, message):
    assert main(["export", str(trained / "checkpoints" / "last.ckpt"), str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "out").exists()


def test_the_exports_validation_fit_runs_on_the_device_asked_for_and_the_export_on_the_cpu(trained, tmp_path,
                                                                                          monkeypatch):
    """At real size the fit takes minutes on a CPU (a base model, 35 clips: 3.3 min): ``--device cuda`` moves it."""
    import ldrop.cli.export as export
    from ldrop.tasks import LayerDropTask

    moves, fitted_on = [], []
    monkeypatch.setattr(export.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(export.torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(LayerDropTask, "to", lambda self, *a, **k: moves.append(("to", *a)) or self)
    monkeypatch.setattr(LayerDropTask, "cpu", lambda self: moves.append(("cpu",)) or self)
    monkeypatch.setattr(export, "fit_on_run_validation_data",
                        lambda model, config, say: fitted_on.append(list(moves)) or True)
    assert main(["export", str(trained / "checkpoints" / "last.ckpt"), str(tmp_path / "out"), "--device", "cuda"]) == 0
    [before_fit] = fitted_on
    assert before_fit[-1] == ("to", torch.device("cuda")) and moves[-1] == ("cpu",)


def test_export_of_a_checkpoint_away_from_its_run_warns_and_takes_the_config_as_an_option(trained, tmp_path):
    from ldrop.runtime import load_model

    alone = tmp_path / "elsewhere" / "last.ckpt"
    alone.parent.mkdir()
    shutil.copy(trained / "checkpoints" / "last.ckpt", alone)
    with pytest.warns(UserWarning, match="no run config is beside the checkpoint.*--config"):
        assert main(["export", str(alone), str(tmp_path / "unfitted")]) == 0
    assert not load_model(tmp_path / "unfitted").selector.calibrated
    assert main(["export", str(alone), str(tmp_path / "fitted"), "--config", str(trained / "config.yaml")]) == 0
    assert load_model(tmp_path / "fitted").selector.calibrated
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as asked: no fit, and no warning about it
        assert main(["export", str(trained / "checkpoints" / "last.ckpt"), str(tmp_path / "raw"), "--no-fit"]) == 0
    assert not load_model(tmp_path / "raw").selector.calibrated


@pytest.mark.parametrize("target", ["file", "folder"])
def test_export_never_writes_into_a_file_or_a_folder_that_holds_something(trained, tmp_path, capsys, target):
    out = tmp_path / "out"
    if target == "file":
        out.write_text("keep me\n")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("keep me\n")
    assert main(["export", str(trained / "checkpoints" / "last.ckpt"), str(out)]) == 2
    err = capsys.readouterr().err
    assert f"'{out}' already exists and is not an empty folder" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == (["out"] if target == "file" else ["notes.txt", "out"])


def test_export_options_of_the_onnx_format_are_refused_without_it(trained, tmp_path, capsys):
    assert main(["export", str(trained / "checkpoints" / "last.ckpt"), str(tmp_path / "out"), "--quantize",
                 "dynamic"]) == 2
    assert "--quantize applies to --format onnx only" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_layer_dropping_run_starts_from_a_full_depth_checkpoint(tmp_path):
    full = _fit(tmp_path / "full", "--model.init_args.selector", "null")
    run = _fit(tmp_path / "drop", "--model.init_args.init_from", str(full / "checkpoints" / "last.ckpt"),
               "--trainer.max_epochs", "1")
    assert (run / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("folder", ["ldrop/version_3", "moved/my run ü"])  # a run folder renamed or moved
def test_interrupted_fit_resumes_from_last_checkpoint(trained, tmp_path, folder):
    run = tmp_path / folder
    shutil.copytree(trained, run)
    main(["fit", "--config", QUICKSTART, *SMALL, "--trainer.max_epochs", "2",
          "--trainer.logger.init_args.save_dir", str(tmp_path / "other"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 1  # continued from the first run's epoch 0, in the same run folder
    assert not (tmp_path / "other").exists()
    # its config is the one given: a run from it is a new one in a folder of its own (it was pinned to this folder,
    # resumed it again or, with --ckpt_path null, overwrote its checkpoints)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["ckpt_path"] is None and saved["trainer"]["max_epochs"] == 2
    assert saved["trainer"]["logger"]["init_args"] == {**saved["trainer"]["logger"]["init_args"], "version": None,
                                                       "save_dir": str(tmp_path / "other"), "name": "ldrop"}


def test_help_is_readable(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    assert "--model" in capsys.readouterr().out


def _help(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_ldrop_help_lists_every_command(capsys):
    usage = _help(capsys, "--help")
    assert "{fit,validate,test,predict,compare,export,profile}" in usage.replace(" ", "").replace("\n", "")
    for command in ("compare", "export", "profile"):
        assert f"    {command} " in usage


def test_help_says_what_ldrops_commands_do_not_what_the_trainer_methods_do(capsys):
    usage = " ".join(_help(capsys, "--help").split())
    assert "Run the budget sweep on the test split" in usage
    assert "one JSON line per input" in usage
    assert "Perform one evaluation epoch" not in usage and "It's separated from fit" not in usage
    predict = " ".join(_help(capsys, "predict", "--help").split())
    assert "This will call the model forward" not in predict
    # Lightning's 'best'/'last' name checkpoints of the same process: the help asks for the file
    assert "the .ckpt file whose weights to use" in predict and '``"best"``' not in predict
    # the sweep's option group heading is a whole sentence, and says which command uses it
    text = " ".join(_help(capsys, "fit", "--help").split())
    assert "The budget sweep of ``ldrop test``" in text and "(and, for:" not in text


def test_predict_only_options_are_listed_by_predict_only(capsys):
    for command in ("fit", "validate", "test"):
        text = _help(capsys, command, "--help")
        assert "--predictions.output" not in text and "--inputs" not in text, command
    text = _help(capsys, "predict", "--help")
    assert "--predictions.output" in text and "--inputs" in text


def test_selector_options_are_reachable_as_the_readme_says(capsys):
    text = _help(capsys, "fit", "--model.help", "ClassificationTask", "--model.selector.help",
                 "InputConditionedSelector")
    assert "--model.selector.hidden_dim" in text and "--model.selector.fallback" in text
    # the task passes (num_layers, feature_dim): the parser refuses them, so the help does not list them
    assert "num_layers" not in text and "feature_dim FEATURE_DIM" not in text, text[:400]
    # --model CLASS then --model.selector.help: the options as typed, not relative to the task (--selector.x)
    text = _help(capsys, "fit", "--model", "ClassificationTask", "--model.selector.help=RandomSelector")
    assert "--model.selector.eval_mode" in text and "Help for --model.selector.help=" in text, text[:400]
    assert " --selector." not in text and "[--selector." not in text and "num_layers" not in text, text[:400]


def test_gitignore_covers_what_the_readme_commands_write(tmp_path):
    root = Path(__file__).resolve().parents[2]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    written = ["runs/ldrop/version_0/checkpoints/last.ckpt", "profile.json", "profile-gpu.json", "predictions.jsonl",
               "exported/config.json", "compare/speechcommands/compare.png", "sweep_example/x"]
    ignored = subprocess.run(["git", "-C", str(root), "check-ignore", *written], capture_output=True, text=True)
    assert sorted(ignored.stdout.split()) == sorted(written)


@pytest.mark.ddp
def test_ddp_fit_with_the_counterfactual_objective_at_full_depth_steps(tmp_path):
    """The shipped method configs train the selector by its own (counterfactual) losses: at a full-depth step
    nothing in the loss reached it, and DDP (no find_unused_parameters) failed at the next step."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "ldrop.cli", "fit", "--config", QUICKSTART, *SMALL,
               "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.max_steps", "3",
               "--trainer.limit_val_batches", "1", "--trainer.logger.init_args.save_dir", str(tmp_path),
               "--model.init_args.selector.init_args.objective", "counterfactual",
               "--model.init_args.budgets.full_depth_prob", "1.0"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.load(next((tmp_path / "ldrop").glob("version_*/checkpoints/last.ckpt")),
                      weights_only=True)["global_step"] == 3


@pytest.mark.ddp
def test_ddp_fit_runs_two_cpu_processes_whose_selector_statistics_agree(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "ldrop.cli", "fit", "--config", QUICKSTART, *SMALL,
               "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.max_steps", "3",
               "--trainer.limit_val_batches", "1", "--trainer.logger.init_args.save_dir", str(tmp_path),
               "--trainer.callbacks+=tests.cli.interrupt.SaveSelectorStatistics",
               "--trainer.callbacks.init_args.folder", str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in result.stderr + result.stdout or "world_size=2" in (result.stderr + result.stdout).replace(" ", "")
    assert "sync_dist=True" not in result.stderr  # the validation metrics are synchronised: Lightning has no advice
    checkpoint = torch.load(next((tmp_path / "ldrop").glob("version_*/checkpoints/last.ckpt")), weights_only=True)
    # rank 0 kept its 3 training batches; every rank re-estimated its statistics as rank 0 did, which the
    # checkpoint saves
    assert len(checkpoint["callbacks"]["SelectorStatistics"]["recent"]) == 3
    ranks = [torch.load(tmp_path / f"statistics-{rank}.pt") for rank in (0, 1)]
    assert all(torch.equal(ranks[0][name], ranks[1][name]) for name in ("mean", "var"))
    assert torch.equal(ranks[0]["mean"], checkpoint["state_dict"]["selector.running_mean"])
    assert ranks[0]["var"].ne(1.0).any()  # re-estimated, not the reset values


def _ldrop(args: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """``python -m ldrop.cli ARGS`` in its own process group, all of it killed if it outlives ``timeout`` (a DDP
    hang: the launcher's other rank is a grandchild, which subprocess.run's timeout would leave behind)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **env}
    with subprocess.Popen([sys.executable, "-m", "ldrop.cli", *args], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True) as process:
        try:
            output = process.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            pytest.fail(f"ldrop {args[0]} did not finish in {timeout} s:\n{process.communicate()[0][-3000:]}")
    return subprocess.CompletedProcess(args, process.returncode, output)


@pytest.mark.ddp
def test_ddp_test_fits_on_all_validation_data_and_sweeps_the_whole_test_set(trained, tmp_path):
    # the default selector: input-conditioned with the fallback, fitted on validation data before the sweep;
    # clips of one length, so no padding: a clip's logits do not depend on which clips share its batch
    args = ["test", "--config", QUICKSTART, *SMALL, "--data.init_args.duration_range", "[0.4, 0.4]",
            "--ckpt_path", str(trained / "checkpoints" / "last.ckpt")]
    runs = {}
    for name, extra in (("ddp", ["--trainer.strategy", "ddp", "--trainer.devices", "2"]), ("one", [])):
        # LDROP_DEBUG=1: every rank's progress lines (without it, rank 0's only)
        result = _ldrop([*args, *extra, "--trainer.logger.init_args.save_dir", str(tmp_path / name)], LDROP_DEBUG="1")
        assert result.returncode == 0, result.stdout[-3000:]
        run = next((tmp_path / name / "ldrop").glob("version_*"))
        decisions = [line.split(" s: ", 1)[1] for line in result.stdout.splitlines()
                     if line.removeprefix("[rank 1] ").startswith("input-conditioned fallback") and ": done in " in line]
        runs[name] = (load_sweep(run), json.loads((run / "budget_items.json").read_text()), decisions)
    (rows, items, decisions), (one_rows, one_items, one_decisions) = runs["ddp"], runs["one"]
    assert [r["budget_layers"] for r in rows] == [1, 2, 3, 4] and all(set(r) == set(one_rows[0]) for r in rows)
    # every rank fitted the fallback on the whole validation split, as one process does
    assert len(decisions) == 2 and set(decisions) == set(one_decisions) and len(one_decisions) == 1
    assert [r["uses_input"] for r in rows] == [r["uses_input"] for r in one_rows]
    # the sweep counts each of the 16 test clips once, not one rank's half
    assert all(r["utterances"] == 16 for r in rows)
    assert len(set(items["ids"])) == len(items["ids"]) == 16 and set(items["ids"]) == set(one_items["ids"])
    # at full depth (every layer, nothing fitted) the same clips give the same accuracy; the batches differ in
    # size (two of 8 against one of 16), whose float rounding may flip one near-tie: at most 1 clip of 16
    assert abs(rows[-1]["acc"] - one_rows[-1]["acc"]) <= 1 / 16 + 1e-9


def test_predict_on_a_folder_of_audio_files(trained, tmp_path):
    import soundfile as sf

    folder = tmp_path / "clips"
    (folder / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.wav", "b.flac", "sub/c.wav"]):
        sf.write(folder / name, torch.randn(4000 + 800 * i).numpy() * 0.1, 16000)
    (folder / "notes.txt").write_text("not audio")
    out = tmp_path / "pred.jsonl"
    main(["predict", "--config", QUICKSTART, *SMALL, "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path),
          "--ckpt_path", str(trained / "checkpoints" / "last.ckpt"), "--model.init_args.predict_budget", "0.5",
          "--inputs", str(folder), "--predictions.output", str(out)])  # one bare path, not a list
    assert not (tmp_path / "ldrop").exists()  # no logger: no run folder
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(Path(r["id"]).name for r in records) == ["a.wav", "b.flac", "c.wav"]
    assert all(len(r["executed_layers"]) == 2 for r in records)


def test_predict_inputs_that_do_not_exist_are_named(trained, tmp_path, capsys):
    assert main(["predict", "--config", QUICKSTART, *SMALL, "--trainer.logger", "false",
                 "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(trained / "checkpoints" / "last.ckpt"),
                 "--inputs", f"[{tmp_path / 'nope'}]"]) == 2
    assert "nope" in capsys.readouterr().err


def test_predict_to_an_explicit_file_leaves_no_run_folder(trained, tmp_path):
    out = tmp_path / "pred.jsonl"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["predict", "--config", QUICKSTART, *SMALL, "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
              "--ckpt_path", str(trained / "checkpoints" / "last.ckpt"), "--predictions.output", str(out)])
    assert out.is_file()
    assert not list((tmp_path / "logs").rglob("version_*"))
    assert not [w for w in caught if "custom batch sampler" in str(w.message)]


def test_an_export_device_past_the_last_gpu_is_one_line(trained, tmp_path, capsys, monkeypatch):
    import ldrop.cli.export as export

    monkeypatch.setattr(export.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(export.torch.cuda, "device_count", lambda: 2)
    assert main(["export", str(trained / "checkpoints" / "last.ckpt"), str(tmp_path / "out"), "--device", "cuda:2"]) == 2
    assert "--device cuda:2: there are 2 CUDA devices (cuda:0 ...)" in capsys.readouterr().err


def test_exports_validation_fit_takes_the_batches_its_run_config_validates_as_predict_does(trained, tmp_path, capsys):
    from ldrop.runtime import load_model
    from ldrop.runtime.checkpoints import config_datamodule

    # a run fitted with --trainer.limit_val_batches 1 (batches of 4): 'ldrop predict' with its config fits on one
    config = tmp_path / "config.yaml"
    settings = yaml.safe_load((trained / "config.yaml").read_text())
    settings["trainer"]["limit_val_batches"], settings["data"]["init_args"]["batch_size"] = 1, 4
    config.write_text(yaml.safe_dump(settings))
    checkpoint = trained / "checkpoints" / "last.ckpt"
    assert main(["export", str(checkpoint), str(tmp_path / "exported"), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\[1 of [2-9] batches, --trainer.limit_val_batches 1\]", out), out
    data = config_datamodule(config)
    data.setup("validate")
    one, every = load_model(checkpoint), load_model(checkpoint)
    one.calibrate_on_dataloader(data.val_dataloader(), max_batches=1)
    every.calibrate_on_dataloader(data.val_dataloader())
    assert one.selector.report() != every.selector.report()  # one batch fits otherwise than all
    assert load_model(tmp_path / "exported").selector.report() == one.selector.report()
    settings["trainer"]["limit_val_batches"] = 0
    config.write_text(yaml.safe_dump(settings))
    assert main(["export", str(checkpoint), str(tmp_path / "none"), "--config", str(config)]) == 2
    assert "limit_val_batches is 0" in capsys.readouterr().err and not (tmp_path / "none").exists()
