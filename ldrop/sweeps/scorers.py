"""The jobs of the budget sweep, one scorer each: metric and cost per budget, controls, targets (the headroom
oracles: :mod:`ldrop.sweeps.headroom`). Sums live in torchmetrics aggregation metrics, so under DDP a sweep
covers the whole test set, not one rank's share.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torchmetrics import CatMetric, SumMetric

from ldrop.budgets import Target, TargetResolver
from ldrop.budgets.profile import synchronize
from ldrop.selectors import mask_diversity, most_common_mask_for_all, shuffle_masks
from ldrop.sweeps.paired import depth_oracle_metric
from ldrop.tasks.cost import BatchCost


def _sum(device: torch.device) -> SumMetric:
    # float64: FLOP totals reach 1e12 and must not lose the digits the table shows. set_dtype after .to():
    # .to() resets the dtype that inputs are cast to (the states would stay float64, the inputs not).
    return SumMetric().to(device).set_dtype(torch.float64)


@dataclass
class SweepBatch:
    """One encoded test batch as every scorer sees it: ``seconds_fixed`` is the wall time before scoring
    (loading and encoding the batch); ``costs`` and ``logits`` (budget -> cost and logits of the method's own
    result, first repeat) and ``repeat_logits`` (budget -> the logits of the further repeats of a random
    selector) are filled by :class:`BudgetScorer` for the scorers after it."""

    task: Any
    batch: Any
    encoded: Any
    index: int
    seconds_fixed: float
    costs: dict[int, BatchCost] = field(default_factory=dict)
    logits: dict[int, Tensor] = field(default_factory=dict)
    repeat_logits: dict[int, list[Tensor]] = field(default_factory=dict)

    def run(self, budget: Any, cost: bool = True) -> tuple[Tensor, BatchCost | None]:
        """The logits at ``budget`` (or at ``budget()``, timed with them) and (``cost``) their cost, whose wall
        time is ``seconds_fixed`` plus this run's."""
        synchronize(self.task.device)
        start = time.perf_counter()
        budget = budget() if callable(budget) else budget
        logits, keep, _ = self.task.logits_at_budget(self.encoded, budget)
        synchronize(self.task.device)
        seconds = self.seconds_fixed + time.perf_counter() - start
        return logits, BatchCost.of(self.task, self.encoded, keep, budget, seconds=seconds) if cost else None


class Scorer:
    """One job of the sweep over ``budgets`` (layer counts): fresh state per test epoch (``start``), each encoded
    test batch (``batch``), work after the last one (``end``), its columns of budget ``k``'s row over all ranks
    (``columns``). ``label`` names it in the sweep's progress line."""

    label = ""

    def __init__(self, budgets: list[int]) -> None:
        self.budgets = budgets

    def start(self, task: Any) -> None: ...

    def batch(self, step: SweepBatch) -> None: ...

    def end(self, trainer: L.Trainer, task: Any) -> None: ...

    def columns(self, trainer: L.Trainer, task: Any, k: int) -> dict[str, Any]:
        return {}


