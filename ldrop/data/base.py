"""The common base of ldrop's DataModules: splits, length limits, bad-file handling, batching, loaders."""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from functools import partial, partialmethod
from pathlib import Path
from typing import Any, ClassVar, Literal

from lightning import LightningDataModule
from torch.utils.data import DataLoader

from ldrop._progress import note
from ldrop.data.batch import AudioExample, SkippedExample, checked_collate, collate_audio
from ldrop.data.datasets import AudioDataset, AudioFileDataset, AudioItem, SubsetAudioDataset, resolve_items
from ldrop.data.samplers import DynamicBatchSampler, LengthGroupedSampler, ResumableDataLoader

#: File endings ``predict_on_files`` picks up in folders (formats libsndfile reads).
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".sph", ".ogg", ".aiff", ".aif"})

#: Default ``max_train_seconds``: longer training clips are cropped (classification) or dropped (CTC).
#: Attention memory grows with the square of a clip's length, so one very long training file would end
#: a run with an out-of-memory error far into training; every benchmark clip is shorter than this.
DEFAULT_MAX_TRAIN_SECONDS = 30.0

#: With ``max_train_seconds=None``, a training clip longer than this is named in a warning.
LONG_TRAIN_CLIP_WARNING_SECONDS = 60.0

__all__ = ["DEFAULT_MAX_TRAIN_SECONDS", "AudioDataModule", "DatasetLayoutError", "Split", "Task"]

log = logging.getLogger("ldrop.data")

Split = Literal["train", "val", "test", "predict"]
#: The kind of target a DataModule yields: class ids, transcripts, or values/tensors (``"regression"``: a
#: value per item, several values, a multi-label 0/1 vector; see :func:`~ldrop.data.batch.collate_audio`).
Task = Literal["classification", "ctc", "regression"]

#: The target of an input named with ``predict_on_files`` (there is nothing to score), per kind.
_PLACEHOLDER_TARGETS: dict[str, Any] = {"classification": 0, "ctc": "", "regression": 0.0}

_STAGE_SPLITS: dict[str | None, tuple[Split, ...]] = {
    "fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",),
    None: ("train", "val", "test", "predict"),
}


class DatasetLayoutError(FileNotFoundError):
    """The root folder, or a split in it, is missing; the message shows the expected layout."""


