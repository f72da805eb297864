"""Progress lines of ldrop's own long phases: visible in a terminal without any logging set-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
from ldrop._progress import Phase
with Phase("demo search", total=2, unit="batch", interval=0) as phase:
    phase.step("first")
    phase.step()
    phase.done("found it")
"""


def test_phase_lines_reach_stderr_without_any_logging_set_up():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120,
                            check=True)
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "demo search (2 batches) ..."
    assert lines[1].startswith("demo search: 1/2 batch, ") and lines[1].endswith(" s (first)")
    assert lines[2].startswith("demo search: 2/2 batches, ")
    assert lines[3].startswith("demo search: done in ") and lines[3].endswith(": found it")
    assert result.stdout == ""


def test_a_heartbeat_speaks_for_the_innermost_open_phase_and_counts_no_step(caplog, monkeypatch):
    import logging

    from ldrop import _progress
    from ldrop._progress import Phase, heartbeat

    monkeypatch.setattr(_progress, "_open", [])  # this test's phases only

    with caplog.at_level(logging.INFO, logger="ldrop.progress"):
        heartbeat()  # no phase open: nothing
        with Phase("outer", interval=0):
            with Phase("inner", total=3, unit="budget", interval=0) as inner:
                heartbeat()
                assert inner.count == 0
            heartbeat()
        heartbeat()
    lines = [r.getMessage() for r in caplog.records]
    beats = [line for line in lines if line.endswith("still working")]
    assert len(beats) == 2 and beats[0].startswith("inner: 0/3 budgets, ") and beats[1].startswith("outer: 0 steps, ")


def test_fitting_on_validation_data_beats_within_each_budget(monkeypatch):
    import torch

    from ldrop.selectors import InputConditionedSelector
    from ldrop.tasks import ClassificationTask, calibration
    from tests.helpers import tiny_classification_data

    beats = []
    monkeypatch.setattr(calibration, "heartbeat", lambda: beats.append(1))
    data = tiny_classification_data()
    data.setup("validate")
    torch.manual_seed(0)
    model = ClassificationTask(labels=data.class_names, backbone="tiny:wavlm", selector=InputConditionedSelector).eval()
    model.calibrate_on_dataloader(data.val_dataloader(), budgets=[2])
    batches = len(data.val_dataloader())
    assert len(beats) >= 2 * batches  # once per batch of every validation pass, and a budget's fit is several passes


def test_a_failed_sweep_ends_its_progress_and_leaves_no_phase_open(tmp_path, caplog):
    import logging

    import lightning as L
    import pytest

    from ldrop import _progress
    from ldrop.sweeps import BudgetSweep
    from ldrop.tasks import ClassificationTask
    from tests.helpers import quiet_trainer, tiny_classification_data

    class FailAtFirstBatch(L.Callback):
        def on_test_batch_end(self, *args, **kwargs):
            raise RuntimeError("boom")

    data = tiny_classification_data()
    model = ClassificationTask(labels=data.class_names, backbone="tiny:wavlm")
    trainer = quiet_trainer(tmp_path, callbacks=[BudgetSweep(budgets=[4], headroom=False), FailAtFirstBatch()])
    open_before = list(_progress._open)
    with caplog.at_level(logging.INFO, logger="ldrop.progress"), pytest.raises(RuntimeError, match="boom"):
        trainer.test(model, data)
    assert _progress._open == open_before  # a later heartbeat does not speak for the failed sweep
    assert any(r.getMessage().startswith("budget sweep") and "stopped after" in r.getMessage()
               and "RuntimeError" in r.getMessage() for r in caplog.records)


TQDM_SCRIPT = """
import sys
from tqdm import tqdm
from ldrop._progress import Phase
with tqdm(total=3, file=sys.stderr, ncols=60, mininterval=0) as bar, Phase("demo sweep", total=3, interval=0) as phase:
    for _ in range(3):
        bar.update()
        phase.step()
"""


def test_a_progress_line_clears_a_live_tqdm_bar_first():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", TQDM_SCRIPT], capture_output=True, text=True, env=env, timeout=120,
                            check=True)
    rows = [row for row in result.stderr.split("\n") if "demo sweep" in row]
    assert len(rows) >= 3
    # what a terminal shows of the row: the text after its last carriage return starts with the line, not a bar
    assert all(row[:row.index("demo sweep")].rsplit("\r", 1)[-1].strip() == "" for row in rows), rows


