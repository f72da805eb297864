"""The README's Python examples run as written, and its commands name things that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    block = _python_blocks()[index]
    exec(compile(block, f"README.md[python block {index}]", "exec"), {"__name__": "readme_example"})


def test_readme_config_paths_exist():
    root = README.parent
    for path in set(re.findall(r"configs/[\w/.-]+\.yaml", README.read_text())):
        assert (root / path).is_file(), path
