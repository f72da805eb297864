"""The README's Python examples run as written, and its commands name things that exist."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path
from string import Template

import pytest

from ldrop import cli
from ldrop.bench.__main__ import BENCHMARKS

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.fixture
def backbone_registry():
    """The examples register backbone families; each is forgotten after its example, so that no later test in this
    process (the one that an unregistered family is refused) depends on which examples ran before it."""
    from ldrop.backbones import adapter

    registries = (adapter.FAMILIES, adapter._MODEL_TYPE_TO_FAMILY, adapter._ADAPTERS)
    saved = [dict(registry) for registry in registries]
    yield
    for registry, entries in zip(registries, saved, strict=True):
        registry.clear()
        registry.update(entries)


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_example_runs(index, tmp_path, monkeypatch, backbone_registry):
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


def _shell_lines() -> list[tuple[bool, str]]:
    """(inline, command) for each line of the README's code blocks (continuations joined, ``NAME=value`` lines
    expanded into the later lines) and each inline code span."""
    lines, prose, block, inside = [], [], [], False
    for line in README.read_text().splitlines():
        if line.strip().startswith("```"):
            variables: dict[str, str] = {}
            for command in "\n".join(block).replace("\\\n", " ").splitlines():
                if match := re.fullmatch(r"\s*(\w+)=(\S+)\s*", command):
                    variables[match[1]] = match[2]
                else:
                    lines.append((False, Template(command.strip()).safe_substitute(variables)))
            block, inside = [], not inside
        else:
            (block if inside else prose).append(line)
    return lines + [(True, " ".join(span.split())) for span in re.findall(r"`([^`\n]+(?:\n[^`\n]+)?)`", "\n".join(prose))]


def _readme_commands() -> list[tuple[str, list[str]]]:
    """(program, arguments) of every ``ldrop`` and ``python -m ldrop.bench`` command in the README; inline
    mentions of a bare command (``ldrop fit``) and examples with placeholders (``--batch-size B``) left out."""
    commands = []
    for inline, line in _shell_lines():
        for program in ("python -m ldrop.bench", "ldrop"):
            if match := re.match(rf"(?:\w+=\S+ )*{re.escape(program)} (.+)", line):
                argv = shlex.split(match[1], comments=True)
                placeholder = any(re.fullmatch(r"[A-Z]+|<.+>|mypackage\..+", arg) for arg in argv)
                if not placeholder and not (inline and len(argv) < 3):
                    commands.append((program, argv))
                break
    return commands


@pytest.mark.parametrize(("program", "argv"), _readme_commands(), ids=lambda v: " ".join(v)[:60] if isinstance(v, list) else v)
def test_readme_command_parses_as_written(program, argv, monkeypatch, capsys):
    """Nothing runs: each command only parses (LightningCLI's with ``--print_config``), from the repository root."""
    monkeypatch.chdir(README.parent)
    try:
        if program != "ldrop":
            module = importlib.import_module(BENCHMARKS[argv[0]][0])
            (getattr(module, "parse_args", None) or module.build_parser().parse_args)(argv[1:])
        elif argv[0] in cli.COMMANDS:
            importlib.import_module(f"ldrop.cli.{argv[0]}").build_parser().parse_args(argv[1:])
        else:
            helps = any(arg == "--help" or arg.endswith(".help") for arg in argv)  # print and exit 0 as they are
            assert cli.main(argv if helps else [*argv, "--print_config"]) in (0, None), capsys.readouterr().err
    except SystemExit as exit:
        assert exit.code in (0, None), capsys.readouterr().err
