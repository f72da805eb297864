"""Compute accounting: FLOPs of one inference forward pass, per sample, under a keep mask.

The cost of a forward pass splits into a *fixed* part that every sample pays (CNN feature encoder, feature
projection, positional convolution; later also the selector) and a *per-layer* part that a sample pays
only for the encoder layers it keeps. Each sample is counted at its own length, which is the number a
paper reports (FLOPs per utterance, per second of audio); a padded batch run densely costs more.

FLOPs are counted the way :class:`torch.utils.flop_counter.FlopCounterMode` counts them, so the numbers can
be checked against it: 2 FLOPs per multiply-add of matrix products (``mm``/``addmm``/``bmm``/``baddbmm``),
convolutions and attention (``Q K^T`` and ``A V``); biases, activations, softmax, norms and other
elementwise ops are not counted. Every layer of a backbone has the same cost, so ``per_layer`` is one
column repeated; it stays ``[batch, layers]`` so that a keep mask multiplies it directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig

from ldrop.backbones.adapter import family_of
from ldrop.backbones.geometry import frame_lengths as cnn_frame_lengths
from ldrop.backbones.geometry import shortest_sample_lengths
from ldrop.engine.gated import check_keep_mask

#: Output features of WavLM's ``gru_rel_pos_linear`` (fixed at 8 in the Hugging Face implementation).
_WAVLM_GATE_FEATURES = 8


@dataclass(frozen=True)
class ForwardFlops:
    """FLOPs of one forward pass, per sample.

    Attributes:
        fixed: ``[batch]`` FLOPs every sample pays whatever it keeps (CNN, projection, positional
            convolution, plus any ``extra_fixed`` such as a selector).
        per_layer: ``[batch, layers]`` FLOPs of each encoder layer at the sample's own length.
        keep: ``[batch, layers]`` the keep mask; a soft mask gives the expected cost.
    """

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


def _conv_output_length(length: Tensor, kernel: int, stride: int, padding: int = 0) -> Tensor:
    return (torch.div(length + 2 * padding - kernel, stride, rounding_mode="floor") + 1).clamp(min=0)


def cnn_flops(config: PretrainedConfig | nn.Module, sample_lengths: Tensor) -> Tensor:
    """FLOPs of the CNN feature encoder on waveforms of ``sample_lengths`` samples.

    Args:
        config: a backbone config (or a :class:`SpeechBackbone` / Hugging Face model).
        sample_lengths: ``[batch]`` valid samples per waveform.

    Returns:
        ``[batch]`` float64.
    """
    config = _config_of(config)
    length = torch.as_tensor(sample_lengths).to(torch.long)
    flops = torch.zeros(length.shape, dtype=torch.float64, device=length.device)
    in_channels = 1
    for out_channels, kernel, stride in zip(
        config.conv_dim, config.conv_kernel, config.conv_stride, strict=True
    ):
        length = _conv_output_length(length, kernel, stride)
        flops += 2.0 * length.to(torch.float64) * out_channels * in_channels * kernel
        in_channels = out_channels
    return flops


def frontend_flops(config: PretrainedConfig | nn.Module, frames: Tensor) -> Tensor:
    """FLOPs of the feature projection and the positional convolution on ``frames`` frames.

    wav2vec 2.0, HuBERT and WavLM use one grouped convolution of kernel ``num_conv_pos_embeddings``;
    Data2VecAudio a stack of ``num_conv_pos_embeddings`` grouped convolutions of kernel
    ``conv_pos_kernel_size``. An even kernel produces one extra output frame, which the model then drops;
    it is computed, so it is counted.

    Returns:
        ``[batch]`` float64.
    """
    config = _config_of(config)
    t = _as_float(frames)
    hidden = int(config.hidden_size)
    groups = int(config.num_conv_pos_embedding_groups)
    flops = 2.0 * t * int(config.conv_dim[-1]) * hidden
    if family_of(config) == "data2vec":
        kernel, stack = int(config.conv_pos_kernel_size), int(config.num_conv_pos_embeddings)
    else:
        kernel, stack = int(config.num_conv_pos_embeddings), 1
    conv_out = _conv_output_length(torch.as_tensor(frames).to(torch.long), kernel, 1, padding=kernel // 2)
    flops = flops + stack * 2.0 * conv_out.to(torch.float64) * hidden * (hidden // groups) * kernel
    return flops


def layer_flops(config: PretrainedConfig | nn.Module, frames: Tensor) -> Tensor:
    """FLOPs of one encoder layer on a sample of ``frames`` frames (every layer costs the same).

    Q/K/V/output projections ``8 T C^2``, attention scores and weighted sum ``4 T^2 C``, feed-forward
    ``4 T C F``; WavLM adds its gated relative position bias projection ``2 T C * 8``.

    Args:
        config: a backbone config (or a :class:`SpeechBackbone` / Hugging Face model).
        frames: ``[batch]`` frames per sample.

    Returns:
        ``[batch]`` float64.
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
        config_or_backbone: a backbone config, a :class:`SpeechBackbone` or a Hugging Face model.
        sample_lengths: ``[batch]`` valid waveform samples per sample.
        keep_mask: ``[batch, layers]``, 1 where a sample runs a layer; ``None`` keeps every layer. A soft mask
            gives the expected cost; threshold it (``> 0.5``) to match what sparse execution runs.
        extra_fixed: ``[batch]`` further FLOPs every sample pays (e.g. the selector's own cost).
        frame_lengths: ``[batch]`` frames per sample, instead of ``sample_lengths`` (e.g. from
            ``frame_mask.sum(1)``); the CNN is then counted for the shortest waveform giving that many
            frames, which can undercount it by at most ``stride - 1`` samples' worth.

    Returns:
        :class:`ForwardFlops` with float64 tensors on the lengths' device.

    Example:
        >>> config = tiny_config("wavlm")  # doctest: +SKIP
        >>> flops = count_forward_flops(config, torch.tensor([16000, 8000]), keep_mask)  # doctest: +SKIP
        >>> flops.total  # [batch]  # doctest: +SKIP
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
        keep = torch.ones(batch, num_layers, dtype=torch.float64, device=fixed.device)
    else:
        check_keep_mask(keep_mask, batch, num_layers)
        keep = keep_mask.to(fixed.device)
        if not keep.is_floating_point():
            keep = keep.to(torch.float64)
    return ForwardFlops(fixed=fixed, per_layer=per_layer, keep=keep)
