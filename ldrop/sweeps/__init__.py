"""Budget-sweep results: writing, plotting and comparing (no Lightning)."""

from ldrop.sweeps.report import (
    add_sweep_to_tensorboard,
    atomic_write_bytes,
    atomic_write_text,
    compare_sweeps,
    layer_usage_figure,
    load_sweep,
    markdown_table,
    plot_layer_usage,
    plot_sweep,
    primary_metric,
    sweep_figure,
    sweep_title,
    write_sweep,
)

__all__ = [
    "add_sweep_to_tensorboard",
    "atomic_write_bytes",
    "atomic_write_text",
    "compare_sweeps",
    "layer_usage_figure",
    "load_sweep",
    "markdown_table",
    "plot_layer_usage",
    "plot_sweep",
    "primary_metric",
    "sweep_figure",
    "sweep_title",
    "write_sweep",
]
