"""Reading audio files into mono float32 tensors at a target sample rate.

Audio is read with :mod:`soundfile` (libsndfile), never with ``torchaudio.load``: from torchaudio 2.9 on,
``torchaudio.load`` needs torchcodec and a system FFmpeg. torchaudio is used for DSP only
(:func:`torchaudio.functional.resample`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

__all__ = ["AudioInfo", "AudioReadError", "audio_info", "read_audio", "resample", "resampled_length"]

PathLike = str | os.PathLike


class AudioReadError(RuntimeError):
    """An audio file is missing, unreadable, empty or corrupt; the message names the file."""

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot read audio file {self.path}: {reason}")


@dataclass(frozen=True)
class AudioInfo:
    """What the header of an audio file says.

    Attributes:
        frames: number of frames (samples per channel).
        sample_rate: frames per second.
        channels: number of channels.
    """

    frames: int
    sample_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        """Duration in seconds."""
        return self.frames / self.sample_rate


def audio_info(path: PathLike) -> AudioInfo:
    """Read the header of an audio file, without decoding the audio.

    Args:
        path: the audio file (any format libsndfile reads: WAV, FLAC, NIST SPHERE PCM, ...).

    Returns:
        Its frame count, sample rate and channel count.

    Raises:
        AudioReadError: if the file is missing, unreadable or holds no frames.
    """
    try:
        with sf.SoundFile(os.fspath(path)) as f:
            info = AudioInfo(frames=int(f.frames), sample_rate=int(f.samplerate), channels=int(f.channels))
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as err:
        raise AudioReadError(path, _reason(err)) from err
    if info.frames <= 0:
        raise AudioReadError(path, "the file holds no audio frames")
    return info


def resampled_length(num_frames: int, orig_sr: int, target_sr: int) -> int:
    """Number of samples :func:`resample` returns for ``num_frames`` input frames."""
    if orig_sr == target_sr:
        return num_frames
    return math.ceil(num_frames * target_sr / orig_sr)


def resample(waveform: torch.Tensor, orig_sr: int, target_sr: int) -> torch.Tensor:
    """Resample with :func:`torchaudio.functional.resample` (windowed sinc), a no-op at equal rates.

    Args:
        waveform: ``[..., samples]`` float tensor.
        orig_sr: its sample rate.
        target_sr: the wanted sample rate.

    Returns:
        ``[..., resampled_length(samples, orig_sr, target_sr)]``.
    """
    if orig_sr == target_sr:
        return waveform
    return AF.resample(waveform, orig_sr, target_sr)


def read_audio(
    path: PathLike,
    start: int | None = None,
    stop: int | None = None,
    target_sr: int = 16000,
) -> torch.Tensor:
    """Read (part of) an audio file as mono float32 at ``target_sr``.

    Only frames ``[start, stop)`` are decoded (soundfile seeks), so cutting an utterance out of a long
    recording costs the utterance, not the recording. Channels are averaged; the result is resampled with
    :func:`torchaudio.functional.resample` when the file's rate differs from ``target_sr``.

    Args:
        path: the audio file.
        start: first frame to read, in frames at the file's own sample rate; ``None`` = 0.
        stop: frame after the last one to read (file rate); ``None`` = end of file.
        target_sr: sample rate of the returned waveform.

    Returns:
        ``[samples]`` float32 waveform.

    Raises:
        AudioReadError: if the file is missing, unreadable, corrupt, or the range holds no frames.
    """
    try:
        data, sr = sf.read(os.fspath(path), start=start or 0, stop=stop, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as err:
        raise AudioReadError(path, _reason(err)) from err
    if data.shape[0] == 0:
        where = "" if start is None and stop is None else f" in frames [{start}, {stop})"
        raise AudioReadError(path, f"no audio frames{where}")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    waveform = torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))
    return resample(waveform, int(sr), target_sr)


def _reason(err: BaseException) -> str:
    if isinstance(err, FileNotFoundError):
        return "no such file"
    return str(err) or type(err).__name__
