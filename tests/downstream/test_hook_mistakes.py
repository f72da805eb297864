"""A downstream project's mistakes in its own task's hooks, run as it runs them (``ldrop fit`` with its classes):
each is one line naming the hook and what it must return, at the first batch, not an ``IndexError`` or a
``KeyError`` deep inside ldrop later. And a CTC DataModule of its own that builds its data (no ``list_items``,
no ``alphabet``) gets its vocabulary from its transcripts."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import MeanAbsoluteError, Metric

import ldrop
from ldrop.cli import main
from ldrop.data import AudioDataModule, AudioDataset, AudioExample, Split
from ldrop.tasks import LayerDropTask
from tests.cli.common import one_error_line
from tests.downstream.pitch import PitchTask
from tests.downstream.test_metric_direction import PITCH


class FlatLogits(PitchTask):
    """Drops the output axis: ``[batch]`` (fit, test and a short predict ran; a chunked predict crashed)."""

    def compute_logits(self, head: Any, hidden: Tensor, frame_mask: Tensor) -> Tensor:
        return super().compute_logits(head, hidden, frame_mask)[:, 0]


class MisnamedMetric(PitchTask):
    """Keys its metric ``"MAE"`` while ``metric_names`` says ``"mae"`` (a KeyError after the first validation)."""

    def configure_metrics(self) -> dict[str, Metric]:
        return {"MAE": MeanAbsoluteError()}

    def update_metrics(self, metrics: dict[str, Metric], logits: Tensor, frame_mask: Tensor, batch: Any) -> None:
        metrics["MAE"].update(logits[:, 0].float(), batch.targets)


class MeanItemLosses(PitchTask):
    """``item_losses`` returns their mean (a shape error inside the selector's ranking loss)."""

    def item_losses(self, logits: Tensor, frame_mask: Tensor, batch: Any) -> Tensor:
        return super().item_losses(logits, frame_mask, batch).mean()


class ForgotDecode(LayerDropTask):
    """Implements neither ``decode`` nor ``update_metrics`` (was "expected a LayerDropTask")."""

    metric_names = ("mae",)

    def configure_head(self) -> Any:
        return torch.nn.Linear(self.backbone.hidden_size, 1)

    def compute_logits(self, head: Any, hidden: Tensor, frame_mask: Tensor) -> Tensor:
        return head(hidden.mean(1))

    def task_loss(self, logits: Tensor, frame_mask: Tensor, batch: Any) -> Tensor:
        return logits.pow(2).mean()

    def configure_metrics(self) -> dict[str, Metric]:
        return {"mae": MeanAbsoluteError()}


def _fit(tmp_path, task: str, *extra: str) -> int:
    return main(["fit", "--model.class_path", f"{__name__}.{task}", *PITCH, "--trainer.max_epochs", "1",
                 "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path),
                 "--checkpoint.dirpath", str(tmp_path / "ckpt"), *extra])


def test_each_hook_mistake_is_one_line_naming_the_hook_and_what_it_must_return(tmp_path, capsys):
    early_exit = ["--model.init_args.selector", "null", "--model.init_args.early_exit.policy"]
    counterfactual = ["--model.init_args.selector.class_path", "tests.downstream.pitch.PooledTopKSelector",
                      "--model.init_args.selector.init_args.objective", "counterfactual",
                      "--model.init_args.budgets.train", "[2]", "--model.init_args.budgets.full_depth_prob", "0"]
    cases = [
        ("FlatLogits", [], "FlatLogits.compute_logits returned [8] for 8 inputs: return [batch, outputs]"),
        ("FlatLogits", [*early_exit, "budget", "--trainer.num_sanity_val_steps", "0"],  # its training path
         "FlatLogits.compute_logits returned [8] for 8 inputs"),
        ("FlatLogits", [*early_exit, "confidence"], "FlatLogits.compute_logits returned ["),  # its run_dynamic

        ("MisnamedMetric", [], "MisnamedMetric.configure_metrics returned ['MAE'], without ['mae'] of its "
                               "metric_names ['mae']"),
        ("MeanItemLosses", counterfactual, "MeanItemLosses.item_losses returned [] for a batch of 8: return [batch]"),
        ("ForgotDecode", [], f"'{__name__}.ForgotDecode': ForgotDecode is abstract: implement decode, update_metrics"),
    ]
    for index, (task, extra, says) in enumerate(cases):
        assert _fit(tmp_path / str(index), task, *extra) == 2, (task, extra)
        line = one_error_line(capsys)
        assert says in line, line
        assert not (tmp_path / str(index) / "ckpt").exists()
    # an abstract class of another kind is named as the wrong kind, not told to implement a selector's forward
    assert main(["fit", "--model.class_path", "ldrop.selectors.LayerSelector", *PITCH]) == 2
    assert "'ldrop.selectors.LayerSelector': expected a LayerDropTask" in one_error_line(capsys)


class Letters(AudioDataset):
    def __init__(self, size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size = size

    def __len__(self) -> int:
        return self.size

    def load(self, index: int) -> AudioExample:
        return AudioExample(waveform=0.1 * torch.randn(8000), target=self.targets[index], id=f"l{index}")

    raw_lengths = property(lambda self: [8000] * self.size)
    targets = property(lambda self: [("ab", "ba c")[i % 2] for i in range(self.size)])
    ids = property(lambda self: [f"l{i}" for i in range(self.size)])


class LetterData(AudioDataModule):
    """A CTC set that builds its own data: no ``list_items`` and no ``alphabet``."""

    task = "ctc"
    takes_skip_bad_files = False

    def build_dataset(self, split: Split) -> AudioDataset:
        return Letters(8, sample_rate=self.sample_rate)


def test_a_ctc_datamodule_that_builds_its_data_gives_its_vocabulary_from_its_transcripts(tmp_path):
    assert LetterData().transcripts("train")[:2] == ["ab", "ba c"]  # before setup (was: must implement list_items)
    assert main(["fit", "--model.class_path", "CTCTask", "--model.init_args.backbone", "tiny:wavlm",
                 "--data.class_path", f"{__name__}.LetterData", "--data.init_args.batch_size", "4",
                 "--trainer.max_epochs", "1", "--trainer.logger", "false", "--trainer.accelerator", "cpu",
                 "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                 "--trainer.default_root_dir", str(tmp_path), "--checkpoint.dirpath", str(tmp_path / "ckpt")]) == 0
    labels = ldrop.load_model(tmp_path / "ckpt" / "last.ckpt").hparams.labels
    assert {"a", "b", "c", " "} <= set(labels)


class NeedsSetup(LetterData):
    """Builds its data from what ``setup`` reads, as Lightning suggests: it cannot list its transcripts before."""

    def setup(self, stage: str | None = None) -> None:
        self.size = 8
        super().setup(stage)

    def build_dataset(self, split: Split) -> AudioDataset:
        return Letters(self.size, sample_rate=self.sample_rate)


def test_a_ctc_datamodule_that_cannot_build_before_setup_says_what_to_set(tmp_path, capsys):
    assert main(["fit", "--model.class_path", "CTCTask", "--model.init_args.backbone", "tiny:wavlm",
                 "--data.class_path", f"{__name__}.NeedsSetup", "--trainer.max_epochs", "1",
                 "--trainer.default_root_dir", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert "NeedsSetup has no list_items, so the targets of its train split" in line, line
    assert "AttributeError" in line and "set alphabet, implement list_items" in line, line
