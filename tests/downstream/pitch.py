"""A downstream project's own code, written against ldrop's public API only: a pitch-regression task, a
DataModule of tones whose target is their pitch, and a trainable selector. The tests import it by module path,
as a downstream package would be (``--model.class_path tests.downstream.pitch.PitchTask``)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, Metric

from ldrop.data import AudioDataModule, AudioDataset, AudioExample, Split
from ldrop.selectors import SelectorOutput, TopKSelector
from ldrop.tasks import LayerDropTask, masked_mean

#: Lowest pitch; targets are octaves above it (0 to 2: 100 to 400 Hz).
BASE_HZ = 100.0


class ToneDataset(AudioDataset):
    """Tones at log-uniform pitches in noise (seeded); the target is the pitch in octaves above 100 Hz (a float).

    Args:
        size: number of tones.
        seed: seed of the pitches, lengths, phases and noise.
        **kwargs: :class:`~ldrop.data.AudioDataset`'s (sample rate, padding, cropping).
    """

    def __init__(self, size: int, seed: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        generator = torch.Generator().manual_seed(seed)
        self.octaves = (2 * torch.rand(size, generator=generator)).tolist()
        self.samples = torch.randint(self.sample_rate // 4, self.sample_rate // 2, (size,), generator=generator).tolist()
        self.seed = seed

    def __len__(self) -> int:
        return len(self.octaves)

    def load(self, index: int) -> AudioExample:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + index)
        t = torch.arange(self.samples[index]) / self.sample_rate
        hz = BASE_HZ * 2 ** self.octaves[index]
        phase = 2 * math.pi * float(torch.rand((), generator=generator))
        wave = 0.5 * torch.sin(2 * math.pi * hz * t + phase) + 0.05 * torch.randn(t.shape, generator=generator)
        return AudioExample(waveform=wave.float(), target=self.octaves[index], id=f"tone-{self.seed}-{index}")

    @property
    def raw_lengths(self) -> list[int]:
        return list(self.samples)

    @property
    def targets(self) -> list[float]:
        return list(self.octaves)

    @property
    def ids(self) -> list[str]:
        return [f"tone-{self.seed}-{i}" for i in range(len(self))]


class ToneDataModule(AudioDataModule):
    """Generated tones for pitch regression (``task = "regression"``: float targets).

    Args:
        num_train: training tones.
        num_eval: tones of each of val, test and predict.
        **kwargs: :class:`~ldrop.data.AudioDataModule`'s (batch_size, seed, ...).
    """

    task = "regression"
    takes_skip_bad_files = False  # generated: no files to skip

    def __init__(self, num_train: int = 64, num_eval: int = 16, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_train, self.num_eval = num_train, num_eval

    def build_dataset(self, split: Split) -> AudioDataset:
        offset = ("train", "val", "test", "predict").index(split)
        size = self.num_train if split == "train" else self.num_eval
        return ToneDataset(size, seed=1000 * self.seed + offset, sample_rate=self.sample_rate,
                           min_samples=self.min_samples)


class PitchTask(LayerDropTask):
    """Pitch regression: an MLP on the pooled encoder states predicts octaves above 100 Hz; MAE in octaves.

    Args:
        head_hidden: width of the head's hidden layer.
        **kwargs: :class:`~ldrop.tasks.LayerDropTask`'s (backbone, selector, budgets, learning rates, ...).
    """

    metric_names = ("mae",)
    higher_is_better = False
    has_item_errors = True

    def __init__(self, head_hidden: int = 32, **kwargs: Any) -> None:
        self.head_hidden = head_hidden  # before super().__init__(), which calls configure_head()
        super().__init__(**kwargs)

    def configure_head(self) -> nn.Module:
        return nn.Sequential(nn.Linear(self.backbone.hidden_size, self.head_hidden), nn.GELU(),
                             nn.Linear(self.head_hidden, 1))

    def compute_logits(self, head: nn.Module, hidden: Tensor, frame_mask: Tensor) -> Tensor:
        return head(masked_mean(hidden, frame_mask))  # [batch, 1]: one utterance-level output

    def item_losses(self, logits: Tensor, frame_mask: Tensor, batch: Any) -> Tensor:
        return (logits[:, 0].float() - batch.targets).pow(2)  # [batch]

    def task_loss(self, logits: Tensor, frame_mask: Tensor, batch: Any) -> Tensor:
        return self.item_losses(logits, frame_mask, batch).mean()

    def item_errors(self, logits: Tensor, frame_mask: Tensor, batch: Any) -> tuple[Tensor, Tensor]:
        errors = (logits[:, 0].double() - batch.targets.double()).abs()
        return errors, torch.ones_like(errors)  # MAE = sum(errors) / sum(counts)

    def configure_metrics(self) -> dict[str, Metric]:
        return {"mae": MeanAbsoluteError()}

    def update_metrics(self, metrics: dict[str, Metric], logits: Tensor, frame_mask: Tensor, batch: Any) -> None:
        metrics["mae"].update(logits[:, 0].float(), batch.targets)

    def decode(self, logits: Tensor, frame_mask: Tensor) -> list[float]:
        return (BASE_HZ * 2 ** logits[:, 0].float()).tolist()  # Hz


class PooledTopKSelector(TopKSelector):
    """A trainable selector: a linear score per layer from the mean CNN features, straight-through top-k."""

    def __init__(self, num_layers: int, feature_dim: int, **kwargs: Any) -> None:
        super().__init__(num_layers, feature_dim, **kwargs)
        self.score = nn.Linear(feature_dim, num_layers)

    def forward(self, features: Tensor, frame_mask: Tensor, budget: Tensor, *, waveforms: Tensor | None = None,
                lengths: Tensor | None = None) -> SelectorOutput:
        scores = self.score(masked_mean(features, frame_mask))
        keep_mask, _ = self.select_topk(scores, budget)
        return SelectorOutput(keep_mask=keep_mask, scores=scores)
