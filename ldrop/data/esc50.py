"""ESC-50 (5 s environmental sound clips, 44.1 kHz WAV) for classification by 5-fold cross-validation."""

from __future__ import annotations

import csv
import logging
import os
import statistics
from collections.abc import Iterator, Mapping
from functools import cached_property
from typing import Literal

from ldrop.data.base import AudioDataModule, Split, layout_error
from ldrop.data.datasets import AudioItem

__all__ = ["ESC10_TARGETS", "ESC50DataModule", "ESC50_CLASSES", "ESC50_FOLDS", "summarize_folds"]

log = logging.getLogger("ldrop.data")

ESC50_CLASSES: tuple[str, ...] = (
    "dog", "rooster", "pig", "cow", "frog", "cat", "hen", "insects", "sheep", "crow", "rain", "sea_waves",
    "crackling_fire", "crickets", "chirping_birds", "water_drops", "wind", "pouring_water", "toilet_flush",
    "thunderstorm", "crying_baby", "sneezing", "clapping", "breathing", "coughing", "footsteps", "laughing",
    "brushing_teeth", "snoring", "drinking_sipping", "door_wood_knock", "mouse_click", "keyboard_typing",
    "door_wood_creaks", "can_opening", "washing_machine", "vacuum_cleaner", "clock_alarm", "clock_tick",
    "glass_breaking", "helicopter", "chainsaw", "siren", "car_horn", "engine", "train", "church_bells",
    "airplane", "fireworks", "hand_saw",
)  # fmt: skip
"""The 50 categories of the official ESC-50, indexed by its ``target`` column (the class list itself is read
from ``meta/esc50.csv``, so corpora in the ESC-50 layout with other classes load too)."""

ESC10_TARGETS: tuple[int, ...] = (0, 1, 10, 11, 12, 20, 21, 38, 40, 41)
"""ESC-50 targets of the ESC-10 subset, in the order of their remapped ids 0-9."""

ESC50_FOLDS: tuple[int, ...] = (1, 2, 3, 4, 5)

ESC50_LAYOUT = """\
<root>/ESC-50-master/audio/<fold>-<clip id>-<take>-<target>.wav   (2000 clips, 5 s, 44.1 kHz)
<root>/ESC-50-master/meta/esc50.csv   (header: filename,fold,target,category,esc10,src_file,take)
(<root> may also be the ESC-50-master folder itself)"""


class ESC50DataModule(AudioDataModule):
    """ESC-50 environmental sound classification, one cross-validation fold per run.

    Test is fold ``test_fold``, validation fold ``val_fold``, training the other folds; run once per
    ``test_fold`` in 1..5 and report the mean (:func:`summarize_folds`). ``esc10=True`` keeps the ESC-10
    subset, targets remapped to 0-9 (:data:`ESC10_TARGETS` order). Class ``i`` is the category of the ``i``-th
    smallest ``target`` in ``meta/esc50.csv``, so a corpus in this layout with other categories loads too.

    Args:
        root: folder holding ``ESC-50-master/`` (or that folder itself).
        test_fold: the held-out test fold, 1-5.
        val_fold: the validation fold; ``None`` = the next fold after ``test_fold`` (5 -> 1). Setting it equal
            to ``test_fold`` trains on 4 folds and validates on the test fold (logged as a warning: do not
            select checkpoints on it).
        esc10: use the 10-class ESC-10 subset.
        **kwargs: the common arguments of :class:`~ldrop.data.base.AudioDataModule` (``batch_size``,
            ``max_batch_seconds``, ``max_train_seconds``, ``skip_bad_files``, ``seed``, ...).
    """

    task = "classification"

    def __init__(
        self, root: str, test_fold: Literal[1, 2, 3, 4, 5] = 1,
        val_fold: Literal[1, 2, 3, 4, 5] | None = None, esc10: bool = False, **kwargs,
    ) -> None:
        super().__init__(root=root, **kwargs)
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

    @property
    def class_names(self) -> list[str]:
        """The categories in class-id order, read from ``meta/esc50.csv`` on first use."""
        return list(self._classes)

    @cached_property
    def _classes(self) -> dict[str, int]:
        """Category -> the ``target`` of ``meta/esc50.csv`` it stands for, in class-id order (checked)."""
        csv_path = os.path.join(self.corpus_dir(), "meta", "esc50.csv")
        categories: dict[int, str] = {}
        for where, row, _, target in _rows(csv_path):
            category = row["category"].strip()  # checked non-empty by _rows
            known = categories.setdefault(target, category)
            if known != category:
                raise ValueError(
                    f"{where}: target {target} is category {category!r} here, {known!r} on an earlier row"
                )
        by_category: dict[str, int] = {}
        for target, category in sorted(categories.items()):
            other = by_category.setdefault(category, target)
            if other != target:
                raise ValueError(
                    f"{csv_path}: category {category!r} is given to both target {other} and target {target}"
                )
        targets = sorted(categories)
        if self.esc10:
            absent = [t for t in ESC10_TARGETS if t not in categories]
            if absent:
                raise ValueError(
                    f"{csv_path}: esc10=True needs the ESC-10 targets {list(ESC10_TARGETS)}; {absent} are absent"
                )
            targets = list(ESC10_TARGETS)
        return {categories[t]: t for t in targets}

    @property
    def folds(self) -> dict[str, tuple[int, ...]]:
        """The folds of each split."""
        train = tuple(f for f in ESC50_FOLDS if f not in (self.test_fold, self.val_fold))
        return {
            "train": train, "val": (self.val_fold,), "test": (self.test_fold,), "predict": (self.test_fold,),
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
        class_ids = {target: i for i, target in enumerate(self._classes.values())}  # CSV target -> class id
        items = []
        for _, row, fold, target in _rows(csv_path):
            if fold not in folds or target not in class_ids:  # target outside ESC-10 when esc10=True
                continue
            path = os.path.join(corpus, "audio", row["filename"])
            items.append(AudioItem(id=row["filename"], path=path, target=class_ids[target]))
        if not items:
            raise layout_error(
                f"clips of folds {folds} (split '{split}') in {csv_path}", csv_path, ESC50_LAYOUT
            )
        return items


def _rows(csv_path: str) -> Iterator[tuple[str, dict[str, str], int, int]]:
    """``(where, row, fold, target)`` per row of ``meta/esc50.csv``; ``where`` is ``file:line (filename)``."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"filename", "fold", "target", "category"} - set(reader.fieldnames or ())
        if missing:
            raise layout_error(f"columns {sorted(missing)} in {csv_path}", csv_path, ESC50_LAYOUT)
        for line_no, row in enumerate(reader, start=2):
            where = f"{csv_path}:{line_no} ({row['filename']})"
            try:
                fold, target = int(row["fold"]), int(row["target"])
            except (TypeError, ValueError):
                raise ValueError(f"{where}: fold and target must be integers") from None
            if target < 0:
                raise ValueError(f"{where}: target {target} is negative")
            if fold not in ESC50_FOLDS:
                raise ValueError(f"{where}: fold {fold} is not one of the folds {ESC50_FOLDS}")
            if not (row["category"] or "").strip():
                raise ValueError(f"{where}: no category")
            yield where, row, fold, target


def summarize_folds(scores: Mapping[int, float]) -> dict[str, float]:
    """``{"mean", "std" (population), "folds"}`` of per-fold scores (fold 1-5 -> score), as ESC-50 papers
    report."""
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
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values), "folds": float(len(values))}
