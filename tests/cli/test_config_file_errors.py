"""A mistake inside a ``--config`` file is one line naming the file and the key as written there."""

from __future__ import annotations

import pytest

from ldrop.cli import main
from tests.cli.common import QUICKSTART, SMALL, one_error_line


def _fit(tmp_path, *args: str) -> list[str]:
    return ["fit", "--config", QUICKSTART, *SMALL, "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), *args]


@pytest.mark.parametrize(("text", "expected"), [
    ("trainer: {max_epoch: 1}", "trainer.max_epoch: not an option of fit (did you mean trainer.max_epochs?)"),
    ("trainer: {max_epochs: abc}", "trainer.max_epochs 'abc': expected an int or null"),
    ("model: {init_args: {selector: {init_args: {hidden_dimm: 3}}}}",
     "model.init_args.selector.init_args.hidden_dimm: InputConditionedSelector has no option 'hidden_dimm' (its "
     "options: 'ldrop fit --model.help ClassificationTask --model.selector.help InputConditionedSelector')"),
    ("data: {init_args: {batch_sise: 3}}",
     "data.init_args.batch_sise: SyntheticClassificationDataModule has no option 'batch_sise' (its options: "
     "'ldrop fit --data.help SyntheticClassificationDataModule')"),
    ("model: {init_args: {optimization: {lrr: 1}}}",
     "model.init_args.optimization.lrr: ClassificationTask has no option 'optimization.lrr'"),
    ("model: {init_args: {selector: {init_args: {hidden_dim: abc}}}}",
     "model.init_args.selector.init_args.hidden_dim 'abc': expected an int"),
    ("model: {class_path: ClasificationTask}", "model.class_path 'ClasificationTask': no such class; did you mean "
                                                "ClassificationTask?"),
], ids=["unknown-key", "wrong-type", "selector-key", "datamodule-key", "key-in-a-group", "selector-value",
        "misspelt-class"])
def test_a_mistake_in_a_config_file_names_the_file_and_the_key_as_written(tmp_path, capsys, text, expected):
    config = tmp_path / "mine.yaml"
    config.write_text(text + "\n")
    assert main(_fit(tmp_path, "--config", str(config))) == 2
    line = one_error_line(capsys)
    assert f"ldrop: error: {config}: {expected}" in line, line
    assert "{'" not in line and "--trainer.max_epoch" not in line, line  # no dict, nothing as if typed
    assert not (tmp_path / "logs").exists()


def test_the_file_named_is_the_one_with_the_bad_value_not_a_later_one_that_sets_the_key(tmp_path, capsys):
    bad, good = tmp_path / "bad.yaml", tmp_path / "good.yaml"
    bad.write_text("trainer: {max_epochs: abc}\n")
    good.write_text("trainer: {max_epochs: 3}\n")
    assert main(_fit(tmp_path, "-c", str(bad), f"--config={good}")) == 2
    assert f"ldrop: error: {bad}: trainer.max_epochs 'abc': expected an int or null" in one_error_line(capsys)


def test_of_several_files_with_the_unknown_key_the_last_is_named(tmp_path, capsys):
    first, last = tmp_path / "first.yaml", tmp_path / "last.yaml"
    for config in (first, last):
        config.write_text("trainer: {max_epoch: 1}\n")
    assert main(_fit(tmp_path, "--config", str(first), "--config", str(last))) == 2
    assert f"ldrop: error: {last}: trainer.max_epoch: not an option of fit" in one_error_line(capsys)


def test_a_config_before_the_subcommand_names_the_key_under_its_section(tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text("fit: {trainer: {max_epoch: 1}}\n")
    assert main(["--config", str(config), *_fit(tmp_path)]) == 2
    assert f"ldrop: error: {config}: fit.trainer.max_epoch: not an option of fit" in one_error_line(capsys)


def test_a_value_typed_on_the_command_line_is_still_named_as_typed(tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text("trainer: {max_epochs: 2}\n")
    assert main(_fit(tmp_path, "--config", str(config), "--trainer.max_epochs", "abc")) == 2
    assert "ldrop: error: --trainer.max_epochs 'abc': expected an int or null" in one_error_line(capsys)