class BudgetScorer(Scorer):
    """The task's metrics, layers run, masks, FLOPs and time at every budget (``repeats`` reseeded draws for
    selectors that draw random masks at evaluation: their mean and spread)."""

    def __init__(self, budgets: list[int], repeats: int = 1) -> None:
        super().__init__(budgets)
        self.requested_repeats = repeats

    def start(self, task: Any) -> None:
        selector, device = task.selector, task.device
        self.repeats = self.requested_repeats if selector is not None and selector.random_at_eval else 1
        self.metrics = {(k, r): task._metrics_on_device() for k in self.budgets for r in range(self.repeats)}
        self.masks = {k: CatMetric().to(device) for k in self.budgets}
        self.flops, self.seconds = ({k: _sum(device) for k in self.budgets} for _ in range(2))
        self.utterances, self.seconds_audio = _sum(device), _sum(device)

    def batch(self, step: SweepBatch) -> None:
        task, encoded, selector = step.task, step.encoded, step.task.selector
        self.utterances.update(float(len(step.batch)))
        self.seconds_audio.update(float(step.batch.lengths.sum()) / task.sample_rate)
        for k in self.budgets:
            for r in range(self.repeats):
                if selector is not None:
                    selector.reseed(r, step.index)  # of the selector's own seed: another seed, other draws
                logits, cost = step.run(k, cost=r == 0)  # repeats score the metric only
                if cost is not None:
                    step.logits[k], step.costs[k] = logits, cost
                    self.masks[k].update(cost.mask)
                    self.flops[k].update(float(cost.flops.sum()))
                    self.seconds[k].update(cost.seconds)
                elif task.has_item_errors:  # the per-item errors average the repeats
                    step.repeat_logits.setdefault(k, []).append(logits)
                task.update_metrics(self.metrics[(k, r)], logits, encoded.frame_mask, step.batch)

    def usage(self, task: Any, k: int) -> torch.Tensor:
        """``[inputs, layers]`` the masks run at budget ``k``, over all ranks."""
        if not self.masks[k].update_called:
            return torch.zeros(0, task.num_layers)
        return self.masks[k].compute().float().cpu().reshape(-1, task.num_layers)

    def columns(self, trainer: L.Trainer, task: Any, k: int) -> dict[str, Any]:
        masks = self.usage(task, k)
        flops, utterances = float(self.flops[k].compute()), int(round(float(self.utterances.compute())))
        row: dict[str, Any] = {
            "executed_layers": float(masks.sum(1).mean()) if len(masks) else 0.0,
            "gflops_per_utterance": flops / 1e9 / max(1, utterances),
            "gflops_per_second": flops / 1e9 / max(float(self.seconds_audio.compute()), 1e-9),
            "ms_per_utterance": 1000.0 * float(self.seconds[k].compute()) / max(1, utterances),
            "utterances": utterances,
        }
        # the input-conditioned selector's fallback: which budgets read the input (undecided ones do)
        decided = task.selector.report() if task.selector is not None else {}
        if decided:
            row["uses_input"] = decided[k]["uses_input"] if k in decided else True
        if task.selector is not None and len(masks):
            diversity = mask_diversity(masks)
            row.update(distinct_masks=int(diversity["num_distinct"]),
                       mean_hamming=float(diversity["mean_pairwise_hamming"]),
                       top_mask_share=float(diversity["most_common_share"]))
        for name in task.metric_names:
            values = torch.stack([self.metrics[(k, r)][name].compute().float().cpu() for r in range(self.repeats)])
            row[name] = float(values.mean())
            if self.repeats > 1:
                row[f"{name}_std"] = float(values.std(unbiased=True))
        return row


def fixed_item_errors(task: Any, encoded: Any, batch: Any, k: int, own: Tensor, own_errors: Tensor) -> Tensor:
    """Per input, the error terms at the method's fixed-``k`` masks (``task.decide(encoded, k)``): its own
    ``own_errors`` where its own masks ``own`` all keep ``k`` layers (top-k selectors, early exit), else NaN
    where the fixed-``k`` masks do not keep ``k`` layers either (no selector, threshold mode)."""
    if bool(((own > 0.5).sum(1) == k).all()):
        return own_errors
    keep = task.decide(encoded, k)[0]
    if not bool(((keep > 0.5).sum(1) == k).all()):
        return torch.full_like(own_errors, float("nan"))
    return task.item_errors(task.logits_with_mask(encoded, keep), encoded.frame_mask, batch)[0]


