"""The common arguments reach every DataModule through ``**kwargs`` and stay visible to jsonargparse.

DataModules forward the arguments of :class:`AudioDataModule` with ``**kwargs``; jsonargparse resolves
them from the ``super().__init__(**kwargs)`` call, so ``--help``, the command line and YAML keep them.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.cli import LightningArgumentParser

from ldrop.data import (
    AudioDataModule,
    ESC50DataModule,
    LibriSpeechDataModule,
    ManifestDataModule,
    SpeechCommandsDataModule,
    SyntheticClassificationDataModule,
    SyntheticCTCDataModule,
    TedliumDataModule,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "data"

#: Each module with the arguments it needs to be built (no file is read by a constructor).
MODULES: dict[type[AudioDataModule], list[str]] = {
    LibriSpeechDataModule: ["--data.root", "/nowhere"],
    TedliumDataModule: ["--data.root", "/nowhere"],
    SpeechCommandsDataModule: ["--data.root", "/nowhere"],
    ESC50DataModule: ["--data.root", "/nowhere"],
    ManifestDataModule: ["--data.train_manifest", "/nowhere/train.csv"],
    SyntheticClassificationDataModule: [],
    SyntheticCTCDataModule: [],
}

#: The arguments every module takes from AudioDataModule (the generated sets have no root).
COMMON = [name for name in inspect.signature(AudioDataModule.__init__).parameters if name != "self"]
NOT_GENERATED = {"root"}


def _common_of(cls: type[AudioDataModule]) -> list[str]:
    generated = cls in (SyntheticClassificationDataModule, SyntheticCTCDataModule)
    return [name for name in COMMON if not (generated and name in NOT_GENERATED)]


def _subclass_parser() -> LightningArgumentParser:
    """The data part of the ``ldrop`` command's parser (``subclass_mode_data=True``)."""
    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_lightning_class_args(AudioDataModule, "data", subclass_mode=True)
    return parser


@pytest.mark.parametrize("cls", list(MODULES), ids=lambda c: c.__name__)
def test_help_lists_the_forwarded_common_arguments_with_their_docs(cls):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "data")
    shown = {action.dest.removeprefix("data.") for action in parser._actions}
    assert set(_common_of(cls)) <= shown
    assert "kwargs" not in shown
    text = parser.format_help()
    assert "--data.batch_size" in text and "--data.max_train_seconds" in text
    assert "items per batch" in text  # the description comes from AudioDataModule's docstring


@pytest.mark.parametrize("generated", [SyntheticClassificationDataModule, SyntheticCTCDataModule])
def test_generated_sets_take_no_root_but_skip_bad_files_for_their_predict_inputs(generated):
    assert generated(skip_bad_files=True).skip_bad_files is True
    with pytest.raises(TypeError):
        generated(root="/nowhere")
    parser = _subclass_parser()
    with pytest.raises(Exception, match="root"):
        parser.parse_args(["--data", generated.__name__, "--data.root", "/nowhere"])


@pytest.mark.parametrize("cls", list(MODULES), ids=lambda c: c.__name__)
def test_common_arguments_from_the_command_line_reach_the_instance(cls):
    values = {
        "batch_size": 3,
        "max_train_seconds": 5.0,
        "seed": 7,
        "max_batch_seconds": 12.5,
        "min_samples": 320,
    }
    args = ["--data", cls.__name__, *MODULES[cls]]
    for name, value in values.items():
        args += [f"--data.{name}", str(value)]
    takes_skip = "skip_bad_files" in _common_of(cls)
    if takes_skip:
        args += ["--data.skip_bad_files", "true"]
    parser = _subclass_parser()
    dm = parser.instantiate(parser.parse_args(args)).data
    assert type(dm) is cls
    for name, value in values.items():
        assert getattr(dm, name) == value, name
    assert dm.skip_bad_files is takes_skip


@pytest.mark.parametrize("cls", list(MODULES), ids=lambda c: c.__name__)
def test_defaults_are_those_of_audio_datamodule(cls):
    parser = _subclass_parser()
    dm = parser.instantiate(parser.parse_args(["--data", cls.__name__, *MODULES[cls]])).data
    base = inspect.signature(AudioDataModule.__init__).parameters
    for name in (
        "batch_size",
        "num_workers",
        "max_batch_seconds",
        "group_by_length",
        "max_train_seconds",
        "seed",
        "sample_rate",
        "min_samples",
        "pin_memory",
    ):
        assert getattr(dm, name) == base[name].default, name
    assert dm.long_clip_policy == ("filter" if dm.task == "ctc" else "crop")


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_data_configs_parse_and_their_common_arguments_reach_the_instance(config):
    data = yaml.safe_load(config.read_text())["data"]
    parser = _subclass_parser()
    dm = parser.instantiate(parser.parse_object({"data": data})).data
    assert type(dm).__name__ == data["class_path"]
    for name, value in data["init_args"].items():
        if name in COMMON and name != "root":
            assert getattr(dm, name) == value, name
    assert any(name in COMMON and name != "root" for name in data["init_args"])  # the check above ran