class AudioDataModule(LightningDataModule):
    """Base of every ldrop DataModule: audio examples in, :class:`~ldrop.data.batch.AudioBatch` out.

    A subclass lists a split's items (:meth:`list_items`) or builds the dataset itself
    (:meth:`build_dataset`); this class checks every audio header once at setup, applies the training length
    limits, batches with :mod:`ldrop.data.samplers` (which shard across DDP ranks: use
    ``Trainer(use_distributed_sampler=False)``) and collates with :meth:`collate`. ``task`` (:data:`Task`)
    sets the default ``long_clip_policy`` and the placeholder targets of :meth:`predict_on_files`;
    ``num_bad_files`` counts skipped items by split.

    Args:
        root: the extracted dataset folder (``None`` for generated data).
        batch_size: items per batch when ``max_batch_seconds`` is ``None``.
        num_workers: DataLoader worker processes.
        max_batch_seconds: when set, batches hold at most this many seconds of padded audio (``batch *
            longest``) and their size varies; ``batch_size`` is then ignored.
        group_by_length: batch items of similar duration together (less padding); dynamic batches are always
            grouped.
        max_train_seconds: longest training clip (default 30 s); ``None`` for no limit. Evaluation and predict
            splits are never cut.
        long_clip_policy: what happens to a longer training clip: ``"crop"`` a random window (classification
            only) or ``"filter"`` it out; ``None`` = crop for classification, filter for CTC.
        skip_bad_files: skip bad items (missing, unreadable, truncated or corrupt files, NaN/inf samples,
            audio without a transcript, ranges outside their file) with a warning and a count, instead of
            raising an error that names the file.
        seed: seed of the batch order (and of any seeded choice a dataset makes).
        sample_rate: sample rate of the returned waveforms; files at other rates are resampled.
        min_samples: shorter clips are zero-padded to this many samples (400 = one 25 ms frame at 16 kHz).
        pin_memory: pin batches in page-locked memory (faster host-to-GPU copies).
        persistent_workers: keep the worker processes (and the datasets they hold) from one epoch to the next
            rather than starting them again every epoch (needs ``num_workers > 0``). Off by default: ldrop's
            datasets draw per item and resume exactly either way, but a dataset of your own that draws from numpy
            or ``random`` in ``load`` then continues those streams across epochs, which a resumed run does not.
    """

    task: Task = "classification"
    #: CTC modules: the output characters their transcripts are normalised to; ``None``: every character of
    #: the training transcripts.
    alphabet: Sequence[str] | None = None

    #: Whether ``skip_bad_files`` is an option of this module (so an error about a bad file may suggest
    #: it). Subclasses take the common arguments as ``**kwargs``, so their signatures cannot tell.
    takes_skip_bad_files: ClassVar[bool] = True

    def __init__(
        self, root: str | None = None, batch_size: int = 8, num_workers: int = 0,
        max_batch_seconds: float | None = None, group_by_length: bool = True,
        max_train_seconds: float | None = DEFAULT_MAX_TRAIN_SECONDS,
        long_clip_policy: Literal["crop", "filter"] | None = None, skip_bad_files: bool = False,
        seed: int = 0, sample_rate: int = 16000, min_samples: int = 400, pin_memory: bool = False,
        persistent_workers: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if persistent_workers and num_workers == 0:
            raise ValueError("persistent_workers=True needs num_workers > 0 (there are no worker processes to keep)")
        if max_batch_seconds is not None and max_batch_seconds <= 0:
            raise ValueError(f"max_batch_seconds must be positive, got {max_batch_seconds}")
        if max_train_seconds is not None and max_train_seconds <= 0:
            raise ValueError(f"max_train_seconds must be positive, got {max_train_seconds}")
        if long_clip_policy is None:
            long_clip_policy = "filter" if self.task == "ctc" else "crop"
        if long_clip_policy not in ("crop", "filter"):
            raise ValueError(f"long_clip_policy must be 'crop' or 'filter', got {long_clip_policy!r}")
        if self.task == "ctc" and long_clip_policy == "crop" and max_train_seconds is not None:
            raise ValueError(
                "long_clip_policy='crop' would cut CTC audio away from its transcript; use 'filter' to drop "
                "training utterances longer than max_train_seconds"
            )
        if sample_rate <= 0 or min_samples < 1:
            raise ValueError("sample_rate and min_samples must be positive")
        self.root = os.path.expandvars(os.path.expanduser(os.fspath(root))) if root is not None else None
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.max_batch_seconds = max_batch_seconds
        self.group_by_length = group_by_length
        self.max_train_seconds = max_train_seconds
        self.long_clip_policy = long_clip_policy
        self.skip_bad_files = skip_bad_files
        self.seed = seed
        self.sample_rate = sample_rate
        self.min_samples = min_samples
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.datasets: dict[str, AudioDataset] = {}
        self.num_bad_files: dict[str, int] = {}
        self._failed_at_load: dict[str, set[str]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # An own collate pickles this module into each DataLoader worker under spawn/forkserver (macOS, Windows):
        # without its trainer, which holds the model (as LightningModule drops it); the trainer attaches it again.
        return {**self.__dict__, "trainer": None}

    def __str__(self) -> str:
        # Lightning's lists the size of every split, building (reading) each of them; jsonargparse prints the
        # datamodule in the message of a failed link.
        return f"{type(self).__name__}(root={getattr(self, 'root', None)!r})"

    @property
    def num_classes(self) -> int:
        """Number of classes (classification modules; ``len(self.class_names)``)."""
        class_names = getattr(self, "class_names", None)
        if class_names is None:
            raise AttributeError(f"{type(self).__name__} has no class list (task {self.task!r})")
        return len(class_names)

    # ----------------------------------------------------------------------------------- subclass hooks
    def list_items(self, split: Split) -> list[AudioItem]:
        """List the items of ``split`` from the files on disk, reading no audio (``DatasetLayoutError`` when
        missing)."""
        raise NotImplementedError(f"{type(self).__name__} must implement list_items() or build_dataset()")

    def has_split(self, split: Split) -> bool:
        """Whether the module defines ``split`` (all built-in datasets define all four)."""
        return True

    def build_dataset(self, split: Split) -> AudioDataset:
        """Build the dataset of ``split`` before the length limits (default: list, check, read)."""
        return self._file_dataset(self.list_items(split), split)

    # ------------------------------------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        """Build the datasets the stage needs (``fit``: train and val; ``validate``; ``test``; ``predict``)."""
        for split in _STAGE_SPLITS[stage]:
            if self.has_split(split) or (split == "predict" and self.predict_files):
                self.dataset(split)

    def dataset(self, split: Split) -> AudioDataset:
        """The dataset of ``split``, built on first use."""
        if split not in self.datasets:
            self.datasets[split] = self._prepared_dataset(split)
        return self.datasets[split]

    def targets(self, split: Split = "train") -> list[int | str]:
        """Targets of ``split`` in dataset order, without reading audio (listed from disk before
        :meth:`setup`; a module with only its own ``build_dataset`` builds the split)."""
        if split in self.datasets:
            return self.datasets[split].targets
        if type(self).list_items is AudioDataModule.list_items:  # only its own build_dataset: build the split
            try:
                return self.dataset(split).targets
            except Exception as err:
                raise ValueError(f"{type(self).__name__} has no list_items, so the targets of its {split} split "
                                 f"(its CTC vocabulary, unless it sets alphabet) come from building the split before "
                                 f"prepare_data/setup, which failed ({type(err).__name__}: {err}): set alphabet, "
                                 "implement list_items, or let build_dataset run before setup") from err
        return [item.target for item in self.list_items(split) if item.problem is None]

    def transcripts(self, split: Split = "train") -> list[str]:
        """Transcripts of ``split`` (CTC modules); callable before :meth:`setup` (it reads only transcript
        files)."""
        if self.task != "ctc":
            raise AttributeError(f"{type(self).__name__} is a {self.task} DataModule: it has no transcripts")
        return [str(t) for t in self.targets(split)]

    #: Files ``predict`` reads instead of the predict split, set by :meth:`predict_on_files`.
    predict_files: list[str] | None = None

    def predict_on_files(self, paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
        """Make ``predict`` read these audio files (a file, a folder or a list) instead of a split; returns
        them.

        Folders are searched recursively for :data:`AUDIO_EXTENSIONS`, leaving out hidden files (macOS
        ``._x.wav``); targets are placeholders, ids the paths. ``FileNotFoundError`` for a missing path or no
        audio at all.
        """
        paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
        files: list[str] = []
        for raw in paths:
            path = Path(raw).expanduser()
            if path.is_dir():
                files += _audio_files_in(path)
            elif path.is_file():
                files.append(str(path))
            else:
                raise FileNotFoundError(f"predict input {str(path)!r} does not exist")
        if not files:
            raise FileNotFoundError(
                f"no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) in the predict inputs {list(map(str, paths))}"
            )
        self.predict_files = list(dict.fromkeys(files))  # a file given twice (alone and in its folder) once
        self.datasets.pop("predict", None)
        return self.predict_files

    def _file_dataset(self, items: list[AudioItem], split: Split) -> AudioFileDataset:
        """Check ``items`` (raising on, or logging and counting, bad ones) and read the good ones."""
        good, bad = resolve_items(
            items, self.sample_rate, self.skip_bad_files, split=split, skip_option=self.takes_skip_bad_files,
        )
        self.num_bad_files[split] = len(bad)
        if bad:  # one line per file and reason: a bad TED-LIUM talk spoils each of its segments
            lines = [line if n == 1 else f"{line} ({n} items)" for line, n in Counter(bad).items()]
            shown = "\n  ".join(lines[:10]) + ("\n  ..." if len(lines) > 10 else "")
            log.warning(
                "%s: skipped %d bad item(s) of %d in split '%s':\n  %s", type(self).__name__, len(bad),
                len(items), split, shown,
            )
        return AudioFileDataset(good, sample_rate=self.sample_rate, min_samples=self.min_samples)

    def _prepared_dataset(self, split: Split) -> AudioDataset:
        if split == "predict" and self.predict_files:
            target = _PLACEHOLDER_TARGETS.get(self.task, 0)  # nothing to score
            items = [AudioItem(id=p, path=p, target=target) for p in self.predict_files]
            dataset: AudioDataset = self._file_dataset(items, "predict")
        else:
            dataset = self.build_dataset(split)
        if split == "train" and self.max_train_seconds is not None:
            max_samples = int(self.max_train_seconds * self.sample_rate)
            if self.long_clip_policy == "crop":
                dataset.max_samples, dataset.random_crop = max_samples, True
            else:
                raw = dataset.raw_lengths
                keep = [i for i, n in enumerate(raw) if n <= max_samples]
                if len(keep) < len(raw):
                    log.warning(
                        "%s: dropped %d training item(s) of %d longer than max_train_seconds=%s",
                        type(self).__name__, len(raw) - len(keep), len(raw), self.max_train_seconds,
                    )
                    dataset = SubsetAudioDataset(dataset, keep)
        elif split == "train" and len(dataset) > 0:
            raw = dataset.raw_lengths
            longest = max(range(len(raw)), key=raw.__getitem__)
            if raw[longest] > LONG_TRAIN_CLIP_WARNING_SECONDS * self.sample_rate:
                log.warning(
                    "%s: training item %s lasts %.1f s and max_train_seconds=None keeps it whole; attention "
                    "memory grows with the square of the length (set max_train_seconds to crop or drop it)",
                    type(self).__name__,
                    dataset.ids[longest],
                    raw[longest] / self.sample_rate,
                )
        if len(dataset) == 0:
            raise ValueError(f"{type(self).__name__}: split '{split}' has no items left")
        dataset.skip_bad_files = self.skip_bad_files  # an item that fails when read is then skipped too
        seconds = sum(dataset.lengths) / self.sample_rate
        note(f"{type(self).__name__}: {split} split: {len(dataset)} items, {seconds:.1f} s ({seconds / 3600:.2f} h) of "
             f"audio, {self.num_bad_files.get(split, 0)} bad item(s) skipped")
        return dataset

    # ------------------------------------------------------------------------------------- dataloaders
    def batch_sampler(self, split: Split) -> LengthGroupedSampler | DynamicBatchSampler:
        """The batch sampler of ``split``: shuffled per epoch for ``train`` (unless the trainer overfits a few
        batches), fixed order otherwise."""
        lengths = self.dataset(split).lengths
        trainer = getattr(self, "trainer", None)  # without one the samplers ask torch.distributed, else assume 1
        shuffle = split == "train" and not getattr(trainer, "overfit_batches", 0)
        num_replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (None, None)
        if self.max_batch_seconds is not None:
            return DynamicBatchSampler(
                lengths, max_batch_seconds=self.max_batch_seconds, sample_rate=self.sample_rate,
                shuffle=shuffle, num_replicas=num_replicas, rank=rank, seed=self.seed,
            )
        return LengthGroupedSampler(
            lengths, batch_size=self.batch_size, shuffle=shuffle,
            window_batches=50 if self.group_by_length else 1, num_replicas=num_replicas, rank=rank,
            seed=self.seed,
        )

    def collate(self, examples: list[AudioExample]) -> Any:
        """Batch the examples that loaded (the loaders' ``collate_fn``):
        :func:`~ldrop.data.batch.collate_audio`.

        Override it for other targets; with no examples at all return an empty batch, which training skips.
        """
        return collate_audio(examples)

    def dataloader(self, split: Split) -> DataLoader:
        """A :class:`~ldrop.data.samplers.ResumableDataLoader` of batches (:meth:`collate`) over ``split``;
        examples that fail to load are counted in :attr:`num_bad_files` (each item once)."""
        # The plain function when collate is not overridden: worker processes then need no pickled DataModule.
        overridden = type(self).collate is not AudioDataModule.collate
        return ResumableDataLoader(
            self.dataset(split), batch_sampler=self.batch_sampler(split), num_workers=self.num_workers,
            # an own collate's batch is checked (an isinstance): a dict is named, not read as an AudioBatch
            collate_fn=partial(checked_collate, self.collate, f"{type(self).__name__}.collate returned", split)
            if overridden else collate_audio, pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            on_skipped=partial(self._skipped_at_load, split), drop_empty=split != "train",
        )

    def _skipped_at_load(self, split: Split, skipped: list[SkippedExample]) -> None:
        """Log and count the examples of ``split`` that failed to load (each item once, whatever the epoch)."""
        seen = self._failed_at_load.setdefault(split, set())
        new = [e for e in skipped if e.id not in seen]
        if not new:
            return
        seen.update(e.id for e in new)
        self.num_bad_files[split] = self.num_bad_files.get(split, 0) + len(new)
        log.warning(
            "%s: skipped %d bad item(s) in split '%s' that failed to load (%d bad in all):\n  %s",
            type(self).__name__, len(new), split, self.num_bad_files[split],
            "\n  ".join(f"{e.id}: {e.reason}" for e in new),
        )

    train_dataloader = partialmethod(dataloader, "train")
    val_dataloader = partialmethod(dataloader, "val")
    test_dataloader = partialmethod(dataloader, "test")
    predict_dataloader = partialmethod(dataloader, "predict")


def _audio_files_in(folder: Path) -> list[str]:
    """Audio files under ``folder`` (recursively), sorted; hidden files and folders are left out."""
    found = []
    for parent, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [
            os.path.join(parent, n)
            for n in names
            if not n.startswith(".") and os.path.splitext(n)[1].lower() in AUDIO_EXTENSIONS
        ]
    return sorted(found)


def as_list(value: str | Sequence[str]) -> list[str]:
    """``"a"`` -> ``["a"]``; a list stays a list (split arguments accept one name or several)."""
    return [value] if isinstance(value, str) else list(value)


def find_corpus(root: str | None, name: str, markers: Sequence[str], what: str, layout: str) -> str:
    """The corpus folder ``root/name`` when it exists, else ``root`` when it holds one of the folders ``markers``
    (else a :func:`layout_error` about ``what``)."""
    assert root is not None
    nested = os.path.join(root, name)
    if os.path.isdir(nested):
        return nested
    if any(os.path.isdir(os.path.join(root, m)) for m in markers):
        return root
    raise layout_error(what, nested, layout)


def layout_error(what: str, path: str, layout: str) -> DatasetLayoutError:
    """A :class:`DatasetLayoutError` saying what is missing where (a relative path: relative to what), and the
    layout that was expected."""
    unset = [name for name in re.findall(r"\$\{?(\w+)", path) if name not in os.environ]
    where = (f"{path} (${unset[0]} is not set)" if unset else path if os.path.isabs(path)
             else f"{path} (relative to {os.getcwd()})")
    return DatasetLayoutError(f"{what} not found: {where}\nExpected layout:\n{layout.rstrip()}")
