"""The package's shape, as the restructure left it: no class over 400 lines, and the task with everything it
inherits from ldrop under 600 (the import layers are checked by ``lint-imports``, private Lightning names by
``test_lightning_internals``)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import ldrop
from ldrop.tasks import LayerDropTask

PACKAGE = Path(ldrop.__file__).parent


def test_no_class_in_the_package_is_over_400_lines():
    sizes = {f"{path.relative_to(PACKAGE.parent)}:{node.name}": node.end_lineno - node.lineno + 1
             for path in PACKAGE.rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.ClassDef)}
    assert len(sizes) > 50, "the scan found too few classes"
    assert max(sizes.values()) <= 400, {name: size for name, size in sizes.items() if size > 400}


def test_the_task_with_everything_it_inherits_from_ldrop_is_under_600_lines():
    own = {cls.__qualname__: len(inspect.getsource(cls).splitlines())
           for cls in LayerDropTask.__mro__ if cls.__module__.split(".")[0] == "ldrop"}
    assert "LayerDropTask" in own and len(own) >= 2, own
    assert sum(own.values()) < 600, own
