"""Budget sweeps: the test-time callback (:class:`BudgetSweep`), and writing, plotting and comparing results
(``report``, plain Python)."""

from ldrop.sweeps.callback import BudgetSweep
from ldrop.sweeps.report import (
    SWEEP_FILES,
    SWEEP_MANIFEST,
    IncompleteSweepError,
    add_sweep_to_tensorboard,
    check_sweep_set,
    compare_sweeps,
    layer_usage_figure,
    load_items,
    load_sweep,
    markdown_table,
    primary_metric,
    sweep_figure,
    sweep_title,
    write_sweep,
)

__all__ = [
    "SWEEP_FILES", "SWEEP_MANIFEST", "BudgetSweep", "IncompleteSweepError", "add_sweep_to_tensorboard",
    "check_sweep_set", "compare_sweeps", "layer_usage_figure", "load_items", "load_sweep", "markdown_table",
    "primary_metric", "sweep_figure", "sweep_title", "write_sweep",
]
