"""Generated data: tone-pattern classification and tone-letter CTC sets that need no files.

Each item is a pure function of ``(seed, split, index)``: any worker, process or machine regenerates the
same waveform, and the length of every item is known without rendering it. Difficulty varies per item
through the signal-to-noise ratio (white noise added at an SNR drawn from ``snr_db_range``) and the
length. The sets are small and cheap (well under a millisecond per item) so that a tiny randomly
initialised wav2vec2-style model learns them in minutes on a CPU: the quickstart and the model tests
train on them. The mixed set (:class:`SyntheticMixedClassificationDataset`) is the harder one of the
methods benchmark: its class is carried by a different cue in each of three input families.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ldrop.data.base import AudioDataModule, Split
from ldrop.data.batch import AudioExample
from ldrop.data.datasets import AudioDataset

__all__ = [
    "SyntheticCTCDataModule",
    "SyntheticCTCDataset",
    "SyntheticClassificationDataModule",
    "SyntheticClassificationDataset",
    "SyntheticMixedClassificationDataModule",
    "SyntheticMixedClassificationDataset",
]

_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_TONE_BAND_HZ = (300.0, 3000.0)  # classes and letters are tones log-spaced in this band
_AM_RATES_HZ = (0.0, 3.0, 6.0)  # class c is amplitude-modulated at _AM_RATES_HZ[c % 3]
_FADE_SECONDS = 0.01


def _fade(n: int, sample_rate: int) -> np.ndarray:
    """``[n]`` envelope with raised-cosine ramps at both ends (no clicks at segment edges)."""
    ramp = min(int(_FADE_SECONDS * sample_rate), n // 2)
    env = np.ones(n)
    if ramp > 0:
        up = 0.5 - 0.5 * np.cos(np.linspace(0, math.pi, ramp))
        env[:ramp], env[n - ramp :] = up, up[::-1]
    return env


def _add_noise(signal: np.ndarray, voiced: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white noise at ``snr_db`` relative to the mean power of the voiced samples; peak-normalise."""
    power = float(np.mean(signal[voiced] ** 2)) if voiced.any() else 1e-4
    noise = rng.standard_normal(signal.shape[0]) * math.sqrt(power / 10 ** (snr_db / 10))
    mixed = signal + noise
    return (0.5 * mixed / max(float(np.abs(mixed).max()), 1e-8)).astype(np.float32)


@dataclass(frozen=True)
class _Plan:
    """What is known of an item before rendering it."""

    target: int | str
    num_samples: int
    snr_db: float
    family: int = 0  # the mixed set: an index into MIXED_FAMILIES
    segments: tuple[tuple[int, int, int], ...] = ()  # CTC: (letter index, first sample, sample count)


class _GeneratedDataset(AudioDataset):
    """Common part of the generated datasets: one seeded :class:`_Plan` per item, drawn at construction.

    A subclass sets :attr:`split` and :attr:`seed`, draws the plans (:meth:`_draw`) and renders an item in
    :meth:`load` from ``(seed, split, index)``.
    """

    id_prefix = "synthetic"
    split: Literal["train", "val", "test"]
    seed: int

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, _SPLIT_CODES[self.split], index, stream])

    def _draw(self, num_items: int) -> None:
        """Draw the plan of every item (the subclass's ``_plan``); lengths, targets, ids and SNRs follow."""
        self.plans = [self._plan(i) for i in range(num_items)]  # type: ignore[attr-defined]
        self.raw_lengths = [p.num_samples for p in self.plans]
        self.targets: list[int | str] = [p.target for p in self.plans]
        self.ids = [f"{self.id_prefix}/{self.split}/{i:06d}" for i in range(num_items)]
        #: Signal-to-noise ratio of each item in dB (lower = harder).
        self.snr_db = [p.snr_db for p in self.plans]

    def __len__(self) -> int:
        return len(self.plans)


