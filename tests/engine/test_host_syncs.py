"""Host syncs: the counter sees the calls that would make a CUDA device wait for the host, and the sparse
path makes one per forward whatever the depth."""

from __future__ import annotations

import pytest
import torch

from ldrop.engine import run_gated_layers
from ldrop.engine.host_syncs import HostSyncCounter
from tests.helpers import make_backbone, padded_batch

LENGTHS = [9600, 6400, 4000, 2400, 8000]


def _count(fn, *args) -> HostSyncCounter:
    with torch.inference_mode(), HostSyncCounter() as syncs:
        fn(*args)
    return syncs


@pytest.mark.parametrize(
    "call",
    [
        lambda x: x.sum().item(),
        lambda x: x.tolist(),
        lambda x: bool((x > 0).any()),
        lambda x: int(x.argmax()),
        lambda x: x.nonzero(),
        lambda x: x[x > 0],
        lambda x: x.cpu(),
        lambda x: x.to("cpu"),
        lambda x: x[torch.arange(2)],  # a host-built index: one copy to the device
        lambda x: torch.arange(2).to(x.device),
        lambda x: torch.tensor([1, 2], device=x.device),
        lambda x: x.cpu().tolist(),  # the copy syncs; reading the copy is free
        lambda x: torch.as_tensor(x).sum().item(),  # as_tensor returns x itself: still a device tensor
        lambda x: torch.as_tensor(x, dtype=torch.float64).sum().item(),  # a copy stays on x's device
        lambda x: torch.as_tensor(x, device="cpu").tolist(),
    ],
    ids=["item", "tolist", "bool", "int", "nonzero", "bool-mask index", "cpu", "to cpu", "host index",
         "host tensor to the device", "tensor from Python data on the device", "read of a host copy",
         "read after as_tensor", "read of an as_tensor copy", "as_tensor to the host"],
)
def test_each_kind_of_host_sync_is_counted_once(call):
    assert _count(call, torch.randn(5)).count == 1


@pytest.mark.parametrize(
    "call",
    [
        lambda x: x * 2 + x.sum(),
        lambda x: x.to(x.device, torch.float64),
        lambda x: x[torch.arange(2, device=x.device)],
        lambda x: torch.arange(3).tolist() + [int(torch.zeros(()) + 1)],  # host tensors only
        lambda x: torch.argsort(x, stable=True)[:2],
        lambda x: torch.as_tensor(x) < torch.arange(5, device=x.device),  # (geometry.frame_lengths)
    ],
    ids=["arithmetic", "to own device", "device index", "host tensors", "argsort", "as_tensor of a device tensor"],
)
def test_device_work_and_host_work_do_not_count(call):
    assert _count(call, torch.randn(5)).count == 0


def test_no_host_tag_outlives_its_counter():
    x = torch.arange(4)
    with HostSyncCounter():
        torch.as_tensor(x)
        host_copy = x.cpu()
    for tensor in (x, host_copy):  # made before the next counter: device tensors to it
        assert _count(lambda t: int(t.max()), tensor).count == 1


def test_extract_features_reads_the_shortest_length_and_copies_nothing():
    waves, lengths = padded_batch(LENGTHS)
    syncs = _count(make_backbone("wavlm").extract_features, waves, lengths)
    assert syncs.count <= 1 and all(event.kind == "read" for event in syncs.events), syncs.where()


def _sparse_forward_syncs(family: str, num_layers: int) -> HostSyncCounter:
    backbone = make_backbone(family, num_layers=num_layers)
    waves, lengths = padded_batch(LENGTHS)
    gen = torch.Generator().manual_seed(0)
    keep = (torch.rand(len(LENGTHS), num_layers, generator=gen) > 0.5).float()
    keep[0] = 1.0
    with torch.inference_mode():
        features, frame_mask = backbone.extract_features(waves, lengths)
        hidden = backbone.frontend(features, frame_mask)
        with HostSyncCounter() as syncs:
            run_gated_layers(backbone, hidden, frame_mask, keep, mode="sparse")
    return syncs


@pytest.mark.parametrize("family", ["wavlm", "hubert"])
@pytest.mark.parametrize("num_layers", [4, 12])
def test_the_engine_syncs_once_per_sparse_forward_whatever_the_depth(family, num_layers):
    syncs = _sparse_forward_syncs(family, num_layers)
    assert syncs.count_in("ldrop/engine") <= 1, syncs.where()


@pytest.mark.parametrize("num_layers", [12, 24])
@pytest.mark.parametrize("family", ["wavlm", "hubert", "wav2vec2", "data2vec"])
def test_the_whole_sparse_stack_syncs_at_most_twice_per_forward(family, num_layers):
    """The sparse plan and the batch's padding are read once each; no layer reads the host (the plan says which
    sub-batches are padded)."""
    syncs = _sparse_forward_syncs(family, num_layers)
    assert syncs.count <= 2, syncs.where()


def test_continuing_after_a_prefix_costs_no_extra_sync():
    backbone = make_backbone("hubert")
    waves, lengths = padded_batch(LENGTHS)
    keep = torch.ones(len(LENGTHS), backbone.num_layers)
    keep[1:, 2] = 0.0
    with torch.inference_mode():
        features, frame_mask = backbone.extract_features(waves, lengths)
        hidden = backbone.frontend(features, frame_mask)
        with HostSyncCounter() as syncs:
            run_gated_layers(backbone, hidden, frame_mask, keep, mode="sparse", start_layer=1)
    assert syncs.count_in("ldrop/engine") <= 1, syncs.where()
