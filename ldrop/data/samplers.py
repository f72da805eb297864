"""Batch samplers that group items of similar length, shard batches across DDP ranks, and reshuffle per epoch.

Both yield lists of indices (``DataLoader(batch_sampler=...)``). Every rank builds the same batches, a
function of ``(seed, epoch)`` only, and takes every ``num_replicas``-th from ``rank`` (the largest batches are
split until the count divides evenly), so ranks see disjoint items and equal step counts; multi-device
training needs ``Trainer(use_distributed_sampler=False)``. ``num_replicas`` and ``rank`` default to the
process group's (else 1 and 0); ``shuffle=False`` gives a fixed order.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, default_collate

from ldrop.data.batch import SeededIndex, SkippedExample

log = logging.getLogger("ldrop.data")

__all__ = ["DynamicBatchSampler", "LengthGroupedSampler", "ResumableDataLoader"]


def _resolve_replicas(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    initialized = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialized else 1
    if rank is None:
        rank = dist.get_rank() if initialized else 0
    if num_replicas < 1:
        raise ValueError(f"num_replicas must be at least 1, got {num_replicas}")
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank must be in [0, {num_replicas - 1}], got {rank}")
    return num_replicas, rank


class _ShardedBatchSampler:
    """Common part: per-epoch batch list, equal split across ranks, ``set_epoch``."""

    def __init__(
        self, lengths: Sequence[int], shuffle: bool, num_replicas: int | None, rank: int | None, seed: int,
    ) -> None:
        self.lengths = np.maximum(np.asarray(lengths, dtype=np.int64).reshape(-1), 1)
        self.shuffle = shuffle
        self.num_replicas, self.rank = _resolve_replicas(num_replicas, rank)
        self.seed = seed
        self.epoch = 0
        # Lightning's per-epoch hook calls ``dataloader.batch_sampler.sampler.set_epoch``.
        self.sampler = self
        self._cached: tuple[int, list[np.ndarray], np.ndarray] | None = None
        self._resume: tuple[int, int] | None = None  # (epoch, batches to skip) set by load_state_dict
        self._yielded = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields."""
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        """The position in the epoch: ``{"epoch", "batches_done"}``."""
        return {"epoch": self.epoch, "batches_done": self._yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`: the next iteration over that epoch skips its done batches."""
        self.epoch = int(state["epoch"])
        self._resume = (self.epoch, int(state["batches_done"]))

    @property
    def batches_to_skip(self) -> int:
        """Batches of the current epoch the next iteration skips (non-zero only right after a resume)."""
        return self._resume[1] if self._resume is not None and self._resume[0] == self.epoch else 0

    def _make_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        raise NotImplementedError

    def _epoch_batches(self) -> list[np.ndarray]:
        if self._cached is not None and self._cached[0] == self.epoch:
            return self._cached[1]
        # each item's seed for the epoch (its random crop), drawn apart from the batches' stream
        seeds = np.random.default_rng([self.seed, self.epoch, 1]).integers(2**62, size=len(self.lengths))
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = _split_to_multiple([b for b in self._make_batches(rng) if len(b)], self.num_replicas)
        if self.shuffle and batches:
            batches = [batches[i] for i in rng.permutation(len(batches))]
            # The costliest batch first, so an out-of-memory error shows in the first step, not hours later.
            costs = [len(b) * int(self.lengths[b].max()) for b in batches]
            first = int(np.argmax(costs))
            batches[0], batches[first] = batches[first], batches[0]
        self._cached = (self.epoch, batches, seeds)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        """Each batch as a list of :class:`~ldrop.data.batch.SeededIndex`."""
        skip, self._resume = self.batches_to_skip, None  # a resume skips once, in its own epoch
        self._yielded = skip
        batches = self._epoch_batches()
        seeds = self._cached[2]  # type: ignore[index]
        for batch in batches[self.rank :: self.num_replicas][skip:]:
            self._yielded += 1
            yield [SeededIndex(i, seeds[i]) for i in batch.tolist()]

    def __len__(self) -> int:
        return len(self._epoch_batches()) // self.num_replicas


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose place in the epoch survives a checkpoint (Lightning's stateful dataloaders).

    A resumed epoch starts at the first batch not handed out; each epoch's iterator gets its own generator
    seeded from ``(seed, epoch)``. Examples that failed to load are left out before ``collate_fn`` and handed
    to ``on_skipped`` (default: a warning); a batch of only such examples is collated empty (training skips
    it), or dropped with ``drop_empty`` (evaluation).
    """

    def __init__(self, *args: Any, on_skipped: Callable[[list[SkippedExample]], None] | None = None,
                 drop_empty: bool = False, **kwargs: Any) -> None:
        self.on_skipped = on_skipped
        self.drop_empty = drop_empty
        super().__init__(*args, **kwargs)
        if self.batch_sampler is not None:  # batches are collated lists of examples (not single examples)
            self.collate_fn = _SkippingCollate(self.collate_fn, collate_empty=not drop_empty)

    def __iter__(self) -> Iterator[Any]:
        sampler = self.batch_sampler
        stateful = isinstance(sampler, _ShardedBatchSampler)
        self._batches_done = sampler.batches_to_skip if stateful else 0
        if stateful:
            seed = np.random.default_rng([sampler.seed, sampler.epoch]).integers(2**62)
            self.generator = torch.Generator().manual_seed(int(seed))
        init = self.worker_init_fn
        if self.num_workers > 0 and not isinstance(init, _StopSignalsIgnored):
            # wrapped as the workers start, not in __init__: Lightning adds its rank-aware worker seeding to a
            # loader whose worker_init_fn is None, and it must still find None
            self.worker_init_fn = _StopSignalsIgnored(init)
        try:
            batches = super().__iter__()
        finally:
            self.worker_init_fn = init
        for batch in batches:
            self._batches_done += 1  # handed out, even when all its examples were skipped
            if isinstance(batch, _PartlyLoadedBatch):
                (self.on_skipped or _log_skipped)(batch.skipped)
                if batch.batch is None:  # every example failed, in a loader that drops such batches
                    continue
                batch = batch.batch
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "batches_done"}`` of the batch sampler, counting batches handed out by this loader."""
        sampler = self.batch_sampler
        if not isinstance(sampler, _ShardedBatchSampler):
            return {}
        return {**sampler.state_dict(), "batches_done": getattr(self, "_batches_done", 0)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the batch sampler from :meth:`state_dict` (ignored for other samplers or empty states)."""
        if state and isinstance(self.batch_sampler, _ShardedBatchSampler):
            self.batch_sampler.load_state_dict(state)


class _StopSignalsIgnored:
    """A worker's ``worker_init_fn``: SIGTERM and SIGUSR1 ignored but for a SIGTERM from the main process, then
    ``chained`` (the loader's own, if any).

    A stop signal sent to the whole process group (``scancel``, a preemption, systemd, ``kill -- -PGID``) is the main
    process's to act on (``ldrop`` ends the batch and writes ``last.ckpt``); torch's worker handler let it end the
    workers, and the run failed ("DataLoader worker ... is killed by signal: Terminated"). The main process's own
    SIGTERM (``multiprocessing``'s terminate at exit) still ends the worker as torch's handler does, and the worker
    ends with the main process (torch's watchdog). Where Python cannot tell the sender (no ``sigwaitinfo``: macOS,
    Windows) the signals are left to torch."""

    def __init__(self, chained: Callable[[int], None] | None) -> None:
        self.chained = chained

    def __call__(self, worker_id: int) -> None:
        if hasattr(signal, "sigwaitinfo"):
            stops = {signal.SIGTERM, signal.SIGUSR1}
            signal.pthread_sigmask(signal.SIG_BLOCK, stops)  # every thread of the worker: taken by sigwaitinfo only
            threading.Thread(target=_end_on_parents_sigterm, args=(stops, os.getppid()), daemon=True,
                             name="ldrop-worker-signals").start()
        if self.chained is not None:
            self.chained(worker_id)


def _end_on_parents_sigterm(stops: set[signal.Signals], parent: int) -> None:
    while True:
        info = signal.sigwaitinfo(stops)
        if info.si_signo == signal.SIGTERM and info.si_pid == parent:
            os._exit(0)  # as torch's own handler: the main process terminating its worker


@dataclass
class _PartlyLoadedBatch:
    """What a worker returns for a batch with examples that failed to load: the others, collated (an empty
    batch, or ``None`` to drop it, if there are none), and the failed ones."""

    batch: Any
    skipped: list[SkippedExample]

    def pin_memory(self) -> _PartlyLoadedBatch:
        # Batches without a pin_memory method stay in pageable memory: slower to copy, still correct.
        pinned = self.batch.pin_memory() if hasattr(self.batch, "pin_memory") else self.batch
        return _PartlyLoadedBatch(pinned, self.skipped)


class _SkippingCollate:
    """``collate_fn`` over the examples that loaded (``collate_empty``: collate none rather than give
    ``None``)."""

    def __init__(self, collate_fn: Callable[[list[Any]], Any] | None, collate_empty: bool) -> None:
        if isinstance(collate_fn, _SkippingCollate):  # Lightning re-creates loaders from their attributes
            collate_fn = collate_fn.collate_fn
        self.collate_fn = collate_fn if collate_fn is not None else default_collate
        self.collate_empty = collate_empty

    def __call__(self, examples: list[Any]) -> Any:
        skipped = [e for e in examples if isinstance(e, SkippedExample)]
        if not skipped:
            return self.collate_fn(examples)
        loaded = [e for e in examples if not isinstance(e, SkippedExample)]
        return _PartlyLoadedBatch(self.collate_fn(loaded) if loaded or self.collate_empty else None, skipped)


def _log_skipped(skipped: list[SkippedExample]) -> None:
    log.warning("skipped %d example(s) that failed to load:\n  %s", len(skipped),
                "\n  ".join(f"{e.id}: {e.reason}" for e in skipped))


def _split_to_multiple(batches: list[np.ndarray], multiple: int) -> list[np.ndarray]:
    """Split the largest batches in two until the count divides by ``multiple``; repeat batches if stuck."""
    batches = list(batches)
    if not batches:
        return batches
    while len(batches) % multiple:
        largest = max(range(len(batches)), key=lambda i: len(batches[i]))
        if len(batches[largest]) < 2:
            # Fewer items than steps x ranks: repeat batches so every rank still gets the same count.
            missing = multiple - len(batches) % multiple
            batches += [batches[i % len(batches)] for i in range(missing)]
            break
        half = len(batches[largest]) // 2
        batches[largest : largest + 1] = [batches[largest][:half], batches[largest][half:]]
    return batches


class LengthGroupedSampler(_ShardedBatchSampler):
    """Fixed-size batches of items of similar length.

    Shuffled, each epoch cuts a permutation into windows of ``batch_size * window_batches`` items, sorts each
    by length, cuts it into batches and shuffles the batches; unshuffled, all items are sorted longest first.
    ``window_batches=1`` turns the grouping off.
    """

    def __init__(
        self, lengths: Sequence[int], batch_size: int, shuffle: bool = True, window_batches: int = 50,
        num_replicas: int | None = None, rank: int | None = None, seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if window_batches < 1:
            raise ValueError(f"window_batches must be at least 1, got {window_batches}")
        super().__init__(lengths, shuffle, num_replicas, rank, seed)
        self.batch_size = batch_size
        self.window_batches = window_batches

    def _make_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        n, size = len(self.lengths), self.batch_size
        grouped = self.window_batches > 1
        if self.shuffle:
            order = rng.permutation(n)
            if grouped:
                window = size * self.window_batches
                windows = [_longest_first(order[i : i + window], self.lengths) for i in range(0, n, window)]
                order = np.concatenate(windows) if windows else order
        else:
            order = _longest_first(np.arange(n), self.lengths) if grouped else np.arange(n)
        return [order[i : i + size] for i in range(0, n, size)]


class DynamicBatchSampler(_ShardedBatchSampler):
    """Batches of variable size, each at most ``max_batch_seconds`` of padded audio (``count * longest``).

    Items are sorted longest first and cut greedily (an item over the budget is a batch of its own;
    ``max_batch_size`` caps the count). Shuffling reorders equal lengths and the batches only, so the number
    of batches is the same every epoch.
    """

    def __init__(
        self, lengths: Sequence[int], max_batch_seconds: float, sample_rate: int = 16000,
        shuffle: bool = True, max_batch_size: int | None = None, num_replicas: int | None = None,
        rank: int | None = None, seed: int = 0,
    ) -> None:
        if max_batch_seconds <= 0:
            raise ValueError(f"max_batch_seconds must be positive, got {max_batch_seconds}")
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        super().__init__(lengths, shuffle, num_replicas, rank, seed)
        self.max_batch_seconds = max_batch_seconds
        self.sample_rate = sample_rate
        self.max_batch_size = max_batch_size

    @property
    def budget_samples(self) -> int:
        """The per-batch budget in samples: ``batch size * longest item <= budget_samples``."""
        return int(self.max_batch_seconds * self.sample_rate)

    def _make_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        n = len(self.lengths)
        if self.shuffle:
            order = np.lexsort((rng.random(n), -self.lengths))
        else:
            order = _longest_first(np.arange(n), self.lengths)
        budget, cap = self.budget_samples, self.max_batch_size or n
        batches, i = [], 0
        while i < n:
            count = max(1, min(cap, budget // int(self.lengths[order[i]])))
            batches.append(order[i : i + count])
            i += count
        return batches


def _longest_first(indices: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    return indices[np.argsort(-lengths[indices], kind="stable")]
