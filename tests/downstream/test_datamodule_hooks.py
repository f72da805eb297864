"""What a downstream DataModule needs from ldrop's data layer: tensor targets, its own collate, the public loader
(issue 15, item 2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch

from ldrop.data import AudioBatch, AudioDataModule, AudioDataset, AudioExample, ResumableDataLoader, Split
from ldrop.testing.fixtures import write_audio

LABELS = 3


class TaggedDataset(AudioDataset):
    """Noise clips whose target is a multi-label 0/1 vector of :data:`LABELS` tags, with a speaker name each."""

    def __init__(self, size: int, seed: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        generator = torch.Generator().manual_seed(seed)
        self.tags = (torch.rand(size, LABELS, generator=generator) > 0.5).float()
        self.samples = torch.randint(800, 1600, (size,), generator=generator).tolist()
        self.speakers = [f"speaker{i % 3}" for i in range(size)]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> AudioExample:
        return AudioExample(waveform=torch.randn(self.samples[index]), target=self.tags[index], id=f"clip{index}")

    @property
    def raw_lengths(self) -> list[int]:
        return list(self.samples)

    @property
    def targets(self) -> list[torch.Tensor]:
        return list(self.tags)

    @property
    def ids(self) -> list[str]:
        return [f"clip{i}" for i in range(len(self))]


class TaggedDataModule(AudioDataModule):
    """Multi-label tagging: tensor targets, batched by ldrop's own collate."""

    task = "regression"
    takes_skip_bad_files = False

    def build_dataset(self, split: Split) -> AudioDataset:
        return TaggedDataset(10, seed=("train", "val", "test", "predict").index(split),
                             sample_rate=self.sample_rate, min_samples=self.min_samples)


@dataclass
class SpeakerBatch(AudioBatch):
    """An :class:`AudioBatch` that also names each row's speaker."""

    speakers: list[str] | None = None
    snr_db: torch.Tensor | None = None  # a tensor field of its own: moved with the batch


class SpeakerDataModule(TaggedDataModule):
    """The same clips, batched by its own ``collate`` that adds the speakers."""

    def collate(self, examples: list[AudioExample]) -> SpeakerBatch:
        batch = super().collate(examples)
        speakers = [f"speaker{int(e.id.removeprefix('clip')) % 3}" for e in examples]
        return SpeakerBatch(batch.waveforms, batch.lengths, batch.targets, batch.ids, speakers=speakers)


@pytest.mark.parametrize("split", ["train", "val"])
def test_tensor_targets_are_stacked_by_the_loaders(split):
    data = TaggedDataModule(batch_size=4)
    batches = list(data.dataloader(split))
    assert all(b.targets.shape == (len(b), LABELS) and b.targets.dtype == torch.float32 for b in batches)
    dataset = data.dataset(split)
    by_id = {i: t for i, t in zip(dataset.ids, dataset.targets, strict=True)}
    assert all(torch.equal(row, by_id[i]) for b in batches for i, row in zip(b.ids, b.targets, strict=True))


@pytest.mark.parametrize("num_workers", [0, 1])
def test_an_overridden_collate_batches_every_loader(num_workers):
    data = SpeakerDataModule(batch_size=4, num_workers=num_workers)
    for loader in (data.train_dataloader(), data.val_dataloader(), data.predict_dataloader()):
        assert isinstance(loader, ResumableDataLoader)  # public: a downstream module may build its own
        for batch in loader:
            assert isinstance(batch, SpeakerBatch)
            assert batch.speakers == [f"speaker{int(i.removeprefix('clip')) % 3}" for i in batch.ids]


def test_predict_on_files_gives_regression_modules_value_placeholders(tmp_path):
    data = TaggedDataModule(batch_size=4)
    data.predict_on_files([write_audio(tmp_path / "a.wav", 800), write_audio(tmp_path / "b.wav", 900)])
    (batch,) = list(data.predict_dataloader())
    assert batch.targets.dtype == torch.float32 and batch.targets.tolist() == [0.0, 0.0]


def test_the_task_receives_the_datamodules_own_batch_subclass_with_its_extra_fields(tmp_path):
    # Lightning moves every batch with its ``.to``: the copy must keep the subclass and its own fields.
    from ldrop.data import SyntheticClassificationDataModule
    from ldrop.tasks import ClassificationTask
    from tests.helpers import quiet_trainer

    class NoisyData(SyntheticClassificationDataModule):
        def collate(self, examples: list[AudioExample]) -> SpeakerBatch:
            batch = super().collate(examples)
            return SpeakerBatch(batch.waveforms, batch.lengths, batch.targets, batch.ids,
                                speakers=[f"s{i}" for i in range(len(batch))], snr_db=torch.full((len(batch),), 10.0))

    class SeeingTask(ClassificationTask):
        seen: list[Any] = []

        def task_loss(self, logits, frame_mask, batch):
            self.seen.append(batch)
            return super().task_loss(logits, frame_mask, batch)

    data = NoisyData(num_train=8, num_val=4, num_test=4, batch_size=4, seed=0)
    task = SeeingTask(labels=data.class_names, backbone="tiny:wavlm")
    quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0).fit(task, data)
    assert len(SeeingTask.seen) == 2
    for batch in SeeingTask.seen:
        assert isinstance(batch, SpeakerBatch) and batch.speakers == [f"s{i}" for i in range(len(batch))]
        assert torch.equal(batch.snr_db, torch.full((len(batch),), 10.0))
    moved = SeeingTask.seen[0].to("cpu")
    assert type(moved) is SpeakerBatch and moved.speakers is SeeingTask.seen[0].speakers
