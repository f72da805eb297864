"""Compute accounting: FLOPs of one inference forward pass, per sample, under a keep mask.

A *fixed* part every sample pays (CNN, projection, positional convolution, a selector) and a *per-layer* part
for the layers it keeps, each sample at its own length. Counted as
:class:`torch.utils.flop_counter.FlopCounterMode` counts (2 per multiply-add of matrix products, convolutions
and attention; elementwise ops not counted), so the numbers can be checked against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import PretrainedConfig

from ldrop.backbones.adapter import family_of
from ldrop.backbones.geometry import conv_output_length, shortest_sample_lengths
from ldrop.backbones.geometry import frame_lengths as cnn_frame_lengths
from ldrop.engine.gated import check_keep_mask

#: Output features of WavLM's ``gru_rel_pos_linear`` (fixed at 8 in the Hugging Face implementation).
_WAVLM_GATE_FEATURES = 8


@dataclass(frozen=True)
class ForwardFlops:
    """FLOPs of one forward pass per sample: ``fixed [batch]``, ``per_layer [batch, layers]`` and the ``keep``
    mask."""

    fixed: Tensor
    per_layer: Tensor
    keep: Tensor

    @property
    def total(self) -> Tensor:
        """``[batch]``: ``fixed + (per_layer * keep).sum(1)``, the FLOPs each sample actually costs."""
        return self.fixed + (self.per_layer * self.keep).sum(dim=1)

    @property
    def full(self) -> Tensor:
        """``[batch]``: the FLOPs of the full-depth model on the same samples."""
        return self.fixed + self.per_layer.sum(dim=1)

    def per_second(self, sample_lengths: Tensor, sampling_rate: int = 16_000) -> Tensor:
        """``[batch]``: ``total`` divided by each sample's duration in seconds."""
        seconds = sample_lengths.to(self.fixed.device, torch.float64) / sampling_rate
        return self.total / seconds


def _config_of(config_or_model: PretrainedConfig | nn.Module) -> PretrainedConfig:
    if isinstance(config_or_model, PretrainedConfig):
        config = config_or_model
    elif isinstance(getattr(config_or_model, "config", None), PretrainedConfig):
        config = config_or_model.config  # a SpeechBackbone or a bare Hugging Face model
    else:
        raise TypeError(
            f"expected a Hugging Face config, a SpeechBackbone or a Hugging Face model, "
            f"got {type(config_or_model).__name__}"
        )
    family_of(config)  # raises a clear error for unsupported model types
    return config


def _as_float(lengths: Tensor) -> Tensor:
    return torch.as_tensor(lengths).to(dtype=torch.float64)


def cnn_flops(config: PretrainedConfig | nn.Module, sample_lengths: Tensor) -> Tensor:
    """``[batch]`` float64 FLOPs of the CNN feature encoder on waveforms of ``sample_lengths`` samples."""
    config = _config_of(config)
    length = torch.as_tensor(sample_lengths).to(torch.long)
    flops = torch.zeros(length.shape, dtype=torch.float64, device=length.device)
    for in_channels, out_channels, kernel, stride in zip(
        (1, *config.conv_dim[:-1]), config.conv_dim, config.conv_kernel, config.conv_stride, strict=True
    ):
        length = conv_output_length(length, kernel, stride)
        flops += 2.0 * length.to(torch.float64) * out_channels * in_channels * kernel
    return flops


