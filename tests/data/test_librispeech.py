"""LibriSpeechDataModule: subsets per split, transcripts from .trans.txt, FLAC audio, layout errors."""

from __future__ import annotations

import shutil

import pytest
import soundfile as sf
import torch

from ldrop.data import AudioReadError, DatasetLayoutError, LibriSpeechDataModule


def ids(clips) -> list[str]:
    return sorted(c.id for c in clips)


def test_is_a_ctc_module():
    assert LibriSpeechDataModule.task == "ctc"


def test_default_splits_are_train_clean_100_dev_clean_test_clean(librispeech):
    dm = LibriSpeechDataModule(librispeech.root)
    dm.setup()
    assert sorted(dm.dataset("train").ids) == ids(librispeech.splits["train-clean-100"])
    assert sorted(dm.dataset("val").ids) == ids(librispeech.splits["dev-clean"])
    assert sorted(dm.dataset("test").ids) == ids(librispeech.splits["test-clean"])


def test_predict_split_defaults_to_the_test_subsets(librispeech):
    dm = LibriSpeechDataModule(librispeech.root, test_subsets="test-other")
    assert sorted(dm.dataset("predict").ids) == ids(librispeech.splits["test-other"])


def test_a_split_may_list_several_subsets(librispeech):
    dm = LibriSpeechDataModule(librispeech.root, train_subsets=["train-clean-100", "train-clean-360"])
    expected = ids(librispeech.splits["train-clean-100"] + librispeech.splits["train-clean-360"])
    assert sorted(dm.dataset("train").ids) == expected


def test_targets_are_the_chapter_transcripts(librispeech):
    dm = LibriSpeechDataModule(librispeech.root)
    expected = {c.id: c.target for c in librispeech.splits["dev-clean"]}
    dataset = dm.dataset("val")
    assert dict(zip(dataset.ids, dataset.targets, strict=True)) == expected


def test_transcripts_are_available_before_setup(librispeech):
    dm = LibriSpeechDataModule(librispeech.root)
    assert sorted(dm.transcripts("train")) == sorted(c.target for c in librispeech.splits["train-clean-100"])
    assert dm.datasets == {}


def test_waveforms_are_the_flac_samples(librispeech):
    dm = LibriSpeechDataModule(librispeech.root)
    dataset = dm.dataset("val")
    clip = {c.id: c for c in librispeech.splits["dev-clean"]}[dataset.ids[0]]
    data, _ = sf.read(clip.path, dtype="float32")
    torch.testing.assert_close(dataset[0].waveform, torch.from_numpy(data))


def test_batches_carry_transcripts_and_utterance_ids(librispeech):
    dm = LibriSpeechDataModule(librispeech.root, batch_size=4)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    clips = {c.id: c for c in librispeech.splits["dev-clean"]}
    assert batch.targets == [clips[i].target for i in batch.ids]
    assert batch.lengths.tolist() == [clips[i].num_frames for i in batch.ids]


def test_root_may_be_the_librispeech_folder_itself(librispeech):
    dm = LibriSpeechDataModule(librispeech.root / "LibriSpeech")
    assert len(dm.dataset("val")) == len(librispeech.splits["dev-clean"])


def test_missing_root_error_shows_the_expected_layout(tmp_path):
    dm = LibriSpeechDataModule(tmp_path / "nothing")
    with pytest.raises(DatasetLayoutError, match=r"(?s)LibriSpeech root.*<speaker>-<chapter>\.trans\.txt"):
        dm.setup("fit")


def test_missing_subset_error_names_the_subset_and_the_layout(librispeech):
    dm = LibriSpeechDataModule(librispeech.root, val_subsets="dev-other")
    with pytest.raises(DatasetLayoutError, match=r"(?s)subset 'dev-other'.*Expected layout"):
        dm.setup("validate")


def test_unknown_subset_name_is_rejected(librispeech):
    with pytest.raises(ValueError, match="train-clean-99"):
        LibriSpeechDataModule(librispeech.root, train_subsets="train-clean-99")


