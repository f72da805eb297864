"""Reading audio files into mono float32 tensors at a target sample rate, with :mod:`soundfile`
(``torchaudio.load`` needs torchcodec and FFmpeg from torchaudio 2.9 on; torchaudio is used for resampling
only)."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import struct
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

__all__ = [
    "AudioFileNotFoundError", "AudioInfo", "AudioReadError", "audio_info", "check_audio", "read_audio",
    "resample", "resampled_length",
]

PathLike = str | os.PathLike


class AudioReadError(RuntimeError):
    """An audio file is missing, unreadable, empty, truncated or corrupt; the message names the file."""

    def __init__(self, path: PathLike, reason: str, what: str = "cannot read audio file") -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{what} {self.path}: {reason}")


class AudioFileNotFoundError(AudioReadError, FileNotFoundError):
    """The audio file does not exist (also a :class:`FileNotFoundError`)."""

    def __init__(
        self, path: PathLike, reason: str = "the file does not exist", what: str = "cannot read audio file"
    ) -> None:
        super().__init__(path, reason, what)


@dataclass(frozen=True)
class AudioInfo:
    """What the header of an audio file says: frames (per channel), sample rate and channels."""

    frames: int
    sample_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        """Duration in seconds."""
        return self.frames / self.sample_rate


def audio_info(path: PathLike) -> AudioInfo:
    """Read the header of an audio file (anything libsndfile reads) without decoding the audio.

    Raises :class:`AudioFileNotFoundError`, or :class:`AudioReadError` for a file that is unreadable, holds no
    frames or is truncated (its header promises more frames than it holds; libsndfile would silently read
    less).
    """
    return _inspect(path, scan_samples=False)


def check_audio(path: PathLike) -> AudioInfo:
    """:func:`audio_info`, and for float files a scan for NaN/inf samples (the check DataModules run at
    setup)."""
    return _inspect(path, scan_samples=True)


_FLOAT_SUBTYPES = frozenset({"FLOAT", "DOUBLE"})
# Subtypes whose bytes per frame is the header's block align, so a data size converts to frames.
_FIXED_SIZE_SUBTYPES = frozenset(
    {"PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW", "ALAW"}
)
# Compressed formats (their subtype may still read PCM_16, as FLAC's does): libsndfile takes the frame count
# from the header or an estimate, not from the data present, so a cut file shows only when its end is decoded.
_COMPRESSED_FORMATS = frozenset({"FLAC", "OGG", "MP3"})
# Formats whose frame count libsndfile only estimates: an MP3 without a Xing/Info tag (sox writes none) is
# counted from its size and first frame's bitrate, and decodes to a little less (38774 estimated, 38592 real).
_ESTIMATED_LENGTH_FORMATS = frozenset({"MP3"})
# Frames decoded at the end of such a file to find where its audio really ends: a few MPEG frames (1152).
_ESTIMATE_TAIL_FRAMES = 8192
# How far short of its estimate such a file may decode and still be complete: the estimate is off by less than
# one byte per MPEG frame (at most 1/72 of the length) plus the encoder's delay and padding (about 2 frames).
# A file that ends earlier was cut (an interrupted copy).
_ESTIMATE_RELATIVE_TOLERANCE = 0.02
_ESTIMATE_ABSOLUTE_TOLERANCE = 2304


def _inspect(path: PathLike, scan_samples: bool) -> AudioInfo:
    try:
        f = sf.SoundFile(os.fspath(path))
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as err:
        raise _open_error(path, err) from err
    with f:
        info = AudioInfo(frames=int(f.frames), sample_rate=int(f.samplerate), channels=int(f.channels))
        if info.frames <= 0:
            raise AudioReadError(path, "the file holds no audio frames")
        promised = _promised_frames(path, f.format, f.subtype)
        if promised is not None and promised > info.frames:
            raise AudioReadError(
                path,
                f"the file is truncated: its header promises {promised} frames "
                f"({promised / info.sample_rate:.3f} s), it holds {info.frames} ({info.seconds:.3f} s)",
            )
        try:
            if f.format in _COMPRESSED_FORMATS or f.subtype not in _FIXED_SIZE_SUBTYPES:
                # libsndfile trusts the header's (FLAC, Ogg) or its own estimated (MP3) frame count; a cut file,
                # or an estimate that is too long, shows only when the end is decoded.
                info = _decoded_length(path, f, info)
            if scan_samples and f.subtype in _FLOAT_SUBTYPES:
                f.seek(0)
                position = 0
                for block in f.blocks(1 << 18, dtype="float32", always_2d=True):
                    _check_finite(path, block, position)
                    position += block.shape[0]
        except AudioReadError:
            raise
        except (sf.LibsndfileError, RuntimeError) as err:
            raise AudioReadError(
                path, f"the file is truncated or corrupt: its header promises {info.frames} frames ({err})"
            ) from err
    return info


def _decoded_length(path: PathLike, f: sf.SoundFile, info: AudioInfo) -> AudioInfo:
    """``info`` with the frames that really decode: the header's count, or the real end of an estimated one.

    Decodes the last frame (exact counts) or the last :data:`_ESTIMATE_TAIL_FRAMES` (estimates); only when
    nothing decodes there is the whole file decoded. ``AudioReadError`` when the file holds fewer frames than
    its header promises.
    """
    estimated = f.format in _ESTIMATED_LENGTH_FORMATS
    start = max(0, info.frames - (_ESTIMATE_TAIL_FRAMES if estimated else 1))
    try:
        f.seek(start)
        decoded = _frames_to_end(f)
    except (sf.LibsndfileError, RuntimeError):
        decoded = 0  # a seek past the real end fails in some decoders (and leaves the file failed)
    end = start + decoded
    if decoded == 0 and start > 0:  # the audio ends before the tail: decode it all, from a fresh handle
        with sf.SoundFile(os.fspath(path)) as whole:
            end = _frames_to_end(whole)
    if end >= info.frames:
        return info
    shortfall = info.frames - end
    if estimated and shortfall <= max(_ESTIMATE_ABSOLUTE_TOLERANCE, _ESTIMATE_RELATIVE_TOLERANCE * info.frames):
        return dataclasses.replace(info, frames=end)
    promise = "its header promises" if not estimated else "its frame count is estimated at"
    raise AudioReadError(
        path,
        f"the file is truncated or corrupt: {promise} {info.frames} frames ({info.seconds:.3f} s), its audio "
        f"ends at frame {end} ({end / info.sample_rate:.3f} s)",
    )


def _frames_to_end(f: sf.SoundFile) -> int:
    """Frames decoded from here to the end of the file (``SoundFile.blocks`` sizes blocks from the header's
    count)."""
    total = 0
    while (count := f.read(1 << 16, dtype="float32", always_2d=True).shape[0]) > 0:
        total += count
    return total


def _promised_frames(path: PathLike, file_format: str, subtype: str) -> int | None:
    """Frames the header of a WAV or NIST SPHERE file promises (libsndfile shortens a cut file's count
    silently)."""
    if subtype not in _FIXED_SIZE_SUBTYPES:
        return None
    with open(os.fspath(path), "rb") as fh:
        if file_format == "NIST":
            match = re.search(rb"sample_count\s+-i\s+(\d+)", fh.read(1024))
            return int(match.group(1)) if match else None
        if file_format != "WAV" or fh.read(4) != b"RIFF" or fh.read(8)[4:] != b"WAVE":
            return None
        block_align = 0
        while len(header := fh.read(8)) == 8:
            chunk, size = header[:4], struct.unpack("<I", header[4:])[0]
            if chunk == b"data":
                # 0 and 0xFFFFFFFF mark a WAV written as a stream, whose length was never filled in.
                return size // block_align if block_align and size not in (0, 0xFFFFFFFF) else None
            if chunk == b"fmt ":
                body = fh.read(size + (size & 1))
                block_align = struct.unpack("<H", body[12:14])[0] if len(body) >= 14 else 0
            else:
                fh.seek(size + (size & 1), 1)
    return None


def _check_finite(path: PathLike, data: np.ndarray, first_frame: int = 0) -> None:
    finite = np.isfinite(data)
    if not finite.all():
        frame = first_frame + int(np.argwhere(~finite)[0][0])
        raise AudioReadError(path, f"non-finite sample (NaN or inf) at frame {frame}")


def _open_error(path: PathLike, err: BaseException) -> AudioReadError:
    """The error for a file libsndfile cannot open: says so plainly when it is missing, a folder or empty."""
    if not os.path.exists(path):
        return AudioFileNotFoundError(path)
    if os.path.isdir(path):
        return AudioReadError(path, "it is a folder, not an audio file")
    if os.path.getsize(path) == 0:
        return AudioReadError(path, "the file is empty (0 bytes)")
    if isinstance(err, sf.LibsndfileError) and _is_shorten_sphere(path):
        return AudioReadError(
            path, "Shorten-compressed NIST SPHERE, which libsndfile cannot decode; decompress it to plain PCM "
            "SPHERE first (sph2pipe -f sph <in.sph> <out.sph>)",
        )
    if isinstance(err, sf.LibsndfileError):  # "Format not recognised", a WAV header cut before its data chunk
        return AudioReadError(path, f"not a readable audio file (libsndfile: {err.error_string.rstrip('.')})")
    return AudioReadError(path, str(err) or type(err).__name__)


def _has_header(path: PathLike) -> bool:
    """Whether libsndfile reads the header of ``path`` (a file whose audio then fails to decode is corrupt)."""
    try:
        sf.info(os.fspath(path))
    except (sf.LibsndfileError, RuntimeError, OSError):
        return False
    return True


def _is_shorten_sphere(path: PathLike) -> bool:
    try:
        with open(path, "rb") as f:
            header = f.read(1024)
    except OSError:  # the error being built says the file cannot be read
        return False
    return header.startswith(b"NIST_1A") and b"shorten" in header.lower()


def resampled_length(num_frames: int, orig_sr: int, target_sr: int) -> int:
    """Number of samples :func:`resample` returns for ``num_frames`` input frames."""
    if orig_sr == target_sr:
        return num_frames
    return math.ceil(num_frames * target_sr / orig_sr)


def resample(waveform: torch.Tensor, orig_sr: int, target_sr: int) -> torch.Tensor:
    """Resample ``[..., samples]`` with :func:`torchaudio.functional.resample` (windowed sinc), a no-op at
    equal rates."""
    if orig_sr == target_sr:
        return waveform
    return AF.resample(waveform, orig_sr, target_sr)


def read_audio(
    path: PathLike, start: int | None = None, stop: int | None = None, target_sr: int = 16000,
) -> torch.Tensor:
    """Read frames ``[start, stop)`` (file rate; ``None``: the whole file) as mono float32 ``[samples]`` at
    ``target_sr``.

    Only the range is decoded (soundfile seeks); channels are averaged. Raises
    :class:`AudioFileNotFoundError`, or :class:`AudioReadError` for an unreadable or corrupt file, a NaN or
    infinite sample, an empty range or a file that ends before ``stop``.
    """
    start = start or 0
    if stop is None:
        # audio_info raises for a missing or truncated file, whose frames libsndfile would hide.
        stop = audio_info(path).frames
    try:
        data, sr = sf.read(os.fspath(path), start=start, stop=stop, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as err:
        problem = _open_error(path, err)
        if isinstance(err, sf.LibsndfileError) and problem.reason.startswith("not a readable") and _has_header(path):
            problem = AudioReadError(path, f"corrupt: its header reads, but decoding frames [{start}, {stop}) "
                                           f"failed (libsndfile: {err.error_string.strip().rstrip('.')})")
        raise problem from err
    if data.shape[0] == 0:
        raise AudioReadError(path, f"no audio frames in frames [{start}, {stop})")
    if data.shape[0] < stop - start:
        raise AudioReadError(
            path,
            f"the file ends at frame {start + data.shape[0]}, before the end of the range [{start}, {stop}) "
            "(truncated file?)",
        )
    _check_finite(path, data, start)
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    waveform = torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))
    return resample(waveform, int(sr), target_sr)

