"""Fixed layer subsets: one subset per budget for every input, and the greedy search that finds the best."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import torch
from torch import Tensor

from ldrop._progress import Phase

from .base import CalibrationData, LayerSelector, SelectorOutput

SubsetRule = Literal["first", "evenly_spaced", "last"]


def evenly_spaced_layers(num_layers: int, budget: int) -> list[int]:
    """The ``budget`` layers at ``round(linspace(0, num_layers - 1, budget))`` (halves round up).

    Args:
        num_layers: number of layers ``N``.
        budget: layers to keep, in ``1..N``.

    Returns:
        Sorted, distinct layer indices; ``[0]`` for budget 1, all layers for budget ``N``.
    """
    if not 1 <= budget <= num_layers:
        raise ValueError(f"budget must be in 1..{num_layers}, got {budget}")
    if budget == 1:
        return [0]
    step = (num_layers - 1) / (budget - 1)
    return [int(i * step + 0.5) for i in range(budget)]


def greedy_subset_search(
    evaluate: Callable[[list[int]], float],
    num_layers: int,
    budgets: Iterable[int],
    higher_is_better: bool = True,
) -> dict[int, list[int]]:
    """Best fixed layer subset per budget by greedy backward elimination.

    Start from all ``N`` layers; repeatedly remove the layer whose removal leaves the best metric, and record
    the subset when its size is one of ``budgets``. Costs about ``N^2 / 2`` evaluations down to the smallest
    budget. Ties go to removing the lowest layer index.

    Args:
        evaluate: metric of a model that runs only the given sorted layers (e.g. validation accuracy).
        num_layers: number of layers ``N``.
        budgets: subset sizes to record, each in ``1..N``.
        higher_is_better: whether a larger metric is better (False for losses and error rates).

    Returns:
        ``{budget: sorted layer indices}`` for each requested budget.
    """
    wanted = sorted({int(k) for k in budgets})
    if not wanted:
        return {}
    if wanted[0] < 1 or wanted[-1] > num_layers:
        raise ValueError(f"budgets must be in 1..{num_layers}, got {wanted}")
    sign = 1.0 if higher_is_better else -1.0
    subset = list(range(num_layers))
    found = {num_layers: list(subset)} if num_layers in wanted else {}
    removals = num_layers - wanted[0]
    with Phase(f"greedy subset search ({removals * (2 * num_layers - removals + 1) // 2} evaluations)",
               total=removals, unit="layer removal") as phase:
        while len(subset) > wanted[0]:
            best_layer, best_value = subset[0], -float("inf")
            for layer in subset:
                value = sign * float(evaluate([other for other in subset if other != layer]))
                if value > best_value:
                    best_layer, best_value = layer, value
            subset.remove(best_layer)
            if len(subset) in wanted:
                found[len(subset)] = list(subset)
            phase.step(f"k={len(subset)}: {subset}")
    return found


class StaticSelector(LayerSelector):
    """Runs one fixed subset of layers per budget for every input.

    Subsets are stored in a ``[budgets, layers]`` bool buffer (row ``k - 1`` for budget ``k``), so searched
    subsets survive checkpoints. A budget without a subset raises at use.

    Args:
        num_layers: number of encoder layers ``N``.
        feature_dim: channels of the features (unused; kept for the common constructor).
        subsets: ``"first"`` (layers ``0..k-1``), ``"evenly_spaced"``, ``"last"`` (the top ``k``), or an
            explicit ``{budget: layers}``, e.g. from :func:`greedy_subset_search`.
        search: before testing or predicting, search the best subset per budget greedily on validation data
            (:meth:`calibrate`); training uses ``subsets``.
    """

    input_dependent = False
    #: The greedy search costs about ``N^2 / 2`` validation passes: only before test and predict.
    calibrates_at_validation = False

    def __init__(
        self,
        num_layers: int,
        feature_dim: int = 1,
        *,
        subsets: SubsetRule | dict[int, list[int]] = "evenly_spaced",
        search: bool = False,
    ) -> None:
        super().__init__(num_layers, feature_dim)
        self.search = bool(search)
        self.register_buffer("subset_masks", torch.zeros(num_layers, num_layers, dtype=torch.bool))
        #: Budgets (row ``k - 1``) whose subset the search of :meth:`calibrate` installed.
        self.register_buffer("searched", torch.zeros(num_layers, dtype=torch.bool))
        if isinstance(subsets, str):
            rules = {
                "first": lambda k: list(range(k)),
                "evenly_spaced": lambda k: evenly_spaced_layers(num_layers, k),
                "last": lambda k: list(range(num_layers - k, num_layers)),
            }
            if subsets not in rules:
                raise ValueError(
                    f"subsets must be 'first', 'evenly_spaced', 'last' or a dict, got {subsets!r}"
                )
            subsets = {k: rules[subsets](k) for k in range(1, num_layers + 1)}
        self.set_subsets(subsets)

    @property
    def needs_calibration(self) -> bool:
        """With ``search``, the subsets are searched on validation data before evaluation."""
        return self.search

    @property
    def calibrated(self) -> bool:
        """With ``search``: every budget's subset searched."""
        return self.calibrated_for(range(1, self.num_layers + 1))

    def calibrated_for(self, budgets: Sequence[int]) -> bool:
        """With ``search``: the subsets of these budgets searched (the full budget needs no search)."""
        return not self.search or all(bool(self.searched[int(k) - 1]) for k in budgets if int(k) < self.num_layers)

    @torch.no_grad()
    def calibrate(self, data: CalibrationData, budgets: Sequence[int]) -> None:
        """Greedy backward elimination of the best fixed subset per budget on ``data``'s metric."""
        found = greedy_subset_search(data.metric_with_layers, self.num_layers, budgets,
                                     higher_is_better=data.higher_is_better)
        self.set_subsets(found)
        self.searched[[int(k) - 1 for k in found]] = True

    def set_subsets(self, subsets: dict[int, list[int]]) -> None:
        """Install ``{budget: layers}``; budgets not named keep their current subset.

        Raises:
            ValueError: when a budget is out of range or its layers are not ``budget`` distinct valid indices.
        """
        for budget, layers in subsets.items():
            budget = int(budget)
            if not 1 <= budget <= self.num_layers:
                raise ValueError(f"subsets: budget must be in 1..{self.num_layers}, got {budget}")
            layer_set = {int(layer) for layer in layers}
            if len(layer_set) != budget or len(list(layers)) != budget:
                raise ValueError(f"subsets[{budget}] must list {budget} distinct layers, got {list(layers)}")
            if min(layer_set) < 0 or max(layer_set) >= self.num_layers:
                raise ValueError(
                    f"subsets[{budget}] has layers outside 0..{self.num_layers - 1}: {list(layers)}"
                )
            row = torch.zeros(self.num_layers, dtype=torch.bool)
            row[sorted(layer_set)] = True
            self.subset_masks[budget - 1] = row.to(self.subset_masks.device)

    @property
    def subsets(self) -> dict[int, list[int]]:
        """Installed ``{budget: sorted layers}``."""
        return {
            k: torch.nonzero(row).flatten().tolist()
            for k, row in enumerate(self.subset_masks.cpu(), start=1)
            if bool(row.any())
        }

    def forward(
        self,
        features: Tensor,
        frame_mask: Tensor,
        budget: Tensor,
        *,
        waveforms: Tensor | None = None,
        lengths: Tensor | None = None,
    ) -> SelectorOutput:
        """The fixed subset of each sample's budget: a ``keep_mask`` only; of the inputs (see
        :meth:`LayerSelector.forward`) only the batch size is read."""
        budget = self.check_budget(budget, features.shape[0]).to(self.subset_masks.device)
        masks = self.subset_masks[budget - 1]
        empty = ~masks.any(-1)
        if bool(empty.any()):
            missing = sorted({int(k) for k in budget[empty]})
            raise RuntimeError(
                f"StaticSelector has no subset for budgets {missing}; install one with set_subsets()"
            )
        return SelectorOutput(keep_mask=masks.float().to(features.device))
