"""Benchmarks, run as ``python -m ldrop.bench <benchmark> [options]`` (the list: ``python -m ldrop.bench --help``)."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ldrop._progress import note


def at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number ``>= low`` (a count, a size), else argparse's one-line usage error."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {low}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in "invalid integer value: 'x'"
    return parse


def positive(text: str) -> float:
    """An argparse ``type``: a finite number ``> 0`` (seconds)."""
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


class StageError(RuntimeError):
    """An ``ldrop`` child process (a stage of a benchmark) failed; the message names it and its log file."""


#: Seconds between the lines that show a stage is still running (with its log's last line).
PROGRESS_INTERVAL = 30.0
#: The child's program: the console script's entry point.
CHILD = "import sys; from ldrop.cli import main; sys.exit(main())"


def launch(args: Sequence[str], log: Path, threads: int | None = None) -> int:
    """Run ``ldrop <args>`` in a child process (the console script's entry point, run by this Python: same
    environment, same ``PYTHONPATH``), all output to ``log``, a progress line every :data:`PROGRESS_INTERVAL`
    seconds; returns its exit status. ``threads`` sets the child's ``OMP_NUM_THREADS`` (torch's CPU threads).
    Ctrl-C, SIGTERM (exit status 143) or any error here kills the child. Tests replace it with an in-process
    call of :func:`ldrop.cli.main`."""
    command = [sys.executable, "-c", CHILD, *args]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    start = time.perf_counter()

    def stop(signum: int, frame: object) -> None:  # a plain SIGTERM would leave the child running, orphaned
        note(f"stopped by SIGTERM: stopping `ldrop {args[0]}` (a rerun redoes this stage)")
        raise SystemExit(128 + signum)

    with open(log, "w", encoding="utf-8") as handle, \
            subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env) as child:
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGTERM)
        try:
            if main_thread:
                signal.signal(signal.SIGTERM, stop)
            while True:
                try:
                    return child.wait(timeout=PROGRESS_INTERVAL)
                except subprocess.TimeoutExpired:
                    minutes = (time.perf_counter() - start) / 60
                    last = (_tail(log, 1) or ["(no output yet)"])[0].strip()[:200]
                    note(f"`ldrop {args[0]}` running for {minutes:.1f} min, log {log}: {last}")
        except BaseException:  # Ctrl-C and SIGTERM included
            child.kill()
            child.wait()
            raise
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _tail(log: Path, count: int) -> list[str]:
    """The last ``count`` non-blank lines of ``log`` (a progress bar's ``\\r`` updates are lines too)."""
    with open(log, "rb") as handle:
        handle.seek(max(0, handle.seek(0, os.SEEK_END) - 16384))
        text = handle.read().decode("utf-8", errors="replace")
    return [line.rstrip() for line in text.splitlines() if line.strip()][-count:]


def run_ldrop(args: Sequence[str], log: Path, threads: int | None = None, name: str | None = None) -> float:
    """:func:`launch`; returns its seconds. A non-zero exit raises :class:`StageError` naming ``name`` (default:
    the command), the exit status, the log and its last lines."""
    start = time.perf_counter()
    status = launch(args, log, threads)
    seconds = time.perf_counter() - start
    if status != 0:
        tail = _tail(log, 5)
        raise StageError(f"{name or f'`ldrop {shlex.join(args)}`'} failed (exit status {status}) after {seconds:.0f} s;"
                         f" its log: {log}" + "".join(f"\n    {line}" for line in tail))
    return seconds
