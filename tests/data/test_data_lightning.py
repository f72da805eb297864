"""The DataModules inside a real Lightning Trainer (CPU): fit, validate, predict, per-epoch reshuffle, DDP."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from ldrop.data import AudioBatch, SyntheticClassificationDataModule, SyntheticCTCDataModule


class RecordingModule(L.LightningModule):
    """A one-parameter model that records what the loaders hand it; no ldrop model involved."""

    def __init__(self, record_dir: str | None = None) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.record_dir = record_dir
        self.train_ids: dict[int, list[str]] = {}
        self.train_batches: list[AudioBatch] = []

    def _loss(self, batch: AudioBatch) -> torch.Tensor:
        assert isinstance(batch, AudioBatch)
        return (self.scale * batch.waveforms).pow(2).sum() / batch.lengths.sum()

    def training_step(self, batch: AudioBatch, batch_idx: int) -> torch.Tensor:
        self.train_ids.setdefault(self.current_epoch, []).extend(batch.ids)
        self.train_batches.append(batch)
        return self._loss(batch)

    def validation_step(self, batch: AudioBatch, batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch), batch_size=len(batch))

    def predict_step(self, batch: AudioBatch, batch_idx: int) -> list[str]:
        return batch.ids

    def on_train_end(self) -> None:
        if self.record_dir is not None:
            with open(f"{self.record_dir}/rank{self.global_rank}.json", "w") as f:
                json.dump({"ids": self.train_ids[0], "steps": len(self.train_batches)}, f)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def trainer(**kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False)  # fmt: skip
    return L.Trainer(**{**defaults, **kwargs})


def test_fit_reshuffles_training_batches_every_epoch():
    dm = SyntheticClassificationDataModule(num_train=24, num_val=8, batch_size=4)
    model = RecordingModule()
    trainer(max_epochs=3).fit(model, dm)
    orders = list(model.train_ids.values())
    assert len(orders) == 3 and all(sorted(o) == sorted(orders[0]) for o in orders)
    assert orders[0] != orders[1] != orders[2]


@pytest.mark.parametrize("batching", [{"batch_size": 4}, {"max_batch_seconds": 2.0}])
def test_overfit_batches_trains_on_the_same_batches_every_epoch(batching):
    # 800 items: more than one length-grouping window of 50 batches, which would reshuffle them
    dm = SyntheticClassificationDataModule(num_train=800, num_val=8, duration_range=(0.2, 0.4), **batching)
    model = RecordingModule()
    trainer(max_epochs=3, overfit_batches=2).fit(model, dm)
    orders = list(model.train_ids.values())
    assert len(orders) == 3 and len(orders[0]) >= 4 and orders[0] == orders[1] == orders[2]


def test_ctc_batches_reach_the_model_with_transcripts():
    dm = SyntheticCTCDataModule(num_train=8, num_val=4, batch_size=4)
    model = RecordingModule()
    trainer(max_epochs=1).fit(model, dm)
    targets = [t for batch in model.train_batches for t in batch.targets]
    assert sorted(targets) == sorted(dm.transcripts("train"))


def test_predict_returns_every_test_item_once():
    dm = SyntheticClassificationDataModule(num_test=13, batch_size=4)
    with pytest.warns(UserWarning, match="custom batch sampler"):
        predictions = trainer().predict(RecordingModule(), dm)
    ids = [i for batch_ids in predictions for i in batch_ids]
    assert sorted(ids) == sorted(dm.dataset("test").ids)


@pytest.mark.ddp
def test_two_ddp_processes_train_on_disjoint_halves(tmp_path):
    dm = SyntheticClassificationDataModule(num_train=20, num_val=4, batch_size=3)
    model = RecordingModule(record_dir=str(tmp_path))
    trainer(max_epochs=1, strategy="ddp_spawn", devices=2, use_distributed_sampler=False).fit(model, dm)
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    ranks = [r["ids"] for r in records]
    assert records[0]["steps"] == records[1]["steps"]
    assert not set(ranks[0]) & set(ranks[1])
    assert set(ranks[0]) | set(ranks[1]) == set(dm.dataset("train").ids)
