"""The FLOPs formula against torch's own FlopCounterMode, run on the real modules."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import Data2VecAudioConfig, HubertConfig, Wav2Vec2Config, WavLMConfig

from ldrop.backbones import SpeechBackbone, tiny_config
from ldrop.backbones.geometry import frame_lengths, shortest_sample_lengths
from ldrop.engine.flops import ForwardFlops, count_forward_flops, layer_flops
from ldrop.engine.gated import run_gated_layers
from tests.helpers import padded_batch

# The formula is exact (FlopCounterMode counts integers), so the tolerance only absorbs float rounding; it is
# far tighter than the 5% the formula is specified to, so a missing term (e.g. WavLM's gate) would show.
REL = 1e-9

BASE_CONFIGS = {
    "wavlm": WavLMConfig,
    "hubert": HubertConfig,
    "wav2vec2": Wav2Vec2Config,
    "data2vec": Data2VecAudioConfig,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """FLOPs do not depend on threads; one thread keeps these many small ops fast on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def counted(fn) -> int:
    """FLOPs FlopCounterMode sees while ``fn`` runs without autograd.

    torch's CPU flash-attention kernel is missing from FlopCounterMode's table, so attention runs on the math
    backend here, where it decomposes into the ``bmm`` calls the counter knows.
    """
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def fixed_part(backbone: SpeechBackbone, waves: torch.Tensor, lengths: torch.Tensor):
    features, frame_mask = backbone.extract_features(waves, lengths)
    return backbone.frontend(features, frame_mask), frame_mask


def whole_forward(backbone: SpeechBackbone, waves: torch.Tensor, lengths: torch.Tensor, keep: torch.Tensor):
    hidden, frame_mask = fixed_part(backbone, waves, lengths)
    return run_gated_layers(backbone, hidden, frame_mask, keep, mode="sparse")


def heterogeneous_mask(batch: int, layers: int, seed: int = 0) -> torch.Tensor:
    """A ``[batch, layers]`` 0/1 mask where samples keep different layers and some layer is kept by none."""
    gen = torch.Generator().manual_seed(seed)
    keep = (torch.rand(batch, layers, generator=gen) > 0.5).float()
    keep[:, -1] = 0.0
    keep[0, 0], keep[-1, 0] = 1.0, 0.0
    return keep


# ---------------------------------------------------------------- tiny configs, every family and layout
def test_fixed_part_matches_flop_counter(backbone):
    waves, lengths = padded_batch([8000, 8000])
    measured = counted(lambda: fixed_part(backbone, waves, lengths))
    assert count_forward_flops(backbone, lengths).fixed.sum().item() == pytest.approx(measured, rel=REL)


def test_one_layer_matches_flop_counter(backbone):
    waves, lengths = padded_batch([8000, 8000])
    with torch.no_grad():
        hidden, frame_mask = fixed_part(backbone, waves, lengths)
    context = backbone.prepare_layers(frame_mask)
    measured = counted(lambda: backbone.run_layer(1, hidden, frame_mask, context))
    expected = layer_flops(backbone.config, frame_mask.sum(1)).sum().item()
    assert expected == pytest.approx(measured, rel=REL)


def test_sparse_pass_with_heterogeneous_mask_matches_flop_counter(backbone):
    waves, lengths = padded_batch([8000] * 3)
    keep = heterogeneous_mask(3, backbone.num_layers)
    measured = counted(lambda: whole_forward(backbone, waves, lengths, keep))
    assert count_forward_flops(backbone, lengths, keep).total.sum().item() == pytest.approx(measured, rel=REL)


def test_single_sample_pass_matches_flop_counter(backbone):
    waves, lengths = padded_batch([6000])
    keep = torch.ones(1, backbone.num_layers)
    keep[0, 1] = 0.0
    measured = counted(lambda: whole_forward(backbone, waves, lengths, keep))
    assert count_forward_flops(backbone, lengths, keep).total.item() == pytest.approx(measured, rel=REL)


def test_mixed_length_batch_counts_each_sample_as_if_run_alone(backbone):
    sample_lengths = [4000, 9000, 6500]
    keep = heterogeneous_mask(3, backbone.num_layers)
    alone = 0
    for i, length in enumerate(sample_lengths):
        waves, lengths = padded_batch([length], seed=i)
        alone += counted(lambda w=waves, n=lengths, k=keep[i : i + 1]: whole_forward(backbone, w, n, k))
    formula = count_forward_flops(backbone, torch.tensor(sample_lengths), keep).total
    assert formula.sum().item() == pytest.approx(alone, rel=REL)


