"""The test-time budget sweep as a Lightning callback: budgets, repeats, controls, files and plots.

An evaluation protocol, not a model concern: the task's ``test_step`` only encodes the batch; this callback
scores it at every budget through the task's public API (``logits_at_budget``, ``logits_with_mask``,
``update_metrics``) and writes the sweep. FLOPs, timings, utterance counts and masks are accumulated in
torchmetrics aggregation metrics, so under DDP the sweep covers the whole test set, not one rank's share.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torchmetrics import CatMetric, SumMetric

from ldrop._progress import Phase
from ldrop.budgets import Target, TargetResolver, budget_list
from ldrop.engine.flops import count_forward_flops
from ldrop.selectors import mask_diversity, most_common_mask_for_all, shuffle_masks
from ldrop.sweeps.headroom import all_subsets, candidate_masks, num_subsets
from ldrop.sweeps.report import add_sweep_to_tensorboard, markdown_table, write_rows, write_sweep
from ldrop.tasks.base import LayerDropTask
from ldrop.tasks.precision import precision_context, to_model_precision

_base_item_errors = LayerDropTask.item_errors

log = logging.getLogger(__name__)

#: Short terminal headers of the sweep columns.
SWEEP_HEADERS = {
    "budget_layers": "k",
    "executed_layers": "layers run",
    "gflops_per_utterance": "GFLOPs/utt",
    "ms_per_utterance": "ms/utt",
    "distinct_masks": "masks",
    "over_target": "over target",
}


def _sum(device: torch.device) -> SumMetric:
    # float64: FLOP totals reach 1e12 and must not lose the digits the table shows. set_dtype after .to():
    # .to() resets the dtype that inputs are cast to (the states would stay float64, the inputs not).
    return SumMetric().to(device).set_dtype(torch.float64)


class BudgetSweep(L.Callback):
    """Scores every test batch at each budget and writes ``budget_sweep.csv``/``.json``/``.png``.

    Args:
        budgets: budgets of the sweep (ints are layers, floats fractions; ``None``: every ``k`` in ``1..N``).
        repeats: repeats for selectors that draw random masks at evaluation (``random_at_eval``), each
            reseeded; mean and spread are reported.
        controls: also score "the same masks shuffled across the batch" and "the most common mask for every
            input", for selectors whose masks depend on the input (needs a batch size above 1).
        method_name: label of the run in the sweep and ``ldrop compare`` (default: the task's own label).
        directory: folder of the files (default: the trainer's log folder).
        targets: also sweep budget targets (``{ms: 80}``, ``{rtf: 0.1}``, ``{gflops_per_second: 2}``, each
            optionally with ``profile: PATH``): each input gets the budget the controller gives it (open
            loop, as ``ldrop predict``), and ``target_sweep.csv``/``.json`` report per target the layers
            run, the metric, GFLOPs, the measured ms per utterance and the share of utterances over the target
            (time targets are checked per batch: batch time against the batch's allowance; at batch size 1
            that is per utterance; FLOPs targets per utterance, exactly).
        headroom: also score, per budget, the per-input oracle (the best of ``headroom_candidates`` masks
            per input: the selector's own, its input-blind schedule's (``schedule_mask``), one-layer swaps of its own, random ones) and the static oracle (the
            best single mask for every input, over all ``C(N, k)`` masks when there are at most
            ``static_oracle_max_masks``), as ``<metric>_input_oracle`` / ``<metric>_static_oracle``
            columns. ``None``: on for selectors whose masks depend on the input. Needs the task's
            ``item_errors``; scored on the test split and again on the validation split. Its cost: per batch
            and budget ``k``, ``headroom_candidates`` extra passes through ``k`` layers, plus ``C(N, k)`` for
            the static oracle; for a 12-layer model over every budget that is about 20 times the layer work
            of the plain sweep, on both splits (about 40 times the plain sweep in all). ``false`` skips it.
        headroom_candidates: candidate masks per input of the per-input oracle.
        static_oracle_max_masks: budgets with more ``k``-layer masks than this get no static oracle.
    """

    def __init__(
        self,
        budgets: list[int | float] | None = None,
        repeats: int = 1,
        controls: bool = False,
        method_name: str | None = None,
        directory: str | None = None,
        targets: list[dict[str, Any] | str] | None = None,
        headroom: bool | None = None,
        headroom_candidates: int = 8,
        static_oracle_max_masks: int = 128,
    ) -> None:
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.targets = [Target.parse(t) for t in (targets or [])]  # bad targets fail here, before any work
        self.target_rows: list[dict[str, Any]] = []
        if headroom_candidates < 2:
            raise ValueError(f"headroom_candidates must be >= 2 (the selector's own mask and another), got {headroom_candidates}")
        self.headroom = headroom
        self.headroom_candidates = int(headroom_candidates)
        self.static_oracle_max_masks = int(static_oracle_max_masks)
        self.budgets = budgets
        self.repeats = int(repeats)
        self.controls = bool(controls)
        self.method_name = method_name
        self.directory = directory
        self.rows: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ set-up
    def on_test_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.budget_layers = budget_list(self.budgets, pl_module.num_layers)
        # Selectors (and early exit) fitted on validation data are fitted for the swept budgets.
        pl_module.fit_on_validation_data(self.budget_layers)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._setup_state(pl_module)
        self._targets = TargetResolver()  # inputs that cannot meet a target: one warning for the whole sweep
        batches = sum(trainer.num_test_batches) if trainer.num_test_batches else math.inf
        extras = [name for name, on in (("controls", self._controls), ("headroom oracles", self._headroom),
                                        (f"{len(self.targets)} target(s)", bool(self.targets))) if on]
        self._phase = Phase(f"budget sweep: {len(self.budget_layers)} budget(s)" + "".join(f" + {e}" for e in extras),
                            total=None if math.isinf(batches) else int(batches), unit="test batch").__enter__()

    def _setup_state(self, pl_module: Any) -> None:
        """Fresh aggregation metrics for one test epoch."""
        selector = pl_module.selector
        self._repeats = self.repeats if selector is not None and selector.random_at_eval else 1
        self._controls = self.controls and selector is not None and selector.input_dependent
        budgets, device = self.budget_layers, pl_module.device
        self.metrics = {(k, r): pl_module.configure_metrics() for k in budgets for r in range(self._repeats)}
        self.control_metrics = ({(k, c): pl_module.configure_metrics() for k in budgets
                                 for c in ("shuffled", "most_common")} if self._controls else {})
        for metrics in (*self.metrics.values(), *self.control_metrics.values()):
            for metric in metrics.values():
                metric.to(device)
        self.masks = {k: CatMetric().to(device) for k in budgets}
        self.flops = {k: _sum(device) for k in budgets}
        self.seconds = {k: _sum(device) for k in budgets}
        self.totals = {name: _sum(device) for name in ("seconds_audio", "utterances", "seconds_fixed")}
        wants = self.headroom if self.headroom is not None else (selector is not None and selector.input_dependent)
        self._headroom = bool(wants) and selector is not None and type(pl_module).item_errors is not _base_item_errors
        if wants and not self._headroom:
            log.warning("headroom needs a selector and the task's item_errors: not scored")
        self.oracle = {split: {k: self._oracle_state(pl_module.num_layers, k, device) for k in budgets}
                       for split in ("test", "val")} if self._headroom else {}
        self.target_state = [
            {"metrics": pl_module.configure_metrics(), "layers": _sum(device), "flops": _sum(device),
             "seconds": _sum(device), "misses": _sum(device)} for _ in self.targets
        ]
        for state in self.target_state:
            for metric in state["metrics"].values():
                metric.to(device)

    # ------------------------------------------------------------------ per batch
    @staticmethod
    def _sync(pl_module: Any) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        """``outputs`` is the encoded batch the task's ``test_step`` returns."""
        with precision_context(pl_module):  # a callback runs outside test_step's autocast: score as it would
            self._score_batch(pl_module, outputs, batch, batch_idx)
        self._phase.step()

    def _score_batch(self, pl_module: Any, encoded: Any, batch: Any, batch_idx: int) -> None:
        """Score one encoded test batch at every budget (and its controls, oracles and targets)."""
        self._sync(pl_module)
        seconds_fixed = time.perf_counter() - self._start
        self.totals["seconds_fixed"].update(seconds_fixed)
        self.totals["utterances"].update(float(len(batch)))
        self.totals["seconds_audio"].update(float(batch.lengths.sum()) / pl_module.sample_rate)
        selector = pl_module.selector
        selector_flops = selector.flops(encoded.frame_mask.sum(1)) if selector is not None else None
        for k in self.budget_layers:
            hard = None
            for r in range(self._repeats):
                if selector is not None:
                    selector.reseed(1000 * r + batch_idx)
                self._sync(pl_module)
                start = time.perf_counter()
                logits, keep, _ = pl_module.logits_at_budget(encoded, k)
                self._sync(pl_module)
                if r == 0:
                    self.seconds[k].update(time.perf_counter() - start)
                    hard = (keep.detach() > 0.5).float()
                    self.masks[k].update(hard)
                    flops = count_forward_flops(pl_module.backbone.config, encoded.lengths, hard, selector_flops)
                    self.flops[k].update(float(flops.total.sum()))
                pl_module.update_metrics(self.metrics[(k, r)], logits, encoded.frame_mask, batch)
            if self._controls:
                gen = torch.Generator().manual_seed(batch_idx)
                controls = {"shuffled": shuffle_masks(hard.cpu(), gen).to(pl_module.device),
                            "most_common": most_common_mask_for_all(hard.cpu()).to(pl_module.device)}
                for name, mask in controls.items():
                    logits = pl_module.logits_with_mask(encoded, mask)
                    pl_module.update_metrics(self.control_metrics[(k, name)], logits, encoded.frame_mask, batch)
            if self._headroom:
                self._score_headroom(pl_module, batch, encoded, k, hard, batch_idx, self.oracle["test"][k])
        for target, state in zip(self.targets, self.target_state, strict=True):
            self._score_target(pl_module, batch, encoded, target, state, seconds_fixed, selector_flops)

    def _oracle_state(self, num_layers: int, k: int, device: torch.device) -> dict[str, Any]:
        """Error sums of the selector, the per-input oracle and each static mask at budget ``k``."""
        static = num_subsets(num_layers, k) if num_subsets(num_layers, k) <= self.static_oracle_max_masks else 0
        return {"own": _sum(device), "input": _sum(device), "count": _sum(device),
                "static": torch.zeros(static, dtype=torch.float64, device=device)}

    def _score_headroom(self, pl_module, batch, encoded, k: int, own: Tensor, batch_idx: int, state: dict) -> None:
        """Accumulate the selector's, the per-input and the static oracles' errors at budget ``k`` for one
        batch (``own``: the selector's masks; a threshold-mode selector's rows may keep other counts)."""
        generator = torch.Generator().manual_seed(10_000 + batch_idx)
        errors = []
        selector = pl_module.selector
        keep_first = selector.prefix_layers  # candidates the selector could pick keep its prefix
        for mask in candidate_masks(own, self.headroom_candidates, generator, keep_first, selector.schedule_mask(k)):
            item_errors, counts = pl_module.item_errors(pl_module.logits_with_mask(encoded, mask),
                                                        encoded.frame_mask, batch)
            errors.append(item_errors)
        state["own"].update(float(errors[0].sum()))  # the first candidate is the selector's own mask
        state["input"].update(float(torch.stack(errors).min(0).values.sum()))
        state["count"].update(float(counts.sum()))
        if state["static"].numel():
            for row, mask in enumerate(all_subsets(pl_module.num_layers, k, pl_module.device)):
                everyone = mask.expand(len(batch), -1)
                item_errors, _ = pl_module.item_errors(pl_module.logits_with_mask(encoded, everyone),
                                                       encoded.frame_mask, batch)
                state["static"][row] += item_errors.sum()

    @torch.no_grad()
    def _score_validation(self, trainer: L.Trainer, pl_module: Any) -> None:
        """The headroom on the validation split as well (the selector's own masks at each budget)."""
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None:
            log.warning("headroom on validation data needs a datamodule: scored on the test split only")
            return
        datamodule.setup("validate")
        loader = datamodule.val_dataloader()
        total = len(loader) if hasattr(loader, "__len__") else None
        with Phase("headroom on the validation split (sweep.headroom: false skips it)", total=total,
                   unit="validation batch") as phase:
            for batch_idx, batch in enumerate(loader):
                batch = to_model_precision(pl_module, pl_module.transfer_batch_to_device(batch, pl_module.device, 0))
                with precision_context(pl_module):
                    encoded = pl_module.encode(batch.waveforms, batch.lengths)
                    for k in self.budget_layers:
                        _, keep, _ = pl_module.logits_at_budget(encoded, k)
                        own = (keep.detach() > 0.5).float()
                        self._score_headroom(pl_module, batch, encoded, k, own, batch_idx, self.oracle["val"][k])
                phase.step()

    def _oracle_columns(self, trainer: L.Trainer, pl_module: Any, state: dict, suffix: str = "") -> dict[str, float]:
        """``<metric>_input_oracle``, ``<metric>_static_oracle`` (and, on validation, the selector's own
        ``<metric>``), each with ``suffix``, from one budget's error sums (over all ranks)."""
        count = max(float(state["count"].compute()), 1e-12)
        primary = pl_module.metric_names[0]

        def as_metric(errors: float) -> float:  # the primary metric from its error terms
            return 1.0 - errors / count if pl_module.higher_is_better else errors / count

        if not state["count"].update_called:
            return {}
        columns = {f"{primary}_input_oracle{suffix}": as_metric(float(state["input"].compute()))}
        if suffix:
            columns[f"{primary}{suffix}"] = as_metric(float(state["own"].compute()))
        if state["static"].numel():
            static = trainer.strategy.reduce(state["static"].clone(), reduce_op="sum")
            columns[f"{primary}_static_oracle{suffix}"] = as_metric(float(static.min()))
        return columns

    def _score_target(self, pl_module, batch, encoded, target: Target, state, seconds_fixed, selector_flops):
        self._sync(pl_module)
        start = time.perf_counter()
        budget = self._targets.budget(pl_module, batch.lengths, target)
        logits, keep, _ = pl_module.logits_at_budget(encoded, budget)
        self._sync(pl_module)
        seconds = seconds_fixed + time.perf_counter() - start
        hard = (keep.detach() > 0.5).float()
        flops = count_forward_flops(pl_module.backbone.config, encoded.lengths, hard, selector_flops).total
        audio = batch.lengths.double() / pl_module.sample_rate
        if target.kind == "gflops_per_second":
            misses = float((flops.to(audio.device) / 1e9 > target.value * audio * (1 + 1e-9)).sum())
        else:
            allowance = target.value / 1000.0 * len(batch) if target.kind == "ms" else target.value * float(audio.sum())
            misses = float(len(batch)) if seconds > allowance else 0.0
        state["layers"].update(float(hard.sum()))
        state["flops"].update(float(flops.sum()))
        state["seconds"].update(seconds)
        state["misses"].update(misses)
        pl_module.update_metrics(state["metrics"], logits, encoded.frame_mask, batch)

    def target_sweep_rows(self, pl_module: Any) -> list[dict[str, Any]]:
        """One row per target: layers run, the metrics, GFLOPs and ms per utterance, share over the target."""
        utterances = max(1.0, float(self.totals["utterances"].compute()))
        rows = []
        for target, state in zip(self.targets, self.target_state, strict=True):
            row: dict[str, Any] = {
                "target": f"{target.kind}={target.value:g}",
                "executed_layers": float(state["layers"].compute()) / utterances,
                "gflops_per_utterance": float(state["flops"].compute()) / 1e9 / utterances,
                "ms_per_utterance": 1000.0 * float(state["seconds"].compute()) / utterances,
                "over_target": float(state["misses"].compute()) / utterances,
                "utterances": int(round(utterances)),
            }
            row.update({name: float(state["metrics"][name].compute()) for name in pl_module.metric_names})
            rows.append(row)
        return rows

    # ------------------------------------------------------------------ results
    def sweep_rows(self, trainer: L.Trainer, pl_module: Any) -> tuple[list[dict[str, Any]], list[list[float]]]:
        """The sweep's rows (one per budget) and the layer-usage matrix ``[budgets][layers]``, all ranks."""
        n = pl_module.num_layers
        total = {name: float(metric.compute()) for name, metric in self.totals.items()}
        utterances = max(1, int(round(total["utterances"])))
        datamodule = getattr(trainer, "datamodule", None)
        primary = pl_module.metric_names[0]
        rows, usage = [], []
        # the input-conditioned selector's fallback: which budgets read the input (undecided ones do)
        decided = pl_module.selector.report() if pl_module.selector is not None else {}
        for k in self.budget_layers:
            masks = self.masks[k].compute().float().cpu().reshape(-1, n) if self.masks[k].update_called \
                else torch.zeros(0, n)
            flops = float(self.flops[k].compute())
            row: dict[str, Any] = {
                "method": self.method_name or pl_module.method_label(),
                "backbone": pl_module.hparams.backbone,
                "dataset": type(datamodule).__name__.removesuffix("DataModule") if datamodule else "",
                "budget_layers": k,
                "budget_fraction": round(k / n, 4),
                "executed_layers": float(masks.sum(1).mean()) if len(masks) else 0.0,
                "gflops_per_utterance": flops / 1e9 / utterances,
                "gflops_per_second": flops / 1e9 / max(total["seconds_audio"], 1e-9),
                "ms_per_utterance": 1000.0 * (total["seconds_fixed"] + float(self.seconds[k].compute())) / utterances,
                "utterances": int(round(total["utterances"])),
            }
            if decided:
                row["uses_input"] = decided[k]["uses_input"] if k in decided else True
            if pl_module.selector is not None and len(masks):
                diversity = mask_diversity(masks)
                row.update(
                    distinct_masks=int(diversity["num_distinct"]),
                    mean_hamming=float(diversity["mean_pairwise_hamming"]),
                    top_mask_share=float(diversity["most_common_share"]),
                )
            for name in pl_module.metric_names:
                values = torch.stack([self.metrics[(k, r)][name].compute().float().cpu()
                                      for r in range(self._repeats)])
                row[name] = float(values.mean())
                if self._repeats > 1:
                    row[f"{name}_std"] = float(values.std(unbiased=True))
            for (kk, control), metrics in self.control_metrics.items():
                if kk == k:
                    row[f"{primary}_{control}"] = float(metrics[primary].compute())
            if self._headroom:
                row.update(self._oracle_columns(trainer, pl_module, self.oracle["test"][k]))
                row.update(self._oracle_columns(trainer, pl_module, self.oracle["val"][k], "_val"))
            rows.append(row)
            usage.append(masks.mean(0).tolist() if len(masks) else [0.0] * n)
        return rows, usage

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._phase.__exit__(None, None, None)
        self._targets.close("the target sweep")
        if self._headroom:
            self._score_validation(trainer, pl_module)
        rows, usage = self.sweep_rows(trainer, pl_module)
        for row in rows:
            k = row["budget_layers"]
            for name in (*pl_module.metric_names, "executed_layers", "gflops_per_utterance", "ms_per_utterance"):
                if name in row:
                    pl_module.log(f"test/{name}@{k}", float(row[name]), sync_dist=False)  # already all ranks
        self.rows = rows
        if not trainer.is_global_zero:
            return
        directory = Path(self.directory or trainer.log_dir or trainer.default_root_dir)
        paths = write_sweep(rows, directory, usage)
        columns = ["budget_layers", "executed_layers", *pl_module.metric_names, "gflops_per_utterance",
                   "ms_per_utterance", "distinct_masks", "uses_input"]
        table = markdown_table(rows, [c for c in columns if c in rows[0]])
        self.print_table(rows, columns, rows[0]["method"])
        log.info("budget sweep written to %s\n%s", paths["csv"].parent, table)
        if self.targets:
            self.target_rows = self.target_sweep_rows(pl_module)
            write_rows(self.target_rows, directory / "target_sweep.csv", directory / "target_sweep.json")
            self.print_table(self.target_rows, ["target", "executed_layers", *pl_module.metric_names,
                                                "gflops_per_utterance", "ms_per_utterance", "over_target"],
                             f"{rows[0]['method']} under targets")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):  # the plots and the table beside the curves
                add_sweep_to_tensorboard(logger.experiment, rows, usage, table, step=trainer.global_step)

    @staticmethod
    def print_table(rows: list[dict[str, Any]], columns: list[str], method: str) -> None:
        """Print the sweep to the terminal (rich table)."""
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"budget sweep: {method}")
        cols = [c for c in columns if c in rows[0]]
        cols += [c for c in rows[0] if c.endswith(("_std", "_shuffled", "_most_common", "_oracle"))]
        for c in cols:
            table.add_column(SWEEP_HEADERS.get(c, c), justify="right", no_wrap=True)
        for row in rows:
            table.add_row(*[f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in cols])
        Console(width=max(100, 14 * len(cols))).print(table)
