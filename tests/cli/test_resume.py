"""Exact resume after a real kill, step-based checkpointing, and the run folder a resumed run writes to."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from ldrop.cli import main
from tests.cli.common import QUICKSTART, SMALL, val_steps
from tests.cli.interrupt import CheckpointProbe

# 32 clips in batches of 4: 8 steps per epoch, 16 in all; step checkpoints at steps 4 (mid-epoch) and 8. The
# selector's statistics are re-estimated from the last 16 training batches (the default `statistics_batches`),
# more than a resumed run trains before its next re-estimate; clips of 0.3-0.5 s cropped to 0.35 s at random
# offsets, loaded by 2 worker processes.
FIT = ["fit", "--config", QUICKSTART, *SMALL, "--data.init_args.batch_size", "4", "--trainer.max_epochs", "2",
       "--checkpoint.every_n_train_steps", "4", "--data.init_args.max_train_seconds", "0.35",
       "--data.init_args.num_workers", "2"]


def _identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and values, bit for bit (NaN equal to NaN: uncalibrated thresholds are NaN)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                 and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)))


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    save_dir = tmp_path_factory.mktemp("uninterrupted")
    main([*FIT, "--trainer.logger.init_args.save_dir", str(save_dir)])
    return save_dir / "ldrop" / "version_0" / "checkpoints" / "last.ckpt"


def _killed_fit(save_dir: Path, stall_step: int, stall: str = "StallAtStep") -> Path:
    """Run ``ldrop fit`` in a subprocess, SIGKILL it once it stands at ``stall_step`` (where the callback ``stall``
    of ``tests.cli.interrupt`` stands it still); returns its run folder."""
    marker = save_dir / "stalled"
    command = [sys.executable, "-m", "ldrop.cli", *FIT, "--trainer.logger.init_args.save_dir", str(save_dir),
               f"--trainer.callbacks+=tests.cli.interrupt.{stall}", "--trainer.callbacks.init_args.step",
               str(stall_step), "--trainer.callbacks.init_args.marker", str(marker)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert process.poll() is None, f"ldrop fit ended before step {stall_step}:\n{process.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "ldrop fit did not reach the step in 300 s"
            time.sleep(0.2)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        process.stderr.close()
    return save_dir / "ldrop" / "version_0"


@pytest.mark.parametrize("stall_step, saved_step, stall", [(5, 4, "StallAtStep"), (9, 8, "StallAtStep"),
                                                           (8, 8, "StallBeforeLast")],
                         ids=["mid-epoch", "epoch-boundary", "between-best-and-last-ckpt"])
def test_a_killed_fit_resumes_to_the_uninterrupted_weights_in_the_same_run_folder(
    uninterrupted, tmp_path, stall_step, saved_step, stall
):
    run = _killed_fit(tmp_path, stall_step, stall)
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == saved_step
    (run / "checkpoints" / ".last.ckpt.x1y2.tmp").touch()  # what a kill during a checkpoint write leaves

    main([*FIT, "--trainer.logger.init_args.save_dir", str(tmp_path / "elsewhere"), "--ckpt_path", str(last)])

    assert [p.name for p in (tmp_path / "ldrop").iterdir()] == ["version_0"]  # no new version_N folder
    assert not (tmp_path / "elsewhere").exists()
    assert not list((run / "checkpoints").glob(".*.tmp"))
    assert torch.load(last, weights_only=True)["global_step"] == 16
    # the same checkpoints and validations, each once (between best- and last.ckpt: the best checkpoint of step 8,
    # which last.ckpt of step 8, written before that validation, does not track, is written again, not beside it)
    assert sorted(p.name for p in last.parent.iterdir()) == sorted(p.name for p in uninterrupted.parent.iterdir())
    # (the killed run's event file keeps what it logged before the kill: a validation it did not checkpoint is
    # logged there too)
    assert sorted(set(val_steps(run))) == val_steps(uninterrupted.parents[1]) == [7, 15]
    expected, resumed = _weights(uninterrupted), _weights(last)
    assert expected.keys() == resumed.keys()
    different = [name for name in expected if not _identical(expected[name], resumed[name])]
    assert not different, f"{len(different)} tensors differ from the uninterrupted run, e.g. {different[:3]}"


def test_a_resume_removes_only_its_own_runs_untracked_best_checkpoints(tmp_path, capsys):
    """Two runs share --checkpoint.dirpath: resuming the second (stopped before its first validation) left the
    first run's best checkpoint of a later step alone only by chance of its step; now by its run id."""
    from tests.cli.test_signals import FIT as ONE_EPOCH
    from tests.cli.test_signals import _signal_at

    checkpoints = tmp_path / "checkpoints"
    common = [*ONE_EPOCH, "--checkpoint.dirpath", str(checkpoints), "--trainer.logger.init_args.save_dir",
              str(tmp_path / "runs")]
    assert main(common) == 0  # run A: 8 steps, then its validation writes best-epoch0-step8.ckpt
    (checkpoints / "last.ckpt").rename(checkpoints / "a-last.ckpt")
    assert main([*common, "--seed_everything", "1", *_signal_at("train", 3)]) == 143  # run B, stopped at step 3
    capsys.readouterr()
    assert main([*common, "--seed_everything", "1", "--ckpt_path", str(checkpoints / "last.ckpt"),
                 "--trainer.max_steps", "4"]) == 0
    assert sorted(p.name for p in checkpoints.iterdir()) == ["a-last.ckpt", "best-epoch0-step8.ckpt", "last.ckpt"]