RANKS_SCRIPT = """
from lightning.fabric.utilities.rank_zero import rank_zero_only
from ldrop._progress import note
note("said by rank 0")
rank_zero_only.rank = 1  # what the strategy sets in a DDP process of global rank 1
note("said by rank 1")
"""


def test_only_the_process_of_global_rank_zero_prints_progress_lines_unless_debugging():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LDROP_DEBUG": "0"}
    result = subprocess.run([sys.executable, "-c", RANKS_SCRIPT], capture_output=True, text=True, env=env,
                            timeout=120, check=True)
    assert "said by rank 0" in result.stderr and "said by rank 1" not in result.stderr, result.stderr
    result = subprocess.run([sys.executable, "-c", RANKS_SCRIPT], capture_output=True, text=True,
                            env={**env, "LDROP_DEBUG": "1"}, timeout=120, check=True)
    assert result.stderr.splitlines() == ["said by rank 0", "[rank 1] said by rank 1"], result.stderr

# ------------------------------------------------------------------------------------ benchmark stages
CHILD = "import sys, time; print('Epoch 0: 1/3 batches', flush=True); time.sleep(float(sys.argv[2]))"


def test_a_benchmark_stage_shows_lines_with_its_logs_last_line_while_it_runs(tmp_path, caplog, monkeypatch):
    import logging

    import ldrop.bench

    monkeypatch.setattr(ldrop.bench, "CHILD", CHILD)
    monkeypatch.setattr(ldrop.bench, "PROGRESS_INTERVAL", 0.05)
    log = tmp_path / "fit.log"
    with caplog.at_level(logging.INFO, logger="ldrop.progress"):
        assert ldrop.bench.launch(["fit", "1.5"], log) == 0
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("`ldrop fit` running for ") and str(log) in line and line.endswith("1/3 batches")
               for line in lines), lines
    assert "Epoch 0: 1/3 batches" in log.read_text()  # the full log stays in its file


def test_ctrl_c_while_a_benchmark_stage_runs_kills_its_child(tmp_path, monkeypatch):
    import pytest

    import ldrop.bench

    def interrupt(line):
        raise KeyboardInterrupt

    monkeypatch.setattr(ldrop.bench, "CHILD", "import os, sys, time; print(os.getpid(), flush=True); time.sleep(60)")
    monkeypatch.setattr(ldrop.bench, "PROGRESS_INTERVAL", 0.5)
    monkeypatch.setattr(ldrop.bench, "note", interrupt)  # Ctrl-C arrives while the parent waits for the child
    log = tmp_path / "fit.log"
    with pytest.raises(KeyboardInterrupt):
        ldrop.bench.launch(["fit"], log)
    pid = int(log.read_text().split()[0])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


