"""The test-time budget sweep as a Lightning callback: a composer of scorers (:mod:`ldrop.sweeps.scorers`).

An evaluation protocol, not a model concern: the task's ``test_step`` only encodes the batch; this callback
hands it to each scorer (the budgets' metric and cost, controls, headroom oracles, targets), which score it
through the task's public API, and writes the sweep from their columns.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from ldrop._io import check_writable_folder, raise_if_disk_full
from ldrop._progress import Phase
from ldrop.budgets import Target, budget_list
from ldrop.budgets.profile import synchronize
from ldrop.sweeps.headroom import HeadroomScorer
from ldrop.sweeps.report import add_sweep_to_tensorboard, markdown_table, write_sweep
from ldrop.sweeps.scorers import (
    BudgetScorer,
    ControlScorer,
    ItemScorer,
    Scorer,
    SweepBatch,
    TargetScorer,
    items_disagreement,
)
from ldrop.tasks.base import metric_properties
from ldrop.tasks.precision import precision_context

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


class BudgetSweep(L.Callback):
    """The budget sweep of ``ldrop test`` (other commands check these options, so one config serves all).

    Scores every test batch at each budget and writes ``budget_sweep.csv``/``.json``/``.png`` and
    ``layer_usage.png`` (and, for tasks with ``item_errors``, each item's errors per budget,
    ``budget_items.json``, and the depth oracle).

    Args:
        budgets: budgets of the sweep (ints are layers, floats fractions; ``None``: every ``k`` in ``1..N``).
        repeats: reseeded repeats for selectors that draw random masks at evaluation: mean and spread.
        controls: also score the masks shuffled across the batch and the most common mask for every input, for
            selectors whose masks depend on the input (needs a batch size above 1).
        method_name: label of the run in the sweep and ``ldrop compare`` (default: the task's own label).
        directory: folder of the files (default: the trainer's log folder).
        targets: also sweep budget targets (``{ms: 80}``, ``{rtf: 0.1}``, ``{gflops_per_second: 2}``, each
            optionally with ``profile: PATH``), open loop as ``ldrop predict``, into ``target_sweep.csv``/``.json``.
        headroom: also score the per-input and static oracles per budget on the test and the validation split
            (:class:`~ldrop.sweeps.headroom.HeadroomScorer`: about 20 times the layer work of the plain sweep on
            each split for 12 layers and every budget). ``None``: on for selectors whose masks depend on the input.
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
    def folder(self, trainer: L.Trainer) -> Path:
        """The folder of the sweep files: :attr:`directory`, else the trainer's log folder."""
        return Path(self.directory or trainer.log_dir or trainer.default_root_dir)

    def check_writable(self, trainer: L.Trainer) -> Path:
        """Check that the sweep files can be written in :meth:`folder` (creating nothing); returns it or raises
        ``ValueError`` naming the folder (and ``--sweep.directory`` when it was given)."""
        folder = self.folder(trainer)
        try:
            check_writable_folder(folder)
        except OSError as err:
            reason = f"{err.strerror}: {err.filename}" if err.strerror and err.filename else str(err)
            where = "--sweep.directory: cannot write the budget sweep in" if self.directory else (
                "cannot write the budget sweep in the run folder")
            raise ValueError(f"{where} {folder}: {reason}") from err
        return folder

    def setup(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        # before any budget is scored (the sweep is written last); on every rank, as trainer.log_dir is a
        # collective under DDP (each rank's check leaves nothing behind)
        if stage == "test":
            self.check_writable(trainer)

    def on_test_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.budget_layers = budget_list(self.budgets, pl_module.num_layers)
        # Selectors (and early exit) fitted on validation data are fitted for the swept budgets.
        pl_module.calibrate_on_validation_data(self.budget_layers)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.scorers = self._scorers(pl_module)
        for scorer in self.scorers:
            scorer.start(pl_module)
        batches = sum(trainer.num_test_batches) if trainer.num_test_batches else math.inf
        title = f"budget sweep: {len(self.budget_layers)} budget(s)" + "".join(
            f" + {scorer.label}" for scorer in self.scorers if scorer.label)
        self._phase = Phase(title, total=None if math.isinf(batches) else int(batches), unit="test batch").__enter__()

    def _scorers(self, pl_module: Any) -> list[Scorer]:
        """The scorers this task's sweep runs: the budgets' metric and cost first (the others read its masks)."""
        selector, budgets = pl_module.selector, self.budget_layers
        input_dependent = selector is not None and selector.input_dependent
        self.budget_scorer = BudgetScorer(budgets, self.repeats)
        self.item_scorer = ItemScorer(budgets) if pl_module.has_item_errors else None
        scorers: list[Scorer] = [self.budget_scorer, *([self.item_scorer] if self.item_scorer else [])]
        if self.controls and input_dependent:
            scorers.append(ControlScorer(budgets))
        if self.headroom if self.headroom is not None else input_dependent:
            if selector is not None and pl_module.has_item_errors:
                scorers.append(HeadroomScorer(budgets, self.headroom_candidates, self.static_oracle_max_masks))
            else:
                log.warning("headroom needs a selector and the task's item_errors: not scored")
        self.target_scorer = TargetScorer(self.targets) if self.targets else None
        return scorers + ([self.target_scorer] if self.target_scorer else [])

    # ------------------------------------------------------------------ per batch
    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        synchronize(pl_module.device)
        self._start = time.perf_counter()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        """``outputs`` is the encoded batch the task's ``test_step`` returns."""
        synchronize(pl_module.device)
        step = SweepBatch(pl_module, batch, outputs, batch_idx, time.perf_counter() - self._start)
        with precision_context(pl_module):  # a callback runs outside test_step's autocast: score as it would
            for scorer in self.scorers:
                scorer.batch(step)
        self._phase.step()

    # ------------------------------------------------------------------ results
    def sweep_rows(self, trainer: L.Trainer, pl_module: Any) -> tuple[list[dict[str, Any]], list[list[float]]]:
        """The sweep's rows (one per budget) and the layer-usage matrix ``[budgets][layers]``, all ranks."""
        n = pl_module.num_layers
        datamodule = getattr(trainer, "datamodule", None)
        rows, usage = [], []
        for k in self.budget_layers:
            row: dict[str, Any] = {
                "method": self.method_name or pl_module.method_label(),
                "backbone": pl_module.hparams.backbone,
                "dataset": type(datamodule).__name__.removesuffix("DataModule") if datamodule else "",
                "budget_layers": k,
                "budget_fraction": round(k / n, 4),
            }
            for scorer in self.scorers:
                row.update(scorer.columns(trainer, pl_module, k))
            rows.append(row)
            masks = self.budget_scorer.usage(pl_module, k)
            usage.append(masks.mean(0).tolist() if len(masks) else [0.0] * n)
        return rows, usage

    def on_exception(self, trainer: L.Trainer, pl_module: Any, exception: BaseException) -> None:
        # the sweep's progress ends with a "stopped ... by" line, and no later heartbeat speaks for it
        if (phase := getattr(self, "_phase", None)) is not None:
            phase.__exit__(type(exception), exception, exception.__traceback__)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._phase.__exit__(None, None, None)
        for scorer in self.scorers:
            scorer.end(trainer, pl_module)
        rows, usage = self.sweep_rows(trainer, pl_module)
        if self.item_scorer and self.item_scorer.result and trainer.world_size == 1:  # DDP: rows count repeats
            if problem := items_disagreement(rows, self.item_scorer.result, pl_module.higher_is_better):
                log.warning(problem)
        for row in rows:
            k = row["budget_layers"]
            for name in (*pl_module.metric_names, "executed_layers", "gflops_per_utterance", "ms_per_utterance"):
                if name in row:
                    pl_module.log(f"test/{name}@{k}", float(row[name]), sync_dist=False)  # already all ranks
        self.rows = rows
        # every rank computes the target rows (sums synced over ranks) and the folder (log_dir broadcasts); rank 0 writes
        self.target_rows = self.target_scorer.rows(pl_module) if self.target_scorer else []
        directory = None if trainer.fast_dev_run else self.folder(trainer)
        if not trainer.is_global_zero:
            return
        columns = ["budget_layers", "executed_layers", *pl_module.metric_names, "gflops_per_utterance",
                   "ms_per_utterance", "distinct_masks", "uses_input"]
        self.print_table(rows, columns, rows[0]["method"])
        if directory is None:  # like Lightning's checkpoints and logs
            print("fast_dev_run: the budget sweep of these test batches was printed, not written")
            return
        paths = write_sweep(rows, directory, usage, self.target_rows, self.item_scorer and self.item_scorer.result,
                            metric_properties(pl_module))
        table = markdown_table(rows, [c for c in columns if c in rows[0]])
        log.info("budget sweep written to %s\n%s", paths["csv"].parent, table)
        if self.target_rows:
            self.print_table(self.target_rows, ["target", "executed_layers", *pl_module.metric_names,
                                                "gflops_per_utterance", "ms_per_utterance", "over_target"],
                             f"{rows[0]['method']} under targets")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):  # the plots and the table beside the curves
                try:
                    add_sweep_to_tensorboard(logger.experiment, rows, usage, table, step=trainer.global_step,
                                             higher_is_better=pl_module.higher_is_better)
                except OSError as err:  # its writer thread's, which knows no path
                    raise_if_disk_full(err, None, Path(logger.log_dir))
                    raise

    @staticmethod
    def print_table(rows: list[dict[str, Any]], columns: list[str], method: str) -> None:
        """Print the sweep to the terminal (rich table)."""
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"budget sweep: {method}")
        cols = [c for c in columns if c in rows[0]]
        cols += [c for c in rows[0] if c.endswith(("_std", "_shuffled", "_most_common", "_oracle", "_depth_oracle_val"))]
        for c in cols:
            table.add_column(SWEEP_HEADERS.get(c, c), justify="right", no_wrap=True)
        for row in rows:
            table.add_row(*[f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in cols])
        Console(width=max(100, 14 * len(cols))).print(table)
