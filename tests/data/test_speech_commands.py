"""SpeechCommandsDataModule: the 35-word and 12-class tasks, official lists, seeded silence crops."""

from __future__ import annotations

import shutil

import pytest
import soundfile as sf
import torch

from ldrop.data import (
    KEYWORDS_12,
    SPEECH_COMMANDS_WORDS,
    AudioReadError,
    DatasetLayoutError,
    SpeechCommandsDataModule,
)
from ldrop.testing.fixtures import make_speech_commands_tree, write_audio


def ids(clips) -> list[str]:
    return sorted(c.id for c in clips)


def test_class_list_is_known_right_after_init(speech_commands):
    dm35 = SpeechCommandsDataModule(speech_commands.root)
    dm12 = SpeechCommandsDataModule(speech_commands.root, num_classes=12)
    assert (dm35.num_classes, dm35.class_names) == (35, list(SPEECH_COMMANDS_WORDS))
    assert dm12.class_names == [*KEYWORDS_12, "_unknown_", "_silence_"]
    assert dm12.num_classes == 12 and dm12.task == "classification"


def test_35_class_splits_follow_the_official_list_files(speech_commands):
    dm = SpeechCommandsDataModule(speech_commands.root)
    dm.setup()
    assert sorted(dm.dataset("val").ids) == ids(speech_commands.splits["val"])
    assert sorted(dm.dataset("test").ids) == ids(speech_commands.splits["test"])
    assert sorted(dm.dataset("train").ids) == ids(speech_commands.splits["train"])


def test_background_noise_is_never_a_35_class_clip(speech_commands):
    dm = SpeechCommandsDataModule(speech_commands.root)
    assert not any(i.startswith("_background_noise_") for i in dm.dataset("train").ids)


def test_35_class_targets_are_word_indices(speech_commands):
    dataset = SpeechCommandsDataModule(speech_commands.root).dataset("val")
    for item_id, target in zip(dataset.ids, dataset.targets, strict=True):
        assert SPEECH_COMMANDS_WORDS[target] == item_id.split("/")[0]


def test_12_class_task_maps_other_words_to_unknown(speech_commands):
    dataset = SpeechCommandsDataModule(speech_commands.root, num_classes=12, silence_fraction=0).dataset(
        "val"
    )
    for item_id, target in zip(dataset.ids, dataset.targets, strict=True):
        word = item_id.split("/")[0]
        assert target == (KEYWORDS_12.index(word) if word in KEYWORDS_12 else 10)


def test_12_class_silence_count_follows_silence_fraction(speech_commands):
    dm = SpeechCommandsDataModule(speech_commands.root, num_classes=12, silence_fraction=0.2)
    targets = dm.dataset("train").targets
    words = len(speech_commands.splits["train"])
    assert targets.count(11) == round(0.2 * words)
    assert len(targets) == words + round(0.2 * words)


def test_12_class_silence_is_one_second_cut_from_background_noise(speech_commands):
    dataset = SpeechCommandsDataModule(speech_commands.root, num_classes=12, silence_fraction=0.5).dataset(
        "train"
    )
    index = dataset.targets.index(11)
    example = dataset[index]
    name, start = example.id.removeprefix("_silence_/").split("@")
    noise, _ = sf.read(speech_commands.root / "_background_noise_" / name, dtype="float32")
    torch.testing.assert_close(example.waveform, torch.from_numpy(noise[int(start) : int(start) + 16000]))


def test_silence_crops_depend_on_the_seed(speech_commands):
    def silence_ids(seed):
        dm = SpeechCommandsDataModule(speech_commands.root, num_classes=12, seed=seed)
        return [i for i in dm.dataset("train").ids if i.startswith("_silence_")]

    assert silence_ids(0) == silence_ids(0)
    assert silence_ids(0) != silence_ids(1)


def test_silence_crops_differ_between_splits(speech_commands):
    dm = SpeechCommandsDataModule(speech_commands.root, num_classes=12, silence_fraction=0.5)
    val = {i for i in dm.dataset("val").ids if i.startswith("_silence_")}
    test = {i for i in dm.dataset("test").ids if i.startswith("_silence_")}
    assert val and test and val != test


def test_clips_shorter_than_one_second_keep_their_length(speech_commands):
    dataset = SpeechCommandsDataModule(speech_commands.root).dataset("train")
    short = {c.id: c.num_frames for c in speech_commands.splits["train"] if c.num_frames < 16000}
    assert short
    lengths = dict(zip(dataset.ids, dataset.lengths, strict=True))
    assert all(lengths[i] == n for i, n in short.items())


def test_a_folder_that_is_no_speech_commands_word_is_an_error(tmp_path):
    tree = make_speech_commands_tree(tmp_path, words=("yes", "no"), clips_per_word=3)
    write_audio(tree.root / "banana" / "0000_nohash_0.wav", 16000)
    with pytest.raises(ValueError, match=r"'banana'.*not a Speech Commands"):
        SpeechCommandsDataModule(tree.root).setup("fit")