def test_sigterm_while_a_benchmark_stage_runs_stops_its_child_too(tmp_path):
    """``kill <pid>`` of ``python -m ldrop.bench``: before, the parent died at once and its ``ldrop`` child ran on,
    orphaned, writing into the stage folder that a rerun then cleared and refilled."""
    import signal
    import time

    import pytest

    log = tmp_path / "fit.log"
    script = ("import sys, ldrop.bench as b; b.CHILD = 'import os, time; print(os.getpid(), flush=True); "
              f"time.sleep(60)'; b.PROGRESS_INTERVAL = 0.2; sys.exit(b.launch(['fit'], b.Path({str(log)!r})))")
    parent = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (log.exists() and log.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int(log.read_text().split()[0])
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 143
    assert "stopped by SIGTERM: stopping `ldrop fit`" in parent.stderr.read()
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # killed and reaped by the parent


def test_a_benchmark_stage_that_cannot_start_leaves_the_sigterm_handler_as_it_was(tmp_path):
    import signal

    import pytest

    import ldrop.bench

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(FileNotFoundError):
        ldrop.bench.launch(["fit"], tmp_path / "missing" / "fit.log")
    assert signal.getsignal(signal.SIGTERM) is before


def test_ctrl_c_in_a_forked_worker_of_a_run_ends_the_worker_as_before(tmp_path):
    """DataLoader workers are forked with ldrop's SIGINT handler: in them it must not stop the run (Lightning's
    handler, which broadcasts to every rank), only end the worker as a plain Ctrl+C did."""
    import signal
    import time

    from ldrop.cli.lightning import sigterm_stops, stop_signal

    with sigterm_stops():
        pid = os.fork()
        if pid == 0:  # the worker: never returns into pytest
            code = 0
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            except KeyboardInterrupt:
                code = 7
            except BaseException:
                code = 8
            os._exit(code)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 7
    assert stop_signal() == signal.SIGTERM  # the parent received nothing


def test_the_control_benchmarks_replay_shows_progress_per_utterance(caplog):
    import logging
    from types import SimpleNamespace

    import torch

    from ldrop.bench.control import LoadGenerator, replay

    class Runner:  # an AdaptiveModel's interface, instantly
        def __init__(self, model, **options):
            self.controller = SimpleNamespace(planned=1.0, probe=None)

        def __call__(self, clip, budget):
            return SimpleNamespace(logits=torch.zeros(1, 2), budget=torch.tensor([2]), layers_run=torch.tensor([2]),
                                   measured_ms=1.0, predicted_ms=1.0, correction=1.0)

    clips = [torch.zeros(800)] * 5
    with caplog.at_level(logging.INFO, logger="ldrop.progress"):
        records = replay(["full", "fixed"], None, None, clips, [None] * 5, deadline_ms=10.0, fixed_k=2,
                         load=LoadGenerator(0, 1.0), load_span=(9, 9), margin=0.1, runner_class=Runner)
    assert all(len(rows) == 5 for rows in records.values())
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("replay")]
    assert any("5/5 utterances" in line for line in lines) and "done in" in lines[-1], lines


def test_a_quiet_phase_speaks_only_when_slow(caplog, monkeypatch):
    import logging

    from ldrop import _progress
    from ldrop._progress import Phase

    monkeypatch.setattr(_progress, "_open", [])
    with caplog.at_level(logging.INFO, logger="ldrop.progress"):
        with Phase("fast", total=3, quiet=True) as phase:
            for _ in range(3):
                phase.step()
        assert caplog.records == []
        with Phase("slow", total=3, quiet=True, interval=0) as phase:
            phase.step()
    lines = [r.getMessage() for r in caplog.records]
    assert lines and lines[0].startswith("slow: 1/3 step, ") and lines[-1].startswith("slow: done in ")


# ---------------------------------------------------------------------------------------- data set-up
def _manifest_data(tmp_path, files: int = 3):
    from ldrop.data import ManifestDataModule
    from ldrop.testing.fixtures import write_audio

    rows = ["path,label"] + [f"{write_audio(tmp_path / f'{i}.wav', 1600, seed=i).name},{'ab'[i % 2]}"
                             for i in range(files)]
    (tmp_path / "items.csv").write_text("\n".join(rows) + "\n")
    return ManifestDataModule(train_manifest=str(tmp_path / "items.csv"), val_manifest=str(tmp_path / "items.csv"))


def test_data_setup_shows_one_summary_line_per_split_and_no_header_lines_when_fast(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="ldrop.progress"):
        _manifest_data(tmp_path).setup("fit")
    lines = [r.getMessage() for r in caplog.records if r.name == "ldrop.progress"]
    assert [line.split(":")[:2] for line in lines] == [["ManifestDataModule", " train split"],
                                                        ["ManifestDataModule", " val split"]], lines
    assert all(" 3 items, " in line for line in lines)


def test_data_setup_shows_progress_while_reading_many_headers_slowly(tmp_path, caplog, monkeypatch):
    import functools
    import logging

    from ldrop._progress import Phase
    from ldrop.data import datasets

    monkeypatch.setattr(datasets, "Phase", functools.partial(Phase, interval=0))  # every header is "slow"
    with caplog.at_level(logging.INFO, logger="ldrop.progress"):
        _manifest_data(tmp_path).setup("fit")
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("reading the audio headers of split 'train': ") and "/3 items" in line
               for line in lines), lines
