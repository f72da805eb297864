"""Budget-sweep results: writing, plotting and comparing (no Lightning)."""

from ldrop.sweeps.report import (
    atomic_write_text,
    compare_sweeps,
    load_sweep,
    markdown_table,
    plot_layer_usage,
    plot_sweep,
    primary_metric,
    write_sweep,
)

__all__ = [
    "atomic_write_text",
    "compare_sweeps",
    "load_sweep",
    "markdown_table",
    "plot_layer_usage",
    "plot_sweep",
    "primary_metric",
    "write_sweep",
]
