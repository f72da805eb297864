"""The CNN frame geometry from a config: the numbers every user of it (adapter, FLOPs, selector) relies on."""

from __future__ import annotations

import pytest
import torch
from transformers import Wav2Vec2Config

from ldrop.backbones import SpeechBackbone, tiny_config
from ldrop.backbones.geometry import (
    STOCK_CNN,
    frame_hop,
    frame_lengths,
    receptive_field,
    shortest_sample_lengths,
)


@pytest.mark.parametrize("config", [STOCK_CNN, Wav2Vec2Config(), tiny_config("wavlm")], ids=["stock", "hf", "tiny"])
def test_the_stock_cnn_has_a_400_sample_field_and_a_320_sample_hop(config) -> None:
    assert (receptive_field(config), frame_hop(config)) == (400, 320)
    assert frame_lengths(config, 399) == 0 and frame_lengths(config, 400) == 1 and frame_lengths(config, 720) == 2
    assert isinstance(frame_lengths(config, 16000), int)


def test_frame_lengths_match_the_model_below_and_above_the_receptive_field() -> None:
    backbone = SpeechBackbone.from_config(tiny_config("hubert"))
    samples = torch.tensor([0, 1, 250, 399, 400, 401, 719, 720, 16000])
    expected = backbone.model._get_feat_extract_output_lengths(samples).clamp(min=0)
    assert torch.equal(frame_lengths(backbone.config, samples), expected)
    assert torch.equal(backbone.frame_lengths(samples), expected)


def test_shortest_sample_lengths_invert_frame_lengths_for_another_layout() -> None:
    config = tiny_config("wav2vec2", conv_kernel=(4, 3), conv_stride=(2, 3), conv_dim=(8, 8))
    assert (receptive_field(config), frame_hop(config)) == (8, 6)
    frames = torch.tensor([1, 2, 7, 50])
    samples = shortest_sample_lengths(config, frames)
    assert torch.equal(frame_lengths(config, samples), frames)
    assert torch.equal(frame_lengths(config, samples - 1), frames - 1)
