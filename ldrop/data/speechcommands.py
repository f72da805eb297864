"""Speech Commands v0.02 (one-second spoken words, 16 kHz WAV) for keyword spotting."""

from __future__ import annotations

import logging
import os
from typing import Literal

import numpy as np

from ldrop.data.audio import AudioReadError, audio_info
from ldrop.data.base import AudioDataModule, Split, layout_error
from ldrop.data.datasets import AudioItem

__all__ = [
    "BACKGROUND_NOISE_DIR", "KEYWORDS_12", "SILENCE", "SPEECH_COMMANDS_WORDS", "SpeechCommandsDataModule",
    "UNKNOWN",
]

SPEECH_COMMANDS_WORDS: tuple[str, ...] = (
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "zero", "one", "two", "three",
    "four", "five", "six", "seven", "eight", "nine", "bed", "bird", "cat", "dog", "happy", "house", "marvin",
    "sheila", "tree", "wow", "backward", "forward", "follow", "learn", "visual",
)  # fmt: skip
KEYWORDS_12: tuple[str, ...] = SPEECH_COMMANDS_WORDS[:10]
UNKNOWN = "_unknown_"
SILENCE = "_silence_"
BACKGROUND_NOISE_DIR = "_background_noise_"

SPEECH_COMMANDS_LAYOUT = """\
<root>/<word>/<speaker>_nohash_<n>.wav   (35 word folders: yes, no, up, ..., visual)
<root>/_background_noise_/*.wav          (needed for the 12-class task's _silence_ class)
<root>/validation_list.txt, <root>/testing_list.txt   (one '<word>/<file>.wav' per line)
(<root> is the extracted speech_commands_v0.02 archive)"""

TEST_SET_LAYOUT = """\
<test_root>/<class>/*.wav   (the 12 folders yes, no, up, down, left, right, on, off, stop, go, _unknown_,
_silence_ of the separate speech_commands_test_set_v0.02 archive)"""

log = logging.getLogger("ldrop.data")

_SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "predict": 2}
_LIST_FILES = ("validation_list.txt", "testing_list.txt")  # the clips of the val and test splits


