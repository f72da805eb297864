"""TedliumDataModule: STM segments cut from whole talks with start/stop reads, normalised transcripts."""

from __future__ import annotations

import shutil

import pytest
import soundfile as sf
import torch

from ldrop.data import AudioReadError, DatasetLayoutError, TedliumDataModule, read_stm
from ldrop.testing.fixtures import time_code, truncate_file


def ids(clips) -> list[str]:
    return sorted(c.id for c in clips)


def positions(waveform: torch.Tensor) -> list[int]:
    """Decode time_code() samples back into frame positions modulo 32768."""
    return (torch.round(waveform * 32768).long() + 16384).tolist()


def test_is_a_ctc_module():
    assert TedliumDataModule.task == "ctc"


def test_train_comes_from_data_and_dev_and_test_from_legacy(tedlium):
    dm = TedliumDataModule(tedlium.root)
    dm.setup()
    assert sorted(dm.dataset("train").ids) == ids(tedlium.splits["train"])
    assert sorted(dm.dataset("val").ids) == ids(tedlium.splits["legacy/val"])
    assert sorted(dm.dataset("test").ids) == ids(tedlium.splits["legacy/test"])


def test_dev_and_test_may_come_from_speaker_adaptation(tedlium):
    dm = TedliumDataModule(tedlium.root, eval_partition="speaker-adaptation")
    assert sorted(dm.dataset("val").ids) == ids(tedlium.splits["speaker-adaptation/val"])
    assert sorted(dm.dataset("test").ids) == ids(tedlium.splits["speaker-adaptation/test"])


def test_ignore_time_segment_lines_and_noise_only_segments_are_not_utterances(tedlium):
    # The fixture writes one ignore line per utterance and one noise-only segment per talk.
    dm = TedliumDataModule(tedlium.root)
    assert len(dm.dataset("train")) == len(tedlium.splits["train"])
    assert all("ignore_time_segment_in_scoring" not in t for t in dm.dataset("train").targets)



