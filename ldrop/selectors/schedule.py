"""Input-blind learned schedule: the baseline that tells whether reading the input adds anything."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import SelectorOutput
from .topk import TopKSelector


class LearnedScheduleSelector(TopKSelector):
    """One learned score per (budget, layer); every input at budget ``k`` runs the same ``k`` layers.

    Trained exactly like :class:`~ldrop.selectors.InputConditionedSelector` (Gumbel-perturbed top-k with a
    straight-through relaxed backward pass and annealed temperature) but it never reads the input, so at
    eval it is a fixed schedule per budget. Scores start at zero: ties go to the lower layers.

    Args:
        num_layers: number of encoder layers ``N``.
        feature_dim: channels of the features (unused; kept for the common constructor).
        **training: the training of the top-k, :class:`~ldrop.selectors.TopKSelector`'s keyword options
            (``tau_start``, ``tau_end``, ``noise_scale``, ``relaxation``, ``objective``,
            ``counterfactual_candidates``, ``counterfactual_weight``).
    """

    #: Every input gets the same mask at eval: the sweep's controls and headroom say nothing new.
    input_dependent = False

    def __init__(self, num_layers: int, feature_dim: int = 1, **training: Any) -> None:
        super().__init__(num_layers, feature_dim, **training)
        #: ``[budgets, layers]``: row ``k - 1`` scores the layers at budget ``k``.
        self.schedule_scores = nn.Parameter(torch.zeros(num_layers, num_layers))

    def forward(
        self,
        features: Tensor,
        frame_mask: Tensor,
        budget: Tensor,
        *,
        waveforms: Tensor | None = None,
        lengths: Tensor | None = None,
    ) -> SelectorOutput:
        """The scheduled layers of each sample's budget: ``keep_mask`` and ``scores``; of the inputs (see
        :meth:`LayerSelector.forward`) only the batch size is read."""
        budget = self.check_budget(budget, features.shape[0]).to(self.schedule_scores.device)
        scores = self.schedule_scores[budget - 1]
        keep_mask, _ = self.select_topk(scores, budget)
        return SelectorOutput(
            keep_mask=keep_mask, scores=scores, stats={"temperature": torch.tensor(self.temperature)}
        )

    @torch.no_grad()
    def schedule_mask(self, budget: int) -> Tensor:
        """``[layers]`` 0/1: the eval-mode layers at ``budget`` (what every input runs)."""
        mask = torch.zeros(self.num_layers, device=self.schedule_scores.device)
        mask[self.schedule()[budget]] = 1.0
        return mask

    def schedule(self) -> dict[int, list[int]]:
        """The eval-mode layers per budget, ``{k: sorted layer indices}``."""
        order = torch.sort(self.schedule_scores.detach(), dim=-1, descending=True, stable=True).indices
        return {k: sorted(order[k - 1, :k].tolist()) for k in range(1, self.num_layers + 1)}
