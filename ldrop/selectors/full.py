"""The full-model reference: every layer, whatever the budget."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import LayerSelector, SelectorOutput


class FullSelector(LayerSelector):
    """Keeps every layer for every input; the budget is validated but otherwise ignored.

    The reference point of a budget sweep: the unpruned backbone.

    Args:
        num_layers: number of encoder layers ``N``.
        feature_dim: channels of the features (unused; kept for the common constructor).
    """

    differentiable = False

    def __init__(self, num_layers: int, feature_dim: int = 1) -> None:
        super().__init__(num_layers, feature_dim)

    def forward(
        self,
        features: Tensor,
        frame_mask: Tensor,
        budget: Tensor,
        *,
        waveforms: Tensor | None = None,
        lengths: Tensor | None = None,
    ) -> SelectorOutput:
        """All ones, ``[batch, num_layers]`` (``frame_mask`` unused, ``budget`` only validated).

        Args:
            features: ``[batch, frames, feature_dim]`` (only batch size and device are read).
            frame_mask: ``[batch, frames]`` bool (unused).
            budget: ``[batch]`` long in ``1..num_layers``; ignored.
            waveforms: ``[batch, samples]`` raw audio (unused).
            lengths: ``[batch]`` real samples per waveform (unused).

        Returns:
            :class:`SelectorOutput` with ``keep_mask [batch, layers]`` all ones.
        """
        self.check_budget(budget, features.shape[0])
        return SelectorOutput(
            keep_mask=torch.ones(features.shape[0], self.num_layers, device=features.device)
        )
