"""LengthGroupedSampler and DynamicBatchSampler: grouping, budgets, determinism, DDP sharding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldrop.data import AudioDataset, AudioExample, DynamicBatchSampler, LengthGroupedSampler
from ldrop.data.batch import collate_audio

LENGTHS = np.random.default_rng(0).integers(1_000, 160_000, size=203).tolist()


def grouped(**kwargs) -> LengthGroupedSampler:
    return LengthGroupedSampler(
        kwargs.pop("lengths", LENGTHS), batch_size=kwargs.pop("batch_size", 8), **kwargs
    )


def dynamic(**kwargs) -> DynamicBatchSampler:
    return DynamicBatchSampler(
        kwargs.pop("lengths", LENGTHS), max_batch_seconds=kwargs.pop("max_batch_seconds", 30.0), **kwargs
    )


BOTH = pytest.mark.parametrize("make", [grouped, dynamic], ids=["length_grouped", "dynamic"])


def padded_samples(batches, lengths=LENGTHS) -> int:
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


@BOTH
def test_one_process_gets_every_index_exactly_once(make):
    indices = [i for batch in make(shuffle=True) for i in batch]
    assert sorted(indices) == list(range(len(LENGTHS)))


@BOTH
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("num_replicas", [2, 3, 4])
def test_ranks_get_disjoint_items_that_cover_the_dataset(make, shuffle, num_replicas):
    per_rank = [
        [i for batch in make(shuffle=shuffle, num_replicas=num_replicas, rank=r, seed=5) for i in batch]
        for r in range(num_replicas)
    ]
    flat = [i for rank_items in per_rank for i in rank_items]
    assert len(flat) == len(set(flat))
    assert sorted(flat) == list(range(len(LENGTHS)))


@BOTH
@pytest.mark.parametrize("num_replicas", [2, 3, 4, 7])
def test_every_rank_gets_the_same_number_of_batches(make, num_replicas):
    counts = {len(list(make(num_replicas=num_replicas, rank=r))) for r in range(num_replicas)}
    lens = {len(make(num_replicas=num_replicas, rank=r)) for r in range(num_replicas)}
    assert len(counts) == 1 and counts == lens


@BOTH
def test_a_dataset_smaller_than_the_world_repeats_items_so_ranks_stay_even(make):
    per_rank = [list(make(lengths=[16000, 8000, 4000], num_replicas=4, rank=r)) for r in range(4)]
    assert [len(batches) for batches in per_rank] == [1, 1, 1, 1]
    assert {i for batches in per_rank for b in batches for i in b} == {0, 1, 2}


@BOTH
def test_same_seed_and_epoch_give_the_same_batches(make):
    a, b = make(seed=3), make(seed=3)
    a.set_epoch(4)
    b.set_epoch(4)
    assert list(a) == list(b)


@BOTH
def test_set_epoch_changes_the_training_batches(make):
    sampler = make(seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first


@BOTH
def test_a_different_seed_changes_the_training_batches(make):
    assert list(make(seed=1)) != list(make(seed=2))


@BOTH
def test_evaluation_order_is_fixed_and_longest_first(make):
    sampler = make(shuffle=False)
    first = list(sampler)
    sampler.set_epoch(7)
    assert list(sampler) == first
    order = [i for batch in first for i in batch]
    assert [LENGTHS[i] for i in order] == sorted(LENGTHS, reverse=True)


@BOTH
def test_the_costliest_training_batch_comes_first(make):
    batches = list(make(seed=9))
    costs = [len(b) * max(LENGTHS[i] for i in b) for b in batches]
    assert costs[0] == max(costs)


@BOTH
def test_lightning_reaches_set_epoch_through_the_sampler_attribute(make):
    # Lightning calls dataloader.batch_sampler.sampler.set_epoch(epoch) at every epoch start.
    sampler = make()
    sampler.sampler.set_epoch(3)
    assert sampler.epoch == 3


def test_rank_outside_the_world_is_rejected():
    with pytest.raises(ValueError, match="rank"):
        grouped(num_replicas=2, rank=2)


def test_length_grouped_batches_hold_at_most_batch_size_items():
    assert max(len(b) for b in grouped(batch_size=8)) == 8
    assert sum(len(b) for b in grouped(batch_size=8)) == len(LENGTHS)


def test_length_grouping_cuts_padding_compared_with_random_batches():
    grouped_padding = padded_samples(list(grouped(seed=1)))
    random_padding = padded_samples(list(grouped(seed=1, window_batches=1)))
    assert grouped_padding < 0.7 * random_padding


def test_without_grouping_evaluation_keeps_dataset_order():
    order = [i for batch in grouped(shuffle=False, window_batches=1) for i in batch]
    assert order == list(range(len(LENGTHS)))


def test_dynamic_batches_hold_at_most_the_padded_audio_budget():
    sampler = dynamic(max_batch_seconds=20.0, sample_rate=16000)
    for batch in sampler:
        assert len(batch) * max(LENGTHS[i] for i in batch) <= 20.0 * 16000


def test_dynamic_batch_size_varies_with_item_length():
    sizes = {len(batch) for batch in dynamic(max_batch_seconds=20.0)}
    assert len(sizes) > 3


def test_dynamic_item_longer_than_the_budget_forms_a_batch_of_its_own():
    batches = list(
        DynamicBatchSampler([100_000, 1_000, 1_000], max_batch_seconds=1.0, sample_rate=16000, shuffle=False)
    )
    assert batches[0] == [0]
    assert batches[1:] == [[1, 2]]


def test_dynamic_batch_count_is_the_same_every_epoch():
    sampler = dynamic(max_batch_seconds=15.0, seed=2)
    counts = set()
    for epoch in range(5):
        sampler.set_epoch(epoch)
        counts.add(len(list(sampler)))
    assert len(counts) == 1


def test_dynamic_max_batch_size_caps_the_number_of_items():
    sampler = DynamicBatchSampler([1_000] * 50, max_batch_seconds=100.0, max_batch_size=7)
    assert max(len(b) for b in sampler) == 7


def test_dynamic_reshuffles_items_of_equal_length_between_epochs():
    sampler = DynamicBatchSampler([16_000] * 40, max_batch_seconds=4.0, seed=0)
    first = sorted(map(sorted, sampler))
    sampler.set_epoch(1)
    assert sorted(map(sorted, sampler)) != first


# ------------------------------------------------------------------------------------------- resuming
@BOTH
def test_a_sampler_resumed_from_its_state_yields_the_rest_of_the_epoch(make):
    sampler = make(seed=3, num_replicas=2, rank=1)
    sampler.set_epoch(4)
    iterator = iter(sampler)
    done = [next(iterator) for _ in range(3)]
    rest = list(iterator)
    state = sampler.state_dict()
    assert state == {"epoch": 4, "batches_done": 3 + len(rest)}

    resumed = make(seed=3, num_replicas=2, rank=1)
    resumed.load_state_dict({"epoch": 4, "batches_done": 3})
    assert resumed.batches_to_skip == 3 and len(resumed) == len(sampler)  # the epoch keeps its length
    assert list(resumed) == rest and rest and done
    assert list(resumed) == done + rest  # the skip applies once
    resumed.load_state_dict({"epoch": 4, "batches_done": 3})
    resumed.set_epoch(5)  # another epoch than the saved one: nothing skipped
    sampler.set_epoch(5)
    assert list(resumed) == list(sampler)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_the_resumable_loader_saves_the_batches_handed_out_not_those_prefetched(num_workers):
    from ldrop.data.samplers import ResumableDataLoader

    def loader() -> ResumableDataLoader:
        return ResumableDataLoader(list(range(len(LENGTHS))), batch_sampler=grouped(seed=1), num_workers=num_workers)

    first = loader()
    first.batch_sampler.set_epoch(2)
    iterator = iter(first)
    seen = [next(iterator).tolist() for _ in range(5)]
    state = first.state_dict()
    assert state == {"epoch": 2, "batches_done": 5}  # workers drew more indices than that
    rest = [batch.tolist() for batch in iterator]
    del iterator

    resumed = loader()
    resumed.load_state_dict(state)
    assert [batch.tolist() for batch in resumed] == rest
    assert resumed.state_dict()["batches_done"] == len(seen) + len(rest)


class _Ramps(AudioDataset):
    """Long clips whose samples count up from 0, so that a cropped clip's first sample is its crop's offset."""

    def __init__(self, count: int = 40) -> None:
        super().__init__(min_samples=1, max_samples=100, random_crop=True)
        self.raw_lengths = [1000 + 37 * i for i in range(count)]
        self.targets, self.ids = [0] * count, [str(i) for i in range(count)]

    def __len__(self) -> int:
        return len(self.raw_lengths)

    def load(self, index: int) -> AudioExample:
        return AudioExample(torch.arange(self.raw_lengths[index], dtype=torch.float32), 0, self.ids[index])


def _crops(num_workers: int, epoch: int = 0, resume_after: int | None = None) -> dict[str, float]:
    """Each clip's crop offset over one epoch of a ResumableDataLoader (resumed after ``resume_after`` batches)."""
    from ldrop.data.samplers import ResumableDataLoader

    dataset = _Ramps()
    loader = ResumableDataLoader(dataset, batch_sampler=LengthGroupedSampler(dataset.lengths, 4, seed=5),
                                 num_workers=num_workers, collate_fn=collate_audio)
    loader.batch_sampler.set_epoch(epoch)
    if resume_after is not None:
        loader.load_state_dict({"epoch": epoch, "batches_done": resume_after})
    return {i: float(w[0]) for batch in loader for i, w in zip(batch.ids, batch.waveforms, strict=True)}


