"""collate_audio and AudioBatch: padding, lengths, targets, ids, device moves."""

from __future__ import annotations

import numpy as np
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
    with pytest.raises(ValueError, match=r"mixes class id and transcript \(item0: class id, item1: transcript\)"):
        collate_audio(_examples([2, 2], [1, "a"]))


def test_collate_turns_values_into_a_float_tensor():
    batch = collate_audio(_examples([2, 2, 2], [0.5, 2, np.float32(-1.25)]))  # an int among floats is a value
    assert batch.targets.dtype == torch.float32
    assert batch.targets.tolist() == [0.5, 2.0, -1.25]


@pytest.mark.parametrize("make", [torch.tensor, np.array], ids=["tensor", "array"])
def test_collate_stacks_tensor_targets_keeping_their_dtype(make):
    rows = [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]  # multi-label 0/1 vectors
    batch = collate_audio(_examples([2, 3], [make(r) for r in rows]))
    assert batch.targets.shape == (2, 3) and batch.targets.tolist() == rows
    assert batch.targets.dtype in (torch.float32, torch.float64)
    assert collate_audio(_examples([2, 2], [torch.tensor([1, 2]), torch.tensor([3, 4])])).targets.dtype == torch.long


def test_collate_rejects_tensor_targets_of_different_shapes():
    with pytest.raises(ValueError, match=r"one shape, got shapes \[\(2,\), \(3,\)\]"):
        collate_audio(_examples([2, 2], [torch.zeros(2), torch.zeros(3)]))


def test_collate_rejects_a_target_of_no_known_kind():
    with pytest.raises(ValueError, match="got bool True"):
        collate_audio(_examples([2, 2], [True, False]))
    with pytest.raises(ValueError, match=r"got dict \{'pitch': 1.0\}"):
        collate_audio(_examples([2], [{"pitch": 1.0}]))


def test_batch_to_moves_tensor_targets():
    batch = collate_audio(_examples([2, 3], [torch.zeros(4), torch.ones(4)])).to("meta")
    assert batch.targets.device.type == "meta" and batch.targets.shape == (2, 4)


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
