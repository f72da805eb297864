"""Random layer dropping (LayerDrop): the baseline with no knowledge of either input or layer."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .base import LayerSelector, SelectorOutput
from .static import evenly_spaced_layers
from .topk import hard_topk_mask


class RandomSelector(LayerSelector):
    """LayerDrop baseline: random layers in training, random or evenly spaced layers at inference.

    Training draws from the global RNG (so ``seed_everything`` governs it); inference draws from an explicit
    ``torch.Generator`` seeded with ``seed``, so a sweep can repeat an evaluation with :meth:`reseed` and
    report the spread over draws; another ``seed`` gives other draws. No parameters.

    Args:
        num_layers: number of encoder layers ``N``.
        feature_dim: channels of the features (unused; kept for the common constructor).
        train_mode: ``"subset"``: a uniformly random ``k``-subset per sample; ``"bernoulli"``: each layer
            kept with probability ``k / N`` independently, and one random layer when none is (so the mean
            is slightly above ``k`` at small budgets).
        eval_mode: ``"random"``: a random ``k``-subset per sample from the seeded generator;
            ``"evenly_spaced"``: the ``k`` layers at ``round(linspace(0, N - 1, k))``.
        seed: seed of the inference generator.
    """

    input_dependent = False
    random_at_eval = True

    def __init__(
        self,
        num_layers: int,
        feature_dim: int = 1,
        *,
        train_mode: Literal["subset", "bernoulli"] = "subset",
        eval_mode: Literal["random", "evenly_spaced"] = "random",
        seed: int = 0,
    ) -> None:
        super().__init__(num_layers, feature_dim)
        if train_mode not in ("subset", "bernoulli"):
            raise ValueError(f"train_mode must be 'subset' or 'bernoulli', got {train_mode!r}")
        if eval_mode not in ("random", "evenly_spaced"):
            raise ValueError(f"eval_mode must be 'random' or 'evenly_spaced', got {eval_mode!r}")
        self.train_mode = train_mode
        self.eval_mode = eval_mode
        self.seed = int(seed)
        self.generator = torch.Generator()
        self.reseed()

    def reseed(self, *draw: int) -> None:
        """Restart the inference generator: for ``draw`` (a sweep's repeat and batch) of ``seed``, or from ``seed``."""
        state = np.random.SeedSequence([self.seed % 2**64, *draw]).generate_state(2) if draw else None
        self.generator.manual_seed(self.seed if state is None else int(state[0]) << 32 | int(state[1]))

    def forward(
        self,
        features: Tensor,
        frame_mask: Tensor,
        budget: Tensor,
        *,
        waveforms: Tensor | None = None,
        lengths: Tensor | None = None,
    ) -> SelectorOutput:
        """Random (or evenly spaced) layers per sample: a ``keep_mask`` only; of the inputs (see
        :meth:`LayerSelector.forward`) only the batch size and device are read."""
        batch_size, device = features.shape[0], features.device
        budget = self.check_budget(budget, batch_size)
        shape = (batch_size, self.num_layers)
        if self.training:
            budget = budget.to(device)
            if self.train_mode == "subset":
                keep_mask = hard_topk_mask(torch.rand(shape, device=device), budget)
            else:
                keep_prob = budget.unsqueeze(-1).float() / self.num_layers
                keep_mask = (torch.rand(shape, device=device) < keep_prob).float()
                fallback = hard_topk_mask(torch.rand(shape, device=device), torch.ones_like(budget))
                keep_mask = torch.where(keep_mask.sum(-1, keepdim=True) > 0, keep_mask, fallback)
        elif self.eval_mode == "random":
            noise = torch.rand(shape, generator=self.generator)
            keep_mask = hard_topk_mask(noise, budget.cpu()).to(device)
        else:
            keep_mask = torch.zeros(shape)
            for row, k in enumerate(budget.tolist()):
                keep_mask[row, evenly_spaced_layers(self.num_layers, k)] = 1.0
            keep_mask = keep_mask.to(device)
        return SelectorOutput(keep_mask=keep_mask)