def test_step_checkpoints_keep_last_fresh_and_best_only_after_validation(tmp_path):
    CheckpointProbe.seen.clear()
    main(["fit", "--config", QUICKSTART, *SMALL, "--data.init_args.batch_size", "4", "--trainer.max_epochs", "2",
          "--checkpoint.every_n_train_steps", "3", "--checkpoint.save_top_k", "-1",
          "--trainer.logger.init_args.save_dir", str(tmp_path),
          "--trainer.callbacks+=tests.cli.interrupt.CheckpointProbe"])
    checkpoints = tmp_path / "ldrop" / "version_0" / "checkpoints"
    best_steps = sorted(torch.load(p, weights_only=True)["global_step"] for p in checkpoints.glob("best-*.ckpt"))
    assert best_steps == [8, 16]  # the validations (epoch ends), the final one included; never a step trigger
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 16  # the final step
    # Before the first validation (step 8), last.ckpt already held the step-6 weights.
    assert CheckpointProbe.seen[0] == (8, 6)


def test_a_run_that_fails_before_training_leaves_no_run_folder(tmp_path, capsys):
    code = main([*FIT, "--trainer.logger.init_args.save_dir", str(tmp_path), "--ckpt_path", str(tmp_path / "no.ckpt")])
    assert code == 2 and "no.ckpt" in capsys.readouterr().err
    assert not (tmp_path / "ldrop").exists()  # neither version_0 nor the logger's ldrop/ folder


# ------------------------------------------------------------------ resuming with the README's relative paths
SHORT = ["--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0"]


@pytest.fixture(scope="module")
def relative_run(tmp_path_factory) -> Path:
    """A one-epoch run written as the README does it: from the working folder, into ``runs/`` (relative)."""
    folder = tmp_path_factory.mktemp("relative")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        assert main(["fit", "--config", QUICKSTART, *SMALL, *SHORT, "--trainer.max_epochs", "1"]) == 0
    finally:
        os.chdir(cwd)
    return folder


def _tracking(checkpoint: Path) -> dict:
    callbacks = torch.load(checkpoint, weights_only=False)["callbacks"]
    return next(state for key, state in callbacks.items() if key.startswith("TaskCheckpoint"))


@pytest.mark.parametrize("spelling", ["relative", "absolute"])
def test_best_checkpoint_tracking_survives_a_resume_without_the_dirpath_warning(relative_run, tmp_path, monkeypatch,
                                                                                spelling):
    shutil.copytree(relative_run / "runs", tmp_path / "runs")  # as if the project folder had moved
    monkeypatch.chdir(tmp_path)
    last = Path("runs/ldrop/version_0/checkpoints/last.ckpt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["fit", "--config", QUICKSTART, *SMALL, *SHORT, "--trainer.max_epochs", "2",
                     "--ckpt_path", str(last if spelling == "relative" else last.resolve())]) == 0
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]
    checkpoints = tmp_path / "runs" / "ldrop" / "version_0" / "checkpoints"
    assert len(list(checkpoints.glob("best-*.ckpt"))) == 1  # the tracked best was replaced or kept, never orphaned
    state = _tracking(checkpoints / "last.ckpt")
    assert state["best_model_score"] is not None and Path(state["best_model_path"]).parent == checkpoints
    assert all(Path(path).is_file() for path in state["best_k_models"])


def test_resuming_a_finished_run_says_it_is_complete(relative_run, tmp_path, capsys):
    shutil.copytree(relative_run / "runs", tmp_path / "runs")
    last = tmp_path / "runs" / "ldrop" / "version_0" / "checkpoints" / "last.ckpt"
    before = torch.load(last, weights_only=True)["global_step"]
    assert main(["fit", "--config", QUICKSTART, *SMALL, *SHORT, "--trainer.max_epochs", "1", "--ckpt_path", str(last)]) == 0
    assert "the run was already complete" in capsys.readouterr().out
    assert torch.load(last, weights_only=True)["global_step"] == before


def test_resuming_with_other_arguments_keeps_the_runs_earlier_config(tmp_path, caplog):
    """The run's config.yaml was replaced by the resumed arguments (``max_epochs: 2``): the config its first part
    was trained with was lost, and nothing said the learning-rate schedule is recomputed for the new length."""
    import yaml

    from tests.cli.common import fit_quickstart

    run = fit_quickstart(tmp_path)
    last = str(run / "checkpoints" / "last.ckpt")
    resume = ["fit", "--config", QUICKSTART, *SMALL, "--trainer.logger.init_args.save_dir", str(tmp_path),
              "--ckpt_path", last]
    assert main([*resume, "--trainer.max_epochs", "1"]) == 0  # the same arguments: nothing to keep
    config = run / "config.yaml"  # ... nor an option a newer version added, absent from the run's config
    config.write_text("\n".join(line for line in config.read_text().splitlines() if "persistent_workers" not in line))
    assert main([*resume, "--trainer.max_epochs", "1"]) == 0
    assert sorted(p.name for p in run.glob("config*.yaml")) == ["config.yaml"]
    # a resume that fails (other weights) before a checkpoint, then one that works: the first config is the one kept
    assert main([*resume, "--trainer.max_epochs", "2", "--model.init_args.selector.init_args.hidden_dim", "64"]) == 2
    with caplog.at_level("WARNING"):
        assert main([*resume, "--trainer.max_epochs", "2"]) == 0
    kept = sorted(run.glob("config.until-step-*.yaml"))
    assert len(kept) == 1 and yaml.safe_load(kept[0].read_text())["trainer"]["max_epochs"] == 1
    assert yaml.safe_load(kept[0].read_text())["model"]["init_args"]["selector"]["init_args"]["hidden_dim"] == 32
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_epochs"] == 2
    assert "model.init_args.selector.init_args.hidden_dim: 64 -> 32): the config of its steps up to " in caplog.text
    assert f" is kept in {kept[0]}" in caplog.text
    assert "learning-rate schedule is recomputed" in caplog.text
