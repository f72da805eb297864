"""ESC-50 (5 s environmental sound clips, 44.1 kHz WAV) for classification by 5-fold cross-validation."""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Mapping
from typing import Literal

from ldrop.data.base import AudioDataModule, Split, layout_error
from ldrop.data.datasets import AudioItem

__all__ = ["ESC10_TARGETS", "ESC50DataModule", "ESC50_CLASSES", "ESC50_FOLDS", "summarize_folds"]

log = logging.getLogger("ldrop.data")

ESC50_CLASSES: tuple[str, ...] = (
    "dog", "rooster", "pig", "cow", "frog", "cat", "hen", "insects", "sheep", "crow",
    "rain", "sea_waves", "crackling_fire", "crickets", "chirping_birds", "water_drops", "wind",
    "pouring_water", "toilet_flush", "thunderstorm",
    "crying_baby", "sneezing", "clapping", "breathing", "coughing", "footsteps", "laughing",
    "brushing_teeth", "snoring", "drinking_sipping",
    "door_wood_knock", "mouse_click", "keyboard_typing", "door_wood_creaks", "can_opening",
    "washing_machine", "vacuum_cleaner", "clock_alarm", "clock_tick", "glass_breaking",
    "helicopter", "chainsaw", "siren", "car_horn", "engine", "train", "church_bells", "airplane",
    "fireworks", "hand_saw",
)  # fmt: skip
"""The 50 categories, indexed by ESC-50's ``target`` column."""

ESC10_TARGETS: tuple[int, ...] = (0, 1, 10, 11, 12, 20, 21, 38, 40, 41)
"""ESC-50 targets of the ESC-10 subset, in the order of their remapped ids 0-9."""

ESC50_FOLDS: tuple[int, ...] = (1, 2, 3, 4, 5)

ESC50_LAYOUT = """\
<root>/ESC-50-master/audio/<fold>-<clip id>-<take>-<target>.wav   (2000 clips, 5 s, 44.1 kHz)
<root>/ESC-50-master/meta/esc50.csv   (header: filename,fold,target,category,esc10,src_file,take)
(<root> may also be the ESC-50-master folder itself)"""


