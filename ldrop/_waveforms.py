"""Waveforms as the models take them, ``[batch, samples]`` float audio with ``lengths``, from what callers give:
one clip, a padded batch, a list of clips or audio file paths; one clear ``ValueError`` for what would run but
give a wrong answer (int16 PCM, ``[samples, channels]``, NaN). numpy and soundfile only: the ONNX runtime's too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np


def read_audio_file(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """A mono float32 waveform from an audio file (channels averaged), which must be at ``sample_rate``."""
    import soundfile

    if not Path(path).is_file():
        raise ValueError(f"no audio file at {str(path)!r}" + (" (it is a folder)" if Path(path).is_dir() else ""))
    if Path(path).stat().st_size == 0:
        raise ValueError(f"cannot read audio file {str(path)!r}: the file is empty (0 bytes)")
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except soundfile.LibsndfileError as error:  # "Format not recognised", a WAV header cut before its data
        raise ValueError(f"cannot read audio file {str(path)!r}: not a readable audio file (libsndfile: "
                         f"{error.error_string.rstrip('.')})") from None
    except (OSError, RuntimeError) as error:
        raise ValueError(f"cannot read audio file {str(path)!r}: {error}") from None
    if rate != sample_rate:
        raise ValueError(
            f"{str(path)!r} is at {rate} Hz; this model takes {sample_rate} Hz audio (resample it first, e.g. with "
            f"ffmpeg -ar {sample_rate})"
        )
    return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]


def check_not_channels(shape: tuple[int, ...]) -> None:
    """A ValueError for a ``[samples, channels]`` array given as ``[batch, samples]`` (how ``soundfile.read``
    returns multi-channel audio)."""
    if len(shape) == 2 and shape[1] <= 8 < shape[0]:
        raise ValueError(f"waveforms of shape {list(shape)} look like [samples, channels] audio (as soundfile.read "
                         "returns it): give [batch, samples], e.g. one channel with x.mean(axis=1)")


def check_float_audio(dtype: Any) -> None:
    """A ValueError for integer samples (int16 PCM), which the model would read at 32768 times their level."""
    name = str(dtype).removeprefix("torch.")
    if name.startswith(("int", "uint")):
        raise ValueError(f"waveforms are {name} samples: give float audio in [-1, 1] (int16 PCM: x / 32768)")


def check_clip(index: int, shape: tuple[int, ...]) -> None:
    """A ValueError for a clip of a list with more than one channel (flattening it would join its channels end to
    end), or for a list of numbers (one clip, not many); ``[1, samples]`` and ``[samples, 1]`` are one channel."""
    if len(shape) == 0:
        raise ValueError("waveforms is a list of numbers: give one clip as an array or tensor [samples] "
                         "(np.asarray(samples)), or a list of clips")
    if sum(size > 1 for size in shape) > 1:
        raise ValueError(f"clip {index} of the list has shape {list(shape)}: each clip must be one channel "
                         "[samples] (average the channels first, e.g. x.mean(0) for [channels, samples])")


def list_of_clips(waveforms: Any, lengths: Any) -> list[Any] | None:
    """``waveforms`` as a list of clips if it is one (a list, a tuple, a 1-D array of objects), else ``None``;
    a ValueError if ``lengths`` come with it (a list's clips carry their own lengths)."""
    if hasattr(waveforms, "shape") and hasattr(waveforms, "__array__") and np.asarray(waveforms).dtype != object:
        return None
    if lengths is not None:
        raise ValueError("lengths are for a padded batch [batch, samples]: a list's clips carry their own lengths")
    return list(waveforms)


def check_lengths(lengths: Any, batch: int, samples: int) -> None:
    """A ValueError unless ``lengths`` (array or tensor) holds one value per row, none past the padded end."""
    if tuple(lengths.shape) != (batch,) or bool((lengths > samples).any()):
        raise ValueError(f"lengths must be [batch={batch}] values <= {samples}, got {lengths.tolist()}")


def plain(values: Any) -> Any:
    """A torch tensor as a numpy array (detached, on the CPU; bfloat16, which numpy lacks, as float32), without
    importing torch; anything else as given."""
    if not (hasattr(values, "detach") and hasattr(values, "numpy")):
        return values
    values = values.detach().cpu()
    return (values.float() if str(values.dtype) == "torch.bfloat16" else values).numpy()


def as_batch(waveforms: Any, lengths: Any = None, sample_rate: int = 16_000) -> tuple[np.ndarray, np.ndarray]:
    """``(waveforms [batch, samples] float32, lengths [batch] int64)`` from one utterance ``[samples]``, a
    zero-padded batch (with ``lengths``), or a list of 1-D clips or audio file paths (arrays or tensors)."""
    if isinstance(waveforms, str | os.PathLike):
        waveforms = [waveforms]
    waveforms, lengths = plain(waveforms), plain(lengths)
    clips = list_of_clips(waveforms, lengths)
    if clips is None:
        check_float_audio(np.asarray(waveforms).dtype)
        waves = np.asarray(waveforms, dtype=np.float32)
        if waves.ndim == 1:
            waves = waves[None]
        if waves.ndim != 2:
            raise ValueError(f"waveforms must be [samples] or [batch, samples], got {list(waves.shape)}")
        if lengths is None:
            check_not_channels(waves.shape)
            lengths = np.full(waves.shape[0], waves.shape[1], dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
        check_lengths(lengths, *waves.shape)
        waves = np.ascontiguousarray(waves)
    else:
        clips = [read_audio_file(w, sample_rate) if isinstance(w, str | os.PathLike) else np.asarray(plain(w))
                 for w in clips]
        for index, clip in enumerate(clips):
            check_float_audio(clip.dtype)
            check_clip(index, clip.shape)
        clips = [clip.astype(np.float32).reshape(-1) for clip in clips]
        if not clips:
            raise ValueError("no waveforms given")
        lengths = np.array([len(c) for c in clips], dtype=np.int64)
        waves = np.zeros((len(clips), int(lengths.max())), dtype=np.float32)
        for row, clip in enumerate(clips):
            waves[row, : len(clip)] = clip
    finite = np.isfinite(waves).all(axis=1)
    if not finite.all():  # a NaN input would give a confident wrong answer
        raise ValueError(f"waveforms {np.flatnonzero(~finite).tolist()} hold NaN or inf samples")
    return waves, lengths
