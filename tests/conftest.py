"""Fixtures shared by the whole suite (helpers live in tests/helpers.py)."""

from __future__ import annotations

import pytest

from tests.helpers import LAYOUTS, layout_id, make_backbone


@pytest.fixture(params=LAYOUTS, ids=layout_id)
def backbone(request):
    """A tiny backbone of every family and norm layout, in eval mode."""
    family, stable = request.param
    return make_backbone(family, stable)
