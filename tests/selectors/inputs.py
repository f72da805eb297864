"""Inputs for the selector tests: small random features with padding."""

from __future__ import annotations

import torch
from torch import Tensor

NUM_LAYERS = 6
FEATURE_DIM = 16


def random_inputs(
    batch_size: int, frames: int = 20, feature_dim: int = FEATURE_DIM, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """``[batch, frames, feature_dim]`` features and the ``[batch, frames]`` bool frame mask.

    Samples differ in scale and offset so an input-reading selector sees different inputs, and all but the
    first are padded.
    """
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch_size, frames, feature_dim, generator=generator)
    features = features * torch.rand(batch_size, 1, 1, generator=generator) * 3
    features = features + torch.randn(batch_size, 1, feature_dim, generator=generator)
    lengths = torch.randint(frames // 2, frames + 1, (batch_size,), generator=generator)
    lengths[0] = frames
    frame_mask = torch.arange(frames) < lengths.unsqueeze(-1)
    return features, frame_mask
