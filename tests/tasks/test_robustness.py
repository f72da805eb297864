"""Robustness of the task modules: non-finite losses stop training, long inputs are predicted in chunks."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from ldrop.data import AudioBatch
from ldrop.selectors import InputConditionedSelector
from ldrop.tasks import BudgetSampling, ClassificationTask, CTCTask
from tests.helpers import padded_batch, quiet_trainer, tiny_classification_data

RATE = 16000


def _classifier(**kwargs) -> ClassificationTask:
    torch.manual_seed(0)
    return ClassificationTask(backbone="tiny:wavlm", num_classes=4, budgets=BudgetSampling(validation=[1.0]), **kwargs)


def _ctc(**kwargs) -> CTCTask:
    torch.manual_seed(0)
    return CTCTask(backbone="tiny:wavlm", labels="english", budgets=BudgetSampling(validation=[1.0]), **kwargs)


def _batch(lengths: list[int], targets, ids=None) -> AudioBatch:
    waves, lengths_t = padded_batch(lengths, seed=1)
    return AudioBatch(waves, lengths_t, targets, ids or [f"utt{i}" for i in range(len(lengths))])


# ---------------------------------------------------------------------------------------------- non-finite loss
def test_training_step_on_nan_input_raises_naming_the_batch():
    model = _classifier()
    batch = _batch([4000, 3000], torch.tensor([0, 1]), ids=["good_one", "broken_file"])
    batch.waveforms[1, 100] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite training loss") as info:
        model.training_step(batch, 0)
    message = str(info.value)
    assert "good_one" in message and "broken_file" in message and "NaN/inf samples" in message


def test_training_step_on_finite_input_still_returns_a_loss():
    model = _classifier()
    loss = model.training_step(_batch([4000, 3000], torch.tensor([0, 1])), 0)["loss"]
    assert torch.isfinite(loss)


class _NaNOnSecondBatch(L.Callback):
    """Poisons the audio of the second training batch."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 1:
            batch.waveforms[0, :50] = float("nan")


def test_fit_with_a_nan_batch_stops_and_writes_no_nan_checkpoint(tmp_path):
    model = _classifier()
    checkpoints = tmp_path / "ckpt"
    trainer = quiet_trainer(
        tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=0, enable_checkpointing=True,
        callbacks=[_NaNOnSecondBatch(), ModelCheckpoint(dirpath=checkpoints, every_n_train_steps=1, save_last=True,
                                                        save_top_k=-1)],
    )
    with pytest.raises(FloatingPointError, match="non-finite training loss"):
        trainer.fit(model, datamodule=tiny_classification_data())
    saved = sorted(checkpoints.glob("*.ckpt"))
    assert saved  # the step before the NaN batch was saved ...
    for path in saved:  # ... and no saved weights are NaN
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        assert all(bool(torch.isfinite(v).all()) for k, v in state.items() if v.is_floating_point()
                   and "thresholds" not in k), path
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_non_finite_weights_are_never_saved(tmp_path):
    model = _classifier()
    with torch.no_grad():
        model.head.weight[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="head.weight"):
        model.on_save_checkpoint({"state_dict": model.state_dict()})
    with pytest.raises(FloatingPointError, match="non-finite weights"):
        model.export_pretrained(tmp_path / "export")
    assert not (tmp_path / "export").exists()


# ---------------------------------------------------------------------------------------------- chunked predict
LONG = int(2.3 * RATE)


def _capture_decode(model):
    """Record the logits ``decode`` receives (what predict merged)."""
    seen = []
    original = model.decode

    def decode(logits, frame_mask):
        seen.append((logits.detach().clone(), frame_mask.clone()))
        return original(logits, frame_mask)

    model.decode = decode
    return seen


