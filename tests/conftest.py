"""Fixtures shared by the whole suite (helpers live in tests/helpers.py)."""

from __future__ import annotations

import os

# One OpenMP thread in the commands the tests start (``python -m ldrop.cli`` subprocesses), as in-process below;
# before torch is imported, so that this process starts with one thread too. A value already set is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import random  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from tests.helpers import LAYOUTS, layout_id, make_backbone  # noqa: E402


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """One torch thread in every test: the tests run tiny models and tensors, which one thread runs as fast, and
    on a busy or shared CPU spinning OpenMP threads make them many times slower. Tests that set a count (commands
    with ``--threads``) still do; no test asserts the default count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def seeded_module() -> None:
    """The random generators seeded before each file's own fixtures are built: the tests run in worker processes
    that take whole files in whatever order they finish them, so what ran before in a process must not matter."""
    _seed()


@pytest.fixture(autouse=True)
def seeded() -> None:
    """... and again before each test."""
    _seed()


#: What a DDP run (Lightning's ``ddp_spawn`` in this process) leaves in the environment; commands that a later test
#: starts would inherit it (an old, maybe taken port).
DISTRIBUTED_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE",
                   "GROUP_RANK")


@pytest.fixture(autouse=True)
def distributed_env() -> Iterator[None]:
    """Each of :data:`DISTRIBUTED_ENV` as it was before the test (an absent one removed again)."""
    before = {name: os.environ.get(name) for name in DISTRIBUTED_ENV}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def live_pid() -> Iterator[int]:
    """The id of another process that runs for the test's length (another ldrop command writing the same files)."""
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process.pid
    process.kill()
    process.wait()


@pytest.fixture(params=LAYOUTS, ids=layout_id)
def backbone(request):
    """A tiny backbone of every family and norm layout, in eval mode."""
    family, stable = request.param
    return make_backbone(family, stable)
