"""The CNN's frame geometry from anything with ``conv_kernel`` and ``conv_stride`` (a config, or
:data:`STOCK_CNN`)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


class ConvLayout(NamedTuple):
    """A CNN layout, as a Hugging Face config names it."""

    conv_kernel: tuple[int, ...]
    conv_stride: tuple[int, ...]


#: wav2vec 2.0 / HuBERT / WavLM / data2vec: 25 ms windows every 20 ms at 16 kHz.
STOCK_CNN = ConvLayout((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2))


def conv_output_length(length: Tensor, kernel: int, stride: int, padding: int = 0) -> Tensor:
    """Output frames of a 1-D convolution on ``length`` input frames (at least 0)."""
    return (torch.div(length + 2 * padding - kernel, stride, rounding_mode="floor") + 1).clamp(min=0)


def frame_lengths(config, samples: Tensor | int) -> Tensor | int:
    """Frames the CNN produces for ``samples`` (``[batch]`` or an ``int``); 0 below the receptive field."""
    length = torch.as_tensor(samples).to(torch.long)
    for kernel, stride in zip(config.conv_kernel, config.conv_stride, strict=True):
        length = conv_output_length(length, kernel, stride)
    return int(length) if isinstance(samples, int) else length


def receptive_field(config) -> int:
    """Samples the CNN needs for one frame (400 for :data:`STOCK_CNN`)."""
    field = 1
    for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride, strict=True))):
        field = (field - 1) * stride + kernel
    return field


def frame_hop(config) -> int:
    """Samples between consecutive frames (320 for :data:`STOCK_CNN`)."""
    return math.prod(int(stride) for stride in config.conv_stride)


def shortest_sample_lengths(config, frames: Tensor) -> Tensor:
    """``[batch]`` the fewest samples whose CNN output has ``frames`` frames (at least one), the inverse of
    :func:`frame_lengths`."""
    return (torch.as_tensor(frames).to(torch.long).clamp(min=1) - 1) * frame_hop(config) + receptive_field(config)
