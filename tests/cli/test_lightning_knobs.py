"""Ordinary Lightning/LightningCLI knobs given to ``ldrop``: each does what it says, or is refused as one line."""

from __future__ import annotations

import csv
import importlib.util
import re
from pathlib import Path

import pytest

from ldrop.cli import main
from ldrop.sweeps import BudgetSweep
from ldrop.tasks import LayerDropTask
from tests.cli.common import QUICKSTART, SMALL, one_error_line
from tests.cli.test_errors import TINY_RUN


def _val_acc_per_epoch(run: Path) -> dict[int, float]:
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    return {int(r["epoch"]): float(r["val/acc"]) for r in rows if r.get("val/acc")}


@pytest.mark.parametrize("monitor", [[], ["--checkpoint.monitor", "val/acc"]], ids=["implicit", "named"])
def test_the_best_checkpoint_is_the_best_epoch_whether_the_task_metric_is_implicit_or_named(tmp_path, monitor):
    assert main(["fit", "--config", QUICKSTART, *SMALL, "--data.init_args.num_train", "64", "--trainer.max_epochs", "3",
                 "--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(tmp_path), *monitor]) == 0
    run = next((tmp_path / "ldrop").glob("version_*"))
    acc = _val_acc_per_epoch(run)
    assert len(acc) == 3 and max(acc.values()) > min(acc.values()), acc  # the test means something
    (best,) = (run / "checkpoints").glob("best-*.ckpt")
    assert acc[int(re.search(r"epoch(\d+)", best.name)[1])] == max(acc.values()), (best.name, acc)


def test_checkpoint_mode_defaults_to_the_metric_direction_and_help_says_so(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "saves a checkpoint only for the last epoch" not in text
    assert "the task's own (``val/acc``, ``val/wer``)" in text


def test_lightning_checkpoint_keywords_in_a_new_process_name_the_file_to_pass(trained, capsys):
    save_dir = trained.parents[1]
    before = sorted((save_dir / "ldrop").iterdir())
    argv = ["fit", "--config", QUICKSTART, *SMALL, "--trainer.logger.init_args.save_dir", str(save_dir)]
    assert main([*argv, "--ckpt_path", "last"]) == 2  # Lightning would start a fresh run in a new version_N
    line = one_error_line(capsys)
    assert "a new 'ldrop' process tracks no checkpoints" in line
    assert f"--ckpt_path {trained / 'checkpoints' / 'last.ckpt'}" in line
    assert sorted((save_dir / "ldrop").iterdir()) == before
    argv[0] = "validate"
    assert main([*argv, "--ckpt_path", "best"]) == 2  # Lightning: "not configured to save the best model"
    assert f"--ckpt_path {next((trained / 'checkpoints').glob('best-*.ckpt'))}" in one_error_line(capsys)


@pytest.mark.parametrize("keyword", ["best", "last", "hpc"])
def test_lightning_checkpoint_keywords_without_checkpoints_say_none_was_found(tmp_path, capsys, keyword):
    assert main(["test", "--config", QUICKSTART, *SMALL, "--trainer.default_root_dir", str(tmp_path),
                 "--ckpt_path", keyword]) == 2
    line = one_error_line(capsys)
    assert f"--ckpt_path {keyword}: " in line and str(tmp_path) in line and "pass" in line
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("args", "expected"), [
    (["--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "1"],
     "--lr_scheduler needs --optimizer (LightningCLI applies it only with an optimizer it builds); ldrop's own "
     "schedule is set with --model.optimization.*"),
    (["--lr_scheduler.step_size", "1"], "--lr_scheduler.step_size '1': no class was given for --lr_scheduler"),
    (["--optimizer.lr", "0.1"], "--optimizer.lr '0.1': no class was given for --optimizer"),
], ids=["scheduler-without-optimizer", "scheduler-option-without-class", "optimizer-option-without-class"])
def test_a_scheduler_lightning_would_ignore_is_refused_in_one_line(tmp_path, capsys, args, expected):
    assert main(["fit", "--config", QUICKSTART, *SMALL, "--trainer.default_root_dir", str(tmp_path), *args]) == 2
    assert expected in one_error_line(capsys)
    assert not list(tmp_path.iterdir())


def test_early_stopping_without_its_monitor_names_the_missing_argument(tmp_path, capsys):
    assert main(["fit", "--config", QUICKSTART, *SMALL, "--trainer.default_root_dir", str(tmp_path),
                 "--trainer.callbacks+=EarlyStopping"]) == 2
    assert "EarlyStopping: missing required --trainer.callbacks.monitor" in one_error_line(capsys)


def test_a_bad_value_of_a_callbacks_option_names_the_value_not_the_base_class(tmp_path, capsys):
    assert main(["fit", "--config", QUICKSTART, *SMALL, "--trainer.default_root_dir", str(tmp_path),
                 "--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor", "val/acc",
                 "--trainer.callbacks.patience", "x"]) == 2
    line = one_error_line(capsys)
    assert "--trainer.callbacks.patience 'x': expected an int" in line and "Callback has no option" not in line


def test_a_misspelt_callback_option_names_the_callback_and_its_help(tmp_path, capsys):
    assert main(["fit", "--config", QUICKSTART, *SMALL, "--trainer.default_root_dir", str(tmp_path),
                 "--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitr", "val/acc"]) == 2
    line = one_error_line(capsys)
    assert "EarlyStopping has no option 'monitr'" in line and "'ldrop fit --trainer.callbacks.help EarlyStopping'" in line


def test_early_stopping_on_a_metric_the_task_does_not_log_is_one_line_listing_those_it_does(tmp_path, capsys):
    assert main(["fit", "--config", QUICKSTART, *SMALL, *TINY_RUN, "--trainer.logger.init_args.save_dir",
                 str(tmp_path), "--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor", "val_loss"]) == 2
    line = one_error_line(capsys)
    assert "Early stopping conditioned on metric `val_loss` which is not available" in line
    assert "`train/loss`" in line  # Lightning's list of the metrics logged


def test_a_val_check_interval_above_an_epochs_batches_is_one_line(tmp_path, capsys):
    """A raw ValueError traceback from Lightning (via estimated_stepping_batches in configure_optimizers)."""
    assert main(["fit", "--config", QUICKSTART, *SMALL, "--trainer.max_epochs", "1", "--trainer.val_check_interval",
                 "3", "--trainer.logger.init_args.save_dir", str(tmp_path)]) == 2  # 32 clips in batches of 16
    assert one_error_line(capsys).startswith(
        "ldrop: error: --trainer.val_check_interval 3: more than the 2 training batches of an epoch; give at most 2, "
        "or --trainer.check_val_every_n_epoch null to count them across epochs (--trainer.limit_val_batches 0 turns "
        "validation off)")


@pytest.mark.parametrize("value", ["0", "-2"])
def test_accumulate_grad_batches_below_one_is_refused_before_anything_is_built(tmp_path, capsys, value):
    assert main(["fit", "--config", QUICKSTART, *SMALL, "--trainer.default_root_dir", str(tmp_path),
                 "--trainer.accumulate_grad_batches", value]) == 2
    assert f"--trainer.accumulate_grad_batches {value}: expected an int >= 1" in one_error_line(capsys)
    assert not list(tmp_path.iterdir())


def test_evaluating_without_a_checkpoint_warns_that_the_model_is_as_initialised(trained, tmp_path, caplog):
    argv = ["validate", "--config", QUICKSTART, *SMALL, "--trainer.limit_val_batches", "1",
            "--trainer.logger.init_args.save_dir", str(tmp_path)]
    with caplog.at_level("WARNING", logger="ldrop.cli.lightning"):
        assert main(argv) == 0
    assert "no --ckpt_path: validating the model as initialised, not a trained checkpoint" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="ldrop.cli.lightning"):
        assert main([*argv, "--ckpt_path", str(trained / "checkpoints" / "last.ckpt")]) == 0
    assert "as initialised" not in caplog.text


def test_without_a_logger_a_new_fit_never_overwrites_the_checkpoints_of_the_last(tmp_path, capsys):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "last.ckpt").write_bytes(b"the last run's")
    argv = ["fit", "--config", QUICKSTART, *SMALL, "--trainer.logger", "false", "--trainer.default_root_dir",
            str(tmp_path)]
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert f"{checkpoints} already holds the checkpoints of a run" in line
    assert "--trainer.default_root_dir" in line and f"--ckpt_path {checkpoints / 'last.ckpt'}" in line
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["checkpoints", "last.ckpt"]
    assert (checkpoints / "last.ckpt").read_bytes() == b"the last run's"
    assert main([*argv, "--ckpt_path", str(checkpoints / "last.ckpt")]) == 2  # a resume is not refused for that
    assert "is damaged or not a checkpoint" in one_error_line(capsys)  # the file is read, not refused unread


def test_a_checkpoint_folder_that_another_running_fit_writes_is_refused_and_a_killed_ones_is_taken_over(
        tmp_path, capsys):
    # two fits started at once without a logger (or with one --checkpoint.dirpath) would mix their checkpoints
    import subprocess
    import sys

    checkpoints = tmp_path / "run" / "checkpoints"
    claim = tmp_path / "run" / ".checkpoints.ldrop-run.pid"  # beside the folder: Lightning wants it empty
    claim.parent.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_CLAIM, str(claim)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"  # another fit, which has not saved yet
        argv = ["fit", "--config", QUICKSTART, *SMALL, *TINY_RUN, "--trainer.logger", "false",
                "--trainer.default_root_dir", str(tmp_path / "run")]
        assert main(argv) == 2
        line = one_error_line(capsys)
        assert f"{checkpoints} is in use by another ldrop fit (process {holder.pid})" in line, line
        assert sorted(p.name for p in claim.parent.iterdir()) == [claim.name]  # the other's claim, untouched
        assert main(["fit", "--config", QUICKSTART, *SMALL, *TINY_RUN, "--checkpoint.dirpath", str(checkpoints),
                     "--trainer.default_root_dir", str(tmp_path / "logged")]) == 2  # a logger, one dirpath: the same
        assert f"{checkpoints} is in use by another ldrop fit" in one_error_line(capsys)
    finally:
        holder.kill()  # killed: its claim file stays, its lock goes with it
        holder.wait()
    assert claim.is_file()
    assert main(argv) == 0
    assert (checkpoints / "last.ckpt").is_file() and not claim.exists()  # released when the fit ended
    claim.write_text("99999999999999999999")  # whatever a claim file holds, only a held lock counts
    assert main([*argv, "--ckpt_path", str(checkpoints / "last.ckpt"), "--trainer.max_steps", "2"]) == 0


#: A process that claims the folder as a fit does (an flock on the file beside it) and holds it.
HOLD_CLAIM = ("import fcntl, os, sys, time; h = open(sys.argv[1], 'a+'); fcntl.flock(h, fcntl.LOCK_EX); "
              "h.write(str(os.getpid())); h.flush(); print('holding', flush=True); time.sleep(300)")


@pytest.mark.parametrize("variable", ["LOCAL_RANK", "RANK", "NODE_RANK", "SLURM_PROCID"])
def test_only_the_first_process_of_a_ddp_run_claims_the_folder(variable, monkeypatch):
    from ldrop.cli.lightning import RANK_VARIABLES, _first_process

    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert _first_process()
    monkeypatch.setenv(variable, "0")
    assert _first_process()
    monkeypatch.setenv(variable, "1")  # a worker its launcher or cluster started: rank 0 holds the claim
    assert not _first_process()


def test_a_fit_that_fails_before_its_first_checkpoint_leaves_no_claimed_folder(tmp_path, capsys):
    root = tmp_path / "new" / "run"
    assert main(["fit", "--config", QUICKSTART, *SMALL, "--trainer.logger", "false", "--trainer.default_root_dir",
                 str(root), "--model.init_args.optimization.lr", "-1"]) == 2
    one_error_line(capsys)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("directory", [[], ["--sweep.directory", "sweep"]], ids=["run-folder", "sweep-directory"])
def test_fast_dev_run_prints_the_budget_sweep_and_writes_no_file(tmp_path, capsys, directory):
    directory = [directory[0], str(tmp_path / directory[1])] if directory else []
    assert main(["test", "--config", QUICKSTART, *SMALL, "--trainer.fast_dev_run", "true",
                 "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
                 *directory]) == 0
    out = capsys.readouterr().out
    assert "budget sweep: " in out and "fast_dev_run: the budget sweep of these test batches was printed, not written" in out
    assert "budget sweep written" not in out
    assert not list(tmp_path.iterdir())


def test_without_a_logger_evaluation_runs_never_replace_the_fit_config_and_a_failed_one_leaves_nothing(
        tmp_path, capsys, monkeypatch):
    root = tmp_path / "run"
    quiet = ["--config", QUICKSTART, *SMALL, "--trainer.logger", "false", "--trainer.default_root_dir", str(root)]
    assert main(["fit", *quiet, *TINY_RUN]) == 0
    checkpoint = root / "checkpoints" / "last.ckpt"
    fitted = {p: p.read_bytes() for p in [root / "config.yaml", checkpoint]}
    test = ["test", *quiet, "--ckpt_path", str(checkpoint), "--sweep.headroom", "false"]
    assert main(test) == 0
    assert f"budget sweep written to {root}" in capsys.readouterr().out
    assert (root / "budget_sweep.csv").is_file() and "ckpt_path: " + str(checkpoint) in (
        root / "test_config.yaml").read_text()
    assert main(["validate", *quiet, "--ckpt_path", str(checkpoint)]) == 0
    assert (root / "validate_config.yaml").is_file()
    assert {p: p.read_bytes() for p in fitted} == fitted  # the fit's own files, untouched
    assert main(["export", str(checkpoint), str(tmp_path / "hf")]) == 0  # fits the selector as the fit's config says
    assert f"on the validation split of SyntheticClassificationDataModule ({root / 'config.yaml'})" in (
        capsys.readouterr().out)
    # a failed test puts back the files it replaced, and in a new folder leaves nothing
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    monkeypatch.setattr(BudgetSweep, "on_test_epoch_end", lambda *args: (_ for _ in ()).throw(OSError("lost")))
    for argv in (test, [*test, "--trainer.default_root_dir", str(tmp_path / "new" / "run")]):
        assert main(argv) == 2 and "lost" in one_error_line(capsys)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "new").exists()


