"""A downstream lab's own task and DataModule, ported to ldrop with the mistakes a port makes: each is one
``ldrop: error:`` line (exit status 2) that names the class, the attribute or the option and what to do, never a
raw traceback, an empty reason or a run on data the model was not made for."""

from __future__ import annotations

from typing import Any

import pytest
from torch import nn
from torch.utils.data import DataLoader

from ldrop.cli import main
from ldrop.cli.errors import ConfigError
from ldrop.data import (
    AudioDataModule,
    AudioDataset,
    DatasetLayoutError,
    SyntheticClassificationDataset,
    collate_audio,
)
from ldrop.tasks import ClassificationTask
from tests.cli.common import QUICKSTART, SMALL, one_error_line

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
WORDS = ["yes", "no", "up", "down"]


class WrongOrderClassifier(ClassificationTask):
    """The construction-order mistake: ``configure_head`` (called by the base ``__init__``) reads an attribute
    that the subclass sets after ``super().__init__()``."""

    def __init__(self, head_hidden: int = 16, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.head_hidden = head_hidden

    def configure_head(self) -> nn.Module:
        return nn.Sequential(nn.Linear(self.backbone.hidden_size, self.head_hidden), nn.GELU(),
                             nn.Linear(self.head_hidden, self.num_classes))


class Generated(AudioDataModule):
    """A lab's ported keyword module (generated clips, four classes) that forgot ``class_names``."""

    built: list[str] = []  # the splits built so far (a failed link must read none)

    def build_dataset(self, split: str) -> AudioDataset:
        Generated.built.append(split)
        return SyntheticClassificationDataset("test" if split == "predict" else split, 8, num_classes=len(WORDS),
                                              duration_range=(0.3, 0.5), sample_rate=self.sample_rate,
                                              min_samples=self.min_samples)


class Named(Generated):
    class_names = WORDS


class SetsNumClasses(Generated):
    """Sets ``num_classes``, as many plain Lightning keyword modules do (ldrop's is read-only)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes = len(WORDS)


class ClassNamesInSetup(Generated):
    """Sets ``class_names`` only in ``setup``, after the CLI has built the task."""

    class_names = None

    def setup(self, stage: str | None = None) -> None:
        self.class_names = WORDS
        super().setup(stage)


class OwnTaskName(Named):
    task = "kws"  # not one of ldrop's kinds of target


class RaisesInInit(Named):
    def __init__(self, mode: str = "none", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode == "key":
            raise KeyError("mode")
        if mode == "layout":
            raise DatasetLayoutError("kws/train_list.txt not found\nExpected layout:\n  <root>/<word>/*.wav")


class ExplainsItsError(Named):
    """Turns a lookup's KeyError into its own ConfigError, as the README asks a DataModule to."""

    def __init__(self, speed: str = "fast", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        try:
            {"fast": 1}[speed]
        except KeyError as err:
            raise ConfigError(f"speed {speed!r}: expected one of ['fast']") from err


class BuggyHead(ClassificationTask):
    """A bug in the lab's own code that reads a batch field name on another object: a traceback, not a batch
    diagnosis."""

    def compute_logits(self, head: nn.Module, hidden, frame_mask):
        return frame_mask.lengths


def dict_collate(examples) -> dict[str, Any]:
    """A collate that returns a dict, as a typical Lightning keyword module's does."""
    batch = collate_audio(examples)
    return {"waveforms": batch.waveforms, "lengths": batch.lengths, "targets": batch.targets, "ids": batch.ids}


class DictCollate(Named):
    def collate(self, examples):
        return dict_collate(examples)


class OwnLoaders(Named):
    """Keeps DataLoaders of its own (plain torch ones) that batch with a dict collate."""

    def _own(self, split: str) -> DataLoader:
        return DataLoader(self.dataset(split), batch_size=4, collate_fn=dict_collate)

    def train_dataloader(self) -> DataLoader:
        return self._own("train")

    def val_dataloader(self) -> DataLoader:
        return self._own("val")

    def test_dataloader(self) -> DataLoader:
        return self._own("test")


def run(tmp_path, *args: str, command: str = "fit") -> int:
    return main([command, "--config", QUICKSTART, *QUIET, "--trainer.fast_dev_run", "true",
                 "--trainer.default_root_dir", str(tmp_path / "runs"), *args])


def test_an_error_in_a_tasks_init_names_the_class_the_exception_and_what_to_do(tmp_path, capsys):
    assert run(tmp_path, "--model.class_path", f"{__name__}.WrongOrderClassifier") == 2
    line = one_error_line(capsys)
    assert f"{__name__}.WrongOrderClassifier" in line, line
    assert "AttributeError: 'WrongOrderClassifier' object has no attribute 'head_hidden'" in line, line
    assert "in configure_head, " in line and "test_downstream_errors.py:" in line, line  # where it was read
    assert "set self.head_hidden before super().__init__(), which calls configure_head()" in line, line
    assert not (tmp_path / "runs").exists()


def test_an_error_in_a_datamodules_init_names_the_class_and_the_exception(tmp_path, capsys):
    assert run(tmp_path, "--data", f"{__name__}.SetsNumClasses") == 2
    line = one_error_line(capsys)
    assert f"{__name__}.SetsNumClasses raised AttributeError: property 'num_classes'" in line, line
    assert "AudioDataModule.num_classes is read-only" in line and "class_names" in line, line


@pytest.mark.parametrize(("module", "says"), [
    ("Generated", "Generated has no class_names: set class_names (the class names in id order) in __init__"),
    ("ClassNamesInSetup", "ClassNamesInSetup.class_names is None when the task is built (after __init__, before "
                          "setup): set class_names (the class names in id order) in __init__"),
    ("OwnTaskName", "OwnTaskName.task is 'kws': expected 'classification', 'ctc' or 'regression'"),
], ids=["no-class-names", "class-names-in-setup", "unknown-task"])
def test_a_datamodule_that_cannot_give_the_labels_is_named_without_reading_a_split(tmp_path, capsys, module, says):
    Generated.built.clear()
    assert run(tmp_path, "--data", f"{__name__}.{module}") == 2
    line = one_error_line(capsys)
    assert line.startswith(f"ldrop: error: {says}"), line
    assert "give the class names (labels) or num_classes" not in line  # the task is not to blame
    assert Generated.built == []  # printing the datamodule in jsonargparse's message built every split
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("mode", "says", "after"), [
    ("key", f"building {__name__}.RaisesInInit raised KeyError: 'mode' (in __init__, ", None),
    ("layout", "kws/train_list.txt not found", "Expected layout:\n  <root>/<word>/*.wav"),
], ids=["key-error", "layout-error"])
def test_an_error_a_datamodules_init_raises_is_reported_as_where_it_is_raised_later(tmp_path, capsys, mode, says,
                                                                                    after):
    assert run(tmp_path, "--data", f"{__name__}.RaisesInInit", "--data.mode", mode) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("ldrop:")]
    assert len(lines) == 1 and lines[0].startswith(f"ldrop: error: {says}") and "Traceback" not in err, err[-3000:]
    if after is not None:  # a DatasetLayoutError keeps its expected layout on the lines after, as from list_items
        assert f"{says}\n{after}" in err, err[-3000:]