class SyntheticClassificationDataset(_GeneratedDataset):
    """Seeded tone-pattern classification: each class is a chord with its own amplitude modulation.

    Class ``c`` is a tone at the ``c``-th of ``num_classes`` log-spaced frequencies between 300 Hz and
    3 kHz plus a quieter fifth above it (x1.5), amplitude-modulated at 0, 3 or 6 Hz (``c % 3``). Each item
    jitters the frequencies slightly, draws random phases, a duration from ``duration_range`` and an SNR
    from ``snr_db_range`` (low SNR = hard item). Targets cycle through the classes (balanced).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (independent draws).
        num_items: number of items.
        num_classes: number of classes.
        seed: items are a function of ``(seed, split, index)``.
        duration_range: ``(min, max)`` item duration in seconds.
        snr_db_range: ``(min, max)`` signal-to-noise ratio in dB.
        sample_rate: sample rate of the waveforms.
        min_samples: see :class:`~ldrop.data.datasets.AudioDataset`.
    """

    id_prefix = "synthetic-cls"
    num_families = 1

    def __init__(
        self,
        split: Literal["train", "val", "test"],
        num_items: int,
        num_classes: int = 8,
        seed: int = 0,
        duration_range: tuple[float, float] = (0.5, 1.0),
        snr_db_range: tuple[float, float] = (-5.0, 20.0),
        sample_rate: int = 16000,
        min_samples: int = 400,
    ) -> None:
        super().__init__(sample_rate=sample_rate, min_samples=min_samples)
        _check_range("duration_range", duration_range, positive=True)
        _check_range("snr_db_range", snr_db_range)
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.split, self.num_classes, self.seed = split, num_classes, seed
        self.duration_range, self.snr_db_range = duration_range, snr_db_range
        self.class_frequencies = grid = np.geomspace(*_TONE_BAND_HZ, num_classes)
        # Jitter stays well below half the spacing between neighbouring classes.
        self.jitter = min(0.03, (grid[1] / grid[0] - 1) / 4)
        self._draw(num_items)

    def _plan(self, index: int) -> _Plan:
        rng = self._rng(index, 0)
        seconds = rng.uniform(*self.duration_range)
        return _Plan(
            target=index % self.num_classes,
            num_samples=max(1, round(seconds * self.sample_rate)),
            snr_db=float(rng.uniform(*self.snr_db_range)),
            family=(index // self.num_classes) % self.num_families,
        )

    def load(self, index: int) -> AudioExample:
        plan = self.plans[index]
        rng = self._rng(index, 1)
        n, sr, c = plan.num_samples, self.sample_rate, plan.target
        t = np.arange(n) / sr
        f0 = self.class_frequencies[c] * (1 + rng.uniform(-self.jitter, self.jitter))
        phase0, phase1, phase_am = rng.uniform(0, 2 * math.pi, size=3)
        signal = np.sin(2 * math.pi * f0 * t + phase0) + 0.5 * np.sin(2 * math.pi * 1.5 * f0 * t + phase1)
        am_rate = _AM_RATES_HZ[c % len(_AM_RATES_HZ)]
        if am_rate > 0:
            signal *= 0.55 + 0.45 * np.sin(2 * math.pi * am_rate * t + phase_am)
        signal *= _fade(n, sr)
        waveform = _add_noise(signal, np.ones(n, dtype=bool), plan.snr_db, rng)
        return AudioExample(torch.from_numpy(waveform), plan.target, self.ids[index])


#: The families of the mixed set, in the order ``(index // num_classes) % 3`` cycles through them.
MIXED_FAMILIES = ("pitch", "rhythm", "order")
_PITCH_BAND_HZ = (200.0, 500.0)  # family "pitch": the class is the tone's frequency in this band
_RHYTHM_CARRIER_HZ = 1500.0  # family "rhythm": the class is the AM rate of a tone near this frequency
_RHYTHM_RATES_HZ = (3.0, 12.0)  # class c is modulated at the c-th of num_classes rates in this range
_ORDER_BAND_HZ = (3000.0, 4500.0)  # family "order": the class is the order of two tones in this band


def _ordered_pairs(count: int) -> list[tuple[int, int]]:
    """The first ``count`` ordered pairs of distinct tone indices, a pair next to its reverse.

    ``(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1), (0, 3), ...``: classes ``2j`` and ``2j + 1`` use the
    same two tones and differ only in their temporal order.
    """
    pairs: list[tuple[int, int]] = []
    high = 1
    while len(pairs) < count:
        for low in range(high):
            pairs += [(low, high), (high, low)]
        high += 1
    return pairs[:count]


class SyntheticMixedClassificationDataset(_GeneratedDataset):
    """Seeded classification where each input family carries its class by a different cue.

    Items belong to one of three families (:data:`MIXED_FAMILIES`), told apart by their frequency band;
    within a family the class is a cue of its own, so different inputs need different processing (and so,
    in a layered model, plausibly different layers):

    * ``"pitch"``: a steady tone at the class's frequency, log-spaced in 200-500 Hz (a spectral cue, in
      the CNN features already);
    * ``"rhythm"``: a tone near 1.5 kHz (same for every class), amplitude-modulated at the class's rate,
      linearly spaced in 3-12 Hz (a cue spread over many frames);
    * ``"order"``: two tones in 3-4.5 kHz, one after the other; classes ``2j`` and ``2j + 1`` use the same
      two tones in opposite order (a temporal-order cue, which needs context across the item).

    Every item draws a duration from ``duration_range``, random phases, a small frequency jitter and an
    SNR from ``snr_db_range`` (white noise; the wide default range makes many items hard). Targets cycle
    through the classes (``index % num_classes``) and families through the families
    (``(index // num_classes) % 3``), so both are balanced.

    The arguments are those of :class:`SyntheticClassificationDataset`, with ``num_classes`` in 2-12,
    ``duration_range`` from 0.3 s (two tones and a few modulation cycles must fit) and ``sample_rate`` at least
    16 kHz (the "order" band reaches 4.5 kHz).
    """

    id_prefix = "synthetic-mixed"
    num_families = len(MIXED_FAMILIES)
    _plan = SyntheticClassificationDataset._plan  # the same draws; the family cycles through three

    def __init__(
        self,
        split: Literal["train", "val", "test"],
        num_items: int,
        num_classes: int = 8,
        seed: int = 0,
        duration_range: tuple[float, float] = (0.5, 1.0),
        snr_db_range: tuple[float, float] = (-15.0, 10.0),
        sample_rate: int = 16000,
        min_samples: int = 400,
    ) -> None:
        super().__init__(sample_rate=sample_rate, min_samples=min_samples)
        _check_range("duration_range", duration_range, positive=True)
        _check_range("snr_db_range", snr_db_range)
        if not 2 <= num_classes <= 12:
            raise ValueError(f"num_classes must be in 2..12, got {num_classes}")
        if duration_range[0] < 0.3:
            raise ValueError(f"duration_range must start at 0.3 s or more, got {duration_range}")
        if sample_rate < 16000:
            raise ValueError(f"sample_rate must be at least 16000 (tones reach 4.5 kHz), got {sample_rate}")
        self.split, self.num_classes, self.seed = split, num_classes, seed
        self.duration_range, self.snr_db_range = duration_range, snr_db_range
        self.pitch_frequencies = np.geomspace(*_PITCH_BAND_HZ, num_classes)
        self.rhythm_rates = np.linspace(*_RHYTHM_RATES_HZ, num_classes)
        self.order_pairs = _ordered_pairs(num_classes)
        self.order_frequencies = np.geomspace(*_ORDER_BAND_HZ, max(max(p) for p in self.order_pairs) + 1)
        self._draw(num_items)

    @property
    def families(self) -> list[str]:
        """The family of each item (one of :data:`MIXED_FAMILIES`)."""
        return [MIXED_FAMILIES[p.family] for p in self.plans]

    def load(self, index: int) -> AudioExample:
        plan = self.plans[index]
        rng = self._rng(index, 1)
        n, sr, c = plan.num_samples, self.sample_rate, plan.target
        t = np.arange(n) / sr
        jitter = 1 + rng.uniform(-0.02, 0.02, size=2)
        phases = rng.uniform(0, 2 * math.pi, size=3)
        family = MIXED_FAMILIES[plan.family]
        if family == "pitch":
            signal = np.sin(2 * math.pi * self.pitch_frequencies[c] * jitter[0] * t + phases[0])
        elif family == "rhythm":
            carrier = np.sin(2 * math.pi * _RHYTHM_CARRIER_HZ * jitter[0] * t + phases[0])
            signal = carrier * (0.5 + 0.5 * np.sin(2 * math.pi * self.rhythm_rates[c] * t + phases[1]))
        else:  # order: the first tone, a short gap, the second tone
            half, gap = n // 2, min(n // 10, round(0.03 * sr))
            signal = np.zeros(n)
            for (first, length), tone, j in zip(((0, half - gap), (half + gap, n - half - gap)),
                                                self.order_pairs[c], range(2), strict=True):
                segment = np.arange(length) / sr
                wave = np.sin(2 * math.pi * self.order_frequencies[tone] * jitter[j] * segment + phases[j])
                signal[first : first + length] = wave * _fade(length, sr)
        signal *= _fade(n, sr)
        waveform = _add_noise(signal, np.abs(signal) > 0, plan.snr_db, rng)
        return AudioExample(torch.from_numpy(waveform), plan.target, self.ids[index])


class SyntheticCTCDataset(_GeneratedDataset):
    """Seeded tone-letter transcription: each letter is a short tone of its own frequency.

    An item spells ``num_letters_range`` letters drawn from ``letters``; letter ``k`` is a tone at the
    ``k``-th of ``len(letters)`` log-spaced frequencies between 300 Hz and 3 kHz lasting
    ``letter_seconds_range`` seconds. Letters are separated by 20-50 ms pauses; a word break (a space in
    the transcript, inserted between two letters with probability ``space_prob``) is a 150-250 ms pause.
    50-150 ms of leading and trailing pause frame the item, and white noise at an SNR drawn from
    ``snr_db_range`` covers it all. Targets are the letter strings (``"ab cd"``).

    Args:
        letters: the letters (single characters, no space).
        num_letters_range: ``(min, max)`` letters per item, inclusive.
        letter_seconds_range: ``(min, max)`` duration of one letter in seconds.
        space_prob: probability of a word break between two letters.
        split, num_items, seed, snr_db_range, sample_rate, min_samples: as for
            :class:`SyntheticClassificationDataset`.
    """

    id_prefix = "synthetic-ctc"

    def __init__(
        self,
        split: Literal["train", "val", "test"],
        num_items: int,
        letters: str = "abcdefgh",
        seed: int = 0,
        num_letters_range: tuple[int, int] = (2, 5),
        letter_seconds_range: tuple[float, float] = (0.10, 0.15),
        space_prob: float = 0.2,
        snr_db_range: tuple[float, float] = (0.0, 20.0),
        sample_rate: int = 16000,
        min_samples: int = 400,
    ) -> None:
        super().__init__(sample_rate=sample_rate, min_samples=min_samples)
        if len(letters) < 2 or len(set(letters)) != len(letters) or " " in letters:
            raise ValueError(f"letters must be at least 2 distinct characters without space, got {letters!r}")
        _check_range("num_letters_range", num_letters_range, positive=True)
        _check_range("letter_seconds_range", letter_seconds_range, positive=True)
        _check_range("snr_db_range", snr_db_range)
        if not 0 <= space_prob <= 1:
            raise ValueError(f"space_prob must be in [0, 1], got {space_prob}")
        self.split, self.letters, self.seed = split, letters, seed
        self.num_letters_range, self.letter_seconds_range = num_letters_range, letter_seconds_range
        self.space_prob, self.snr_db_range = space_prob, snr_db_range
        self.letter_frequencies = np.geomspace(*_TONE_BAND_HZ, len(letters))
        self._draw(num_items)

    def _plan(self, index: int) -> _Plan:
        rng, sr = self._rng(index, 0), self.sample_rate
        count = int(rng.integers(self.num_letters_range[0], self.num_letters_range[1] + 1))
        letter_ids = rng.integers(len(self.letters), size=count)
        position = round(rng.uniform(0.05, 0.15) * sr)
        text, segments = [], []
        for k, letter in enumerate(letter_ids):
            if k > 0:
                word_break = rng.random() < self.space_prob
                position += round(rng.uniform(*((0.15, 0.25) if word_break else (0.02, 0.05))) * sr)
                if word_break:
                    text.append(" ")
            length = round(rng.uniform(*self.letter_seconds_range) * sr)
            segments.append((int(letter), position, length))
            text.append(self.letters[int(letter)])
            position += length
        position += round(rng.uniform(0.05, 0.15) * sr)
        return _Plan("".join(text), position, float(rng.uniform(*self.snr_db_range)), segments=tuple(segments))

    @property
    def alphabet(self) -> str:
        """Every character a transcript can hold: the letters, plus space when ``space_prob > 0``."""
        return self.letters + (" " if self.space_prob > 0 else "")

    def load(self, index: int) -> AudioExample:
        plan = self.plans[index]
        rng, sr = self._rng(index, 1), self.sample_rate
        signal = np.zeros(plan.num_samples)
        voiced = np.zeros(plan.num_samples, dtype=bool)
        for letter, first, length in plan.segments:
            t = np.arange(length) / sr
            tone = np.sin(2 * math.pi * self.letter_frequencies[letter] * t + rng.uniform(0, 2 * math.pi))
            signal[first : first + length] = tone * _fade(length, sr)
            voiced[first : first + length] = True
        waveform = _add_noise(signal, voiced, plan.snr_db, rng)
        return AudioExample(torch.from_numpy(waveform), plan.target, self.ids[index])


def _check_range(name: str, bounds: Sequence[float], positive: bool = False) -> None:
    if len(bounds) != 2 or bounds[0] > bounds[1] or (positive and bounds[0] <= 0):
        raise ValueError(
            f"{name} must be (min, max) with min <= max{' and min > 0' if positive else ''}, got {bounds}"
        )


class _SyntheticDataModule(AudioDataModule):
    """Common part of the generated-data modules: splits of fixed sizes, predict = test; a split is a
    :attr:`dataset_class` built with :attr:`dataset_kwargs` (``*_range`` values as tuples), checked at
    construction. Classification modules name their classes ``class_<c>``; ``skip_bad_files`` applies to the
    files of :meth:`predict_on_files`."""

    dataset_class: type[_GeneratedDataset]

    def __init__(
        self, num_train: int, num_val: int, num_test: int, dataset_kwargs: dict[str, Any], **kwargs
    ) -> None:
        super().__init__(root=None, **kwargs)
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        for split, size in self.sizes.items():
            if size < 1:
                raise ValueError(f"num_{split} must be at least 1, got {size}")
        self.dataset_kwargs = {k: tuple(v) if k.endswith("_range") else v for k, v in dataset_kwargs.items()}
        self.make_dataset("train", 0)  # check the arguments now rather than at setup
        if self.task == "classification":
            self.class_names: list[str] = [f"class_{c}" for c in range(dataset_kwargs["num_classes"])]

    def make_dataset(self, split: Literal["train", "val", "test"], num_items: int) -> AudioDataset:
        return self.dataset_class(  # type: ignore[call-arg]
            split, num_items, seed=self.seed, sample_rate=self.sample_rate, min_samples=self.min_samples,
            **self.dataset_kwargs,
        )

    def build_dataset(self, split: Split) -> AudioDataset:
        name = "test" if split == "predict" else split
        return self.make_dataset(name, self.sizes[name])  # type: ignore[arg-type]

    def targets(self, split: Split = "train") -> list[int | str]:
        return self.dataset(split).targets


class SyntheticClassificationDataModule(_SyntheticDataModule):
    """Generated tone-pattern classification (:class:`SyntheticClassificationDataset`), no files needed.

    Args:
        num_classes: number of classes.
        num_train: training items.
        num_val: validation items.
        num_test: test items (the predict split is the test split).
        duration_range: ``(min, max)`` item duration in seconds.
        snr_db_range: ``(min, max)`` signal-to-noise ratio in dB; items at the low end are the hard ones.
        **kwargs: the common arguments of :class:`~ldrop.data.base.AudioDataModule` (``batch_size``,
            ``max_batch_seconds``, ``max_train_seconds``, ``seed``, ...); ``seed`` also seeds the items.
    """

    task = "classification"
    dataset_class = SyntheticClassificationDataset

    def __init__(
        self,
        num_classes: int = 8,
        num_train: int = 512,
        num_val: int = 128,
        num_test: int = 128,
        duration_range: tuple[float, float] = (0.5, 1.0),
        snr_db_range: tuple[float, float] = (-5.0, 20.0),
        **kwargs,
    ) -> None:
        super().__init__(
            num_train, num_val, num_test,
            dict(num_classes=num_classes, duration_range=duration_range, snr_db_range=snr_db_range), **kwargs,
        )


class SyntheticMixedClassificationDataModule(_SyntheticDataModule):
    """Generated mixed-cue classification (:class:`SyntheticMixedClassificationDataset`), no files needed.

    Harder than :class:`SyntheticClassificationDataModule`: three input families carry the class by
    different cues (pitch, modulation rate, tone order) over a wide SNR range (-15 to 10 dB). The default data of
    ``python -m ldrop.bench methods``.

    Args:
        num_classes: number of classes (2-12).
        num_train: training items.
        num_val: validation items.
        num_test: test items (the predict split is the test split).
        duration_range: ``(min, max)`` item duration in seconds (min at least 0.3).
        snr_db_range: ``(min, max)`` signal-to-noise ratio in dB; items at the low end are the hard ones.
        **kwargs: the common arguments of :class:`~ldrop.data.base.AudioDataModule` (``batch_size``,
            ``max_batch_seconds``, ``max_train_seconds``, ``seed``, ...); ``seed`` also seeds the items.
    """

    task = "classification"
    dataset_class = SyntheticMixedClassificationDataset

    def __init__(
        self,
        num_classes: int = 8,
        num_train: int = 1536,
        num_val: int = 256,
        num_test: int = 256,
        duration_range: tuple[float, float] = (0.5, 1.0),
        snr_db_range: tuple[float, float] = (-15.0, 10.0),
        **kwargs,
    ) -> None:
        super().__init__(
            num_train, num_val, num_test,
            dict(num_classes=num_classes, duration_range=duration_range, snr_db_range=snr_db_range), **kwargs,
        )


class SyntheticCTCDataModule(_SyntheticDataModule):
    """Generated tone-letter transcription (:class:`SyntheticCTCDataset`), no files needed.

    :attr:`alphabet` lists every character of the transcripts (letters, then space), and
    :meth:`transcripts` returns a split's transcripts, before or after setup.

    Args:
        letters: the letters (single characters, no space).
        num_train: training items.
        num_val: validation items.
        num_test: test items (the predict split is the test split).
        num_letters_range: ``(min, max)`` letters per item, inclusive.
        letter_seconds_range: ``(min, max)`` duration of one letter in seconds.
        space_prob: probability of a word break between two letters.
        snr_db_range: ``(min, max)`` signal-to-noise ratio in dB; items at the low end are the hard ones.
        **kwargs: the common arguments of :class:`~ldrop.data.base.AudioDataModule` (``batch_size``,
            ``max_batch_seconds``, ``max_train_seconds``, ``seed``, ...); ``seed`` also seeds the items.
    """

    task = "ctc"
    dataset_class = SyntheticCTCDataset

    def __init__(
        self,
        letters: str = "abcdefgh",
        num_train: int = 512,
        num_val: int = 128,
        num_test: int = 128,
        num_letters_range: tuple[int, int] = (2, 5),
        letter_seconds_range: tuple[float, float] = (0.10, 0.15),
        space_prob: float = 0.2,
        snr_db_range: tuple[float, float] = (0.0, 20.0),
        **kwargs,
    ) -> None:
        super().__init__(
            num_train, num_val, num_test,
            dict(
                letters=letters, num_letters_range=num_letters_range, letter_seconds_range=letter_seconds_range,
                space_prob=space_prob, snr_db_range=snr_db_range,
            ),
            **kwargs,
        )
        self.letters = letters
        self.space_prob = space_prob

    alphabet = SyntheticCTCDataset.alphabet  # the letters, plus space when space_prob > 0
