"""Headroom of input conditioning: what the best single mask for everybody (the static oracle) and the best
mask per input among a few candidates (the per-input oracle) would score at a budget.

The selector's own result sits between the two oracles: the gap between them is what reading the input can
win at that budget, and the selector's distance to the per-input oracle is what it leaves on the table.
"""

from __future__ import annotations

import itertools
import logging
import math
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torchmetrics import CatMetric

from ldrop._progress import Phase, heartbeat
from ldrop.selectors.candidates import candidate_masks
from ldrop.sweeps.paired import depth_oracle_metric, metric_from_errors
from ldrop.sweeps.scorers import Scorer, SweepBatch, _sum, fixed_item_errors
from ldrop.tasks.calibration import validation_datamodule, validation_limit
from ldrop.tasks.precision import precision_context, to_model_precision

log = logging.getLogger(__name__)


def all_subsets(num_layers: int, budget: int, device: torch.device | str = "cpu") -> Tensor:
    """Every ``budget``-layer mask of ``num_layers`` layers, ``[C(num_layers, budget), num_layers]``."""
    subsets = list(itertools.combinations(range(num_layers), budget))
    masks = torch.zeros(len(subsets), num_layers, device=device)
    for row, layers in enumerate(subsets):
        masks[row, list(layers)] = 1.0
    return masks


