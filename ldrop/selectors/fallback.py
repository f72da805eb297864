"""The input-blind fallback, a component of an input-conditioned selector: per budget, check on validation
data whether reading the input pays, and where it does not, give every input the best input-blind mask."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor

from ldrop._progress import Phase

from .base import CalibrationData, LayerSelector, SelectorInputs
from .static import evenly_spaced_layers, greedy_subset_search

#: The candidates include this many of the selector's own most common masks per budget.
COMMON_MASKS = 3


class InputBlindFallback(torch.nn.Module):
    """The fallback's decisions per budget, kept in the selector's checkpoint (row ``k - 1`` for budget ``k``).

    The selector calls :meth:`apply` on its eval-mode masks, :meth:`forget` in training (the decisions are
    about the weights training changes) and :meth:`calibrate` from its own ``calibrate``.

    Args:
        num_layers: ``N``, the selector's layers.
        margin: how much (in the task's primary metric on validation data) the selector's own masks must beat
            the best input-blind mask by to be kept; ``>= 0``. Ties fall back.
        search: also consider, per budget, the best fixed subset of a greedy search on validation data (about
            ``N^2 / 2`` more validation passes in all).
    """

    def __init__(self, num_layers: int, *, margin: float = 0.0, search: bool = False) -> None:
        super().__init__()
        if not (math.isfinite(margin) and margin >= 0):
            raise ValueError(f"fallback_margin must be a finite number >= 0, got {margin}")
        self.margin = float(margin)
        self.search = bool(search)
        #: Whether evaluation reads the input, the input-blind mask used where it does not, and the validation
        #: metrics ``(input, blind)`` they were decided on (NaN = not decided: the input is read).
        self.register_buffer("uses_input", torch.ones(num_layers, dtype=torch.bool))
        self.register_buffer("blind_masks", torch.zeros(num_layers, num_layers, dtype=torch.bool))
        self.register_buffer("metrics", torch.full((num_layers, 2), math.nan))

    def apply(self, keep_mask: Tensor, budget: Tensor) -> Tensor:
        """``[batch, layers]`` the selector's masks, with the blind mask where its budget falls back."""
        rows = budget - 1
        return torch.where(self.uses_input[rows, None], keep_mask, self.blind_masks[rows].to(keep_mask))

    def forget(self) -> None:
        """Drop the decisions: every budget reads the input again (until the next :meth:`calibrate`)."""
        self.uses_input.fill_(True)
        self.metrics.fill_(math.nan)

    def decided_for(self, budgets: Sequence[int], prefix_layers: int = 0) -> bool:
        """Whether these budgets are decided (``k = N`` and ``k <= prefix_layers`` have nothing to decide)."""
        decided = self.report()
        return all(k in decided for k in budgets if prefix_layers < int(k) < len(self.uses_input))

    def report(self) -> dict[int, dict]:
        """The decision per decided budget ``k``.

        Returns:
            ``{k: {"input": metric of the selector's own masks, "blind": metric of the best input-blind mask,
            "uses_input": whether evaluation reads the input, "blind_layers": that mask's layers}}`` (metrics
            on the validation data of the last :meth:`calibrate`); empty before it or after training.
        """
        return {row + 1: {"input": own, "blind": blind, "uses_input": bool(self.uses_input[row]),
                          "blind_layers": self.blind_masks[row].nonzero().flatten().tolist()}
                for row, (own, blind) in enumerate(self.metrics.tolist()) if not math.isnan(own)}

    @torch.no_grad()
    def calibrate(self, selector: LayerSelector, data: CalibrationData, budgets: Sequence[int]) -> None:
        """Decide per budget ``k < N`` between the selector's own eval-mode masks and the best input-blind mask.

        The blind candidates at ``k``: the selector's :meth:`~LayerSelector.schedule_mask`, with ``search`` the
        greedy search's subset, the first ``k`` layers, ``k`` evenly spaced layers and the selector's own most
        common masks (those keeping its prefix layers). Unless the own masks beat the best candidate by more
        than ``margin``, evaluation gives every input that candidate at ``k``. The selector's forward must
        :meth:`apply` the decisions in eval mode.
        """
        was_training = selector.training
        selector.eval()  # the masks evaluation will use: running statistics, no noise
        try:
            sign = 1.0 if data.higher_is_better else -1.0
            # the full budget runs every layer, and budgets up to the prefix run just the prefix: nothing to decide
            j = selector.prefix_layers
            budgets = sorted({int(k) for k in budgets if j < int(k) < selector.num_layers})
            if not budgets:
                return
            searched = (greedy_subset_search(data.metric_with_layers, selector.num_layers, budgets,
                                             data.higher_is_better) if self.search else {})
            with Phase("input-conditioned fallback: its own masks against input-blind ones on validation data",
                       total=len(budgets), unit="budget") as phase:
                for k in budgets:
                    self.uses_input[k - 1] = True  # the selector's own masks at k while they are scored
                    counts: Counter[tuple[int, ...]] = Counter()

                    def own(batch: SelectorInputs, k: int = k, counts: Counter = counts) -> Tensor:
                        budget = torch.full((batch.features.shape[0],), k, device=batch.features.device)
                        masks = selector(batch.features, batch.frame_mask, budget, waveforms=batch.waveforms,
                                         lengths=batch.lengths).keep_mask
                        counts.update(tuple(row.nonzero().flatten().tolist()) for row in masks.bool().cpu())
                        return masks

                    own_metric = data.metric_with_masks(own)
                    schedule = selector.schedule_mask(k)
                    candidates = [tuple(schedule.nonzero().flatten().tolist())] if schedule is not None else []
                    candidates += [tuple(searched[k])] if k in searched else []
                    candidates += [tuple(range(k)), tuple(evenly_spaced_layers(selector.num_layers, k))]
                    candidates += [mask for mask, _ in counts.most_common(COMMON_MASKS)]
                    # the engine continues from the prefix only for masks that keep it
                    candidates = [c for c in candidates if set(range(j)) <= set(c)]
                    # distinct, in order; max() keeps the first of equal values: ties go to the earlier one
                    values = {c: float(data.metric_with_layers(list(c))) for c in dict.fromkeys(candidates)}
                    blind_layers = max(values, key=lambda layers: sign * values[layers])
                    blind_metric = values[blind_layers]
                    uses_input = sign * (own_metric - blind_metric) > self.margin
                    self.uses_input[k - 1] = uses_input
                    self.blind_masks[k - 1] = False
                    self.blind_masks[k - 1, list(blind_layers)] = True
                    self.metrics[k - 1] = torch.tensor([own_metric, blind_metric])
                    phase.step(f"k={k}: {'input' if uses_input else 'blind'} ({own_metric:.4g} vs {blind_metric:.4g})")
                phase.done("; ".join(
                    f"k={k}: {'input' if r['uses_input'] else 'blind ' + str(r['blind_layers'])} "
                    f"({r['input']:.4g} vs {r['blind']:.4g})" for k, r in self.report().items()))
        finally:
            selector.train(was_training)