class SpeechCommandsDataModule(AudioDataModule):
    """Speech Commands v0.02 keyword spotting, as the 35-word task or the 12-class task.

    35 classes: every word folder (:data:`SPEECH_COMMANDS_WORDS` order), splits from ``validation_list.txt``
    and ``testing_list.txt``. 12 classes (SUPERB KS): 10 keywords, ``_unknown_`` (the other 25 words) and
    ``_silence_``: random 1 s crops of ``_background_noise_`` drawn from ``(seed, split)``, each split from its own
    part of every noise file (train the first 80%, validation the next 10%, test the last 10%). Ids are paths
    relative to the root, ``_silence_/<noise file>@<first frame>`` for crops.

    Args:
        root: the extracted ``speech_commands_v0.02`` folder.
        num_classes: 35 (all words) or 12 (10 keywords, ``_unknown_``, ``_silence_``).
        silence_fraction: 12-class task: number of ``_silence_`` crops per split, as a fraction of the split's
            word clips.
        test_root: 12-class task: the extracted ``speech_commands_test_set_v0.02`` folder to test on instead
            of ``testing_list.txt``.
        **kwargs: the common arguments of :class:`~ldrop.data.base.AudioDataModule` (``batch_size``,
            ``max_batch_seconds``, ``max_train_seconds``, ``skip_bad_files``, ``seed``, ...); ``seed`` also
            draws the silence crops.
    """

    task = "classification"

    def __init__(
        self, root: str, num_classes: Literal[12, 35] = 35, silence_fraction: float = 0.1,
        test_root: str | None = None, **kwargs,
    ) -> None:
        super().__init__(root=root, **kwargs)
        if num_classes not in (12, 35):
            raise ValueError(f"num_classes must be 12 or 35, got {num_classes!r}")
        if silence_fraction < 0:
            raise ValueError(f"silence_fraction must be >= 0, got {silence_fraction}")
        if test_root is not None and num_classes != 12:
            raise ValueError("test_root (the official 12-class test archive) needs num_classes=12")
        self.variant = num_classes
        self.silence_fraction = silence_fraction
        self.test_root = os.path.expanduser(test_root) if test_root is not None else None
        self.class_names: list[str] = (
            list(SPEECH_COMMANDS_WORDS) if num_classes == 35 else [*KEYWORDS_12, UNKNOWN, SILENCE]
        )

    def class_of_word(self, word: str, path: str) -> int:
        """Class id of a clip in folder ``word``; a folder that is no Speech Commands word is an error."""
        if word in SPEECH_COMMANDS_WORDS:  # 12 classes: a word other than the 10 keywords is _unknown_
            return self.class_names.index(word if word in self.class_names else UNKNOWN)
        raise ValueError(
            f"label {word!r} of {path} is not a Speech Commands v0.02 word (class list: {self.class_names})"
        )

    def list_items(self, split: Split) -> list[AudioItem]:
        root = self._checked_root()
        if split in ("test", "predict") and self.test_root is not None:
            return self._official_test_items()
        val, test = (_read_list(os.path.join(root, name)) for name in _LIST_FILES)
        if split == "train":
            relpaths = [p for p in _word_clips(root) if p not in val and p not in test]
        else:
            relpaths = sorted(val if split == "val" else test)
        items = []
        for rel in relpaths:
            word = rel.split("/", 1)[0]
            path = os.path.join(root, *rel.split("/"))
            items.append(AudioItem(id=rel, path=path, target=self.class_of_word(word, path)))
        if self.variant == 12 and self.silence_fraction > 0:
            items += self._silence_items(root, split, round(self.silence_fraction * len(items)))
        return items

    def _checked_root(self) -> str:
        assert self.root is not None
        for name in _LIST_FILES:
            path = os.path.join(self.root, name)
            if not os.path.isfile(path):
                raise layout_error(f"Speech Commands list file {name}", path, SPEECH_COMMANDS_LAYOUT)
        return self.root

    def _silence_items(self, root: str, split: Split, count: int) -> list[AudioItem]:
        noise_dir = os.path.join(root, BACKGROUND_NOISE_DIR)
        if not os.path.isdir(noise_dir):
            raise layout_error("background-noise folder (for _silence_)", noise_dir, SPEECH_COMMANDS_LAYOUT)
        label = self.class_names.index(SILENCE)
        sources, bad = [], []
        for name in sorted(os.listdir(noise_dir)):
            if not name.lower().endswith(".wav"):
                continue
            path = os.path.join(noise_dir, name)
            try:
                info = audio_info(path)
            except AudioReadError as err:
                if not self.skip_bad_files:
                    raise
                # counted and logged with the split's other bad items
                bad.append(AudioItem(id=f"{SILENCE}/{name}", path=path, target=label,
                                     problem=f"no _silence_ crops from it: {err.reason}"))
                continue
            region = _split_region(info.frames, info.sample_rate, split)
            if region is not None:
                sources.append((name, *region, info.sample_rate))
        if not sources and bad:
            raise AudioReadError(bad[0].path, f"{bad[0].problem} (and every other background-noise WAV in "
                                 f"{noise_dir} is bad or under 3 s: no _silence_ crops for split '{split}')")
        if not sources:
            raise layout_error(
                "a background-noise WAV of at least 3 s (each split crops its own part)", noise_dir,
                SPEECH_COMMANDS_LAYOUT,
            )
        rng = np.random.default_rng([self.seed, _SPLIT_CODES[split]])
        items = []
        for _ in range(count):
            name, first, end, rate = sources[int(rng.integers(len(sources)))]
            start = first + int(rng.integers(end - first - rate + 1))
            items.append(
                AudioItem(
                    id=f"{SILENCE}/{name}@{start}", path=os.path.join(noise_dir, name), target=label,
                    start=start, stop=start + rate,
                )
            )
        return items + bad

    def _official_test_items(self) -> list[AudioItem]:
        assert self.test_root is not None
        if not os.path.isdir(self.test_root):
            raise layout_error("Speech Commands test-set root", self.test_root, TEST_SET_LAYOUT)
        items = []
        for folder in sorted(os.listdir(self.test_root)):
            folder_path = os.path.join(self.test_root, folder)
            if not os.path.isdir(folder_path) or folder.startswith("."):
                continue
            if folder not in self.class_names:
                raise ValueError(
                    f"label {folder!r} of {folder_path} is not one of the 12 classes {self.class_names}"
                )
            label = self.class_names.index(folder)
            items += [
                AudioItem(id=f"{folder}/{name}", path=os.path.join(folder_path, name), target=label)
                for name in sorted(os.listdir(folder_path))
                if name.lower().endswith(".wav")
            ]
        if not items:
            raise layout_error("test-set WAV files", self.test_root, TEST_SET_LAYOUT)
        return items


def _split_region(frames: int, rate: int, split: Split) -> tuple[int, int] | None:
    """The frames ``[first, end)`` of a background-noise file that ``split`` crops ``_silence_`` from.

    Train, validation and test crop disjoint parts (the first 80%, the next 10%, the last 10%, each at least
    1 s), so no test crop repeats audio seen in training. ``None`` for a file under 3 s.
    """
    held = max(rate, frames // 10)
    if frames - 2 * held < rate:
        return None
    val, test = frames - 2 * held, frames - held
    return {"train": (0, val), "val": (val, test)}.get(split, (test, frames))


def _read_list(path: str) -> set[str]:
    """The clips a list file names: one ``<word>/<file>.wav`` relative to the root per line."""
    entries = set()
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            entry = line.strip().replace("\\", "/")
            if not entry:
                continue
            word, _, name = entry.partition("/")
            if not word or not name or "/" in name or ":" in word:  # absolute, drive letter or deeper
                raise ValueError(
                    f"{path}:{line_no}: {entry!r} is not a path '<word>/<file>.wav' relative to the root "
                    f"(like 'right/a69b9b3e_nohash_0.wav')"
                )
            entries.add(entry)
    return entries


def _word_clips(root: str) -> list[str]:
    """``<word>/<file>.wav`` of every clip in a word folder (folders starting with ``_`` or ``.`` skipped)."""
    clips = []
    for word in sorted(os.listdir(root)):
        word_dir = os.path.join(root, word)
        if word.startswith(("_", ".")) or not os.path.isdir(word_dir):
            continue
        clips += [f"{word}/{name}" for name in sorted(os.listdir(word_dir)) if name.lower().endswith(".wav")]
    return clips
