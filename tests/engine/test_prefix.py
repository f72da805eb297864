"""Prefix layers run once (run_prefix_layers), then run_gated_layers continues from them (start_layer)."""

from __future__ import annotations

import pytest
import torch

from ldrop.engine import run_gated_layers, run_prefix_layers
from tests.helpers import make_backbone, padded_batch

LENGTHS = [9600, 6400, 4000, 2400, 8000]


def _front(backbone):
    waves, lens = padded_batch(LENGTHS)
    features, frame_mask = backbone.extract_features(waves, lens)
    return backbone.frontend(features, frame_mask), frame_mask


def _mask_with_prefix(batch: int, layers: int, prefix: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    keep = (torch.rand(batch, layers, generator=gen) > 0.5).float()
    keep[1] = 0.0  # keeps nothing but the prefix
    keep[:, :prefix] = 1.0
    return keep


@pytest.mark.parametrize("family", ["wavlm", "hubert"])
@pytest.mark.parametrize("mode", ["sparse", "dense"])
@pytest.mark.parametrize("prefix", [1, 2])
def test_prefix_then_continue_equals_a_run_from_layer_zero(family, mode, prefix):
    backbone = make_backbone(family)
    with torch.no_grad():
        hidden, frame_mask = _front(backbone)
        keep = _mask_with_prefix(hidden.shape[0], backbone.num_layers, prefix)
        full = run_gated_layers(backbone, hidden, frame_mask, keep, mode=mode)
        context = backbone.prepare_layers(frame_mask)
        after_prefix = run_prefix_layers(backbone, hidden, frame_mask, prefix, context)
        continued = run_gated_layers(backbone, after_prefix, frame_mask, keep, mode=mode, start_layer=prefix,
                                     context=context)
    assert (continued - full).abs().max() <= 1e-5


def test_continuing_leaves_the_prefix_output_unchanged_for_reuse():
    backbone = make_backbone("wavlm")
    with torch.no_grad():
        hidden, frame_mask = _front(backbone)
        context = backbone.prepare_layers(frame_mask)
        after_prefix = run_prefix_layers(backbone, hidden, frame_mask, 1, context)
        before = after_prefix.clone()
        for seed in range(3):  # several budgets reuse one prefix
            keep = _mask_with_prefix(hidden.shape[0], backbone.num_layers, 1, seed)
            run_gated_layers(backbone, after_prefix, frame_mask, keep, start_layer=1, context=context)
    assert torch.equal(after_prefix, before)


def test_continuing_needs_every_sample_to_keep_the_prefix():
    backbone = make_backbone("hubert")
    with torch.no_grad():
        hidden, frame_mask = _front(backbone)
        keep = torch.ones(hidden.shape[0], backbone.num_layers)
        keep[2, 0] = 0.0
        with pytest.raises(ValueError, match="must keep layers 0..0"):
            run_gated_layers(backbone, hidden, frame_mask, keep, start_layer=1)
        with pytest.raises(ValueError, match="return_all"):
            run_gated_layers(backbone, hidden, frame_mask, torch.ones_like(keep), start_layer=1, return_all=True)
        with pytest.raises(ValueError, match="start_layer must be in"):
            run_gated_layers(backbone, hidden, frame_mask, torch.ones_like(keep), start_layer=-1)
