"""Bad inputs are an error naming the file, or (skip_bad_files) a logged, counted skip; never silently used.

Covers the data-layer items of issue 8: non-finite and truncated audio reaching a DataModule, missing
files, the default training length limit, and how predict inputs are listed.
"""

from __future__ import annotations

import pytest

from ldrop.data import AudioReadError, ManifestDataModule, SyntheticClassificationDataModule
from ldrop.data.audio import AudioFileNotFoundError
from ldrop.data.base import DEFAULT_MAX_TRAIN_SECONDS
from ldrop.testing.fixtures import truncate_file, write_audio, write_nonfinite_wav


def manifest_module(tmp_path, rows: list[tuple[str, str]], task: str = "classification", **kwargs):
    column = "label" if task == "classification" else "text"
    lines = [f"path,{column}"] + [f"{path},{target}" for path, target in rows]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    return ManifestDataModule(train_manifest=str(tmp_path / "train.csv"), task=task, **kwargs)


def good_bad_corpus(tmp_path):
    """Two good clips, one float WAV holding a NaN, one WAV cut in half by an interrupted copy."""
    write_audio(tmp_path / "good1.wav", 8000)
    write_audio(tmp_path / "good2.wav", 8000, seed=1)
    write_nonfinite_wav(tmp_path / "nan.wav")
    truncate_file(write_audio(tmp_path / "cut.wav", 16000), keep_fraction=0.5)
    return [("good1.wav", "a"), ("nan.wav", "a"), ("cut.wav", "b"), ("good2.wav", "b")]


# ------------------------------------------------------------------------------- non-finite, truncated
def test_a_float_wav_holding_nan_is_an_error_at_setup_naming_the_file(tmp_path):
    write_audio(tmp_path / "good.wav", 8000)
    write_nonfinite_wav(tmp_path / "nan.wav")
    dm = manifest_module(tmp_path, [("good.wav", "a"), ("nan.wav", "b")])
    with pytest.raises(AudioReadError, match=r"nan\.wav: non-finite sample"):
        dm.setup("fit")


def test_a_truncated_wav_is_an_error_at_setup_naming_the_file(tmp_path):
    write_audio(tmp_path / "good.wav", 8000)
    truncate_file(write_audio(tmp_path / "cut.wav", 16000))
    dm = manifest_module(tmp_path, [("good.wav", "a"), ("cut.wav", "b")])
    with pytest.raises(AudioReadError, match=r"cut\.wav: the file is truncated"):
        dm.setup("fit")


def test_nan_and_truncated_files_are_skipped_and_counted_with_skip_bad_files(tmp_path, caplog):
    dm = manifest_module(tmp_path, good_bad_corpus(tmp_path), skip_bad_files=True)
    with caplog.at_level("WARNING", logger="ldrop.data"):
        dm.setup("fit")
    assert dm.num_bad_files["train"] == 2
    assert sorted(dm.dataset("train").ids) == ["good1.wav", "good2.wav"]
    assert "skipped 2 bad item(s)" in caplog.text
    assert "nan.wav" in caplog.text and "cut.wav" in caplog.text


def test_the_error_counts_the_other_bad_files_and_suggests_skip_bad_files(tmp_path):
    dm = manifest_module(tmp_path, good_bad_corpus(tmp_path))
    with pytest.raises(AudioReadError, match=r"1 more bad items in split 'train'; skip_bad_files=True"):
        dm.setup("fit")


def test_a_missing_file_in_a_split_is_a_file_not_found_error_naming_it(tmp_path):
    write_audio(tmp_path / "good.wav", 8000)
    dm = manifest_module(tmp_path, [("good.wav", "a"), ("gone.flac", "b")])
    with pytest.raises(FileNotFoundError, match=r"gone\.flac: the file does not exist") as info:
        dm.setup("fit")
    assert isinstance(info.value, AudioFileNotFoundError)


