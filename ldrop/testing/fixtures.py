"""Builders of tiny on-disk copies of the benchmark layouts (real audio files, seeded) that record what they
wrote, so tests compare a DataModule's output with the ground truth."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from ldrop.data.esc50 import ESC10_TARGETS, ESC50_CLASSES
from ldrop.data.speechcommands import BACKGROUND_NOISE_DIR, SPEECH_COMMANDS_WORDS

__all__ = [
    "FixtureClip", "FixtureTree", "make_esc50_tree", "make_librispeech_tree", "make_manifest_corpus",
    "make_speech_commands_tree", "make_tedlium_tree", "time_code", "truncate_file", "write_audio",
    "write_untagged_mp3", "write_nonfinite_wav",
]

_WORDS = ("THE", "CAT", "SAT", "ON", "A", "MAT", "IT'S", "NOT", "MY", "DOG", "AND", "HE", "WAS", "HERE")
_TEDLIUM_WORDS = (
    "so", "we", "know", "that", "this", "is", "a", "story", "about", "people", "ideas", "matter",
)


@dataclass(frozen=True)
class FixtureClip:
    """One example written by a builder: the id, target and frames a DataModule should give it (``start``: its
    first frame in a longer file)."""

    id: str
    path: Path
    target: str
    num_frames: int
    sample_rate: int
    start: int = 0


@dataclass
class FixtureTree:
    """What a builder wrote: the root to hand to the DataModule and the clips of each split."""

    root: Path
    splits: dict[str, list[FixtureClip]] = field(default_factory=dict)


def _new_file(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`~pathlib.Path`, its folder created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_audio(
    path: str | os.PathLike, num_frames: int, sample_rate: int = 16000, seed: int = 0, channels: int = 1,
    format: str | None = None, subtype: str = "PCM_16",
) -> Path:
    """Write a seeded tone-plus-noise signal (``[num_frames, channels]``) to an audio file (format from the
    extension by default)."""
    path = _new_file(path)
    sf.write(path, _signal(num_frames, sample_rate, seed, channels), sample_rate, format=format, subtype=subtype)
    return path


def _signal(num_frames: int, sample_rate: int, seed: int, channels: int = 1) -> np.ndarray:
    """``[num_frames, channels]`` float32: a seeded tone plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_frames) / sample_rate
    tone = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t)
    return (tone[:, None] + 0.05 * rng.standard_normal((num_frames, channels))).astype(np.float32)


def write_nonfinite_wav(
    path: str | os.PathLike, num_frames: int = 1600, sample_rate: int = 16000, bad_frame: int = 100,
    value: float = float("nan"),
) -> Path:
    """Write a 32-bit float WAV whose frame ``bad_frame`` is ``value`` (NaN or inf): libsndfile reads it
    silently."""
    data = (0.3 * np.sin(2 * np.pi * 440 * np.arange(num_frames) / sample_rate)).astype(np.float32)
    data[bad_frame] = value
    path = _new_file(path)
    sf.write(path, data, sample_rate, subtype="FLOAT")
    return path


