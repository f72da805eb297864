"""Map-style datasets of :class:`~ldrop.data.batch.AudioExample` and the :class:`AudioItem` records they are
listed from; every dataset knows each example's length before reading it (for the samplers)."""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar, overload

import numpy as np
import torch
from torch.utils.data import Dataset

from ldrop._progress import Phase
from ldrop.data.audio import AudioInfo, AudioReadError, check_audio, read_audio, resampled_length
from ldrop.data.batch import AudioExample, SkippedExample

__all__ = [
    "RANGE_END_TOLERANCE_SECONDS", "AudioDataset", "AudioFileDataset", "AudioItem", "PackedItems",
    "SubsetAudioDataset", "resolve_items",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How far past the end of its file an item's time range may end and still be used (clipped to the end).
#: Transcribed corpora round segment times (TED-LIUM's STM to 10 ms) and the last segment of a talk may end
#: a few frames after the audio; 50 ms is well below a spoken word, so no transcribed word is cut away.
#: A range that ends later is a bad item: clipping it would keep its whole transcript for part of its audio.
RANGE_END_TOLERANCE_SECONDS = 0.05


@dataclass
class AudioItem:
    """One example on disk: a whole audio file or a time range (``offset``, ``duration`` seconds) of it.

    ``start``/``stop`` (frames at the file's rate), ``file_sample_rate`` and ``num_samples`` (at the target
    rate) are set by :func:`resolve_items`; ``problem`` marks an item found bad while listing it.
    """

    id: str
    path: str
    target: Any
    offset: float = 0.0
    duration: float | None = None
    start: int | None = None
    stop: int | None = None
    file_sample_rate: int | None = None
    num_samples: int | None = None
    problem: str | None = None


def resolve_items(
    items: Sequence[AudioItem], sample_rate: int, skip_bad_files: bool, split: str = "",
    skip_option: bool = True,
) -> tuple[list[AudioItem], list[str]]:
    """Check every file once, turn time ranges into frame ranges, and find bad items.

    An item is bad when listed with a ``problem``, when its file fails :func:`~ldrop.data.audio.check_audio`,
    or when its range lies outside the file (it may end up to :data:`RANGE_END_TOLERANCE_SECONDS` past the
    end, then clipped). Returns the good items and one ``"<path>: <reason>"`` line per bad one; without
    ``skip_bad_files`` the first bad file raises :class:`~ldrop.data.audio.AudioReadError` (which suggests
    ``skip_bad_files`` when ``skip_option``).
    """
    infos: dict[str, AudioInfo | AudioReadError] = {}
    good: list[AudioItem] = []
    bad: list[tuple[str, str]] = []
    first_error: AudioReadError | None = None  # the error of bad[0], when reading its file failed
    where = f" of split '{split}'" if split else ""
    with Phase(f"reading the audio headers{where}", total=len(items), unit="item", quiet=True) as phase:
        for item in items:
            phase.step()
            if item.problem is not None:
                bad.append((item.path, item.problem))
                continue
            if item.path not in infos:
                try:
                    infos[item.path] = check_audio(item.path)
                except AudioReadError as err:
                    infos[item.path] = err
            info = infos[item.path]
            if isinstance(info, AudioReadError):
                if not bad:
                    first_error = info
                bad.append((item.path, info.reason))
                continue
            start = item.start if item.start is not None else round(item.offset * info.sample_rate)
            stop = item.stop
            if stop is None and item.duration is not None:
                stop = round((item.offset + item.duration) * info.sample_rate)
            problem = _range_problem(start, stop, info)
            if problem is not None:
                bad.append((item.path, f"item {item.id}: {problem}"))
                continue
            stop = info.frames if stop is None else min(stop, info.frames)
            good.append(
                replace(
                    item, start=start, stop=stop, file_sample_rate=info.sample_rate,
                    num_samples=resampled_length(stop - start, info.sample_rate, sample_rate),
                )
            )
    if bad and not skip_bad_files:
        path, reason = bad[0]
        more = f"{len(bad) - 1} more bad items" if len(bad) > 1 else "no other bad items"
        where = f" in split '{split}'" if split else ""
        hint = "; skip_bad_files=True skips them with a warning" if skip_option else ""
        reason = f"{reason} ({more}{where}{hint})"
        if first_error is not None:
            raise type(first_error)(path, reason)
        raise AudioReadError(path, reason, what="cannot use audio file")
    return good, [f"{path}: {reason}" for path, reason in bad]


def _range_problem(start: int, stop: int | None, info: AudioInfo) -> str | None:
    """Why frames ``[start, stop)`` of a file with header ``info`` are no usable item (``None``: they are)."""
    rate, length = info.sample_rate, f"({info.seconds:.3f} s long)"
    if stop is not None and stop <= start:
        return f"empty range of frames [{start}, {stop})"
    if start < 0 or start >= info.frames:
        return f"range starts at {start / rate:.3f} s, outside the file {length}"
    if stop is not None and stop > info.frames + RANGE_END_TOLERANCE_SECONDS * rate:
        return f"range {start / rate:.3f}-{stop / rate:.3f} s ends past the end of the file {length}"
    return None


class AudioDataset(Dataset[AudioExample]):
    """Base of ldrop's datasets: examples whose lengths and targets are known without reading audio.

    Subclasses implement ``__len__``, :meth:`load`, ``raw_lengths``, ``targets`` and ``ids``;
    :meth:`__getitem__` fits each waveform to ``[min_samples, max_samples]`` (zero-padding or cropping, at a
    random offset with ``random_crop``). With ``skip_bad_files`` an example whose :meth:`load` raises
    :class:`~ldrop.data.audio.AudioReadError` comes back as a :class:`~ldrop.data.batch.SkippedExample`, which
    the loader leaves out, logs and counts.
    """

    def __init__(
        self, sample_rate: int = 16000, min_samples: int = 400, max_samples: int | None = None,
        random_crop: bool = False, skip_bad_files: bool = False,
    ) -> None:
        self.sample_rate = sample_rate
        self.min_samples = min_samples
        self.max_samples = max_samples
        self.random_crop = random_crop
        self.skip_bad_files = skip_bad_files

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> AudioExample:
        """Return example ``index`` as stored (before fitting its length)."""
        raise NotImplementedError

    #: Length of each example as stored, in samples at :attr:`sample_rate` (an attribute or a property).
    raw_lengths: list[int]
    #: Target of each example (class id, transcript, value or tensor).
    targets: list[Any]
    #: Id of each example.
    ids: list[str]

    @property
    def lengths(self) -> list[int]:
        """Length of each returned waveform (after padding and cropping), in samples: ``[len(self)]``."""
        return [self.fitted_length(n) for n in self.raw_lengths]

    def fitted_length(self, num_samples: int) -> int:
        """The length an example of ``num_samples`` samples has after padding/cropping."""
        if self.max_samples is not None:
            num_samples = min(num_samples, self.max_samples)
        return max(num_samples, self.min_samples)

    def __getitem__(self, index: int) -> AudioExample | SkippedExample:
        seed = getattr(index, "seed", None)  # a SeededIndex: random draws from its seed, the process's left alone
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.default_generator.manual_seed(seed)
            try:
                example = self.load(index)
            except AudioReadError as err:
                if not self.skip_bad_files:
                    raise
                return SkippedExample(id=self.ids[index], reason=str(err))
            example.waveform = self.fit(example.waveform)
        return example

    def fit(self, waveform: torch.Tensor) -> torch.Tensor:
        """Crop ``[samples]`` to ``max_samples`` and zero-pad it to ``min_samples``."""
        n = waveform.shape[-1]
        if self.max_samples is not None and n > self.max_samples:
            offset = int(torch.randint(n - self.max_samples + 1, ())) if self.random_crop else 0
            waveform = waveform[offset : offset + self.max_samples]
        if waveform.shape[-1] < self.min_samples:
            waveform = torch.nn.functional.pad(waveform, (0, self.min_samples - waveform.shape[-1]))
        return waveform


class PackedItems(Sequence[T]):
    """A read-only list of items kept pickled in one numpy byte buffer: a forked DataLoader worker that reads them
    touches no Python object per item, so it does not copy the parent's pages one by one (reference counts and
    the garbage collector write to every object they visit): as a list of objects, LibriSpeech 960 h's 281k items
    cost each worker 156 MB more than the imports do once it had read them all and collected garbage."""

    def __init__(self, items: Iterable[T]) -> None:
        blobs = [pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL) for item in items]
        self._ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self._bytes = np.frombuffer(b"".join(blobs), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._ends)

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = range(len(self))[index]  # negative indices; IndexError past the end
        start = int(self._ends[index - 1]) if index else 0
        return pickle.loads(self._bytes[start:int(self._ends[index])].tobytes())