def test_missing_list_file_error_shows_the_expected_layout(tmp_path):
    with pytest.raises(
        DatasetLayoutError, match=r"(?s)validation_list\.txt.*<word>/<speaker>_nohash_<n>\.wav"
    ):
        SpeechCommandsDataModule(tmp_path).setup("fit")


def test_12_class_task_without_background_noise_is_a_layout_error(tmp_path):
    tree = make_speech_commands_tree(tmp_path, words=("yes", "no"), noise_files=0)
    with pytest.raises(DatasetLayoutError, match="_background_noise_"):
        SpeechCommandsDataModule(tree.root, num_classes=12).setup("fit")


def test_12_class_test_may_come_from_the_official_test_archive(tmp_path, speech_commands):
    test_root = tmp_path / "speech_commands_test_set_v0.02"
    for label, n in (("yes", 2), ("_unknown_", 1), ("_silence_", 1)):
        for k in range(n):
            write_audio(test_root / label / f"{k}.wav", 16000, seed=k)
    dm = SpeechCommandsDataModule(speech_commands.root, num_classes=12, test_root=str(test_root))
    dataset = dm.dataset("test")
    assert sorted(zip(dataset.ids, dataset.targets, strict=True)) == [
        ("_silence_/0.wav", 11),
        ("_unknown_/0.wav", 10),
        ("yes/0.wav", 0),
        ("yes/1.wav", 0),
    ]


def test_official_test_archive_needs_the_12_class_task(speech_commands, tmp_path):
    with pytest.raises(ValueError, match="num_classes=12"):
        SpeechCommandsDataModule(speech_commands.root, test_root=str(tmp_path))


def test_corrupt_clip_listed_for_validation_is_named_in_the_error(tmp_path, speech_commands):
    root = tmp_path / "sc"
    shutil.copytree(speech_commands.root, root)
    victim = root / speech_commands.splits["val"][0].id
    victim.write_bytes(b"RIFF\x00\x00")
    with pytest.raises(AudioReadError, match=victim.name):
        SpeechCommandsDataModule(root).setup("validate")


def test_an_absolute_path_in_a_list_file_is_an_error_naming_the_file_and_line(tmp_path):
    tree = make_speech_commands_tree(tmp_path, words=("yes", "no"))
    listed = tree.root / "validation_list.txt"
    rels = listed.read_text().split()
    listed.write_text(f"{rels[0]}\n{tree.root / rels[1]}\n")
    with pytest.raises(ValueError, match=r"validation_list\.txt:2: .*not a path '<word>/<file>\.wav' relative"):
        SpeechCommandsDataModule(tree.root).setup("fit")


def test_train_val_and_test_silence_crops_never_share_audio(tmp_path):
    # Without the official test archive, test crops must not repeat audio the model trained on.
    tree = make_speech_commands_tree(tmp_path, words=("yes", "no"), clips_per_word=40, noise_seconds=12.0)
    dm = SpeechCommandsDataModule(tree.root, num_classes=12, silence_fraction=1.0)
    spans: dict[str, set[tuple[str, int]]] = {}
    for split in ("train", "val", "test"):
        crops = [i.removeprefix("_silence_/").split("@") for i in dm.dataset(split).ids if i.startswith("_silence_")]
        assert len(crops) >= 2
        spans[split] = {(name, frame) for name, start in crops for frame in range(int(start), int(start) + 16000)}
    assert not spans["train"] & spans["val"]
    assert not spans["train"] & spans["test"]
    assert not spans["val"] & spans["test"]


def test_a_bad_background_noise_file_is_counted_with_skip_bad_files(tmp_path, caplog):
    tree = make_speech_commands_tree(tmp_path, words=("yes", "no"), noise_files=2)
    (tree.root / "_background_noise_" / "pink_noise.wav").write_bytes(b"not audio" * 100)
    dm = SpeechCommandsDataModule(tree.root, num_classes=12, silence_fraction=0.5, skip_bad_files=True)
    with caplog.at_level("WARNING", logger="ldrop.data"):
        dataset = dm.dataset("train")
    assert dm.num_bad_files["train"] == 1
    assert "pink_noise.wav" in caplog.text
    assert all("pink_noise" not in i for i in dataset.ids)


def test_background_noise_too_short_to_split_is_a_layout_error(tmp_path):
    tree = make_speech_commands_tree(tmp_path, words=("yes", "no"), noise_files=1, noise_seconds=2.5)
    with pytest.raises(DatasetLayoutError, match="at least 3 s"):
        SpeechCommandsDataModule(tree.root, num_classes=12).setup("fit")


def test_every_background_noise_file_bad_names_one_of_them(tmp_path):
    tree = make_speech_commands_tree(tmp_path, words=("yes", "no"), noise_files=2)
    for name in ("white_noise.wav", "pink_noise.wav"):
        (tree.root / "_background_noise_" / name).write_bytes(b"not audio" * 100)
    with pytest.raises(AudioReadError, match=r"_background_noise_/pink_noise\.wav: no _silence_ crops.*every other"):
        SpeechCommandsDataModule(tree.root, num_classes=12, skip_bad_files=True).setup("fit")