def test_each_split_says_its_talks_and_segments_on_the_progress_log(tedlium, caplog):
    with caplog.at_level("INFO", logger="ldrop.progress"):
        TedliumDataModule(tedlium.root).dataset("train")
    lines = [r.getMessage() for r in caplog.records if r.name == "ldrop.progress" and " talks, " in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("TedliumDataModule: train split: "), lines
    assert f" {len(tedlium.splits['train'])} segments, " in lines[0], lines

def test_segments_are_cut_at_their_stm_times(tedlium):
    dm = TedliumDataModule(tedlium.root)
    dataset = dm.dataset("train")
    clips = {c.id: c for c in tedlium.splits["train"]}
    for index in range(len(dataset)):
        example = dataset[index]
        clip = clips[example.id]
        assert positions(example.waveform) == [(clip.start + i) % 32768 for i in range(clip.num_frames)]


def test_segments_are_read_with_start_and_stop_frames(tedlium, monkeypatch):
    dataset = TedliumDataModule(tedlium.root).dataset("val")
    clips = {c.id: c for c in tedlium.splits["legacy/val"]}
    calls = []
    real_read = sf.read

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_read(*args, **kwargs)

    monkeypatch.setattr(sf, "read", spy)
    example = dataset[0]
    clip = clips[example.id]
    assert len(calls) == 1
    assert (calls[0]["start"], calls[0]["stop"]) == (clip.start, clip.start + clip.num_frames)


def test_targets_are_normalised_transcripts(tedlium):
    dataset = TedliumDataModule(tedlium.root).dataset("test")
    expected = {c.id: c.target for c in tedlium.splits["legacy/test"]}
    assert dict(zip(dataset.ids, dataset.targets, strict=True)) == expected


def test_transcripts_are_available_before_setup(tedlium):
    dm = TedliumDataModule(tedlium.root)
    assert sorted(dm.transcripts("train")) == sorted(c.target for c in tedlium.splits["train"])


def test_talk_files_are_nist_sphere(tedlium):
    clip = tedlium.splits["train"][0]
    assert sf.info(clip.path).format == "NIST"


def test_missing_root_error_shows_the_expected_layout(tmp_path):
    with pytest.raises(DatasetLayoutError, match=r"(?s)TED-LIUM 3 root.*legacy/\{dev,test\}"):
        TedliumDataModule(tmp_path).setup("fit")


def test_missing_split_folder_error_names_the_folder(tmp_path, tedlium):
    corpus = tmp_path / "TEDLIUM_release-3"
    shutil.copytree(tedlium.root / "TEDLIUM_release-3" / "data", corpus / "data")
    with pytest.raises(DatasetLayoutError, match=r"legacy/dev/stm"):
        TedliumDataModule(tmp_path).setup("validate")


def _one_talk(tmp_path, stm_lines: str, frames: int = 32000):
    folder = tmp_path / "TEDLIUM_release-3" / "legacy" / "dev"
    (folder / "stm").mkdir(parents=True)
    (folder / "sph").mkdir(parents=True)
    (folder / "stm" / "Talk.stm").write_text(stm_lines)
    sf.write(folder / "sph" / "Talk.sph", time_code(frames), 16000, format="NIST", subtype="PCM_16")
    return TedliumDataModule(tmp_path)


def test_segment_starting_after_the_talk_ends_is_an_error_naming_the_talk(tmp_path):
    dm = _one_talk(
        tmp_path, "Talk 1 Talk 0.10 0.50 <o,f0,male> hello\nTalk 1 Talk 5.00 6.00 <o,f0,male> late\n"
    )
    with pytest.raises(AudioReadError, match="Talk.sph"):
        dm.setup("validate")


def test_segment_starting_after_the_talk_ends_is_skipped_and_counted_with_skip_bad_files(tmp_path, caplog):
    dm = _one_talk(
        tmp_path, "Talk 1 Talk 0.10 0.50 <o,f0,male> hello\nTalk 1 Talk 5.00 6.00 <o,f0,male> late\n"
    )
    dm.skip_bad_files = True
    with caplog.at_level("WARNING", logger="ldrop.data"):
        dm.setup("validate")
    assert dm.dataset("val").targets == ["hello"]
    assert dm.num_bad_files["val"] == 1
    assert "Talk.sph" in caplog.text


def test_segment_ending_within_the_tolerance_past_the_talk_end_is_clipped_to_it(tmp_path):
    # STM times are rounded to 10 ms: a segment may end a few frames after the audio.
    dm = _one_talk(tmp_path, "Talk 1 Talk 1.50 2.03 <o,f0,male> tail\n", frames=32000)
    assert dm.dataset("val").raw_lengths == [8000]


def test_segment_running_well_past_the_talk_end_is_an_error_naming_the_talk_and_segment(tmp_path):
    # 3.90-9.50 s in a 4.38 s talk: clipping would keep the whole transcript for a tenth of its audio.
    dm = _one_talk(
        tmp_path,
        "Talk 1 Talk 0.10 0.50 <o,f0,male> hello\nTalk 1 Talk 3.90 9.50 <o,f0,male> cut off\n",
        70080,
    )
    with pytest.raises(
        AudioReadError, match=r"Talk\.sph: item Talk-0000390-0000950: range 3\.900-9\.500 s ends past"
    ):
        dm.setup("validate")


def test_segment_running_well_past_the_talk_end_is_skipped_and_counted_with_skip_bad_files(tmp_path, caplog):
    dm = _one_talk(
        tmp_path,
        "Talk 1 Talk 0.10 0.50 <o,f0,male> hello\nTalk 1 Talk 3.90 9.50 <o,f0,male> cut off\n",
        70080,
    )
    dm.skip_bad_files = True
    with caplog.at_level("WARNING", logger="ldrop.data"):
        dm.setup("validate")
    assert dm.dataset("val").targets == ["hello"]
    assert dm.num_bad_files["val"] == 1
    assert "Talk-0000390-0000950" in caplog.text


def test_a_truncated_talk_is_an_error_naming_it(tmp_path):
    dm = _one_talk(tmp_path, "Talk 1 Talk 0.10 0.50 <o,f0,male> hello\n", frames=32000)
    truncate_file(tmp_path / "TEDLIUM_release-3" / "legacy" / "dev" / "sph" / "Talk.sph", keep_fraction=0.6)
    with pytest.raises(AudioReadError, match=r"Talk\.sph: the file is truncated"):
        dm.setup("validate")


def test_read_stm_skips_ignore_lines_and_strips_the_label(tmp_path):
    stm = tmp_path / "t.stm"
    stm.write_text(
        ";; comment\n"
        "T 1 T 0.5 1.25 <o,f0,female> it 's here\n"
        "T 1 inter_segment_gap 1.25 2.0 <o,,unknown> ignore_time_segment_in_scoring\n"
        "T 1 T 2.0 3.0 <NA> <unk> word\n"
    )
    segments, ignored = read_stm(str(stm))
    assert segments == [(0.5, 1.25, "it 's here"), (2.0, 3.0, "<unk> word")]
    assert ignored == 1


def test_read_stm_rejects_a_line_with_bad_times_naming_file_and_line(tmp_path):
    stm = tmp_path / "bad.stm"
    stm.write_text("T 1 T 0.5 1.0 <NA> fine\nT 1 T zero 1.0 <NA> broken\n")
    with pytest.raises(ValueError, match=r"bad\.stm:2"):
        read_stm(str(stm))


def test_a_split_whose_stm_files_are_empty_is_an_error_naming_them(tmp_path):
    dm = _one_talk(tmp_path, "")
    with pytest.raises(ValueError, match=r"Talk\.stm: the STM file\(s\) of split 'val' hold no segments"):
        dm.setup("validate")


@pytest.mark.parametrize("label", ["<F0_M>", "<unknown>", "<unk>", ""])
def test_ignore_lines_are_skipped_whatever_the_spelling_of_their_label(tmp_path, label):
    # Legacy dev/test spell labels other ways; an ignore line must never become a reference transcript.
    stm = tmp_path / "t.stm"
    stm.write_text(
        f"T 1 T 0.5 1.25 {label} thank you\n"
        f"T 1 Inter_Segment_Gap 1.25 2.0 {label} ignore_time_segment_in_scoring\n"
        f"T 1 T 2.0 3.0 {label} ignore_time_segment_in_scoring\n"
    )
    segments, ignored = read_stm(str(stm))
    assert [text.removeprefix(label).strip() for _, _, text in segments] == ["thank you"]
    assert ignored == 2


def _talk(folder, talk_id: str, stm_line: str | None) -> None:
    sf.write(folder / "sph" / f"{talk_id}.sph", time_code(32000), 16000, format="NIST", subtype="PCM_16")
    if stm_line is not None:
        (folder / "stm" / f"{talk_id}.stm").write_text(stm_line)


def test_a_talk_without_its_stm_file_is_an_error_naming_it(tmp_path):
    # A partial extraction of stm/ must not shrink the split silently.
    dm = _one_talk(tmp_path, "Talk 1 Talk 0.10 0.50 <o,f0,male> hello\n")
    _talk(tmp_path / "TEDLIUM_release-3" / "legacy" / "dev", "Lost", None)
    with pytest.raises(AudioReadError, match=r"Lost\.sph: no transcript: .*stm has no Lost\.stm"):
        dm.setup("validate")


def test_a_talk_without_its_stm_file_is_skipped_and_counted_with_skip_bad_files(tmp_path, caplog):
    dm = _one_talk(tmp_path, "Talk 1 Talk 0.10 0.50 <o,f0,male> hello\n")
    _talk(tmp_path / "TEDLIUM_release-3" / "legacy" / "dev", "Lost", None)
    dm.skip_bad_files = True
    with caplog.at_level("INFO"):
        dm.setup("validate")
    assert dm.dataset("val").targets == ["hello"]
    assert dm.num_bad_files["val"] == 1
    assert "Lost.stm" in caplog.text
    assert "1 talks, 1 segments" in caplog.text  # the talk without STM is a bad item, not a segment


def test_a_bad_talk_is_one_warning_line_for_all_its_segments(tmp_path, caplog):
    dm = _one_talk(tmp_path, "Talk 1 Talk 0.10 0.50 <o,f0,male> hello\nTalk 1 Talk 0.60 0.90 <o,f0,male> again\n")
    _talk(tmp_path / "TEDLIUM_release-3" / "legacy" / "dev", "Good", "Good 1 Good 0.10 0.50 <o,f0,male> fine\n")
    (tmp_path / "TEDLIUM_release-3" / "legacy" / "dev" / "sph" / "Talk.sph").write_bytes(b"not audio" * 100)
    dm.skip_bad_files = True
    with caplog.at_level("WARNING", logger="ldrop.data"):
        dm.setup("validate")
    assert dm.num_bad_files["val"] == 2  # counted per segment
    lines = [line for line in caplog.text.splitlines() if "Talk.sph" in line]
    assert len(lines) == 1 and lines[0].endswith("(2 items)"), caplog.text