def test_an_empty_wav_or_one_cut_inside_its_header_says_so_and_is_a_counted_skip(tmp_path, caplog):
    write_audio(tmp_path / "good.wav", 8000)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "header.wav").write_bytes((tmp_path / "good.wav").read_bytes()[:30])  # cut before 'data'
    rows = [("good.wav", "a"), ("empty.wav", "a"), ("header.wav", "b")]
    with pytest.raises(AudioReadError, match=r"empty\.wav: the file is empty \(0 bytes\) \(1 more bad items"):
        manifest_module(tmp_path, rows).setup("fit")
    with pytest.raises(AudioReadError, match=r"header\.wav: not a readable audio file \(libsndfile: "):
        manifest_module(tmp_path, [rows[0], rows[2]]).setup("fit")
    dm = manifest_module(tmp_path, rows, skip_bad_files=True)
    with caplog.at_level("WARNING", logger="ldrop.data"):
        dm.setup("fit")
    assert dm.num_bad_files["train"] == 2 and dm.dataset("train").ids == ["good.wav"]
    assert "empty.wav: the file is empty" in caplog.text and "header.wav: not a readable audio file" in caplog.text


# ---------------------------------------------------------------------------- training length limits
def test_max_train_seconds_defaults_to_30_seconds():
    assert DEFAULT_MAX_TRAIN_SECONDS == 30.0
    assert SyntheticClassificationDataModule().max_train_seconds == 30.0


def test_a_long_training_file_is_cropped_to_the_default_limit(tmp_path):
    write_audio(tmp_path / "long.wav", 40 * 8000, 8000)
    dm = manifest_module(tmp_path, [("long.wav", "a")])
    dataset = dm.dataset("train")
    assert dataset.lengths == [30 * 16000]
    assert dataset[0].waveform.shape == (30 * 16000,)


def test_a_long_ctc_training_file_is_dropped_by_default_with_a_logged_count(tmp_path, caplog):
    write_audio(tmp_path / "short.wav", 8000, 8000)
    write_audio(tmp_path / "long.wav", 40 * 8000, 8000)
    dm = manifest_module(tmp_path, [("short.wav", "hi"), ("long.wav", "a very long talk")], task="ctc")
    with caplog.at_level("WARNING", logger="ldrop.data"):
        dataset = dm.dataset("train")
    assert dataset.ids == ["short.wav"]
    assert "dropped 1 training item(s) of 2 longer than max_train_seconds=30.0" in caplog.text


def test_without_a_limit_a_very_long_training_file_is_named_in_a_warning(tmp_path, caplog):
    write_audio(tmp_path / "hour.wav", 61 * 8000, 8000)
    dm = manifest_module(tmp_path, [("hour.wav", "a")], max_train_seconds=None)
    with caplog.at_level("WARNING", logger="ldrop.data"):
        dataset = dm.dataset("train")
    assert dataset.lengths == [61 * 16000]
    assert "hour.wav lasts 61.0 s and max_train_seconds=None" in caplog.text


def test_predict_inputs_are_never_cropped_by_the_training_limit(tmp_path):
    write_audio(tmp_path / "long.wav", 40 * 8000, 8000)
    dm = SyntheticClassificationDataModule()
    dm.predict_on_files([tmp_path / "long.wav"])
    assert dm.dataset("predict").lengths == [40 * 16000]


# --------------------------------------------------------------------------------- predict inputs
def predict_folder(tmp_path):
    clips = tmp_path / "clips"
    write_audio(clips / "a.wav", 800)
    write_audio(clips / "sub" / "b.flac", 800)
    (clips / "folder.wav").mkdir()  # a folder with an audio name
    (clips / "._a.wav").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork
    write_audio(clips / ".hidden" / "c.wav", 800)
    (clips / "notes.txt").write_text("not audio")
    return clips


def test_predict_folder_listing_skips_folders_and_hidden_files(tmp_path):
    clips = predict_folder(tmp_path)
    files = SyntheticClassificationDataModule().predict_on_files([clips])
    assert files == [str(clips / "a.wav"), str(clips / "sub" / "b.flac")]


def test_predict_on_files_accepts_a_single_path_string(tmp_path):
    clips = predict_folder(tmp_path)
    dm = SyntheticClassificationDataModule()
    assert dm.predict_on_files(str(clips)) == [str(clips / "a.wav"), str(clips / "sub" / "b.flac")]
    assert dm.predict_on_files(clips / "a.wav") == [str(clips / "a.wav")]
    assert len(dm.dataset("predict")) == 1


def test_a_predict_folder_named_explicitly_is_searched(tmp_path):
    clips = predict_folder(tmp_path)
    assert SyntheticClassificationDataModule().predict_on_files([clips / "sub"]) == [
        str(clips / "sub" / "b.flac")
    ]