def truncate_file(path: str | os.PathLike, keep_fraction: float = 0.5) -> Path:
    """Cut a file to its first ``keep_fraction`` of bytes, as an interrupted copy would (the header is
    unchanged)."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    return path


def write_untagged_mp3(path: str | os.PathLike, num_frames: int, sample_rate: int = 22050, seed: int = 0) -> Path:
    """Write a constant-bitrate MP3 without its Xing/Info tag, as sox (and lame writing to a pipe) do.

    Without the tag libsndfile estimates the frame count from the file size, a little past the audio (25366
    frames estimated, 25344 decoded for 24192 written at 22050 Hz); other decoders read the file whole.
    ``ValueError`` when the encoder wrote no tag to drop.
    """
    encoded = io.BytesIO()
    # A constant bitrate (set with a compression level, as libsndfile requires) keeps the estimate close.
    sf.write(encoded, _signal(num_frames, sample_rate, seed), sample_rate, format="MP3", compression_level=0.5,
             bitrate_mode="CONSTANT")
    content = encoded.getvalue()
    first = _mpeg_frame_bytes(content[:4])
    if first is None or not {b"Xing", b"Info"} & {content[i : i + 4] for i in range(4, min(first, 64))}:
        raise ValueError("the MP3 encoder wrote no Xing/Info tag in its first frame")
    path = _new_file(path)
    path.write_bytes(content[first:])
    return path


def _mpeg_frame_bytes(header: bytes) -> int | None:
    """Bytes of the MPEG layer III frame starting with the 4-byte ``header``; ``None`` if it is not one."""
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    version, layer = (header[1] >> 3) & 3, (header[1] >> 1) & 3
    bitrate_index, rate_index, padding = header[2] >> 4, (header[2] >> 2) & 3, (header[2] >> 1) & 1
    if version == 1 or layer != 1 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    if version == 3:  # MPEG-1: 1152 samples per frame
        kbps = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)[bitrate_index]
        return 144 * kbps * 1000 // (44100, 48000, 32000)[rate_index] + padding
    kbps = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)[bitrate_index]  # MPEG-2/2.5: 576
    rates = (22050, 24000, 16000) if version == 2 else (11025, 12000, 8000)
    return 72 * kbps * 1000 // rates[rate_index] + padding


def time_code(num_frames: int, offset: int = 0) -> np.ndarray:
    """``[num_frames]`` int16 samples that encode their position, ``(frame % 32768) - 16384``, to check cuts
    exactly."""
    frames = np.arange(offset, offset + num_frames)
    return ((frames % 32768) - 16384).astype(np.int16)


def make_librispeech_tree(
    root: str | os.PathLike, subsets: Sequence[str] = ("train-clean-100", "dev-clean", "test-clean"),
    speakers: int = 2, chapters: int = 1, utterances: int = 3, seconds: tuple[float, float] = (0.3, 1.2),
    seed: int = 0,
) -> FixtureTree:
    """Write ``<root>/LibriSpeech/<subset>/<speaker>/<chapter>/`` with FLAC and ``.trans.txt`` files
    (``splits`` by subset)."""
    rng = np.random.default_rng(seed)
    tree = FixtureTree(Path(root))
    for s, subset in enumerate(subsets):
        clips = tree.splits.setdefault(subset, [])
        for spk in range(speakers):
            speaker = str(100 + 10 * s + spk)
            for ch in range(chapters):
                chapter = str(1000 + 100 * s + ch)
                chapter_dir = tree.root / "LibriSpeech" / subset / speaker / chapter
                lines = []
                for u in range(utterances):
                    utt_id = f"{speaker}-{chapter}-{u:04d}"
                    frames = int(rng.uniform(*seconds) * 16000)
                    text = " ".join(rng.choice(_WORDS, size=int(rng.integers(2, 6))))
                    path = write_audio(
                        chapter_dir / f"{utt_id}.flac", frames, 16000, seed=int(rng.integers(2**31))
                    )
                    lines.append(f"{utt_id} {text}\n")
                    clips.append(FixtureClip(utt_id, path, text, frames, 16000))
                (chapter_dir / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines), encoding="utf-8")
    return tree


def make_tedlium_tree(
    root: str | os.PathLike, train_talks: int = 2, dev_talks: int = 1, test_talks: int = 1,
    segments_per_talk: int = 3, seconds: tuple[float, float] = (0.4, 1.0), seed: int = 0,
) -> FixtureTree:
    """Write ``<root>/TEDLIUM_release-3/`` with whole-talk NIST SPHERE files (:func:`time_code` audio) and STM
    files.

    The STMs carry the corpus' artefacts (``it 's``, ``{NOISE}``, ``<unk>``, ``(2)``, ``<sil>``), ignored
    segments and one noise-only segment; dev and test talks are under ``legacy/`` and ``speaker-adaptation/``
    (``splits`` keys ``train``, ``legacy/val``, ``legacy/test``, ``speaker-adaptation/val``,
    ``speaker-adaptation/test``).
    """
    rng = np.random.default_rng(seed)
    corpus = Path(root) / "TEDLIUM_release-3"
    tree = FixtureTree(Path(root))
    plan = [("train", corpus / "data", train_talks)]
    for partition in ("legacy", "speaker-adaptation"):
        plan += [(f"{partition}/val", corpus / partition / "dev", dev_talks)]
        plan += [(f"{partition}/test", corpus / partition / "test", test_talks)]
    talk_number = 0
    for split, folder, talks in plan:
        clips = tree.splits.setdefault(split, [])
        for _ in range(talks):
            talk_id = f"Speaker{talk_number:02d}_{2010 + talk_number}"
            talk_number += 1
            lines, position = [], round(rng.uniform(0.2, 0.5) * 100) / 100  # times in centiseconds
            for k in range(segments_per_talk):
                duration = round(rng.uniform(*seconds) * 100) / 100
                start, end = position, round((position + duration) * 100) / 100
                w = rng.choice(_TEDLIUM_WORDS, size=4)
                raw = f"{w[0]} 's {{NOISE}} {w[1]} <unk> {w[2]}(2) <sil> {w[3]} do n't"
                expected = f"{w[0]}'s {w[1]} {w[2]} {w[3]} don't"
                lines.append(f"{talk_id} 1 {talk_id} {start:.2f} {end:.2f} <o,f0,male> {raw}\n")
                gap_end = round((end + 0.3) * 100) / 100
                lines.append(
                    f"{talk_id} 1 inter_segment_gap {end:.2f} {gap_end:.2f} <o,,unknown> ignore_time_segment_in_scoring\n"
                )
                start_frame, end_frame = round(start * 16000), round(end * 16000)
                clips.append(
                    FixtureClip(
                        f"{talk_id}-{round(start * 100):07d}-{round(end * 100):07d}",
                        folder / "sph" / f"{talk_id}.sph", expected, end_frame - start_frame, 16000,
                        start=start_frame,
                    )
                )
                position = gap_end
                if k == 0:  # a segment that normalises to nothing
                    noise_end = round((position + 0.2) * 100) / 100
                    lines.append(
                        f"{talk_id} 1 {talk_id} {position:.2f} {noise_end:.2f} <o,f0,male> {{NOISE}} <sil>\n"
                    )
                    position = round((noise_end + 0.1) * 100) / 100
            total = round((position + 0.5) * 16000)
            _new_file(folder / "stm" / f"{talk_id}.stm").write_text("".join(lines), encoding="utf-8")
            sf.write(_new_file(folder / "sph" / f"{talk_id}.sph"), time_code(total), 16000, format="NIST",
                     subtype="PCM_16")
    return tree


def make_speech_commands_tree(
    root: str | os.PathLike, words: Iterable[str] = SPEECH_COMMANDS_WORDS, clips_per_word: int = 3,
    val_per_word: int = 1, test_per_word: int = 1, noise_files: int = 2, noise_seconds: float = 3.0,
    short_clip_frames: int | None = 12000, seed: int = 0,
) -> FixtureTree:
    """Write a Speech Commands v0.02 tree: word folders of 16 kHz WAVs, list files, ``_background_noise_``.

    Per word the first ``val_per_word`` clips are validation, the next ``test_per_word`` test; clips last 1 s
    except each word's last (``short_clip_frames``). ``splits`` keys ``train``, ``val``, ``test``, ``noise``.
    """
    rng = np.random.default_rng(seed)
    tree = FixtureTree(Path(root), {"train": [], "val": [], "test": [], "noise": []})
    val_lines, test_lines = [], []
    for word in words:
        for n in range(clips_per_word):
            rel = f"{word}/{int(rng.integers(16**8)):08x}_nohash_{n}.wav"
            frames = short_clip_frames if (short_clip_frames and n == clips_per_word - 1) else 16000
            path = write_audio(tree.root / rel, frames, 16000, seed=int(rng.integers(2**31)))
            split = "val" if n < val_per_word else "test" if n < val_per_word + test_per_word else "train"
            (val_lines if split == "val" else test_lines if split == "test" else []).append(rel + "\n")
            tree.splits[split].append(FixtureClip(rel, path, word, frames, 16000))
    for k in range(noise_files):
        name = (
            "white_noise", "pink_noise", "running_tap", "exercise_bike", "dude_miaowing", "doing_the_dishes",
        )[k % 6]
        frames = int(noise_seconds * 16000)
        path = write_audio(
            tree.root / BACKGROUND_NOISE_DIR / f"{name}.wav", frames, 16000, seed=int(rng.integers(2**31))
        )
        tree.splits["noise"].append(
            FixtureClip(f"{BACKGROUND_NOISE_DIR}/{name}.wav", path, "_silence_", frames, 16000)
        )
    (tree.root / "validation_list.txt").write_text("".join(val_lines), encoding="utf-8")
    (tree.root / "testing_list.txt").write_text("".join(test_lines), encoding="utf-8")
    (tree.root / "README.md").write_text("Speech Commands fixture\n", encoding="utf-8")
    return tree


def make_esc50_tree(
    root: str | os.PathLike, targets: Iterable[int] = range(50), clips_per_fold: int = 1,
    seconds: float = 0.2, sample_rate: int = 44100, seed: int = 0,
) -> FixtureTree:
    """Write ``<root>/ESC-50-master/`` with ``audio/<fold>-<clip>-<take>-<target>.wav`` and ``meta/esc50.csv``
    (``splits`` by fold)."""
    rng = np.random.default_rng(seed)
    corpus = Path(root) / "ESC-50-master"
    tree = FixtureTree(Path(root), {str(f): [] for f in range(1, 6)})
    rows = []
    frames = int(seconds * sample_rate)
    for fold in range(1, 6):
        for target in targets:
            for take in "ABCDEFGH"[:clips_per_fold]:
                clip_id = int(rng.integers(10**5, 10**6))
                name = f"{fold}-{clip_id}-{take}-{target}.wav"
                path = write_audio(
                    corpus / "audio" / name, frames, sample_rate, seed=int(rng.integers(2**31))
                )
                esc10 = target in ESC10_TARGETS
                rows.append([name, fold, target, ESC50_CLASSES[target], str(esc10), clip_id, take])
                tree.splits[str(fold)].append(
                    FixtureClip(name, path, ESC50_CLASSES[target], frames, sample_rate)
                )
    with open(_new_file(corpus / "meta" / "esc50.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        writer.writerows(rows)
    return tree


def make_manifest_corpus(
    root: str | os.PathLike, task: str = "classification", format: str = "csv",
    labels: Sequence[str] = ("cat", "dog", "bird"), clips_per_split: int = 4, seed: int = 0,
) -> FixtureTree:
    """Write WAV/FLAC files at mixed rates and channel counts plus ``train``/``val``/``test`` manifests.

    Files alternate 16 kHz mono WAV, 8 kHz stereo WAV, 22.05 kHz mono FLAC and a 2 s file read as a 0.5 s +
    0.75 s segment; paths are relative, every third absolute. ``root`` is the manifests' folder.
    """
    rng = np.random.default_rng(seed)
    tree = FixtureTree(Path(root))
    kinds = [
        (16000, 1, "wav", None), (8000, 2, "wav", None), (22050, 1, "flac", None),
        (16000, 1, "wav", (0.5, 0.75)),
    ]
    for split in ("train", "val", "test"):
        rows, clips = [], []
        for i in range(clips_per_split):
            rate, channels, ext, segment = kinds[i % len(kinds)]
            file_seconds = 2.0 if segment else float(rng.uniform(0.3, 0.8))
            rel = f"audio/{split}/{i:03d}.{ext}"
            path = write_audio(
                tree.root / rel, int(file_seconds * rate), rate, seed=int(rng.integers(2**31)),
                channels=channels,
            )
            target = (
                labels[i % len(labels)]
                if task == "classification"
                else " ".join(rng.choice(_TEDLIUM_WORDS, size=3))
            )
            row = {
                "path": str(path) if i % 3 == 2 else rel,
                ("label" if task == "classification" else "text"): target,
            }
            if segment:
                row.update(offset=segment[0], duration=segment[1])
            rows.append(row)
            start = int(segment[0] * rate) if segment else 0
            frames = int(segment[1] * rate) if segment else int(file_seconds * rate)
            item_id = row["path"] + (f"@{segment[0]:g}" if segment else "")
            clips.append(FixtureClip(item_id, path, target, frames, rate, start=start))
        tree.splits[split] = clips
        _write_manifest(tree.root / f"{split}.{format}", rows, format)
    return tree


def _write_manifest(path: Path, rows: list[dict], format: str) -> None:
    path = _new_file(path)
    if format == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return
    columns = sorted({k for r in rows for k in r}, key=["path", "label", "text", "offset", "duration"].index)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, delimiter="\t" if format == "tsv" else ",")
        writer.writeheader()
        writer.writerows(rows)
