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


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_front_fits_on_one_screen_with_install_the_three_commands_and_a_map():
    text = README.read_text()
    front = text[: text.index("\n## ", text.index("\n## Contents"))]
    assert len(front.splitlines()) <= 60, f"the README front is {len(front.splitlines())} lines"
    assert 'pip install -e ".[dev]"' in front
    for command in ("ldrop fit --config", "ldrop test --config", "ldrop predict --config"):
        assert command in front, command
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert len(links) >= 8 and set(links) <= anchors, set(links) - anchors
