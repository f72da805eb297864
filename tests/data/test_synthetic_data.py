"""Generated data: seeded, reproducible per item, varied in difficulty, and actually learnable."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from ldrop.data import (
    SyntheticClassificationDataModule,
    SyntheticClassificationDataset,
    SyntheticCTCDataModule,
    SyntheticCTCDataset,
    SyntheticMixedClassificationDataModule,
    SyntheticMixedClassificationDataset,
)
from ldrop.data.synthetic import MIXED_FAMILIES


def spectrum_peak_hz(waveform: torch.Tensor, sample_rate: int = 16000) -> float:
    magnitude = np.abs(np.fft.rfft(waveform.numpy()))
    return float(np.fft.rfftfreq(waveform.shape[0], 1 / sample_rate)[magnitude.argmax()])


@pytest.mark.parametrize("cls", [SyntheticClassificationDataset, SyntheticCTCDataset])
def test_an_item_is_a_function_of_seed_split_and_index(cls):
    a, b = cls("train", 20, seed=7), cls("train", 50, seed=7)
    for index in (0, 13, 19):
        torch.testing.assert_close(a[index].waveform, b[index].waveform)
        assert a[index].target == b[index].target


@pytest.mark.parametrize("cls", [SyntheticClassificationDataset, SyntheticCTCDataset])
def test_another_seed_gives_other_items(cls):
    a, b = cls("train", 4, seed=0), cls("train", 4, seed=1)
    assert a.raw_lengths != b.raw_lengths


@pytest.mark.parametrize("cls", [SyntheticClassificationDataset, SyntheticCTCDataset])
def test_splits_are_independent_draws(cls):
    assert cls("train", 8).raw_lengths != cls("val", 8).raw_lengths


@pytest.mark.parametrize("cls", [SyntheticClassificationDataset, SyntheticCTCDataset])
def test_lengths_are_known_before_rendering_and_match_it(cls):
    dataset = cls("val", 16)
    assert [dataset[i].waveform.shape[0] for i in range(16)] == dataset.lengths


@pytest.mark.parametrize("cls", [SyntheticClassificationDataset, SyntheticCTCDataset])
def test_snr_is_drawn_per_item_from_the_range(cls):
    snrs = cls("train", 64, snr_db_range=(-3.0, 12.0)).snr_db
    assert all(-3.0 <= s <= 12.0 for s in snrs)
    assert max(snrs) - min(snrs) > 10.0


@pytest.mark.parametrize(
    "cls", [SyntheticClassificationDataset, SyntheticCTCDataset, SyntheticMixedClassificationDataset]
)
def test_generation_is_cheap(cls):
    dataset = cls("train", 200)
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    assert (time.perf_counter() - start) / len(dataset) < 0.005  # seconds per item, generous for slow CI


def test_classification_durations_follow_duration_range():
    dataset = SyntheticClassificationDataset("train", 64, duration_range=(0.4, 0.6))
    assert all(0.4 * 16000 - 1 <= n <= 0.6 * 16000 + 1 for n in dataset.lengths)


def test_classification_classes_are_balanced():
    targets = SyntheticClassificationDataset("train", 80, num_classes=8).targets
    assert [targets.count(c) for c in range(8)] == [10] * 8


def test_a_clean_item_peaks_at_its_class_tone():
    dataset = SyntheticClassificationDataset("train", 16, num_classes=8, snr_db_range=(40.0, 40.0))
    for index in range(16):
        example = dataset[index]
        expected = dataset.class_frequencies[example.target]
        assert abs(spectrum_peak_hz(example.waveform) - expected) < 0.05 * expected


def test_lower_snr_means_more_noise():
    clean = SyntheticClassificationDataset("train", 8, snr_db_range=(30.0, 30.0))
    noisy = SyntheticClassificationDataset("train", 8, snr_db_range=(-5.0, -5.0))

    def tone_share(example, dataset):
        spectrum = np.abs(np.fft.rfft(example.waveform.numpy())) ** 2
        freqs = np.fft.rfftfreq(example.waveform.shape[0], 1 / 16000)
        f0 = dataset.class_frequencies[example.target]
        near = (np.abs(freqs - f0) < 0.1 * f0) | (np.abs(freqs - 1.5 * f0) < 0.1 * f0)
        return spectrum[near].sum() / spectrum.sum()

    assert all(tone_share(clean[i], clean) > tone_share(noisy[i], noisy) for i in range(8))


def test_classification_is_learnable_and_harder_at_low_snr():
    """Nearest class centroid of frame-averaged log band energies (25 ms frames, what a small CNN sees)."""
    train = SyntheticClassificationDataset("train", 192, num_classes=8, snr_db_range=(-30.0, 10.0))
    test = SyntheticClassificationDataset("test", 192, num_classes=8, snr_db_range=(-30.0, 10.0))

    def features(dataset):
        rows = []
        for i in range(len(dataset)):
            frames = np.lib.stride_tricks.sliding_window_view(dataset[i].waveform.numpy(), 400)[::320]
            power = np.abs(np.fft.rfft(frames * np.hanning(400), axis=1)) ** 2  # [frames, 201]
            bands = np.stack([b.sum(1) for b in np.array_split(power[:, 4:100], 24, axis=1)], axis=1)
            rows.append(np.log(bands + 1e-6).mean(0))
        x = np.array(rows)
        return (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)

    x_train, x_test = features(train), features(test)
    y_train, y_test = np.array(train.targets), np.array(test.targets)
    centroids = np.stack([x_train[y_train == c].mean(0) for c in range(8)])
    correct = np.argmin(((x_test[:, None] - centroids[None]) ** 2).sum(-1), axis=1) == y_test
    snr = np.array(test.snr_db)
    assert correct.mean() > 0.6  # chance is 0.125
    assert correct[snr < -22].mean() < correct[snr > -10].mean() - 0.3


def test_ctc_transcripts_use_the_letters_and_letter_count_range():
    dataset = SyntheticCTCDataset("train", 100, letters="abcd", num_letters_range=(2, 4), space_prob=0.3)
    for transcript in dataset.targets:
        letters = transcript.replace(" ", "")
        assert set(letters) <= set("abcd") and 2 <= len(letters) <= 4
        assert transcript == transcript.strip() and "  " not in transcript
    assert any(" " in t for t in dataset.targets)


def test_ctc_each_letter_is_a_tone_at_its_letter_frequency():
    dataset = SyntheticCTCDataset("train", 4, snr_db_range=(40.0, 40.0), space_prob=0.0)
    for index in range(4):
        example = dataset[index]
        plan = dataset.plans[index]
        for (letter, first, length), char in zip(plan.segments, example.target, strict=True):
            assert dataset.letters[letter] == char
            expected = dataset.letter_frequencies[letter]
            peak = spectrum_peak_hz(example.waveform[first : first + length])
            assert abs(peak - expected) < 0.1 * expected


def test_classification_module_exposes_classes_right_after_init():
    dm = SyntheticClassificationDataModule(num_classes=5)
    assert dm.task == "classification" and dm.num_classes == 5 and len(dm.class_names) == 5


def test_ctc_module_exposes_alphabet_and_transcripts_before_setup():
    dm = SyntheticCTCDataModule(letters="xyz", num_train=30, space_prob=0.5)
    assert dm.task == "ctc" and dm.alphabet == "xyz "
    assert set("".join(dm.transcripts("train"))) <= set(dm.alphabet)


def test_module_split_sizes_follow_the_arguments():
    dm = SyntheticCTCDataModule(num_train=12, num_val=5, num_test=3)
    dm.setup()
    assert [len(dm.dataset(s)) for s in ("train", "val", "test", "predict")] == [12, 5, 3, 3]


def test_module_rejects_an_inverted_range():
    with pytest.raises(ValueError, match="snr_db_range"):
        SyntheticClassificationDataModule(snr_db_range=(10.0, 0.0))


# ---------------------------------------------------------------------------------------------- mixed set
def band_energy_share(waveform: torch.Tensor, low: float, high: float, sample_rate: int = 16000) -> float:
    power = np.abs(np.fft.rfft(waveform.numpy())) ** 2
    freqs = np.fft.rfftfreq(waveform.shape[0], 1 / sample_rate)
    return float(power[(freqs >= low) & (freqs <= high)].sum() / power.sum())


def clean_mixed(num_items: int = 36, **kwargs) -> SyntheticMixedClassificationDataset:
    return SyntheticMixedClassificationDataset("train", num_items, snr_db_range=(40.0, 40.0), **kwargs)


def test_mixed_items_are_a_function_of_seed_split_and_index():
    a, b = SyntheticMixedClassificationDataset("val", 20, seed=3), SyntheticMixedClassificationDataset("val", 40, seed=3)
    for index in (0, 7, 19):
        torch.testing.assert_close(a[index].waveform, b[index].waveform)
        assert a[index].target == b[index].target
    assert SyntheticMixedClassificationDataset("val", 8, seed=4).raw_lengths != a.raw_lengths[:8]
    assert SyntheticMixedClassificationDataset("test", 8, seed=3).raw_lengths != a.raw_lengths[:8]
    assert [a[i].waveform.shape[0] for i in range(20)] == a.lengths


def test_mixed_classes_and_families_are_balanced():
    dataset = SyntheticMixedClassificationDataset("train", 180, num_classes=6)
    assert [dataset.targets.count(c) for c in range(6)] == [30] * 6
    assert [dataset.families.count(f) for f in MIXED_FAMILIES] == [60] * 3
    pairs = list(zip(dataset.families, dataset.targets, strict=True))
    assert {pairs.count(p) for p in set(pairs)} == {10}  # every (family, class) equally often


def test_mixed_families_live_in_their_own_bands():
    dataset = clean_mixed()
    bands = {"pitch": (150.0, 800.0), "rhythm": (1300.0, 1700.0), "order": (2800.0, 6500.0)}
    for index in range(len(dataset)):
        low, high = bands[dataset.families[index]]
        assert band_energy_share(dataset[index].waveform, low, high) > 0.9


def test_mixed_pitch_items_peak_at_their_class_frequency():
    dataset = clean_mixed()
    for index in (i for i, f in enumerate(dataset.families) if f == "pitch"):
        expected = dataset.pitch_frequencies[dataset.targets[index]]
        assert abs(spectrum_peak_hz(dataset[index].waveform) - expected) < 0.05 * expected


def test_mixed_rhythm_items_share_a_carrier_and_differ_in_modulation_rate():
    dataset = clean_mixed()
    for index in (i for i, f in enumerate(dataset.families) if f == "rhythm"):
        waveform = dataset[index].waveform.numpy()
        assert abs(spectrum_peak_hz(dataset[index].waveform) - 1500.0) < 60.0  # the same carrier for all
        frames = waveform[: len(waveform) // 160 * 160].reshape(-1, 160)  # 10 ms envelope
        envelope = np.abs(frames).max(axis=1)
        envelope = envelope[5:-5] - envelope[5:-5].mean()  # away from the fades
        spectrum = np.abs(np.fft.rfft(envelope, n=1024))
        rate = np.fft.rfftfreq(1024, 0.01)[1:][spectrum[1:].argmax()]
        expected = dataset.rhythm_rates[dataset.targets[index]]
        assert abs(rate - expected) < 1.5


def test_mixed_order_classes_use_the_same_tones_in_opposite_order():
    dataset = clean_mixed()
    assert dataset.order_pairs[:4] == [(0, 1), (1, 0), (0, 2), (2, 0)]
    for index in (i for i, f in enumerate(dataset.families) if f == "order"):
        waveform = dataset[index].waveform
        half = waveform.shape[0] // 2
        first, second = dataset.order_pairs[dataset.targets[index]]
        for part, tone in ((waveform[:half], first), (waveform[half:], second)):
            expected = dataset.order_frequencies[tone]
            assert abs(spectrum_peak_hz(part) - expected) < 0.05 * expected


def test_mixed_set_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticMixedClassificationDataset("train", 4, num_classes=13)
    with pytest.raises(ValueError, match="duration_range"):
        SyntheticMixedClassificationDataset("train", 4, duration_range=(0.1, 0.5))
    with pytest.raises(ValueError, match="snr_db_range"):
        SyntheticMixedClassificationDataModule(snr_db_range=(5.0, 0.0))


def test_mixed_datamodule_builds_its_splits_from_the_seed():
    data = SyntheticMixedClassificationDataModule(num_classes=4, num_train=24, num_val=8, num_test=12, seed=5,
                                                  batch_size=4)
    assert data.task == "classification" and data.class_names == ["class_0", "class_1", "class_2", "class_3"]
    data.setup("fit")
    assert len(data.dataset("train")) == 24 and len(data.dataset("val")) == 8
    assert data.targets("test") == [i % 4 for i in range(12)]
    batch = next(iter(data.train_dataloader()))
    assert batch.waveforms.shape[0] == 4
