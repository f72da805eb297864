"""Benchmarks, run as ``python -m ldrop.bench <benchmark> [options]`` (the list: ``python -m ldrop.bench --help``)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


class StageError(RuntimeError):
    """An ``ldrop`` child process (a stage of a benchmark) failed; the message names it and its log file."""


def launch(args: Sequence[str], log: Path, threads: int | None = None) -> int:
    """Run ``ldrop <args>`` in a child process (the console script's entry point, run by this Python: same
    environment, same ``PYTHONPATH``), all output to ``log``; returns its exit status. ``threads`` sets the
    child's ``OMP_NUM_THREADS`` (torch's CPU threads). Tests replace it with an in-process call of
    :func:`ldrop.cli.main`."""
    command = [sys.executable, "-c", "import sys; from ldrop.cli import main; sys.exit(main())", *args]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    with open(log, "w", encoding="utf-8") as handle:
        return subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, check=False).returncode


def run_ldrop(args: Sequence[str], log: Path, threads: int | None = None, name: str | None = None) -> float:
    """:func:`launch`; returns its seconds. A non-zero exit raises :class:`StageError` naming ``name`` (default:
    the command), the exit status, the log and its last lines."""
    start = time.perf_counter()
    status = launch(args, log, threads)
    seconds = time.perf_counter() - start
    if status != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        raise StageError(f"{name or f'`ldrop {shlex.join(args)}`'} failed (exit status {status}) after {seconds:.0f} s;"
                         f" its log: {log}" + "".join(f"\n    {line}" for line in tail))
    return seconds
