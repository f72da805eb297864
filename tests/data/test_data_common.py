"""Behaviour every AudioDataModule shares: length limits, bad files, logging, loaders, DDP, workers."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
import torch
from jsonargparse import ArgumentError, ArgumentParser

from ldrop.data import (
    AudioReadError,
    DynamicBatchSampler,
    ESC50DataModule,
    LengthGroupedSampler,
    LibriSpeechDataModule,
    ManifestDataModule,
    SpeechCommandsDataModule,
    SyntheticClassificationDataModule,
    SyntheticCTCDataModule,
    TedliumDataModule,
)
from ldrop.testing.fixtures import write_audio


def ids_of(loader) -> list[str]:
    return [item_id for batch in loader for item_id in batch.ids]


def copy_tree(tree, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tree.root, root)
    return root


# ------------------------------------------------------------------------------------------ lengths
def test_clip_shorter_than_400_samples_is_zero_padded_to_400(tmp_path):
    write_audio(tmp_path / "tiny.wav", 120)
    (tmp_path / "m.csv").write_text("path,label\ntiny.wav,x\n")
    dm = ManifestDataModule(train_manifest=str(tmp_path / "m.csv"))
    batch = next(iter(dm.dataloader("train")))
    assert batch.waveforms.shape == (1, 400) and batch.lengths.tolist() == [400]
    assert torch.count_nonzero(batch.waveforms[0, 120:]) == 0
    assert torch.count_nonzero(batch.waveforms[0, :120]) > 0


def test_min_samples_follows_the_argument():
    dm = SyntheticClassificationDataModule(num_train=4, duration_range=(0.01, 0.02), min_samples=1000)
    assert set(dm.dataset("train").lengths) == {1000}


def test_crop_policy_cuts_training_clips_to_max_train_seconds():
    dm = SyntheticClassificationDataModule(num_train=32, duration_range=(0.5, 1.0), max_train_seconds=0.6)
    dataset = dm.dataset("train")
    assert len(dataset) == 32
    assert max(dataset.lengths) == 9600
    assert all(dataset[i].waveform.shape[0] == n for i, n in enumerate(dataset.lengths))


def test_crop_policy_reads_a_random_window_of_the_file(tmp_path):
    write_audio(tmp_path / "long.wav", 48000)
    (tmp_path / "m.csv").write_text("path,label\nlong.wav,x\n")
    dataset = ManifestDataModule(train_manifest=str(tmp_path / "m.csv"), max_train_seconds=0.5).dataset(
        "train"
    )
    torch.manual_seed(0)
    crops = {tuple(dataset[0].waveform[:4].tolist()) for _ in range(5)}
    assert dataset.lengths == [8000] and len(crops) > 1


def test_evaluation_clips_are_never_cut():
    dm = SyntheticClassificationDataModule(num_val=16, duration_range=(0.5, 1.0), max_train_seconds=0.6)
    assert max(dm.dataset("val").lengths) > 9600


def test_filter_policy_drops_long_training_clips_and_logs_how_many(caplog):
    dm = SyntheticCTCDataModule(num_train=64, max_train_seconds=0.7, long_clip_policy="filter")
    with caplog.at_level("INFO", logger="ldrop.data"):
        dataset = dm.dataset("train")
    full = SyntheticCTCDataModule(num_train=64).dataset("train").lengths
    assert len(dataset) == sum(n <= 11200 for n in full) < 64
    assert f"dropped {64 - len(dataset)} training item(s)" in caplog.text


def test_crop_policy_is_rejected_for_ctc():
    with pytest.raises(ValueError, match="transcript"):
        SyntheticCTCDataModule(max_train_seconds=1.0, long_clip_policy="crop")


# ------------------------------------------------------------------------------------------ bad input
def test_unreadable_file_is_an_error_that_names_it(tmp_path, speech_commands):
    root = copy_tree(speech_commands, tmp_path)
    victim = root / speech_commands.splits["train"][0].id
    victim.write_bytes(b"not audio at all")
    with pytest.raises(AudioReadError, match=victim.name):
        SpeechCommandsDataModule(root).setup("fit")


def test_empty_file_is_an_error_that_names_it(tmp_path, speech_commands):
    root = copy_tree(speech_commands, tmp_path)
    victim = root / speech_commands.splits["train"][1].id
    victim.write_bytes(b"")
    with pytest.raises(AudioReadError, match=victim.name):
        SpeechCommandsDataModule(root).setup("fit")


def test_skip_bad_files_logs_each_bad_file_and_counts_them(tmp_path, speech_commands, caplog):
    root = copy_tree(speech_commands, tmp_path)
    victims = [root / c.id for c in speech_commands.splits["train"][:2]]
    victims[0].write_bytes(b"")
    victims[1].write_bytes(b"RIFF garbage")
    dm = SpeechCommandsDataModule(root, skip_bad_files=True)
    with caplog.at_level("WARNING", logger="ldrop.data"):
        dm.setup("fit")
    assert dm.num_bad_files["train"] == 2
    assert len(dm.dataset("train")) == len(speech_commands.splits["train"]) - 2
    assert "skipped 2 bad item(s)" in caplog.text
    assert all(v.name in caplog.text for v in victims)


def test_item_counts_per_split_are_logged_at_setup(speech_commands, caplog):
    with caplog.at_level("INFO", logger="ldrop.data"):
        SpeechCommandsDataModule(speech_commands.root).setup("fit")
    assert f"train split: {len(speech_commands.splits['train'])} items" in caplog.text
    assert f"val split: {len(speech_commands.splits['val'])} items" in caplog.text


def test_a_label_outside_the_class_list_is_an_error(tmp_path):
    write_audio(tmp_path / "a.wav", 800)
    (tmp_path / "m.csv").write_text("path,label\na.wav,zebra\n")
    dm = ManifestDataModule(train_manifest=str(tmp_path / "m.csv"), class_names=["horse"])
    with pytest.raises(ValueError, match="'zebra' is not in the class list"):
        dm.setup("fit")


# ------------------------------------------------------------------------------------------ loaders
def test_setup_builds_only_the_splits_of_the_stage():
    dm = SyntheticClassificationDataModule(num_train=4, num_val=4, num_test=4)
    dm.setup("test")
    assert set(dm.datasets) == {"test"}
    dm.setup("fit")
    assert set(dm.datasets) == {"test", "train", "val"}


def test_evaluation_loaders_yield_the_same_order_every_time():
    dm = SyntheticClassificationDataModule(num_val=40, num_test=40)
    dm.setup()
    assert ids_of(dm.val_dataloader()) == ids_of(dm.val_dataloader())
    assert ids_of(dm.test_dataloader()) == ids_of(dm.test_dataloader())


def test_training_order_changes_with_the_epoch_and_repeats_with_the_seed():
    def order(seed, epoch):
        loader = SyntheticClassificationDataModule(num_train=40, seed=seed).train_dataloader()
        loader.batch_sampler.set_epoch(epoch)
        return ids_of(loader)

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 1) != order(1, 1)


def test_batch_size_sets_items_per_batch():
    loader = SyntheticClassificationDataModule(num_train=40, batch_size=5).train_dataloader()
    assert isinstance(loader.batch_sampler, LengthGroupedSampler)
    assert [len(b) for b in loader] == [5] * 8


def test_max_batch_seconds_switches_to_dynamic_batches_within_the_budget():
    dm = SyntheticClassificationDataModule(num_train=64, max_batch_seconds=3.0)
    loader = dm.train_dataloader()
    assert isinstance(loader.batch_sampler, DynamicBatchSampler)
    for batch in loader:
        assert batch.waveforms.numel() <= 3.0 * 16000


def test_group_by_length_false_keeps_dataset_order_in_evaluation():
    dm = SyntheticClassificationDataModule(num_val=20, group_by_length=False)
    assert ids_of(dm.val_dataloader()) == dm.dataset("val").ids


def test_ddp_ranks_read_from_the_trainer_get_disjoint_training_items():
    per_rank = []
    for rank in range(2):
        dm = SyntheticClassificationDataModule(num_train=50, batch_size=4)
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        per_rank.append(ids_of(dm.train_dataloader()))
    assert not set(per_rank[0]) & set(per_rank[1])
    assert len(set(per_rank[0]) | set(per_rank[1])) == 50


def test_worker_processes_yield_the_same_batches_as_the_main_process():
    def batches(num_workers):
        dm = SyntheticCTCDataModule(num_val=24, batch_size=6, num_workers=num_workers)
        return [(b.ids, b.targets, b.waveforms) for b in dm.val_dataloader()]

    for (ids0, t0, w0), (ids2, t2, w2) in zip(batches(0), batches(2), strict=True):
        assert ids0 == ids2 and t0 == t2
        torch.testing.assert_close(w0, w2)


@pytest.mark.parametrize(("workers", "given", "expected"), [(0, False, False), (2, False, False), (2, True, True)])
def test_worker_processes_persist_between_epochs_when_asked(workers, given, expected):
    dm = SyntheticClassificationDataModule(num_train=8, num_val=8, num_workers=workers, persistent_workers=given)
    assert dm.train_dataloader().persistent_workers is expected and dm.val_dataloader().persistent_workers is expected


def test_predict_split_defaults_to_the_test_split(speech_commands):
    dm = SpeechCommandsDataModule(speech_commands.root)
    assert dm.dataset("predict").ids == dm.dataset("test").ids


def test_classification_modules_have_no_transcripts():
    with pytest.raises(AttributeError, match="no transcripts"):
        SyntheticClassificationDataModule().transcripts()


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(
    ("cls", "yaml", "expected"),
    [
        (LibriSpeechDataModule, "root: /data\ntrain_subsets: [train-clean-100, train-clean-360]\n",
         {"train_subsets": ["train-clean-100", "train-clean-360"]}),
        (SpeechCommandsDataModule, "root: /data\nnum_classes: 12\n", {"num_classes": 12}),
        (ESC50DataModule, "root: /data\ntest_fold: 3\nesc10: true\n", {"test_fold": 3, "esc10": True}),
        (TedliumDataModule, "root: /data\neval_partition: speaker-adaptation\n",
         {"eval_partition": "speaker-adaptation"}),
        (SyntheticClassificationDataModule, "snr_db_range: [-10, 5]\nmax_batch_seconds: 8\n",
         {"snr_db_range": (-10.0, 5.0), "max_batch_seconds": 8.0}),
        (SyntheticCTCDataModule, "letters: abcd\nnum_letters_range: [1, 3]\n", {"num_letters_range": (1, 3)}),
        (ManifestDataModule, "train_manifest: train.csv\ntask: ctc\n", {"task": "ctc"}),
    ],
)  # fmt: skip
def test_a_yaml_config_reads_like_the_signature(cls, yaml, expected):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "data")
    config = parser.parse_string("data:\n" + "".join(f"  {line}\n" for line in yaml.splitlines()))
    assert {key: config.data[key] for key in expected} == expected


def test_a_misspelt_yaml_key_is_an_error():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(SpeechCommandsDataModule, "data")
    with pytest.raises(ArgumentError):
        parser.parse_string("data:\n  root: /data\n  num_clases: 12\n")


def test_packed_items_read_back_as_the_list_they_were_given():
    from ldrop.data.datasets import AudioItem, PackedItems

    items = [AudioItem(id=f"u{i}", path=f"/corpus/ü {i}.flac", target=["x", 3, None][i % 3], start=i, stop=i + 9)
             for i in range(50)]
    packed = PackedItems(items)
    assert len(packed) == 50 and list(packed) == items and packed[-1] == items[-1] and packed[3:7] == items[3:7]
    with pytest.raises(IndexError):
        packed[50]
    assert list(PackedItems([])) == []


def test_a_file_datasets_items_are_no_python_objects_a_forked_worker_would_copy():
    """A DataLoader worker reading a list of 281k item objects copied ~330 MB of its parent's pages in an epoch."""
    import gc

    from ldrop.data.datasets import AudioFileDataset, AudioItem

    gc.collect()
    before = len(gc.get_objects())
    dataset = AudioFileDataset([AudioItem(id=f"u{i}", path=f"/corpus/{i}.flac", target="text", start=0, stop=16000,
                                          file_sample_rate=16000, num_samples=16000) for i in range(20_000)])
    gc.collect()
    assert len(gc.get_objects()) - before < 20_000 // 2  # the 20k records are gone; a handful of lists remain
    assert dataset.items[12_345].path == "/corpus/12345.flac"