def test_without_a_logger_a_fit_that_fails_before_its_first_step_leaves_no_config(tmp_path, monkeypatch):
    monkeypatch.setattr(LayerDropTask, "training_step", lambda *args: (_ for _ in ()).throw(OSError("lost")))
    assert main(["fit", "--config", QUICKSTART, *SMALL, *TINY_RUN, "--trainer.logger", "false",
                 "--trainer.default_root_dir", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()


def test_persistent_workers_without_workers_is_refused_in_one_line(tmp_path, capsys):
    assert main(["fit", "--config", QUICKSTART, *SMALL, "--trainer.default_root_dir", str(tmp_path),
                 "--data.init_args.persistent_workers", "true"]) == 2
    assert "persistent_workers=True needs num_workers > 0" in one_error_line(capsys)
    assert not list(tmp_path.iterdir())


def test_a_fit_without_a_set_length_needs_max_steps_for_its_schedule_or_trains_with_a_constant_one(tmp_path, capsys,
                                                                                                      caplog):
    """--trainer.max_epochs -1 without --trainer.max_steps: a raw OverflowError traceback (int(inf)) in
    configure_optimizers, even with the constant schedule, which needs no length."""
    from tests.cli.test_signals import _signal_at

    endless = ["fit", "--config", QUICKSTART, *SMALL, "--trainer.max_epochs", "-1",
               "--trainer.logger.init_args.save_dir", str(tmp_path)]
    assert main(endless) == 2
    line = one_error_line(capsys)
    assert "optimization.schedule 'linear' and warmup 0.05 (a fraction of all steps) need the fit's length" in line
    assert "give --trainer.max_steps N" in line
    constant = ["--model.init_args.optimization.schedule", "constant", "--model.init_args.optimization.warmup", "2"]
    with caplog.at_level("WARNING"):
        assert main([*endless, *constant, *_signal_at("train", 3)]) == 143  # trains until stopped
    assert "InputConditionedSelector's training progress stays at 0" in caplog.text
    assert "at step 3" in capsys.readouterr().err


def test_enable_checkpointing_false_fits_without_checkpoints_and_evaluates(tmp_path, capsys, trained):
    """Refused with Lightning's "found ModelCheckpoint in callbacks list" (ldrop's own checkpoint callback), for
    every subcommand."""
    assert main(["fit", "--config", QUICKSTART, *SMALL, *TINY_RUN, "--trainer.enable_checkpointing", "false",
                 "--trainer.logger.init_args.save_dir", str(tmp_path / "fit")]) == 0
    assert not list((tmp_path / "fit").rglob("*.ckpt")) and "checkpoints written" not in capsys.readouterr().out
    checkpoint = str(trained / "checkpoints" / "last.ckpt")
    for command in ("validate", "test", "predict"):
        extra = ["--sweep.headroom", "false"] if command == "test" else []
        assert main([command, "--config", QUICKSTART, *SMALL, "--trainer.enable_checkpointing", "false", *extra,
                     "--trainer.logger.init_args.save_dir", str(tmp_path / command), "--ckpt_path", checkpoint]) == 0


@pytest.mark.parametrize("limit, batches, said", [
    ([], 4, "(4 batches)"),
    (["--trainer.fast_dev_run", "true"], 1, "(1 of 4 batches, --trainer.fast_dev_run)"),
    (["--trainer.limit_val_batches", "2"], 2, "(2 of 4 batches, --trainer.limit_val_batches 2)"),
    (["--trainer.limit_val_batches", "0.5"], 2, "(2 of 4 batches, --trainer.limit_val_batches 0.5)"),
    (["--trainer.limit_val_batches", "0"], 0, None),
], ids=["all", "fast_dev_run", "int", "fraction", "none"])
def test_the_fit_on_validation_data_before_test_takes_the_batches_the_trainer_validates(
        trained, tmp_path, caplog, monkeypatch, limit, batches, said):
    """It took the whole validation split whatever --trainer.fast_dev_run or --trainer.limit_val_batches said (and so
    did the sweep's validation headroom); its progress line now says how many batches."""
    from ldrop.tasks import calibration

    seen, fit = [], calibration.calibrate_on_batches

    def counting(task, batches, budgets, **kwargs):
        seen.append(sum(1 for _ in batches()))
        return fit(task, batches, budgets, **kwargs)

    monkeypatch.setattr(calibration, "calibrate_on_batches", counting)
    headroom = ["--sweep.headroom", "true" if limit[:1] == ["--trainer.fast_dev_run"] else "false"]
    with caplog.at_level("INFO"):
        assert main(["test", "--config", QUICKSTART, *SMALL, "--data.init_args.batch_size", "4", *limit, *headroom,
                     "--trainer.logger.init_args.save_dir", str(tmp_path),
                     "--ckpt_path", str(trained / "checkpoints" / "last.ckpt")]) == 0
    assert seen == ([batches] if batches else [])
    if said is not None:
        assert f"fitting InputConditionedSelector on validation data {said}: done in" in caplog.text
    else:
        assert ("no validation data to fit it on (--trainer.limit_val_batches 0: no validation batch): it runs "
                "unfitted") in caplog.text
    if headroom[1] == "true":
        assert "headroom on the validation split (sweep.headroom: false skips it): 1/1 validation batch" in caplog.text


@pytest.mark.parametrize("extra", [["--trainer.max_steps", "0"], ["--trainer.limit_train_batches", "0"],
                                   ["--checkpoint.save_top_k", "0", "--checkpoint.save_last", "false"]],
                         ids=["max_steps-0", "limit_train_batches-0", "save-nothing"])
def test_a_fit_that_writes_no_checkpoint_does_not_say_it_wrote_some(tmp_path, capsys, extra):
    assert main(["fit", "--config", QUICKSTART, *SMALL, *TINY_RUN, "--trainer.logger.init_args.save_dir", str(tmp_path),
                 *extra]) == 0
    assert not list(tmp_path.rglob("*.ckpt"))
    assert "checkpoints written" not in capsys.readouterr().out


def test_the_checkpoints_line_names_ldrops_folder_not_an_extra_model_checkpoints(tmp_path, capsys):
    assert main(["fit", "--config", QUICKSTART, *SMALL, *TINY_RUN, "--trainer.logger.init_args.save_dir",
                 str(tmp_path / "runs"), "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.dirpath",
                 str(tmp_path / "extra")]) == 0
    assert list((tmp_path / "extra").glob("*.ckpt"))
    assert f"checkpoints written to {tmp_path / 'runs' / 'ldrop' / 'version_0' / 'checkpoints'}\n" in capsys.readouterr().out


def test_a_test_that_scores_no_batch_says_no_sweep_was_written(trained, tmp_path, capsys):
    assert main(["test", "--config", QUICKSTART, *SMALL, "--trainer.limit_test_batches", "0",
                 "--trainer.logger.init_args.save_dir", str(tmp_path),
                 "--ckpt_path", str(trained / "checkpoints" / "last.ckpt")]) == 0
    out = capsys.readouterr().out
    assert "budget sweep written" not in out and not list(tmp_path.rglob("budget_sweep*"))
    assert "no test batch was scored (--trainer.limit_test_batches 0): no budget sweep was written" in out


def test_resuming_a_run_that_max_time_stopped_names_max_time(tmp_path, capsys):
    """The restored Timer stops the resumed run at once, and the line said "raise --trainer.max_epochs or
    --trainer.max_steps", which would train nothing either."""
    argv = ["fit", "--config", QUICKSTART, *SMALL, "--trainer.max_epochs", "1000", "--trainer.max_time", "00:00:00:01",
            "--trainer.limit_val_batches", "0", "--trainer.logger.init_args.save_dir", str(tmp_path)]
    assert main(argv) == 0
    last = tmp_path / "ldrop" / "version_0" / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    assert main([*argv, "--ckpt_path", str(last)]) == 0
    out = capsys.readouterr().out
    assert "the run's --trainer.max_time 00:00:00:01 had run out at its checkpoint (epoch " in out
    assert "raise --trainer.max_time to train further" in out and "max_epochs" not in out


@pytest.mark.parametrize("precision", ["transformer-engine", "transformer-engine-float16"])
def test_a_precision_whose_package_is_missing_is_one_line_naming_it(tmp_path, capsys, precision):
    if importlib.util.find_spec("transformer_engine") is not None:
        pytest.skip("transformer_engine is installed here")
    assert main(["fit", "--config", QUICKSTART, *SMALL, "--trainer.default_root_dir", str(tmp_path),
                 "--trainer.precision", precision]) == 2
    line = one_error_line(capsys)
    assert "needs a package that is not installed" in line and "transformer_engine" in line
    assert not list(tmp_path.iterdir())
