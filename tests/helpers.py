"""Test helpers: tiny backbones of every family and padded waveform batches."""

from __future__ import annotations

import torch

from ldrop.backbones import SpeechBackbone, tiny_config

#: (family, stable_layer_norm) pairs: every supported family and norm layout.
LAYOUTS = [
    ("wavlm", False),
    ("wavlm", True),
    ("hubert", False),
    ("hubert", True),
    ("wav2vec2", False),
    ("wav2vec2", True),
    ("data2vec", False),
]


def layout_id(layout: tuple[str, bool]) -> str:
    family, stable = layout
    return f"{family}-{'large' if stable else 'base'}"


def make_backbone(family: str = "wavlm", stable: bool = False, seed: int = 0, **kwargs) -> SpeechBackbone:
    """A tiny randomly initialised backbone in eval mode."""
    torch.manual_seed(seed)
    return SpeechBackbone.from_config(tiny_config(family, stable_layer_norm=stable, **kwargs)).eval()


def padded_batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random waveforms zero-padded to the longest: ``([batch, samples], [batch])``."""
    gen = torch.Generator().manual_seed(seed)
    lengths_t = torch.tensor(lengths)
    waves = torch.randn(len(lengths), max(lengths), generator=gen)
    waves[torch.arange(max(lengths))[None, :] >= lengths_t[:, None]] = 0.0
    return waves, lengths_t