def test_chunk_spans_cover_the_input_with_aligned_frames():
    model = _ctc(predict_chunk_seconds=0.5, predict_chunk_overlap_seconds=0.1)
    spans = model.chunk_spans(LONG)
    hop = model.frame_hop
    assert len(spans) > 1 and spans[0][0] == 0 and spans[-1][1] == LONG
    assert all(start % hop == 0 for start, _ in spans)
    assert all(end - start >= int(0.5 * RATE) for start, end in spans)  # no short leftover chunk
    kept = model.chunk_frames_kept(spans)
    kept_total = sum(last - first for first, last in kept)
    assert kept_total == int(model.backbone.frame_lengths(torch.tensor([LONG])))
    assert model.chunk_spans(int(0.5 * RATE)) == [(0, int(0.5 * RATE))]  # short inputs are not split


@torch.no_grad()
def test_chunked_classification_is_the_length_weighted_mean_of_chunk_logits():
    model = _classifier(predict_chunk_seconds=0.5, predict_chunk_overlap_seconds=0.1).eval()
    batch = _batch([LONG], torch.tensor([0]))
    seen = _capture_decode(model)
    encoded_lengths = []
    original_encode = model.encode
    model.encode = lambda w, n=None: encoded_lengths.append(w.shape[1]) or original_encode(w, n)
    [record] = model.predict_step(batch, 0)
    spans = model.chunk_spans(LONG)
    assert len(record["chunks"]) == len(spans) > 1
    assert max(encoded_lengths) < int(0.5 * RATE) + model.frame_hop  # never the whole clip at once
    model.encode = original_encode
    chunk_logits = [model(batch.waveforms[:, s:e], torch.tensor([e - s]))[0][0] for s, e in spans]
    weights = torch.tensor([float(e - s) for s, e in spans])
    expected = (torch.stack(chunk_logits) * weights[:, None]).sum(0) / weights.sum()
    merged = seen[-1][0]
    assert merged.shape == (1, 4)
    torch.testing.assert_close(merged[0], expected, atol=1e-5, rtol=1e-5)
    assert record["output"] == int(expected.argmax())
    assert record["gflops"] > 0 and record["executed_layers"] == [0, 1, 2, 3]


@torch.no_grad()
def test_chunked_ctc_covers_the_whole_input_and_short_items_keep_todays_path():
    model = _ctc(predict_chunk_seconds=0.5, predict_chunk_overlap_seconds=0.1, predict_budget=2,
                 selector=functools.partial(InputConditionedSelector, hidden_dim=16)).eval()
    short = 6000
    batch = _batch([short, LONG], ["a", "b"])
    seen = _capture_decode(model)
    records = model.predict_step(batch, 0)
    whole_frames = int(model.backbone.frame_lengths(torch.tensor([LONG])))
    long_logits = seen[-1][0]
    assert long_logits.shape == (1, whole_frames, len(model.vocabulary) + 1)
    assert "chunks" not in records[0] and len(records[1]["chunks"]) == len(model.chunk_spans(LONG))
    assert all(len(chunk["executed_layers"]) == 2 for chunk in records[1]["chunks"])
    # The short item's record is what it gets predicted alone, on today's path.
    [alone] = model.predict_step(_batch([short], ["a"]), 0)
    assert records[0] == alone
    # The chunk frames kept are the chunk's own logits at those frames.
    spans = model.chunk_spans(LONG)
    first, last = model.chunk_frames_kept(spans)[1]
    start, end = spans[1]
    chunk_logits = model(batch.waveforms[1:, start:end], torch.tensor([end - start]), budget=2)[0][0]
    offset = start // model.frame_hop
    torch.testing.assert_close(long_logits[0, offset + first: offset + last], chunk_logits[first:last],
                               atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_chunking_off_or_short_input_is_todays_single_pass():
    model = _ctc(predict_chunk_seconds=None).eval()
    [record] = model.predict_step(_batch([LONG], ["a"]), 0)
    assert "chunks" not in record
    with pytest.raises(ValueError, match="predict_chunk_overlap_seconds"):
        _ctc(predict_chunk_seconds=1.0, predict_chunk_overlap_seconds=1.0)
