"""Fixtures of the command-line tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.common import fit_quickstart


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A run folder of the shrunk quickstart, fitted for one epoch (shared: tests copy what they change)."""
    return fit_quickstart(tmp_path_factory.mktemp("run"))
