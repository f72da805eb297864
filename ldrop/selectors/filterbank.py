"""The log-mel filterbank front end of a selector that reads the waveform itself (``input: fbank``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ldrop.backbones.geometry import STOCK_CNN, shortest_sample_lengths


class LogMelFrontend(nn.Module):
    """80-dim (by default) log-mel filterbank of a padded batch of waveforms, 25 ms windows every 10 ms.

    Args:
        sample_rate: waveform sample rate in Hz.
        num_mels: mel bands.
        cnn: the backbone's CNN layout (``conv_kernel``, ``conv_stride``), to turn its frame counts into
            samples in :meth:`flops`.
    """

    def __init__(self, sample_rate: int = 16000, num_mels: int = 80, cnn=STOCK_CNN) -> None:
        super().__init__()
        import torchaudio  # only this input mode needs it

        self.sample_rate = int(sample_rate)
        self.num_mels = int(num_mels)
        self.cnn = cnn
        self.window_length = round(0.025 * sample_rate)
        self.hop_length = round(0.010 * sample_rate)
        self.num_fft = 2 ** math.ceil(math.log2(self.window_length))
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=self.num_fft,
            win_length=self.window_length,
            hop_length=self.hop_length,
            n_mels=num_mels,
        )

    def _apply(self, fn, recurse: bool = True):
        # The filterbank stays float32 whatever the model's dtype (``model.to(torch.bfloat16)``, bf16-true):
        # a bf16 power spectrum loses the small values the log needs. forward returns the input's dtype.
        super()._apply(fn, recurse)
        self.melspec.float()
        return self

    def num_frames(self, num_samples: Tensor) -> Tensor:
        """Frames produced for ``num_samples`` samples (centred windows), same shape as the input."""
        return torch.div(num_samples, self.hop_length, rounding_mode="floor") + 1

    def forward(self, waveforms: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Compute log-mel features.

        Args:
            waveforms: ``[batch, samples]`` float, zero-padded.
            lengths: ``[batch]`` real samples per waveform, or ``None`` when none is padded.

        Returns:
            ``(features, frame_mask)``: ``[batch, frames, num_mels]`` in the dtype of ``waveforms`` (computed in
            float32) and ``[batch, frames]`` bool.
        """
        if waveforms.dim() != 2:
            raise ValueError(f"waveforms must have shape [batch, samples], got {list(waveforms.shape)}")
        with torch.autocast(waveforms.device.type, enabled=False):  # float32 even under bf16-mixed (see _apply)
            features = torch.log(self.melspec(waveforms.float()) + 1e-6).transpose(1, 2).to(waveforms.dtype)
        if lengths is None:
            lengths = torch.full((waveforms.shape[0],), waveforms.shape[1], device=waveforms.device)
        frames = self.num_frames(lengths.to(waveforms.device)).clamp(max=features.shape[1])
        frame_mask = torch.arange(features.shape[1], device=waveforms.device) < frames.unsqueeze(-1)
        return features, frame_mask

    def flops(self, cnn_frames: Tensor) -> tuple[Tensor, Tensor]:
        """Matmul FLOPs (the mel projection; the FFT is not a matmul) per input.

        Args:
            cnn_frames: ``[batch]`` frames of the backbone's CNN; each input is counted as the shortest
                waveform giving that many.

        Returns:
            ``(flops, frames)``: ``[batch]`` float64 FLOPs and the filterbank frames they were counted on.
        """
        frames = self.num_frames(shortest_sample_lengths(self.cnn, cnn_frames)).double()
        return 2.0 * frames * (self.num_fft // 2 + 1) * self.num_mels, frames