def test_keep_mask_of_zeros_costs_only_the_fixed_part(backbone):
    waves, lengths = padded_batch([8000, 8000])
    keep = torch.zeros(2, backbone.num_layers)
    measured = counted(lambda: whole_forward(backbone, waves, lengths, keep))
    flops = count_forward_flops(backbone, lengths, keep)
    assert torch.equal(flops.total, flops.fixed)
    assert flops.fixed.sum().item() == pytest.approx(measured, rel=REL)


def test_padded_batch_costs_at_least_the_per_sample_count(backbone):
    waves, lengths = padded_batch([4000, 9000])
    keep = torch.ones(2, backbone.num_layers)
    measured = counted(lambda: whole_forward(backbone, waves, lengths, keep))
    assert count_forward_flops(backbone, lengths, keep).total.sum().item() < measured


# ---------------------------------------------------------------- base-sized configs (random init, 1 s)
@pytest.fixture(scope="module", params=sorted(BASE_CONFIGS))
def base_backbone(request):
    torch.manual_seed(0)
    return SpeechBackbone.from_config(BASE_CONFIGS[request.param]()).eval()


def test_base_size_fixed_part_matches_flop_counter(base_backbone):
    waves, lengths = padded_batch([16000])
    measured = counted(lambda: fixed_part(base_backbone, waves, lengths))
    assert count_forward_flops(base_backbone, lengths).fixed.item() == pytest.approx(measured, rel=REL)


def test_base_size_sparse_pass_matches_flop_counter(base_backbone):
    waves, lengths = padded_batch([16000, 16000])
    keep = heterogeneous_mask(2, base_backbone.num_layers)
    measured = counted(lambda: whole_forward(base_backbone, waves, lengths, keep))
    flops = count_forward_flops(base_backbone, lengths, keep)
    assert flops.total.sum().item() == pytest.approx(measured, rel=REL)


# ---------------------------------------------------------------- the API itself
def test_total_is_fixed_plus_kept_layers():
    flops = ForwardFlops(
        fixed=torch.tensor([10.0, 20.0]),
        per_layer=torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
        keep=torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]),
    )
    assert flops.total.tolist() == [14.0, 20.0]
    assert flops.full.tolist() == [16.0, 35.0]


def test_extra_fixed_is_added_to_every_sample():
    config = tiny_config("hubert")
    lengths = torch.tensor([16000, 8000])
    plain = count_forward_flops(config, lengths)
    with_selector = count_forward_flops(config, lengths, extra_fixed=torch.tensor([100.0, 50.0]))
    assert (with_selector.fixed - plain.fixed).tolist() == [100.0, 50.0]


def test_soft_keep_mask_gives_expected_cost():
    config = tiny_config("wav2vec2")
    lengths = torch.tensor([16000])
    half = count_forward_flops(config, lengths, torch.full((1, 4), 0.5))
    assert half.total.item() == pytest.approx((half.fixed + half.per_layer.sum(1) / 2).item())


def test_frame_lengths_give_the_shortest_waveform_cost():
    config = tiny_config("wavlm")
    frames = torch.tensor([49, 10])
    samples = shortest_sample_lengths(config, frames)
    assert torch.equal(frame_lengths(config, samples), frames)
    assert torch.equal(frame_lengths(config, samples - 1), frames - 1)
    by_frames = count_forward_flops(config, frame_lengths=frames)
    by_samples = count_forward_flops(config, samples)
    assert torch.equal(by_frames.total, by_samples.total)


@pytest.mark.parametrize("family", ["wavlm", "hubert", "wav2vec2", "data2vec"])
def test_frame_lengths_from_a_config_agree_with_the_models_own(family):
    backbone = SpeechBackbone.from_config(tiny_config(family))
    samples = torch.arange(400, 4000, 37)
    expected = backbone.model._get_feat_extract_output_lengths(samples)
    assert torch.equal(frame_lengths(backbone.config, samples), expected)
    assert torch.equal(backbone.frame_lengths(samples), expected)


def test_per_second_divides_by_duration():
    config = tiny_config("data2vec")
    flops = count_forward_flops(config, torch.tensor([32000]))
    assert flops.per_second(torch.tensor([32000])).item() == pytest.approx(flops.total.item() / 2)


def test_wrong_keep_mask_shape_is_rejected():
    with pytest.raises(ValueError, match="keep_mask"):
        count_forward_flops(tiny_config("wavlm"), torch.tensor([16000]), torch.ones(1, 3))


def test_lengths_must_be_given_exactly_once():
    with pytest.raises(ValueError, match="exactly one"):
        count_forward_flops(tiny_config("wavlm"))