def test_random_crops_depend_on_the_epoch_and_clip_only_not_on_workers_or_a_resume():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    crops = _crops(num_workers=0)
    assert torch.equal(torch.get_rng_state(), before)  # the process's random stream is left alone
    assert len(crops) == 40 and len(set(crops.values())) > 30  # random offsets, not all 0
    assert _crops(num_workers=2) == crops  # whichever worker loads a clip
    resumed = _crops(num_workers=2, resume_after=4)  # the rest of the epoch, in fresh worker processes
    assert len(resumed) == 24 and all(crops[i] == offset for i, offset in resumed.items())
    other_epoch = _crops(num_workers=0, epoch=1)
    assert sum(other_epoch[i] != crops[i] for i in crops) > 30  # a new crop each epoch


class _Draws(torch.utils.data.Dataset):
    """A project's augmentation drawing from numpy's global generator, and whether SIGTERM is blocked there."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[float, bool]:
        import signal

        blocked = hasattr(signal, "pthread_sigmask") and signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        return float(np.random.rand()), blocked


def test_workers_keep_lightnings_rank_aware_seeding_and_leave_stop_signals_to_the_main_process():
    import functools

    from lightning.fabric.utilities.seed import pl_worker_init_function, seed_everything

    from ldrop.data.samplers import ResumableDataLoader

    seed_everything(0, workers=True)  # as LightningCLI does on every rank
    loaders = [ResumableDataLoader(_Draws(), batch_size=2, num_workers=2) for _ in range(2)]
    assert all(loader.worker_init_fn is None for loader in loaders)  # where Lightning adds its seeding
    for rank, loader in enumerate(loaders):  # what the trainer adds on each rank
        loader.worker_init_fn = functools.partial(pl_worker_init_function, rank=rank)
    items = [[item for draws, blocked in loader for item in zip(draws.tolist(), blocked.tolist(), strict=True)]
             for loader in loaders]
    assert [draw for draw, _ in items[0]] != [draw for draw, _ in items[1]]  # each rank's workers draw their own
    if hasattr(__import__("signal"), "sigwaitinfo"):
        assert all(blocked for rank_items in items for _, blocked in rank_items)
    assert all(loader.worker_init_fn.func is pl_worker_init_function for loader in loaders)  # put back