def test_an_error_a_class_raises_from_another_keeps_its_own_message(tmp_path, capsys):
    assert run(tmp_path, "--data", f"{__name__}.ExplainsItsError", "--data.speed", "slow") == 2
    assert one_error_line(capsys).startswith("ldrop: error: speed 'slow': expected one of ['fast']")
    # ldrop's own argument checks too ("raise ... from None": the option's name stays in front)
    assert run(tmp_path, "--model.init_args.predict_budget", "99") == 2
    assert one_error_line(capsys).startswith("ldrop: error: predict_budget: budget must be between 1 and")


def test_a_bug_reading_a_batch_field_on_another_object_keeps_its_traceback(tmp_path, capsys):
    with pytest.raises(AttributeError, match="'Tensor' object has no attribute 'lengths'"):  # main re-raises a bug
        run(tmp_path, "--model.class_path", f"{__name__}.BuggyHead")
    assert "must be an ldrop AudioBatch" not in capsys.readouterr().err


@pytest.mark.parametrize("command", ["fit", "test", "predict"])
def test_a_batch_that_is_not_an_audio_batch_is_one_line_naming_the_collate(tmp_path, capsys, command):
    assert run(tmp_path, "--data", f"{__name__}.DictCollate", command=command) == 2
    line = one_error_line(capsys)
    assert "batch must be an ldrop AudioBatch (ldrop.data.AudioBatch, defined in ldrop/data/batch.py" in line, line
    assert "DictCollate.collate returned a dict with keys ['waveforms', 'lengths', 'targets', 'ids']" in line, line
    if command != "predict":  # predict makes its predictions folder before it runs (as for any failure)
        assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", ["fit", "test"])
def test_a_batch_of_a_datamodules_own_dataloader_that_is_not_an_audio_batch_is_one_line(tmp_path, capsys, command):
    assert run(tmp_path, "--data", f"{__name__}.OwnLoaders", command=command) == 2
    line = one_error_line(capsys)
    assert "a batch must be an ldrop AudioBatch (ldrop.data.AudioBatch, defined in ldrop/data/batch.py" in line, line
    assert "DataLoader (its collate_fn) made a dict with keys ['waveforms', 'lengths', 'targets', 'ids']" in line, line


@pytest.mark.parametrize("command", ["fit", "validate", "test", "predict"])
def test_data_at_another_sample_rate_than_the_backbones_is_refused(tmp_path, capsys, command):
    assert main([command, "--config", QUICKSTART, *SMALL, "--data.init_args.sample_rate", "8000",
                 "--trainer.default_root_dir", str(tmp_path / "runs"),
                 "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]) == 2
    line = one_error_line(capsys)
    assert "--data.sample_rate 8000: the backbone 'tiny:wavlm' takes 16000 Hz audio" in line, line
    assert "set --data.sample_rate 16000" in line and "--model.backbone" in line, line
    assert not (tmp_path / "runs").exists()


def test_a_backbone_made_for_another_rate_takes_data_at_its_rate_and_refuses_the_default(tmp_path, capsys):
    import json

    from ldrop.backbones import load_backbone

    folder = tmp_path / "backbone-8k"
    load_backbone("tiny:wavlm").save_pretrained(folder)
    config = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps({**config, "sampling_rate": 8000}))
    common = [*SMALL, "--model.init_args.backbone", str(folder), "--model.init_args.pretrained", "false",
              "--trainer.logger", "false"]
    assert run(tmp_path, *common) == 2
    line = one_error_line(capsys)
    assert "--data.sample_rate 16000: the backbone" in line and "takes 8000 Hz audio (its preprocessor_config.json)" \
        in line and "set --data.sample_rate 8000" in line, line
    fbank = ["--model.init_args.selector.init_args.input", "fbank"]
    assert run(tmp_path, *common, "--data.init_args.sample_rate", "8000", *fbank) == 2
    line = one_error_line(capsys)
    assert "--data.sample_rate 8000: the selector's log-mel features are computed for 16000 Hz audio; set " \
           "--model.selector.sample_rate 8000" in line, line
    assert run(tmp_path, *common, "--data.init_args.sample_rate", "8000", *fbank,
               "--model.init_args.selector.init_args.sample_rate", "8000") == 0