def gather_ids(ids: list[str]) -> list[str]:
    """Every rank's ``ids`` in rank order (the order in which a ``CatMetric`` gathers its rows)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return list(ids)
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, list(ids))
    return [i for rank in gathered for i in rank]


class ItemScorer(Scorer):
    """Per budget, each test item's error terms of the method's own result (a random selector's: the mean over
    the sweep's repeats, so that they pool to the row's metric, the mean of the repeats' metrics) and at its
    fixed-``k`` masks of the first repeat (:func:`fixed_item_errors`: the depth oracle's input), with the items'
    counts and ids,
    over all ranks (ids in rank order, as the errors; an item a sampler repeated to even out the ranks is kept
    once). :meth:`items` is what ``budget_items.json`` holds. Needs the task's ``item_errors``."""

    def start(self, task: Any) -> None:
        cat = lambda: CatMetric(nan_strategy="disable").to(task.device)  # noqa: E731 (NaN: no fixed-k errors)
        self.errors = {(k, kind): cat() for k in self.budgets for kind in ("own", "fixed")}
        self.counts, self.ids, self.result = cat(), [], None

    def batch(self, step: SweepBatch) -> None:
        task, encoded = step.task, step.encoded
        for k in self.budgets:
            own, counts = task.item_errors(step.logits[k], encoded.frame_mask, step.batch)
            draws = [own.double()] + [task.item_errors(logits, encoded.frame_mask, step.batch)[0].double()
                                      for logits in step.repeat_logits.get(k, ())]
            self.errors[(k, "own")].update(torch.stack(draws).mean(0))
            self.errors[(k, "fixed")].update(fixed_item_errors(task, encoded, step.batch, k, step.costs[k].mask, own))
        self.counts.update(counts)
        self.ids += list(step.batch.ids)

    def end(self, trainer: L.Trainer, task: Any) -> None:
        ids = gather_ids(self.ids)
        if not ids:  # the same on every rank: each calls the gathers below or none does
            return
        first = sorted({i: n for n, i in reversed(list(enumerate(ids)))}.values())  # each id's first row
        values = lambda m: m.compute().double().cpu().numpy()[first]  # noqa: E731
        fixed = {k: values(self.errors[(k, "fixed")]) for k in self.budgets}
        self.result = {"metric": task.metric_names[0], "ids": [ids[n] for n in first],
                       "counts": values(self.counts).tolist(), "budgets": list(self.budgets),
                       "errors": {str(k): values(self.errors[(k, "own")]).tolist() for k in self.budgets},
                       "fixed_errors": {str(k): v.tolist() for k, v in fixed.items() if not np.isnan(v).any()}}

    def columns(self, trainer: L.Trainer, task: Any, k: int) -> dict[str, Any]:
        if self.result is None:
            return {}
        fixed = {int(b): np.asarray(v) for b, v in self.result["fixed_errors"].items()}
        oracle = depth_oracle_metric(fixed, self.result["counts"], task.num_layers, k, task.higher_is_better)
        return {} if oracle is None else {f"{task.metric_names[0]}_depth_oracle": oracle}


def items_disagreement(rows: list[dict[str, Any]], items: dict[str, Any], higher_is_better: bool) -> str | None:
    """Why the per-item errors do not pool to the row's metric (``1 - sum(errors) / sum(counts)`` when higher is
    better, else the ratio itself, within 1e-3), or ``None``. The oracles, the headroom columns and ``ldrop
    compare``'s intervals read the errors: they must be the metric's terms (not F1's, which do not split)."""
    counts = float(np.sum(items["counts"]))
    metric = items["metric"]
    for row in rows:
        errors = items["errors"].get(str(row["budget_layers"]))
        if errors is None or counts <= 0 or metric not in row:
            continue
        pooled = float(np.sum(errors)) / counts
        implied = 1.0 - pooled if higher_is_better else pooled
        if abs(implied - row[metric]) > 1e-3 * max(1.0, abs(row[metric])):
            return (f"the task's item_errors pool to {metric} {implied:.4f} at k={row['budget_layers']}, but its "
                    f"metric is {row[metric]:.4f}: the oracle, headroom and depth-oracle columns (and ldrop compare's "
                    "intervals) read item_errors, which must be the primary metric's terms per input")
    return None


class ControlScorer(Scorer):
    """The metric with the selector's masks shuffled across the batch, and with the most common mask for every
    input: what the masks' dependence on each input is worth."""

    label = "controls"
    CONTROLS = ("shuffled", "most_common")

    def start(self, task: Any) -> None:
        self.metrics = {(k, c): task._metrics_on_device() for k in self.budgets for c in self.CONTROLS}

    def batch(self, step: SweepBatch) -> None:
        task, encoded = step.task, step.encoded
        for k in self.budgets:
            own = step.costs[k].mask.cpu()
            masks = {"shuffled": shuffle_masks(own, torch.Generator().manual_seed(step.index)),
                     "most_common": most_common_mask_for_all(own)}
            for name, mask in masks.items():
                logits = task.logits_with_mask(encoded, mask.to(task.device))
                task.update_metrics(self.metrics[(k, name)], logits, encoded.frame_mask, step.batch)

    def columns(self, trainer: L.Trainer, task: Any, k: int) -> dict[str, Any]:
        primary = task.metric_names[0]
        return {f"{primary}_{c}": float(self.metrics[(k, c)][primary].compute()) for c in self.CONTROLS}


class TargetScorer(Scorer):
    """Budget targets: each input runs the budget the open-loop controller gives it; per target the layers run,
    metrics, GFLOPs, ms per utterance and the share of utterances over the target (time targets per batch: the
    batch's time against its allowance; FLOPs targets per utterance, exactly)."""

    def __init__(self, targets: list[Target]) -> None:
        super().__init__([])
        self.targets, self.label = targets, f"{len(targets)} target(s)"

    def start(self, task: Any) -> None:
        self.resolver = TargetResolver()  # one controller per profile; one warning per target at the end
        self.utterances = _sum(task.device)
        sums = ("layers", "flops", "seconds", "misses")
        self.state = [{"metrics": task._metrics_on_device()} | {name: _sum(task.device) for name in sums} for _ in self.targets]

    def batch(self, step: SweepBatch) -> None:
        task, batch, encoded = step.task, step.batch, step.encoded
        self.utterances.update(float(len(batch)))
        audio = batch.lengths.double() / task.sample_rate
        for target, state in zip(self.targets, self.state, strict=True):
            self.resolver.controller(task, target)  # a quick profile measured for it (seconds) is not its time
            logits, cost = step.run(lambda target=target: self.resolver.budget(task, batch.lengths, target))
            if target.kind == "gflops_per_second":
                misses = float((cost.gflops.to(audio.device) > target.value * audio * (1 + 1e-9)).sum())
            else:
                allowance = target.value / 1000.0 * len(batch) if target.kind == "ms" else target.value * float(audio.sum())
                misses = float(len(batch)) if cost.seconds > allowance else 0.0
            for name, value in (("layers", float(cost.layers.sum())), ("flops", float(cost.flops.sum())),
                                ("seconds", cost.seconds), ("misses", misses)):
                state[name].update(value)
            task.update_metrics(state["metrics"], logits, encoded.frame_mask, batch)

    def end(self, trainer: L.Trainer, task: Any) -> None:
        self.resolver.close("the target sweep")

    def rows(self, task: Any) -> list[dict[str, Any]]:
        """One row per target: layers run, the metrics, GFLOPs and ms per utterance, share over the target."""
        utterances = max(1.0, float(self.utterances.compute()))
        rows = []
        for target, state in zip(self.targets, self.state, strict=True):
            row: dict[str, Any] = {
                "target": f"{target.kind}={target.value:g}",
                "executed_layers": float(state["layers"].compute()) / utterances,
                "gflops_per_utterance": float(state["flops"].compute()) / 1e9 / utterances,
                "ms_per_utterance": 1000.0 * float(state["seconds"].compute()) / utterances,
                "over_target": float(state["misses"].compute()) / utterances,
                "utterances": int(round(utterances)),
            }
            row.update({name: float(state["metrics"][name].compute()) for name in task.metric_names})
            rows.append(row)
        return rows
