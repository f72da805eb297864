"""run_gated_layers: skipped layers are the identity, and the sparse path really skips them."""

from __future__ import annotations

import pytest
import torch

from ldrop.engine import layer_guard, run_gated_layers
from tests.helpers import make_backbone, padded_batch

LENGTHS = [9600, 6400, 4000, 2400, 8000]


def _front(backbone, lengths=LENGTHS, seed=0):
    waves, lens = padded_batch(lengths, seed)
    features, frame_mask = backbone.extract_features(waves, lens)
    return backbone.frontend(features, frame_mask), frame_mask


def _mixed_mask(batch: int, layers: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    keep = (torch.rand(batch, layers, generator=gen) > 0.5).float()
    keep[0] = 1.0  # keeps every layer
    keep[1] = 0.0  # keeps none
    return keep


def _reference(backbone, hidden, frame_mask, keep):
    """Sample by sample, layer by layer: the definition of a skipped layer being the identity."""
    outs = []
    for b in range(hidden.shape[0]):
        n = int(frame_mask[b].sum())
        h = hidden[b : b + 1, :n]
        m = frame_mask[b : b + 1, :n]
        context = backbone.prepare_layers(m)
        for i in range(backbone.num_layers):
            if keep[b, i] > 0.5:
                h = backbone.run_layer(i, h, m, context)
        h = backbone.finalize(h)
        outs.append(torch.nn.functional.pad(h, (0, 0, 0, hidden.shape[1] - n)))
    return torch.cat(outs)


def test_sparse_and_dense_paths_agree_on_hard_masks(backbone):
    with torch.no_grad():
        hidden, frame_mask = _front(backbone)
        keep = _mixed_mask(hidden.shape[0], backbone.num_layers)
        dense = run_gated_layers(backbone, hidden, frame_mask, keep, mode="dense")
        sparse = run_gated_layers(backbone, hidden, frame_mask, keep, mode="sparse")
    assert (dense - sparse).abs().max() <= 1e-4


def test_skipped_layer_is_identity_per_sample(backbone):
    with torch.no_grad():
        hidden, frame_mask = _front(backbone)
        keep = _mixed_mask(hidden.shape[0], backbone.num_layers, seed=3)
        sparse = run_gated_layers(backbone, hidden, frame_mask, keep)
        reference = _reference(backbone, hidden, frame_mask, keep)
    assert (sparse - reference).abs().max() <= 1e-4


def test_keeping_every_layer_equals_the_full_model(backbone):
    waves, lengths = padded_batch(LENGTHS)
    with torch.no_grad():
        full, frame_mask = backbone(waves, lengths)
        hidden, _ = _front(backbone)
        gated = run_gated_layers(backbone, hidden, frame_mask, torch.ones(len(LENGTHS), backbone.num_layers))
    assert (gated - full.masked_fill(~frame_mask[..., None], 0)).abs().max() <= 1e-5


def test_padding_frames_of_the_output_are_zero(backbone):
    with torch.no_grad():
        hidden, frame_mask = _front(backbone)
        out = run_gated_layers(backbone, hidden, frame_mask, _mixed_mask(len(LENGTHS), backbone.num_layers))
    assert out[~frame_mask].abs().max() == 0


def test_wavlm_position_bias_exists_when_layer_zero_is_skipped():
    backbone = make_backbone("wavlm")
    with torch.no_grad():
        hidden, frame_mask = _front(backbone)
        keep = torch.ones(len(LENGTHS), backbone.num_layers)
        keep[:, 0] = 0.0
        sparse = run_gated_layers(backbone, hidden, frame_mask, keep, mode="sparse")
        reference = _reference(backbone, hidden, frame_mask, keep)
    assert torch.isfinite(sparse).all()
    assert (sparse - reference).abs().max() <= 1e-4


def test_auto_mode_is_sparse_without_autograd():
    backbone = make_backbone("hubert")
    calls = []
    for i, layer in enumerate(backbone.layers):
        layer.register_forward_hook(lambda mod, args, out, i=i: calls.append((i, args[0].shape[0])))
    hidden, frame_mask = _front(backbone)
    keep = torch.zeros(len(LENGTHS), backbone.num_layers)
    keep[:2, 1] = 1.0
    with torch.inference_mode():
        run_gated_layers(backbone, hidden, frame_mask, keep)
    assert calls == [(1, 2)]  # one layer, on a sub-batch of two samples; the others never ran
    calls.clear()
    run_gated_layers(backbone, hidden, frame_mask, keep)  # autograd on: dense, every layer, whole batch
    assert calls == [(i, len(LENGTHS)) for i in range(backbone.num_layers)]


def test_sparse_sub_batch_padding_is_trimmed_to_its_longest_sample():
    backbone = make_backbone("wav2vec2")
    frames_seen = []
    backbone.layers[0].register_forward_hook(lambda mod, args, out: frames_seen.append(args[0].shape[1]))
    hidden, frame_mask = _front(backbone)
    keep = torch.zeros(len(LENGTHS), backbone.num_layers)
    keep[3, 0] = 1.0  # only the 2400-sample clip (7 frames) runs layer 0
    with torch.no_grad():
        run_gated_layers(backbone, hidden, frame_mask, keep)
    assert frames_seen == [int(frame_mask[3].sum())]


def test_dense_path_passes_gradients_to_soft_keep_values():
    backbone = make_backbone("wavlm")
    hidden, frame_mask = _front(backbone)
    keep = torch.full((len(LENGTHS), backbone.num_layers), 0.5, requires_grad=True)
    run_gated_layers(backbone, hidden, frame_mask, keep, mode="dense").square().sum().backward()
    assert keep.grad is not None and keep.grad.abs().sum() > 0


def test_sparse_path_with_autograd_trains_the_layers_that_ran():
    backbone = make_backbone("hubert").train()
    hidden, frame_mask = _front(backbone)
    keep = torch.zeros(len(LENGTHS), backbone.num_layers)
    keep[:, 2] = 1.0
    keep[0, 0] = 1.0
    run_gated_layers(backbone, hidden, frame_mask, keep, mode="sparse").square().sum().backward()
    grads = [any(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters()) for layer in backbone.layers]
    assert grads == [True, False, True, False]


def test_sparse_path_with_autograd_matches_dense_values():
    backbone = make_backbone("data2vec")
    hidden, frame_mask = _front(backbone)
    keep = _mixed_mask(len(LENGTHS), backbone.num_layers, seed=5)
    sparse = run_gated_layers(backbone, hidden, frame_mask, keep, mode="sparse")
    dense = run_gated_layers(backbone, hidden, frame_mask, keep, mode="dense")
    assert (sparse - dense).abs().max() <= 1e-4


def test_return_all_gives_one_state_per_layer():
    backbone = make_backbone("wavlm")
    with torch.no_grad():
        hidden, frame_mask = _front(backbone)
        out, states = run_gated_layers(
            backbone, hidden, frame_mask, torch.ones(len(LENGTHS), backbone.num_layers), return_all=True
        )
    assert len(states) == backbone.num_layers
    assert torch.allclose(backbone.finalize(states[-1]).masked_fill(~frame_mask[..., None], 0), out)


def test_bf16_autocast_paths_agree():
    backbone = make_backbone("wavlm")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        hidden, frame_mask = _front(backbone)
        keep = _mixed_mask(len(LENGTHS), backbone.num_layers)
        dense = run_gated_layers(backbone, hidden, frame_mask, keep, mode="dense")
        sparse = run_gated_layers(backbone, hidden, frame_mask, keep, mode="sparse")
    assert torch.isfinite(sparse.float()).all()
    assert (dense.float() - sparse.float()).abs().max() <= 5e-2


@pytest.mark.parametrize("shape", [(5, 3), (4, 4), (5,)])
def test_wrong_keep_mask_shape_is_named(shape):
    backbone = make_backbone("wavlm")
    hidden, frame_mask = _front(backbone)
    with pytest.raises(ValueError, match="keep_mask"):
        run_gated_layers(backbone, hidden, frame_mask, torch.ones(shape))


def test_sparse_return_all_states_are_each_layers_own_output():
    """Collected states are not overwritten in place by later layers (padding beyond the longest sample)."""
    backbone = make_backbone("hubert")
    with torch.no_grad():
        hidden, frame_mask = _front(backbone)
        # Pad two frames beyond the longest clip, so that even a full sub-batch takes the in-place path.
        hidden = torch.nn.functional.pad(hidden, (0, 0, 0, 2))
        frame_mask = torch.nn.functional.pad(frame_mask, (0, 2))
        keep = _mixed_mask(len(LENGTHS), backbone.num_layers, seed=1)
        _, dense = run_gated_layers(backbone, hidden, frame_mask, keep, mode="dense", return_all=True)
        _, sparse = run_gated_layers(backbone, hidden, frame_mask, keep, mode="sparse", return_all=True)
    real = frame_mask[..., None]
    assert max(float(((d - s) * real).abs().max()) for d, s in zip(dense, sparse, strict=True)) <= 1e-4


def test_a_layer_the_guard_refuses_is_skipped_by_every_input(backbone):
    hidden, frame_mask = _front(backbone)
    keep = _mixed_mask(hidden.shape[0], backbone.num_layers)
    asked = []

    def guard(index: int, inputs: int, frames: int) -> bool:
        asked.append((index, inputs, frames))
        return index != 2

    with torch.no_grad(), layer_guard(guard):
        guarded = run_gated_layers(backbone, hidden, frame_mask, keep, mode="sparse")
    expected_keep = keep.clone()
    expected_keep[:, 2] = 0.0
    with torch.no_grad():
        expected = run_gated_layers(backbone, hidden, frame_mask, expected_keep, mode="sparse")
        unguarded = run_gated_layers(backbone, hidden, frame_mask, keep, mode="sparse")  # outside the block
    assert torch.allclose(guarded, expected, atol=1e-6)
    assert not torch.allclose(guarded, unguarded, atol=1e-4)
    lengths = frame_mask.sum(1)
    assert [i for i, _, _ in asked] == [i for i in range(backbone.num_layers) if keep[:, i].any()]
    assert all(n == int((keep[:, i] > 0.5).sum()) and f == int(lengths[keep[:, i] > 0.5].max()) for i, n, f in asked)
