"""collate_audio and AudioBatch: padding, lengths, targets, ids, device moves."""

from __future__ import annotations

import pytest
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from ldrop.data import AudioBatch, AudioExample, collate_audio


def _examples(lengths, targets):
    return [
        AudioExample(torch.ones(n), t, f"item{i}")
        for i, (n, t) in enumerate(zip(lengths, targets, strict=True))
    ]


def test_collate_pads_waveforms_to_the_longest_with_zeros():
    batch = collate_audio(_examples([3, 5, 1], [0, 1, 2]))
    assert batch.waveforms.shape == (3, 5)
    assert batch.waveforms.dtype == torch.float32
    assert batch.waveforms[0].tolist() == [1, 1, 1, 0, 0]
    assert batch.waveforms[2].tolist() == [1, 0, 0, 0, 0]


def test_collate_returns_float32_rows_whatever_the_waveform_dtype():
    examples = [AudioExample(torch.full((n,), 0.5, dtype=torch.float64), 0, f"i{n}") for n in (2, 4)]
    batch = collate_audio(examples)
    assert batch.waveforms.dtype == torch.float32
    assert batch.waveforms.tolist() == [[0.5, 0.5, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]]


def test_batches_of_short_clips_keep_the_400_sample_minimum():
    from ldrop.data import SyntheticClassificationDataModule

    dm = SyntheticClassificationDataModule(num_train=8, duration_range=(0.005, 0.01), batch_size=4)
    for batch in dm.train_dataloader():
        assert batch.waveforms.shape[1] == 400
        assert batch.lengths.tolist() == [400] * len(batch)


def test_collate_records_lengths_as_long():
    batch = collate_audio(_examples([3, 5, 1], [0, 1, 2]))
    assert batch.lengths.dtype == torch.long
    assert batch.lengths.tolist() == [3, 5, 1]


def test_collate_turns_class_ids_into_a_long_tensor():
    batch = collate_audio(_examples([2, 2], [4, 7]))
    assert batch.targets.dtype == torch.long
    assert batch.targets.tolist() == [4, 7]


def test_collate_keeps_transcripts_as_strings():
    batch = collate_audio(_examples([2, 2], ["ab", "c d"]))
    assert batch.targets == ["ab", "c d"]


def test_collate_keeps_ids_in_row_order():
    assert collate_audio(_examples([2, 4, 3], [0, 0, 0])).ids == ["item0", "item1", "item2"]


def test_collate_rejects_a_mix_of_class_ids_and_transcripts():
    with pytest.raises(ValueError, match="only class ids or only transcripts"):
        collate_audio(_examples([2, 2], [1, "a"]))


def test_batch_length_is_its_number_of_items():
    assert len(collate_audio(_examples([2, 4, 3], ["a", "b", "c"]))) == 3


def test_batch_to_moves_every_tensor():
    batch = collate_audio(_examples([2, 3], [0, 1])).to("meta")
    assert isinstance(batch, AudioBatch)
    assert {batch.waveforms.device.type, batch.lengths.device.type, batch.targets.device.type} == {"meta"}
    assert batch.ids == ["item0", "item1"]


def test_lightning_moves_a_batch_through_its_to_method():
    moved = move_data_to_device(collate_audio(_examples([2, 3], ["a", "b"])), torch.device("meta"))
    assert isinstance(moved, AudioBatch)
    assert moved.waveforms.device.type == "meta" and moved.targets == ["a", "b"]


def test_padding_mask_marks_valid_samples():
    batch = collate_audio(_examples([1, 3], [0, 1]))
    assert batch.padding_mask.tolist() == [[True, False, False], [True, True, True]]