class AudioFileDataset(AudioDataset):
    """Examples read from resolved :class:`AudioItem` files or frame ranges (a long item is cropped while
    reading)."""

    def __init__(
        self, items: Sequence[AudioItem], sample_rate: int = 16000, min_samples: int = 400,
        max_samples: int | None = None, random_crop: bool = False,
    ) -> None:
        super().__init__(sample_rate, min_samples, max_samples, random_crop)
        unresolved = [it.id for it in items if it.num_samples is None or it.file_sample_rate is None]
        if unresolved:
            raise ValueError(f"items must be resolved with resolve_items() first, e.g. {unresolved[0]}")
        self.items = PackedItems(items)  # what the workers read (each item once an epoch)
        self.raw_lengths = [int(it.num_samples) for it in items]  # type: ignore[arg-type]
        self.targets = [it.target for it in items]
        self.ids = [it.id for it in items]

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> AudioExample:
        item = self.items[index]
        start, stop = int(item.start or 0), int(item.stop)  # type: ignore[arg-type]
        if self.max_samples is not None and int(item.num_samples) > self.max_samples:  # type: ignore[arg-type]
            # Decode only the kept part (one frame of slack for the resampler's rounding); fit() trims it.
            keep = math.ceil(self.max_samples * int(item.file_sample_rate) / self.sample_rate) + 1  # type: ignore[arg-type]
            if keep < stop - start:
                offset = int(torch.randint(stop - start - keep + 1, ())) if self.random_crop else 0
                start, stop = start + offset, start + offset + keep
        waveform = read_audio(item.path, start, stop, target_sr=self.sample_rate)
        return AudioExample(waveform=waveform, target=item.target, id=item.id)


class SubsetAudioDataset(AudioDataset):
    """The examples of ``dataset`` at ``indices``, with the same length fitting."""

    def __init__(self, dataset: AudioDataset, indices: Sequence[int]) -> None:
        super().__init__(dataset.sample_rate, dataset.min_samples, dataset.max_samples, dataset.random_crop,
                         dataset.skip_bad_files)
        self.dataset = dataset
        self.indices = list(indices)
        lengths, targets, ids = dataset.raw_lengths, dataset.targets, dataset.ids
        self.raw_lengths = [lengths[i] for i in self.indices]
        self.targets = [targets[i] for i in self.indices]
        self.ids = [ids[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int) -> AudioExample:
        return self.dataset.load(self.indices[index])