def test_transcript_line_without_audio_is_a_bad_file_named_in_the_error(tmp_path, librispeech):
    root = tmp_path / "copy"
    shutil.copytree(librispeech.root / "LibriSpeech" / "dev-clean", root / "LibriSpeech" / "dev-clean")
    missing = next((root / "LibriSpeech" / "dev-clean").rglob("*.flac"))
    missing.unlink()
    with pytest.raises(AudioReadError, match=missing.name):
        LibriSpeechDataModule(root).setup("validate")


def _dev_clean_copy(tmp_path, librispeech):
    root = tmp_path / "copy"
    shutil.copytree(librispeech.root / "LibriSpeech" / "dev-clean", root / "LibriSpeech" / "dev-clean")
    return root


def test_chapter_without_its_transcript_file_is_an_error_naming_the_folder(tmp_path, librispeech):
    root = _dev_clean_copy(tmp_path, librispeech)
    transcript = sorted((root / "LibriSpeech" / "dev-clean").rglob("*.trans.txt"))[0]
    transcript.unlink()
    with pytest.raises(AudioReadError, match=rf"chapter folder {transcript.parent} has no {transcript.name}"):
        LibriSpeechDataModule(root).setup("validate")


def test_chapter_without_its_transcript_file_is_skipped_and_counted_with_skip_bad_files(
    tmp_path, librispeech, caplog
):
    root = _dev_clean_copy(tmp_path, librispeech)
    transcript = sorted((root / "LibriSpeech" / "dev-clean").rglob("*.trans.txt"))[0]
    orphans = sorted(p.stem for p in transcript.parent.glob("*.flac"))
    transcript.unlink()
    dm = LibriSpeechDataModule(root, skip_bad_files=True)
    with caplog.at_level("WARNING", logger="ldrop.data"):
        dm.setup("validate")
    expected = sorted(c.id for c in librispeech.splits["dev-clean"] if c.id not in orphans)
    assert sorted(dm.dataset("val").ids) == expected
    assert dm.num_bad_files["val"] == len(orphans) > 0
    assert str(transcript.parent) in caplog.text


def test_audio_missing_from_its_chapter_transcript_is_an_error_naming_the_transcript(tmp_path, librispeech):
    root = _dev_clean_copy(tmp_path, librispeech)
    transcript = sorted((root / "LibriSpeech" / "dev-clean").rglob("*.trans.txt"))[0]
    lines = transcript.read_text().splitlines(keepends=True)
    transcript.write_text("".join(lines[1:]))
    dropped = lines[0].split()[0]
    with pytest.raises(AudioReadError, match=rf"{dropped}\.flac: not in the transcript file"):
        LibriSpeechDataModule(root).setup("validate")


def test_transcripts_before_setup_leave_out_audio_without_a_transcript(tmp_path, librispeech):
    root = _dev_clean_copy(tmp_path, librispeech)
    sorted((root / "LibriSpeech" / "dev-clean").rglob("*.trans.txt"))[0].unlink()
    assert "" not in LibriSpeechDataModule(root).transcripts("val")


def test_a_missing_flac_is_a_file_not_found_error(tmp_path, librispeech):
    root = _dev_clean_copy(tmp_path, librispeech)
    missing = next((root / "LibriSpeech" / "dev-clean").rglob("*.flac"))
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{missing.name}: the file does not exist"):
        LibriSpeechDataModule(root).setup("validate")


def test_a_tab_after_the_utterance_id_is_an_error_naming_the_transcript_line(tmp_path, librispeech):
    # the official line is '<utt-id> <TRANSCRIPT>' with one space; a tab would glue the first word to the id
    root = _dev_clean_copy(tmp_path, librispeech)
    transcript = sorted((root / "LibriSpeech" / "dev-clean").rglob("*.trans.txt"))[0]
    lines = transcript.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace(" ", "\t", 1)
    transcript.write_text("".join(lines))
    with pytest.raises(ValueError, match=rf"{transcript.name}:2: .*must be separated by a space"):
        LibriSpeechDataModule(root).setup("validate")
