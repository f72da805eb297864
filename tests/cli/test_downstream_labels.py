"""A downstream task without ``labels`` trains through ``ldrop fit`` and loads back through every loader: the
CLI links the datamodule's labels only into a task that takes them (issue 15, item 2). A downstream
DataModule's own bad-input errors are one line when it raises ldrop's public error classes."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from ldrop.cli import main
from ldrop.cli.errors import ConfigError
from ldrop.data import DatasetLayoutError, SyntheticClassificationDataModule
from ldrop.tasks import LayerDropTask, masked_mean
from tests.cli.common import QUICKSTART, SMALL


class ClassIdTask(LayerDropTask):
    """A downstream classifier that knows its class count, not class names (no ``labels`` argument)."""

    metric_names = ("acc",)

    def __init__(self, num_classes: int = 8, **kwargs: Any) -> None:
        self.num_classes = num_classes  # configure_head reads it during super().__init__()
        super().__init__(**kwargs)
        self.save_hyperparameters("num_classes")

    def configure_head(self) -> nn.Module:
        return nn.Linear(self.backbone.hidden_size, self.num_classes)

    def compute_logits(self, head, hidden, frame_mask):
        return head(masked_mean(hidden, frame_mask))

    def task_loss(self, logits, frame_mask, batch):
        return nn.functional.cross_entropy(logits, batch.targets)

    def configure_metrics(self):
        return {"acc": MulticlassAccuracy(self.num_classes)}

    def update_metrics(self, metrics, logits, frame_mask, batch) -> None:
        metrics["acc"].update(logits.argmax(-1), batch.targets)

    def decode(self, logits, frame_mask):
        return logits.argmax(-1).tolist()


def test_a_task_without_labels_trains_through_ldrop_fit_and_loads_back_everywhere(tmp_path):
    import ldrop

    assert main(["fit", "--config", QUICKSTART, *SMALL, "--model.class_path", f"{__name__}.ClassIdTask",
                 "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1", "--trainer.logger", "false",
                 "--trainer.default_root_dir", str(tmp_path), "--checkpoint.dirpath", str(tmp_path / "ckpt")]) == 0
    checkpoint = tmp_path / "ckpt" / "last.ckpt"
    assert "labels" not in torch.load(checkpoint, weights_only=False)["ldrop_hyper_parameters"]

    waves = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))
    loaded = [ldrop.load_model(checkpoint), ClassIdTask.load_from_checkpoint(checkpoint).eval()]
    with torch.no_grad():
        logits = [model(waves, None, 4)[0] for model in loaded]
    assert logits[0].shape == (2, 8) and torch.equal(logits[0], logits[1])
    assert main(["profile", str(checkpoint), "--seconds", "0.5,1", "--batch-sizes", "1,2", "--repeats", "1",
                 "--warmup", "0", "--validate", "0", "--out", str(tmp_path / "profile.json")]) == 0


def test_model_labels_is_public_for_other_command_lines():
    import ldrop.cli.lightning
    from ldrop.data import SyntheticClassificationDataModule
    from ldrop.tasks import model_labels

    assert ldrop.cli.lightning.model_labels is model_labels
    assert model_labels(SyntheticClassificationDataModule(num_classes=3)) == ["class_0", "class_1", "class_2"]


def test_ctc_labels_come_from_the_datamodules_declared_alphabet(tmp_path):
    """The CTC characters come from what a datamodule declares, not from its class: the English corpora
    declare English characters (nothing is read), and a subclass that keeps other characters declares
    ``alphabet = None`` and gets every character of its training transcripts."""
    from ldrop.data import LibriSpeechDataModule, TedliumDataModule
    from ldrop.data.text import ENGLISH_CHARACTERS
    from ldrop.tasks import model_labels
    from ldrop.testing.fixtures import make_librispeech_tree

    for module in (LibriSpeechDataModule(root=str(tmp_path / "absent")), TedliumDataModule(root=str(tmp_path))):
        assert module.alphabet == ENGLISH_CHARACTERS and model_labels(module) == ENGLISH_CHARACTERS

    class OwnCharacters(LibriSpeechDataModule):
        alphabet = None

    tree = make_librispeech_tree(tmp_path / "corpus", seed=3)
    characters = {c for clip in tree.splits["train-clean-100"] for c in clip.target.lower()}
    assert model_labels(OwnCharacters(root=str(tree.root))) == sorted(characters | {" "})


class SpeakerDataModule(SyntheticClassificationDataModule):
    """A downstream DataModule that checks its own input when it sets up, raising ldrop's public error classes."""

    def __init__(self, speakers: str = "speakers.csv", min_speakers: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.speakers, self.min_speakers = speakers, min_speakers

    def build_dataset(self, split):
        if self.min_speakers > 2:
            raise ConfigError(f"--data.min_speakers {self.min_speakers}: the corpus has 2 speakers")
        raise DatasetLayoutError(f"{self.speakers} not found\nExpected layout:\n  <root>/speakers.csv")


@pytest.mark.parametrize(("option", "says"), [
    ([], "speakers.csv not found"),
    (["--data.min_speakers", "3"], "--data.min_speakers 3: the corpus has 2 speakers"),
], ids=["layout", "setting"])
def test_a_downstream_datamodule_raising_ldrops_public_errors_gets_one_line(tmp_path, capsys, option, says):
    assert main(["fit", "--config", QUICKSTART, *SMALL, "--data", f"{__name__}.SpeakerDataModule", *option,
                 "--trainer.default_root_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ldrop: error: {says}") and "Traceback" not in err, err
    assert not list(tmp_path.iterdir())  # no run folder left behind
