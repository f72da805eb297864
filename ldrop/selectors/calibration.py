"""Threshold calibration, a component of a scoring selector: per budget ``k``, the score threshold at which
inputs run ``k`` layers on average over validation data, so easy inputs can use fewer layers and hard ones
more (``mode: threshold``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import CalibrationData, Float32UnderHalfCasts
from .topk import calibrate_threshold


class ThresholdCalibration(Float32UnderHalfCasts):
    """The thresholds of a selector's layer scores, one per budget, kept in its checkpoint.

    Args:
        num_layers: ``N``, the selector's layers.
        prefix_layers: ``j``, layers every input runs (their scores are not thresholded).
    """

    float32_buffers = ("thresholds",)  # float32 in a bf16 model (rounded, a threshold lands on a score)

    def __init__(self, num_layers: int, prefix_layers: int = 0) -> None:
        super().__init__()
        self.num_layers = int(num_layers)
        self.prefix_layers = int(prefix_layers)
        #: Threshold per budget (index ``k - 1``); NaN = not calibrated.
        self.register_buffer("thresholds", torch.full((num_layers,), math.nan))

    def thresholds_for(self, budget: Tensor) -> Tensor:
        """Calibrated threshold per sample, ``[batch]``; raises if a budget was never calibrated.

        The full budget needs no calibration: a mean of ``N`` layers out of ``N`` means every input runs every
        layer (threshold ``-inf``).
        """
        thresholds = self.thresholds[budget - 1]
        thresholds = torch.where(budget == self.num_layers, -math.inf, thresholds)
        missing = torch.isnan(thresholds)
        if bool(missing.any()):
            budgets = sorted({int(k) for k in budget[missing]})
            raise RuntimeError(
                f"threshold mode: budgets {budgets} are not calibrated; after training, calibrate() on validation "
                "data (model.calibrate_on_dataloader(val_loader), or ldrop test/predict with a datamodule)"
            )
        return thresholds

    def is_calibrated(self, budget: int) -> bool:
        """Whether ``budget`` has a threshold."""
        if not 1 <= budget <= self.num_layers:
            raise ValueError(f"budget must be in 1..{self.num_layers}, got {budget}")
        return not bool(torch.isnan(self.thresholds[budget - 1]))

    @torch.no_grad()
    def set_thresholds(self, scores_by_budget: dict[int, Tensor]) -> dict[int, float]:
        """Set the threshold of each given budget so inputs run ``k`` layers on average.

        Args:
            scores_by_budget: budget ``k`` -> ``[inputs, layers]`` eval-mode scores of validation inputs
                at budget ``k`` (the selector's ``score``, or :attr:`SelectorOutput.scores` of a top-k run).

        Returns:
            budget -> mean executed layers achieved on the calibration data (within 0.5 of ``k``, counting
            the at-least-one-layer rule). The ``j`` prefix layers always run and the threshold chooses a mean
            of ``k - j`` (at least one) among the others.
        """
        j = self.prefix_layers
        achieved = {}
        for budget, scores in scores_by_budget.items():
            if not 1 <= int(budget) <= self.num_layers:
                raise ValueError(f"scores_by_budget: budget must be in 1..{self.num_layers}, got {budget}")
            if scores.dim() != 2 or scores.shape[1] != self.num_layers:
                raise ValueError(
                    f"scores_by_budget[{budget}] must have shape [inputs, {self.num_layers}], got {list(scores.shape)}"
                )
            threshold, achieved_rest = calibrate_threshold(scores[:, j:], float(budget) - j)
            achieved[int(budget)] = achieved_rest + j
            self.thresholds[int(budget) - 1] = threshold
        return achieved

    @torch.no_grad()
    def calibrate(self, selector: nn.Module, data: CalibrationData, budgets: Sequence[int]) -> None:
        """Calibrate ``budgets`` on the eval-mode scores of ``data``'s inputs, from ``selector.score(features,
        frame_mask, budget, waveforms=, lengths=)`` (the selector's clean ``[batch, layers]`` scores)."""
        scores: dict[int, list[Tensor]] = {int(k): [] for k in budgets}
        for batch in data.inputs():
            for k in scores:
                budget = torch.full((batch.features.shape[0],), k, dtype=torch.long, device=batch.features.device)
                out = selector.score(batch.features, batch.frame_mask, budget, waveforms=batch.waveforms,
                                     lengths=batch.lengths)
                scores[k].append(out.float().cpu())
        self.set_thresholds({k: torch.cat(v) for k, v in scores.items()})
