"""read_audio / audio_info: soundfile in, mono float32 at the target rate out, bad files named."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
import torchaudio.functional as AF

from ldrop.data import AudioReadError, audio_info, read_audio
from ldrop.data.audio import AudioFileNotFoundError, check_audio
from ldrop.testing.fixtures import time_code, truncate_file, write_audio, write_nonfinite_wav


def test_read_audio_returns_1d_float32(tmp_path):
    path = write_audio(tmp_path / "a.wav", 4000, 16000)
    waveform = read_audio(path)
    assert waveform.dtype == torch.float32
    assert waveform.shape == (4000,)


def test_read_audio_averages_channels_to_mono(tmp_path):
    path = write_audio(tmp_path / "stereo.wav", 3000, 16000, channels=2)
    data, _ = sf.read(path, dtype="float32")
    torch.testing.assert_close(read_audio(path), torch.from_numpy(data.mean(axis=1)))


def test_read_audio_resamples_with_torchaudio_to_target_rate(tmp_path):
    path = write_audio(tmp_path / "a8k.wav", 4000, 8000)
    data, _ = sf.read(path, dtype="float32")
    waveform = read_audio(path, target_sr=16000)
    assert waveform.shape == (8000,)
    torch.testing.assert_close(waveform, AF.resample(torch.from_numpy(data), 8000, 16000))


def test_read_audio_keeps_file_rate_when_it_is_the_target(tmp_path):
    path = write_audio(tmp_path / "a.flac", 1234, 16000)
    data, _ = sf.read(path, dtype="float32")
    torch.testing.assert_close(read_audio(path, target_sr=16000), torch.from_numpy(data))


def test_read_audio_returns_exactly_the_frames_between_start_and_stop(tmp_path):
    path = tmp_path / "talk.sph"
    sf.write(path, time_code(50000), 16000, format="NIST", subtype="PCM_16")
    waveform = read_audio(path, start=40000, stop=40100)
    positions = (torch.round(waveform * 32768).long() + 16384).tolist()
    assert positions == [(40000 + i) % 32768 for i in range(100)]


def test_read_audio_passes_start_and_stop_to_soundfile(tmp_path, monkeypatch):
    path = write_audio(tmp_path / "a.wav", 8000, 16000)
    calls = []
    real_read = sf.read

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_read(*args, **kwargs)

    monkeypatch.setattr(sf, "read", spy)
    read_audio(path, start=100, stop=900)
    assert calls[0]["start"] == 100 and calls[0]["stop"] == 900


def test_read_audio_does_not_use_torchaudio_load(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("torchaudio.load must not be used")

    monkeypatch.setattr(torchaudio, "load", forbidden)
    assert read_audio(write_audio(tmp_path / "a.wav", 500, 16000)).shape == (500,)


def test_missing_file_error_names_the_file(tmp_path):
    with pytest.raises(AudioReadError, match="nowhere.wav"):
        read_audio(tmp_path / "nowhere.wav")


def test_empty_file_error_names_the_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioReadError, match="empty.wav"):
        read_audio(tmp_path / "empty.wav")


def test_corrupt_file_error_names_the_file(tmp_path):
    (tmp_path / "corrupt.flac").write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(AudioReadError, match="corrupt.flac"):
        read_audio(tmp_path / "corrupt.flac")


def test_range_past_the_end_is_an_error_naming_the_file(tmp_path):
    path = write_audio(tmp_path / "short.wav", 1000, 16000)
    with pytest.raises(AudioReadError, match="short.wav"):
        read_audio(path, start=2000, stop=3000)


def test_audio_info_reports_frames_rate_and_channels(tmp_path):
    info = audio_info(write_audio(tmp_path / "a.wav", 22050, 44100, channels=2))
    assert (info.frames, info.sample_rate, info.channels) == (22050, 44100, 2)
    assert info.seconds == pytest.approx(0.5)


def test_audio_info_rejects_a_file_without_frames(tmp_path):
    sf.write(tmp_path / "silent.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioReadError, match="silent.wav"):
        audio_info(tmp_path / "silent.wav")


# ------------------------------------------------------------------------- silently wrong audio (issue 8)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_float_wav_with_a_non_finite_sample_is_rejected_naming_the_file(tmp_path, value):
    path = write_nonfinite_wav(tmp_path / "nonfinite.wav", bad_frame=321, value=value)
    with pytest.raises(AudioReadError, match=r"nonfinite\.wav.*non-finite sample.*frame 321"):
        read_audio(path)
    with pytest.raises(AudioReadError, match=r"nonfinite\.wav.*non-finite"):
        check_audio(path)


def test_reading_a_range_of_finite_frames_of_a_nan_file_still_works(tmp_path):
    # Only the frames read are checked at read time; check_audio (run at setup) scans the whole file.
    path = write_nonfinite_wav(tmp_path / "nan.wav", num_frames=1600, bad_frame=1500)
    assert torch.isfinite(read_audio(path, start=0, stop=1000)).all()


def test_audio_info_does_not_decode_a_float_file(tmp_path):
    assert audio_info(write_nonfinite_wav(tmp_path / "nan.wav")).frames == 1600


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("cut.wav", {}),
        ("cut_float.wav", {"subtype": "FLOAT"}),
        ("cut.sph", {"format": "NIST"}),
        ("cut.flac", {}),
    ],
)
def test_truncated_file_is_rejected_naming_the_file(tmp_path, name, kwargs):
    path = truncate_file(write_audio(tmp_path / name, 16000, 16000, **kwargs), keep_fraction=0.5)
    with pytest.raises(AudioReadError, match=rf"{name.replace('.', '[.]')}.*truncated"):
        audio_info(path)
    with pytest.raises(AudioReadError, match=name.replace(".", "[.]")):
        read_audio(path)


def test_truncation_message_gives_promised_and_present_lengths(tmp_path):
    path = truncate_file(write_audio(tmp_path / "cut.wav", 16000, 16000), keep_fraction=0.5)
    with pytest.raises(AudioReadError, match=r"promises 16000 frames \(1\.000 s\), it holds 79\d\d"):
        audio_info(path)


def test_wav_written_as_a_stream_without_a_length_is_not_called_truncated(tmp_path):
    path = write_audio(tmp_path / "stream.wav", 16000, 16000)
    data = bytearray(path.read_bytes())
    assert data[36:40] == b"data"
    data[4:8] = data[40:44] = struct.pack("<I", 0xFFFFFFFF)  # what a writer to a pipe leaves
    path.write_bytes(bytes(data))
    assert audio_info(path).frames == 16000
    assert read_audio(path).shape == (16000,)


def test_intact_files_of_every_written_kind_pass_the_checks(tmp_path):
    for name, kwargs in [
        ("a.wav", {}),
        ("b.wav", {"subtype": "FLOAT"}),
        ("c.sph", {"format": "NIST"}),
        ("d.flac", {}),
    ]:
        path = write_audio(tmp_path / name, 16000, 16000, **kwargs)
        assert check_audio(path).frames == 16000 and read_audio(path).shape == (16000,)


def test_range_that_runs_past_the_end_of_the_file_is_an_error_not_a_short_read(tmp_path):
    path = write_audio(tmp_path / "short.wav", 1000, 16000)
    with pytest.raises(AudioReadError, match=r"short\.wav.*ends at frame 1000"):
        read_audio(path, start=500, stop=1500)


@pytest.mark.parametrize("reader", [read_audio, audio_info, check_audio])
def test_missing_file_is_a_file_not_found_error_naming_it(tmp_path, reader):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.flac: the file does not exist"):
        reader(tmp_path / "nowhere.flac")


def test_missing_file_error_is_still_an_audio_read_error(tmp_path):
    with pytest.raises(AudioFileNotFoundError) as info:
        read_audio(tmp_path / "nowhere.flac")
    assert isinstance(info.value, AudioReadError) and info.value.path == str(tmp_path / "nowhere.flac")


def test_folder_named_like_an_audio_file_is_an_error_saying_so(tmp_path):
    (tmp_path / "x.wav").mkdir()
    with pytest.raises(AudioReadError, match=r"x\.wav: it is a folder"):
        audio_info(tmp_path / "x.wav")


def test_shorten_compressed_sphere_says_so_and_how_to_decompress_it(tmp_path):
    path = tmp_path / "talk.sph"
    sf.write(path, time_code(16000), 16000, format="NIST", subtype="PCM_16")
    data = path.read_bytes()
    header = data[:1024].decode("latin1").replace("sample_coding -s3 pcm", "sample_coding -s26 pcm,embedded-shorten-v2.00")
    path.write_bytes(header[:1024].encode("latin1") + data[1024:])
    with pytest.raises(AudioReadError, match=r"talk\.sph: Shorten-compressed NIST SPHERE.*sph2pipe"):
        check_audio(path)


def test_a_file_whose_header_reads_but_whose_audio_does_not_decode_is_called_corrupt(tmp_path):
    """It passes the setup's header check and fails mid-run: "not a readable audio file" sent users to the format."""
    path = tmp_path / "garbled.flac"
    sf.write(path, np.random.default_rng(0).standard_normal(32000).astype("float32") * 0.1, 16000)
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 2000] = bytes(2000)  # frames lost mid-file, the header intact
    path.write_bytes(bytes(data))
    assert sf.info(path).frames == 32000
    with pytest.raises(AudioReadError, match=r"garbled.flac: corrupt: its header reads, but decoding frames "
                                             r"\[0, 32000\) failed \(libsndfile: .+\)$"):
        read_audio(path)
