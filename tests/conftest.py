"""Fixtures shared by the whole suite (helpers live in tests/helpers.py)."""

from __future__ import annotations

import os

# One OpenMP thread in the commands the tests start (``python -m ldrop.cli`` subprocesses), as in-process below;
# before torch is imported, so that this process starts with one thread too. A value already set is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from collections.abc import Iterator  # noqa: E402

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


@pytest.fixture(params=LAYOUTS, ids=layout_id)
def backbone(request):
    """A tiny backbone of every family and norm layout, in eval mode."""
    family, stable = request.param
    return make_backbone(family, stable)
