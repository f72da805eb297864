"""SIGTERM (and Ctrl+C, SIGINT) stops every run at the next batch with exit status 143 (130) and one line: fit
writes a resumable last.ckpt first, test and predict leave their outputs complete or absent; a fit stopped before
its validation completed runs it when resumed.

The callback ``tests.cli.interrupt.SignalAt`` sends the signal from inside the run, at a given step. Apart from
the console-script run, the commands run in this process: ``ldrop``'s ``main`` holds SIGTERM during a run, so the
signal stops the run, never pytest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ldrop.cli import main
from tests.cli.common import QUICKSTART, SMALL, val_steps
from tests.cli.test_resume import _identical, _weights

# 32 clips in batches of 4: 8 steps, one epoch, then a validation of 2 batches; no sanity check; loading in the
# main process (the cheapest start-up).
FIT = ["fit", "--config", QUICKSTART, *SMALL, "--data.init_args.batch_size", "4", "--trainer.max_epochs", "1",
       "--data.init_args.num_workers", "0", "--trainer.limit_val_batches", "2", "--trainer.num_sanity_val_steps", "0"]
# test, validate and predict on an untrained model: 16 clips in batches of 4; the sweep without its headroom oracles
EVALUATE = ["--config", QUICKSTART, *SMALL, "--data.init_args.batch_size", "4"]


def _signal_at(hook: str, step: int = 0, sent: str = "SIGTERM") -> list[str]:
    return ["--trainer.callbacks+=tests.cli.interrupt.SignalAt", "--trainer.callbacks.init_args.hook", hook,
            "--trainer.callbacks.init_args.step", str(step), "--trainer.callbacks.init_args.signal", sent]


def _stop_line(err: str, sent: str = "SIGTERM") -> str:
    lines = [line for line in err.splitlines() if line.startswith("ldrop: ")]
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith(f"ldrop: stopped by {sent}"), lines[0]
    assert "Traceback" not in err
    return lines[0]


def test_sigterm_mid_fit_exits_143_with_a_last_ckpt_that_resumes_to_the_uninterrupted_weights(tmp_path):
    # the console script's own exit status, in a process of its own
    interrupted = tmp_path / "interrupted"
    run = subprocess.run([sys.executable, "-m", "ldrop.cli", *FIT, "--trainer.logger.init_args.save_dir",
                          str(interrupted), *_signal_at("train", 3)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300)
    last = interrupted / "ldrop" / "version_0" / "checkpoints" / "last.ckpt"
    assert run.returncode == 143, run.stderr[-3000:]
    line = _stop_line(run.stderr)
    assert "at step 3" in line and f"--ckpt_path {last}" in line
    assert torch.load(last, weights_only=True)["global_step"] == 3
    assert not list(last.parent.glob(".*.tmp"))

    assert main([*FIT, "--trainer.logger.init_args.save_dir", str(interrupted), "--ckpt_path", str(last)]) == 0
    assert torch.load(last, weights_only=True)["global_step"] == 8  # continued from step 3, not from 0
    assert main([*FIT, "--trainer.logger.init_args.save_dir", str(tmp_path / "uninterrupted")]) == 0
    expected = _weights(tmp_path / "uninterrupted" / "ldrop" / "version_0" / "checkpoints" / "last.ckpt")
    resumed = _weights(last)
    different = [name for name in expected if not _identical(expected[name], resumed[name])]
    assert expected.keys() == resumed.keys() and not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_ctrl_c_mid_fit_writes_last_ckpt_at_the_step_reached_and_names_it(tmp_path, capsys):
    code = main([*FIT, "--trainer.logger.init_args.save_dir", str(tmp_path), *_signal_at("train", 3, "SIGINT")])
    last = tmp_path / "ldrop" / "version_0" / "checkpoints" / "last.ckpt"
    assert code == 130
    line = _stop_line(capsys.readouterr().err, "SIGINT")
    assert "at step 3" in line and f"--ckpt_path {last}" in line
    assert torch.load(last, weights_only=True)["global_step"] == 3


# two epochs: validations at steps 8 and 16 (logged at steps 7 and 15)
TWO_EPOCHS = [*FIT, "--trainer.max_epochs", "2"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    save_dir = tmp_path_factory.mktemp("uninterrupted")
    assert main([*TWO_EPOCHS, "--trainer.logger.init_args.save_dir", str(save_dir)]) == 0
    return save_dir / "ldrop" / "version_0"


@pytest.mark.parametrize("hook, step", [("train", 8), ("validation", 0)], ids=["last-batch-of-the-epoch", "validation"])
def test_a_fit_stopped_before_its_validation_completed_runs_it_once_on_resume(uninterrupted, tmp_path, hook, step):
    save_dir = ["--trainer.logger.init_args.save_dir", str(tmp_path)]
    assert main([*TWO_EPOCHS, *save_dir, *_signal_at(hook, step)]) == 143
    run = tmp_path / "ldrop" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 8 and not list(last.parent.glob("best-*"))

    assert main([*TWO_EPOCHS, *save_dir, "--ckpt_path", str(last)]) == 0
    assert val_steps(run) == val_steps(uninterrupted) == [7, 15]
    assert sorted(p.name for p in last.parent.iterdir()) == sorted(p.name for p in (uninterrupted / "checkpoints").iterdir())
    expected, resumed = _weights(uninterrupted / "checkpoints" / "last.ckpt"), _weights(last)
    assert expected.keys() == resumed.keys()
    assert all(torch.allclose(expected[k].float().nan_to_num(), resumed[k].float().nan_to_num(), atol=1e-6) for k in expected)


def test_sigterm_during_validation_in_fit_writes_last_ckpt_at_the_step_reached(tmp_path, capsys):
    # the epoch's validation pass, after the 8 training steps: stopped before its second batch
    code = main([*FIT, "--trainer.logger.init_args.save_dir", str(tmp_path), *_signal_at("validation", 0)])
    last = tmp_path / "ldrop" / "version_0" / "checkpoints" / "last.ckpt"
    assert code == 143
    assert f"--ckpt_path {last}" in _stop_line(capsys.readouterr().err)
    assert torch.load(last, weights_only=True)["global_step"] == 8


@pytest.mark.parametrize("hook, sent", [("test_start", "SIGTERM"), ("test", "SIGTERM"), ("test", "SIGINT")],
                         ids=["selector-fit-on-validation-data", "sweep", "sweep-ctrl-c"])
def test_sigterm_stops_ldrop_test_without_a_sweep(tmp_path, capsys, hook, sent):
    code = main(["test", *EVALUATE, "--sweep.headroom", "false", "--trainer.logger.init_args.save_dir", str(tmp_path),
                 *_signal_at(hook, 0, sent)])
    err = capsys.readouterr().err
    assert code == {"SIGTERM": 143, "SIGINT": 130}[sent]
    assert "no budget sweep was written" in _stop_line(err, sent)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no sweep file, and no empty run folder
    if hook == "test_start":  # the fit on validation data stopped at its first batch
        assert "fitting InputConditionedSelector on validation data (4 batches): done" not in err


@pytest.mark.parametrize("sent, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_sigterm_stops_ldrop_predict_and_keeps_the_written_predictions_as_partial(tmp_path, capsys, sent, code):
    output = tmp_path / "predictions.jsonl"
    assert main(["predict", *EVALUATE, "--predictions.output", str(output),
                 "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
                 *_signal_at("predict", 0, sent)]) == code
    partial = output.with_name(output.name + ".partial")
    out, err = capsys.readouterr()
    assert str(partial) in _stop_line(err, sent)
    assert str(partial) not in out  # one line says where the predictions are, not two
    assert not output.exists()
    assert 1 <= len(partial.read_text().splitlines()) < 16  # stopped at the next batch, not at the end


def test_sigterm_stops_ldrop_validate(tmp_path, capsys):
    code = main(["validate", *EVALUATE, "--trainer.logger.init_args.save_dir", str(tmp_path),
                 *_signal_at("validation", 0)])
    assert code == 143
    assert "during 'ldrop validate'" in _stop_line(capsys.readouterr().err)


# gradients summed over 2 batches: 4 optimizer steps (after batches 1, 3, 5, 7); a validation after batch 2 (between
# two accumulated batches) with --trainer.val_check_interval 3
ACCUMULATE = [*FIT, "--trainer.accumulate_grad_batches", "2", "--trainer.val_check_interval", "3"]


@pytest.fixture(scope="module")
def accumulated(tmp_path_factory) -> Path:
    save_dir = tmp_path_factory.mktemp("accumulated")
    assert main([*ACCUMULATE, "--trainer.logger.init_args.save_dir", str(save_dir)]) == 0
    return save_dir / "ldrop" / "version_0" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("hook", ["train_batch", "validation"], ids=["accumulated-batch", "validation-in-between"])
def test_a_stop_between_accumulated_batches_waits_for_the_optimizer_step_and_resumes_exactly(accumulated, tmp_path,
                                                                                              capsys, hook):
    """Stopped after batch 2, whose gradients were only accumulated: last.ckpt was written there and its resume
    lost them (105 tensors differed from the uninterrupted run). The stop now waits for the step after batch 3."""
    save_dir = ["--trainer.logger.init_args.save_dir", str(tmp_path)]
    assert main([*ACCUMULATE, *save_dir, *_signal_at(hook, 2 if hook == "train_batch" else 0)]) == 143
    last = tmp_path / "ldrop" / "version_0" / "checkpoints" / "last.ckpt"
    assert "at step 2" in _stop_line(capsys.readouterr().err)
    assert torch.load(last, weights_only=True)["global_step"] == 2
    assert main([*ACCUMULATE, *save_dir, "--ckpt_path", str(last)]) == 0
    expected, resumed = _weights(accumulated), _weights(last)
    different = [name for name in expected if not _identical(expected[name], resumed[name])]
    assert expected.keys() == resumed.keys() and not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.mark.skipif(not hasattr(signal, "sigwaitinfo"), reason="workers tell the sender with sigwaitinfo (Linux)")
def test_a_sigterm_to_the_whole_process_group_with_dataloader_workers_stops_the_fit_with_a_last_ckpt(tmp_path):
    """``scancel``, a preemption or systemd signal the whole process group: the DataLoader workers died of it
    ("DataLoader worker (pid ...) is killed by signal: Terminated"), exit status 1, a traceback, no last.ckpt."""
    run = subprocess.run([sys.executable, "-m", "ldrop.cli", *FIT, "--data.init_args.num_workers", "2",
                          "--trainer.logger.init_args.save_dir", str(tmp_path), *_signal_at("train", 3),
                          "--trainer.callbacks.init_args.group", "true"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300, start_new_session=True)
    last = tmp_path / "ldrop" / "version_0" / "checkpoints" / "last.ckpt"
    assert run.returncode == 143, run.stderr[-3000:]
    assert f"--ckpt_path {last}" in _stop_line(run.stderr)
    assert torch.load(last, weights_only=True)["global_step"] == 3


@pytest.mark.skipif(not hasattr(signal, "sigwaitinfo"), reason="workers tell the sender with sigwaitinfo (Linux)")
def test_a_script_that_fails_with_dataloader_workers_alive_still_exits(tmp_path):
    """The workers ignore a stop signal that their main process did not send, but still end on its own SIGTERM: at
    exit, with an iterator left alive by an uncaught error, multiprocessing terminates them and joins (a worker
    that ignored every SIGTERM hung the exit)."""
    script = ("from ldrop.data.samplers import ResumableDataLoader\n"
              "batches = iter(ResumableDataLoader(list(range(64)), batch_size=2, num_workers=2))\n"
              "next(batches)\n"
              "raise RuntimeError('failed with workers alive')\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "failed with workers alive" in run.stderr


#: A script that waits in C code inside ``sigterm_stops``, where no Python signal handler runs: a TCPStore client of
#: a port nobody listens on, retried for 60 s (as a DDP start-up waiting for ranks that never come).
BLOCKED_IN_C = ("import datetime, socket\n"
                "from torch.distributed import TCPStore\n"
                "from ldrop.cli.lightning import sigterm_stops\n"
                "s = socket.socket(); s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]; s.close()\n"
                "with sigterm_stops():\n"
                "    print('waiting', flush=True)\n"
                "    TCPStore('127.0.0.1', port, 2, False, timeout=datetime.timedelta(seconds=60))\n")


def _signal_twice(script: str, pause: float) -> tuple[int, str, str]:
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout.readline() == "waiting\n", process.stderr.read()[-3000:]
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        time.sleep(pause)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
        return process.returncode, out, err
    finally:
        process.kill()
        process.wait()


@pytest.mark.skipif(os.name != "posix", reason="the wakeup pipe is watched on POSIX")
def test_a_second_sigterm_ends_a_process_that_waits_in_c_code_at_once():
    """A SIGTERM while DDP's start-up waited for missing ranks (SLURM_NTASKS=2, one process) was not acted on for the
    store's 30 min, and later ones were ignored."""
    code, _, err = _signal_twice(BLOCKED_IN_C, 0.5)
    assert code == 143, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("ldrop: ")]
    assert len(lines) == 1 and lines[0].startswith("ldrop: stopped by SIGTERM at once"), err[-3000:]


@pytest.mark.skipif(os.name != "posix", reason="the wakeup pipe is watched on POSIX")
def test_a_second_sigterm_right_after_the_first_does_not_end_a_process_that_acts_on_it():
    """One stop delivered twice (to the process group, and forwarded by Lightning's launcher to its ranks): a process
    whose main thread runs Python stops at the end of its batch as for one."""
    script = ("import time\n"
              "from lightning.pytorch.utilities.exceptions import SIGTERMException\n"
              "from ldrop.cli.lightning import FORCE_AFTER, sigterm_stops\n"
              "with sigterm_stops():\n"
              "    try:\n"
              "        print('waiting', flush=True)\n"
              "        time.sleep(60)\n"
              "    except SIGTERMException:\n"
              "        time.sleep(FORCE_AFTER + 1)  # the batch's end: the second signal is not forced\n"
              "        print('stopped at the end of the batch', flush=True)\n")
    code, out, err = _signal_twice(script, 0.01)
    assert code == 0 and "stopped at the end of the batch" in out, err[-3000:]