class ESC50DataModule(AudioDataModule):
    """ESC-50 environmental sound classification, one cross-validation fold per run.

    The test split is fold ``test_fold``, validation is fold ``val_fold``, training is the other folds
    (3 folds, or 4 when ``val_fold == test_fold``). The protocol is 5-fold cross-validation: run once per
    ``test_fold`` in 1..5 and report the mean accuracy (:func:`summarize_folds`). Clips are resampled from
    44.1 kHz to ``sample_rate``. With ``esc10=True`` only the ESC-10 subset is kept and its targets are
    remapped to 0-9 (order of :data:`ESC10_TARGETS`). Ids are the file names. The predict split is the
    test fold.

    Args:
        root: folder holding ``ESC-50-master/`` (or that folder itself).
        test_fold: the held-out test fold, 1-5.
        val_fold: the validation fold; ``None`` = the next fold after ``test_fold`` (5 -> 1). Setting it
            equal to ``test_fold`` trains on 4 folds and validates on the test fold (logged as a warning:
            do not select checkpoints on it).
        esc10: use the 10-class ESC-10 subset.
        batch_size: see :class:`~ldrop.data.base.AudioDataModule` (as are the remaining arguments).
        num_workers: DataLoader worker processes.
        max_batch_seconds: audio budget per dynamic batch, in seconds.
        group_by_length: batch clips of similar duration together (ESC-50 clips all last 5 s).
        max_train_seconds: longest training clip.
        long_clip_policy: ``"crop"`` (random window) or ``"filter"`` longer training clips.
        skip_bad_files: skip unreadable files (logged) instead of raising.
        seed: batch-order seed.
        sample_rate: output sample rate.
        min_samples: shorter clips are zero-padded to this length.
        pin_memory: pin batches in page-locked memory.
    """

    task = "classification"

    def __init__(
        self,
        root: str,
        test_fold: Literal[1, 2, 3, 4, 5] = 1,
        val_fold: Literal[1, 2, 3, 4, 5] | None = None,
        esc10: bool = False,
        batch_size: int = 8,
        num_workers: int = 0,
        max_batch_seconds: float | None = None,
        group_by_length: bool = True,
        max_train_seconds: float | None = None,
        long_clip_policy: Literal["crop", "filter"] = "crop",
        skip_bad_files: bool = False,
        seed: int = 0,
        sample_rate: int = 16000,
        min_samples: int = 400,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(
            root=root,
            batch_size=batch_size,
            num_workers=num_workers,
            max_batch_seconds=max_batch_seconds,
            group_by_length=group_by_length,
            max_train_seconds=max_train_seconds,
            long_clip_policy=long_clip_policy,
            skip_bad_files=skip_bad_files,
            seed=seed,
            sample_rate=sample_rate,
            min_samples=min_samples,
            pin_memory=pin_memory,
        )
        if test_fold not in ESC50_FOLDS:
            raise ValueError(f"test_fold must be one of {ESC50_FOLDS}, got {test_fold!r}")
        if val_fold is None:
            val_fold = test_fold % 5 + 1  # type: ignore[assignment]
        if val_fold not in ESC50_FOLDS:
            raise ValueError(f"val_fold must be one of {ESC50_FOLDS} or None, got {val_fold!r}")
        if val_fold == test_fold:
            log.warning(
                "ESC50DataModule: val_fold == test_fold == %d; validation scores are test scores, do not "
                "select checkpoints or hyper-parameters on them",
                test_fold,
            )
        self.test_fold = test_fold
        self.val_fold = val_fold
        self.esc10 = esc10
        self.class_names: list[str] = (
            [ESC50_CLASSES[t] for t in ESC10_TARGETS] if esc10 else list(ESC50_CLASSES)
        )

    @property
    def folds(self) -> dict[str, tuple[int, ...]]:
        """The folds of each split."""
        train = tuple(f for f in ESC50_FOLDS if f not in (self.test_fold, self.val_fold))
        return {
            "train": train,
            "val": (self.val_fold,),
            "test": (self.test_fold,),
            "predict": (self.test_fold,),
        }

    def corpus_dir(self) -> str:
        """The ``ESC-50-master`` folder under :attr:`root`."""
        assert self.root is not None
        for candidate in (os.path.join(self.root, "ESC-50-master"), self.root):
            if os.path.isfile(os.path.join(candidate, "meta", "esc50.csv")):
                return candidate
        raise layout_error(
            "ESC-50 metadata meta/esc50.csv", os.path.join(self.root, "ESC-50-master"), ESC50_LAYOUT
        )

    def list_items(self, split: Split) -> list[AudioItem]:
        corpus = self.corpus_dir()
        csv_path = os.path.join(corpus, "meta", "esc50.csv")
        folds = self.folds[split]
        remap = {t: i for i, t in enumerate(ESC10_TARGETS)} if self.esc10 else None
        items = []
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"filename", "fold", "target", "category"} - set(reader.fieldnames or ())
            if missing:
                raise layout_error(f"columns {sorted(missing)} in {csv_path}", csv_path, ESC50_LAYOUT)
            for line_no, row in enumerate(reader, start=2):
                where = f"{csv_path}:{line_no} ({row['filename']})"
                try:
                    fold, target = int(row["fold"]), int(row["target"])
                except ValueError:
                    raise ValueError(f"{where}: fold and target must be integers") from None
                if not 0 <= target < len(ESC50_CLASSES):
                    raise ValueError(f"{where}: target {target} is outside the 50 ESC-50 classes 0-49")
                if row["category"] != ESC50_CLASSES[target]:
                    raise ValueError(
                        f"{where}: category {row['category']!r} does not match target {target} "
                        f"({ESC50_CLASSES[target]!r})"
                    )
                if fold not in folds:
                    continue
                if remap is not None:
                    if target not in remap:
                        continue
                    target = remap[target]
                items.append(
                    AudioItem(
                        id=row["filename"], path=os.path.join(corpus, "audio", row["filename"]), target=target
                    )
                )
        if not items:
            raise layout_error(
                f"clips of folds {folds} (split '{split}') in {csv_path}", csv_path, ESC50_LAYOUT
            )
        return items


def summarize_folds(scores: Mapping[int, float]) -> dict[str, float]:
    """Mean and (population) standard deviation of per-fold scores, the number ESC-50 papers report.

    Args:
        scores: score (e.g. test accuracy) by test fold; all of folds 1-5 for the standard protocol.

    Returns:
        ``{"mean": ..., "std": ..., "folds": number of folds}``.

    Raises:
        ValueError: if ``scores`` is empty or names a fold outside 1-5.
    """
    if not scores:
        raise ValueError("no fold scores to summarize")
    unknown = set(scores) - set(ESC50_FOLDS)
    if unknown:
        raise ValueError(f"folds {sorted(unknown)} are not ESC-50 folds {ESC50_FOLDS}")
    if len(scores) < len(ESC50_FOLDS):
        log.warning(
            "summarize_folds: only folds %s of 1-5; the standard protocol averages all five", sorted(scores)
        )
    values = [float(v) for v in scores.values()]
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return {"mean": mean, "std": std, "folds": float(len(values))}
