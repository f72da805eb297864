"""A latency target (:meth:`ldrop.budgets.Target.parse`): a value that is no positive number is one ValueError
line naming the target's key."""

from __future__ import annotations

import pytest

from ldrop.budgets import Target


@pytest.mark.parametrize("spec", [{"ms": True}, {"rtf": False}, {"ms": True, "profile": "p.json"}])
def test_a_bool_target_value_is_one_line_naming_the_key(spec):
    kind = next(k for k in spec if k != "profile")
    with pytest.raises(ValueError, match=f"^target {kind} must be a .*number.*, got {spec[kind]}$") as error:
        Target.parse(spec)
    assert "\n" not in str(error.value)


def test_a_number_target_value_is_kept_as_a_float():
    assert Target.parse({"ms": 80}) == Target("ms", 80.0) and Target.parse("rtf=0.1") == Target("rtf", 0.1)