def frontend_flops(config: PretrainedConfig | nn.Module, frames: Tensor) -> Tensor:
    """``[batch]`` float64 FLOPs of the feature projection and positional convolution(s) on ``frames`` frames.

    An even kernel's extra output frame, computed and then dropped by the model, is counted.
    """
    config = _config_of(config)
    hidden = int(config.hidden_size)
    groups = int(config.num_conv_pos_embedding_groups)
    if family_of(config) == "data2vec":
        kernel, stack = int(config.conv_pos_kernel_size), int(config.num_conv_pos_embeddings)
    else:
        kernel, stack = int(config.num_conv_pos_embeddings), 1
    conv_out = conv_output_length(torch.as_tensor(frames).to(torch.long), kernel, 1, padding=kernel // 2)
    projection = 2.0 * _as_float(frames) * int(config.conv_dim[-1]) * hidden
    return projection + stack * 2.0 * conv_out.to(torch.float64) * hidden * (hidden // groups) * kernel


def layer_flops(config: PretrainedConfig | nn.Module, frames: Tensor) -> Tensor:
    """``[batch]`` float64 FLOPs of one encoder layer on ``frames`` frames (every layer costs the same).

    Projections ``8 T C^2``, attention ``4 T^2 C``, feed-forward ``4 T C F``; WavLM adds ``2 T C * 8`` for its
    gated position bias.
    """
    config = _config_of(config)
    t = _as_float(frames)
    c = float(config.hidden_size)
    ffn = float(config.intermediate_size)
    flops = 8.0 * t * c * c + 4.0 * t * t * c + 4.0 * t * c * ffn
    if family_of(config) == "wavlm":
        flops = flops + 2.0 * t * c * _WAVLM_GATE_FEATURES
    return flops


def count_forward_flops(
    config_or_backbone: PretrainedConfig | nn.Module, sample_lengths: Tensor | None = None,
    keep_mask: Tensor | None = None, extra_fixed: Tensor | None = None, *, frame_lengths: Tensor | None = None,
) -> ForwardFlops:
    """FLOPs of one inference forward pass per sample, split into the fixed and the per-layer part.

    Args:
        keep_mask: ``[batch, layers]``, 1 where a sample runs a layer (``None``: all); a soft mask gives the
            expected cost.
        extra_fixed: ``[batch]`` further FLOPs every sample pays (e.g. the selector's own cost).
        frame_lengths: ``[batch]`` frames per sample instead of ``sample_lengths``; the CNN is then counted
            for the shortest waveform giving that many frames.
    """
    config = _config_of(config_or_backbone)
    if (sample_lengths is None) == (frame_lengths is None):
        raise ValueError("pass exactly one of sample_lengths and frame_lengths")
    if sample_lengths is None:
        frames = torch.as_tensor(frame_lengths).to(torch.long)
        sample_lengths = shortest_sample_lengths(config, frames)
    else:
        sample_lengths = torch.as_tensor(sample_lengths)
        frames = cnn_frame_lengths(config, sample_lengths)
    batch = frames.shape[0]
    num_layers = int(config.num_hidden_layers)
    fixed = cnn_flops(config, sample_lengths) + frontend_flops(config, frames)
    if extra_fixed is not None:
        fixed = fixed + torch.as_tensor(extra_fixed).to(fixed.device, torch.float64)
    per_layer = layer_flops(config, frames)[:, None].expand(batch, num_layers).contiguous()
    if keep_mask is None:
        keep_mask = torch.ones(batch, num_layers, dtype=torch.float64, device=fixed.device)
    check_keep_mask(keep_mask, batch, num_layers)
    keep = keep_mask.to(fixed.device, keep_mask.dtype if keep_mask.is_floating_point() else torch.float64)
    return ForwardFlops(fixed=fixed, per_layer=per_layer, keep=keep)


def decision_flops(model: Any, frame_lengths: Tensor) -> Tensor | None:
    """``[batch]`` FLOPs of what decides the depth beside the backbone: the selector and the depth policy's own
    modules (allocation's depth head); ``None`` when neither has any."""
    parts = (getattr(model, "selector", None), getattr(model, "depth", None))
    flops = [f for f in (part.flops(frame_lengths) for part in parts if part is not None) if f is not None]
    return sum(flops[1:], flops[0]) if flops else None


def passed_head_flops(model: Any, frame_lengths: Tensor) -> Tensor | None:
    """``[batch, layers]`` float64 FLOPs of the heads an input of ``frame_lengths`` frames is counted to run beside
    the one read when it runs ``k`` layers at budget ``k`` (column ``k - 1``): its depth policy's ``head_flops``
    (confidence early exit's passed exits) at each budget, as a cost counts them; ``None`` when it counts none."""
    depth = getattr(model, "depth", None)
    if depth is None:
        return None
    frames = torch.as_tensor(frame_lengths).to(torch.long).cpu()
    batch, num_layers = frames.shape[0], int(model.num_layers)
    budgets = torch.arange(1, num_layers + 1).repeat(batch)  # input-major: every budget of each input
    keep = (torch.arange(num_layers)[None] < budgets[:, None]).float()
    flops = depth.head_flops(model, keep, frames.repeat_interleave(num_layers), budgets)
    return None if flops is None else flops.detach().to("cpu", torch.float64).reshape(batch, num_layers)


def counted_flops(run: Callable[[], Any]) -> float:
    """FLOPs of ``run()`` (without gradient) as :class:`~torch.utils.flop_counter.FlopCounterMode` counts them:
    for modules, such as a downstream task head, that have no formula here."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())