class HeadroomScorer(Scorer):
    """Per budget, the per-input oracle (the best of ``candidates`` masks per input: the selector's own, its
    input-blind schedule's, one-layer swaps of its own, random ones) and the static oracle (the best single
    mask for every input, over all ``C(N, k)`` masks when there are at most ``static_max_masks``), on the test
    split and, after it, on the validation split; on validation also the depth oracle (``_depth_oracle_val``,
    :func:`~ldrop.sweeps.paired.depth_oracle`, when every ``k`` in ``1..N`` is swept). Needs the task's
    ``item_errors``."""

    label = "headroom oracles"

    def __init__(self, budgets: list[int], candidates: int, static_max_masks: int) -> None:
        super().__init__(budgets)
        self.candidates, self.static_max_masks = candidates, static_max_masks

    def start(self, task: Any) -> None:
        # per split and budget: error sums of the selector, the per-input oracle and each static mask
        statics = {k: math.comb(task.num_layers, k) if math.comb(task.num_layers, k) <= self.static_max_masks else 0
                   for k in self.budgets}
        self.oracle = {split: {k: {"own": _sum(task.device), "input": _sum(task.device), "count": _sum(task.device),
                                   "static": torch.zeros(statics[k], dtype=torch.float64, device=task.device)}
                               for k in self.budgets} for split in ("test", "val")}
        for state in self.oracle["val"].values():  # per item at the fixed-k masks: the depth oracle's input
            state.update(fixed=CatMetric(nan_strategy="disable").to(task.device), items=CatMetric().to(task.device))
        self.val_depth_oracle: dict[int, float] | None = None

    def batch(self, step: SweepBatch) -> None:
        for k in self.budgets:
            self._score(step.task, step.batch, step.encoded, k, step.costs[k].mask, step.index, self.oracle["test"][k])

    def _score(self, task: Any, batch: Any, encoded: Any, k: int, own: Tensor, batch_idx: int, state: dict) -> None:
        """Accumulate the selector's, the per-input and the static oracles' errors at budget ``k`` for one
        batch (``own``: the selector's masks; a threshold-mode selector's rows may keep other counts)."""
        generator = torch.Generator().manual_seed(10_000 + batch_idx)
        errors = []
        selector = task.selector
        keep_first = selector.prefix_layers  # candidates the selector could pick keep its prefix
        for mask in candidate_masks(own, self.candidates, generator, keep_first, selector.schedule_mask(k)):
            heartbeat()  # a batch is hundreds of forward passes on a long test set's batches
            item_errors, counts = task.item_errors(task.logits_with_mask(encoded, mask), encoded.frame_mask, batch)
            errors.append(item_errors)
        state["own"].update(float(errors[0].sum()))  # the first candidate is the selector's own mask
        state["input"].update(float(torch.stack(errors).min(0).values.sum()))
        state["count"].update(float(counts.sum()))
        if "fixed" in state:
            state["fixed"].update(fixed_item_errors(task, encoded, batch, k, own, errors[0]))
            state["items"].update(counts)
        if state["static"].numel():
            for row, mask in enumerate(all_subsets(task.num_layers, k, task.device)):
                heartbeat()
                everyone = mask.expand(len(batch), -1)
                item_errors, _ = task.item_errors(task.logits_with_mask(encoded, everyone), encoded.frame_mask, batch)
                state["static"][row] += item_errors.sum()

    @torch.no_grad()
    def end(self, trainer: L.Trainer, task: Any) -> None:
        """The headroom on the validation split as well (the selector's own masks at each budget)."""
        datamodule = validation_datamodule(trainer)
        if datamodule is None:  # the `_val` columns are left out (never filled from another split)
            given = getattr(trainer, "datamodule", None)
            log.warning("headroom: %s has no validation split: scored on the test split only, without the *_val "
                        "columns", type(given).__name__ if given is not None else "a trainer without a datamodule")
            return
        datamodule.setup("validate")
        loader = datamodule.val_dataloader()
        count, _ = validation_limit(trainer, loader)  # as many batches as the trainer validates
        if count == 0:
            log.warning("headroom: --trainer.limit_val_batches %s: scored on the test split only, without the *_val "
                        "columns", trainer.limit_val_batches)
            return
        total = count if count is not None else len(loader) if hasattr(loader, "__len__") else None
        with Phase("headroom on the validation split (sweep.headroom: false skips it)", total=total,
                   unit="validation batch") as phase:
            for batch_idx, batch in enumerate(itertools.islice(loader, count)):
                batch = to_model_precision(task, task.transfer_batch_to_device(batch, task.device, 0))
                with precision_context(task):
                    encoded = task.encode(batch.waveforms, batch.lengths)
                    for k in self.budgets:
                        _, keep, _ = task.logits_at_budget(encoded, k)
                        own = (keep.detach() > 0.5).float()
                        self._score(task, batch, encoded, k, own, batch_idx, self.oracle["val"][k])
                phase.step()

    def columns(self, trainer: L.Trainer, task: Any, k: int) -> dict[str, Any]:
        columns = {**self._columns(trainer, task, self.oracle["test"][k]),
                   **self._columns(trainer, task, self.oracle["val"][k], "_val")}
        val = self.oracle["val"]
        if self.val_depth_oracle is None and all(s["items"].update_called for s in val.values()):
            fixed = {b: s["fixed"].compute().double().cpu().numpy() for b, s in val.items()}
            counts = next(iter(val.values()))["items"].compute().double().cpu().numpy()
            self.val_depth_oracle = {b: depth_oracle_metric(fixed, counts, task.num_layers, b, task.higher_is_better)
                                     for b in self.budgets}
        if (self.val_depth_oracle or {}).get(k) is not None:
            columns[f"{task.metric_names[0]}_depth_oracle_val"] = self.val_depth_oracle[k]
        return columns

    @staticmethod
    def _columns(trainer: L.Trainer, task: Any, state: dict, suffix: str = "") -> dict[str, float]:
        """``<metric>_input_oracle``, ``<metric>_static_oracle`` (and, on validation, the selector's own
        ``<metric>``), each with ``suffix``, from one budget's error sums (over all ranks)."""
        if not state["count"].update_called:
            return {}
        count, primary = float(state["count"].compute()), task.metric_names[0]
        as_metric = lambda errors: metric_from_errors(errors, count, task.higher_is_better)  # noqa: E731
        columns = {f"{primary}_input_oracle{suffix}": as_metric(float(state["input"].compute()))}
        if suffix:
            columns[f"{primary}{suffix}"] = as_metric(float(state["own"].compute()))
        if state["static"].numel():
            static = trainer.strategy.reduce(state["static"].clone(), reduce_op="sum")
            columns[f"{primary}_static_oracle{suffix}"] = as_metric(float(static.min()))
        return columns