def test_a_file_given_alone_and_inside_its_folder_is_predicted_once(tmp_path):
    clips = predict_folder(tmp_path)
    files = SyntheticClassificationDataModule().predict_on_files([clips / "a.wav", clips])
    assert files == [str(clips / "a.wav"), str(clips / "sub" / "b.flac")]


def test_a_missing_predict_input_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.wav"):
        SyntheticClassificationDataModule().predict_on_files(str(tmp_path / "nowhere.wav"))


def test_a_folder_without_audio_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no audio files"):
        SyntheticClassificationDataModule().predict_on_files(tmp_path / "empty")


def test_a_bad_predict_file_error_suggests_skip_bad_files_where_the_module_takes_it(tmp_path):
    write_audio(tmp_path / "good.wav", 8000)
    write_nonfinite_wav(tmp_path / "nan.wav")
    dm = manifest_module(tmp_path, [("good.wav", "a")])
    dm.predict_on_files([tmp_path / "nan.wav"])
    with pytest.raises(AudioReadError, match=r"nan\.wav.*skip_bad_files=True"):
        dm.setup("predict")


def test_a_bad_predict_file_error_does_not_suggest_an_option_the_module_lacks(tmp_path):
    write_nonfinite_wav(tmp_path / "nan.wav")
    dm = type("NoSkipping", (SyntheticClassificationDataModule,), {"takes_skip_bad_files": False})()
    dm.predict_on_files(tmp_path / "nan.wav")
    with pytest.raises(AudioReadError, match=r"nan\.wav") as info:
        dm.setup("predict")
    assert "skip_bad_files" not in str(info.value)


def test_bad_predict_files_are_skipped_and_counted_with_skip_bad_files(tmp_path, caplog):
    write_audio(tmp_path / "good.wav", 8000)
    write_nonfinite_wav(tmp_path / "in" / "nan.wav")
    write_audio(tmp_path / "in" / "ok.wav", 8000)
    dm = manifest_module(tmp_path, [("good.wav", "a")], skip_bad_files=True)
    dm.predict_on_files(tmp_path / "in")
    with caplog.at_level("WARNING", logger="ldrop.data"):
        assert dm.dataset("predict").ids == [str(tmp_path / "in" / "ok.wav")]
    assert dm.num_bad_files["predict"] == 1 and "nan.wav" in caplog.text


@pytest.mark.parametrize("skip", [False, True])
def test_generated_data_modules_skip_bad_predict_files_with_skip_bad_files(tmp_path, caplog, skip):
    good = write_audio(tmp_path / "in" / "good.wav", 8000)
    truncate_file(write_audio(tmp_path / "in" / "cut.wav", 16000), keep_fraction=0.5)
    dm = SyntheticClassificationDataModule(skip_bad_files=skip)
    dm.predict_on_files(tmp_path / "in")
    if not skip:
        with pytest.raises(AudioReadError, match=r"cut\.wav: the file is truncated.*skip_bad_files=True") as info:
            dm.setup("predict")
        assert len(str(info.value).splitlines()) == 1
        return
    with caplog.at_level("WARNING", logger="ldrop.data"):
        assert dm.dataset("predict").ids == [str(good)]
    assert dm.num_bad_files["predict"] == 1 and "skipped 1 bad item(s) of 2 in split 'predict'" in caplog.text
    assert "cut.wav" in caplog.text


def test_a_relative_or_variable_root_is_named_as_the_datamodule_reads_it(tmp_path, monkeypatch):
    """A missing file under a relative root was named relative to a folder the message did not give, and ``$VAR`` in
    a config's root was read literally."""
    from ldrop.data import DatasetLayoutError, SpeechCommandsDataModule

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetLayoutError, match=f"not found: nodata/sc/validation_list.txt \\(relative to {tmp_path}\\)"):
        SpeechCommandsDataModule(root="nodata/sc").setup("fit")
    monkeypatch.setenv("LDROP_TEST_DATA", str(tmp_path / "data"))
    assert SpeechCommandsDataModule(root="$LDROP_TEST_DATA/sc").root == str(tmp_path / "data" / "sc")
    monkeypatch.delenv("LDROP_UNSET", raising=False)
    with pytest.raises(DatasetLayoutError, match="not found: \\$LDROP_UNSET/sc/validation_list.txt \\(\\$LDROP_UNSET is not set\\)"):
        SpeechCommandsDataModule(root="$LDROP_UNSET/sc").setup("fit")
