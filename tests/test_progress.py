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
