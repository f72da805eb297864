"""read_audio / audio_info: soundfile in, mono float32 at the target rate out, bad files named."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
import torchaudio.functional as AF

from ldrop.data import AudioReadError, audio_info, read_audio
from ldrop.data.fixtures import time_code, write_audio


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
