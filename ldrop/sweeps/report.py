"""Budget-sweep results: one row per budget, written as CSV + JSON + plots, and compared across runs.

Plain Python + matplotlib (Agg); no Lightning. A row is a flat ``dict`` whose keys are the columns below
plus the task's metric names (``acc``, ``wer``, ``cer``) and their optional ``_std``/control columns.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ldrop._io import atomic_write, atomic_write_json, atomic_write_text

#: Columns every sweep row has, in the order they are written.
BASE_COLUMNS = [
    "method",
    "backbone",
    "dataset",
    "budget_layers",
    "budget_fraction",
    "executed_layers",
    "gflops_per_utterance",
    "gflops_per_second",
    "ms_per_utterance",
    "utterances",
    "distinct_masks",
    "mean_hamming",
    "top_mask_share",
]

#: Metrics where lower is better (everything else: higher is better).
LOWER_IS_BETTER = {"wer", "cer", "loss"}


def _atomic_savefig(fig: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight"), suffix=path.suffix)


def columns_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The base columns first, then every other key in first-seen order."""
    extra: list[str] = []
    for row in rows:
        extra += [k for k in row if k not in BASE_COLUMNS and k not in extra]
    return [c for c in BASE_COLUMNS if any(c in r for r in rows)] + extra


def rows_to_csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns_of(rows), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


def primary_metric(rows: Sequence[dict[str, Any]]) -> str:
    """The first metric column of a sweep (``acc``, ``wer``, ...)."""
    for key in columns_of(rows):
        if key in BASE_COLUMNS or key.endswith(("_std", "_shuffled", "_most_common")):
            continue
        return key
    raise ValueError("the sweep rows hold no metric column")


def plot_sweep(runs: dict[str, Sequence[dict[str, Any]]], path: str | os.PathLike, metric: str | None = None) -> None:
    """Metric vs GFLOPs per utterance, one line per run (label -> rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, rows in runs.items():
        name = metric or primary_metric(rows)
        points = sorted((float(r["gflops_per_utterance"]), float(r[name])) for r in rows if r.get(name) not in (None, ""))
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        stds = [float(r.get(f"{name}_std") or 0.0) for r in sorted(rows, key=lambda r: float(r["gflops_per_utterance"]))]
        line = ax.plot(xs, ys, marker="o", label=label)[0]
        if any(stds) and len(stds) == len(ys):
            ax.fill_between(xs, [y - s for y, s in zip(ys, stds, strict=True)],
                            [y + s for y, s in zip(ys, stds, strict=True)], color=line.get_color(), alpha=0.2)
    name = metric or primary_metric(next(iter(runs.values())))
    ax.set_xlabel("GFLOPs per utterance")
    ax.set_ylabel(name.upper() + (" (lower is better)" if name in LOWER_IS_BETTER else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _atomic_savefig(fig, Path(path))
    plt.close(fig)


def plot_layer_usage(usage: Sequence[Sequence[float]], budgets: Sequence[int], path: str | os.PathLike) -> None:
    """Heat map: how often each layer ran (columns) at each budget (rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.35 * len(budgets) + 1.5))
    image = ax.imshow(usage, vmin=0.0, vmax=1.0, aspect="auto", cmap="viridis")
    ax.set_xlabel("layer")
    ax.set_ylabel("budget (layers)")
    ax.set_yticks(range(len(budgets)), [str(b) for b in budgets])
    ax.set_xticks(range(len(usage[0])), [str(i) for i in range(len(usage[0]))])
    fig.colorbar(image, ax=ax, label="share of inputs running the layer")
    _atomic_savefig(fig, Path(path))
    plt.close(fig)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Iterable[str] | None = None) -> str:
    """A Markdown table of ``rows`` (all columns, or the given ones)."""
    cols = list(columns) if columns is not None else columns_of(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_sweep(
    rows: Sequence[dict[str, Any]],
    directory: str | os.PathLike,
    layer_usage: Sequence[Sequence[float]] | None = None,
) -> dict[str, Path]:
    """Write ``budget_sweep.csv``, ``budget_sweep.json``, ``budget_sweep.png`` and ``layer_usage.png``.

    Every file is written atomically. Returns the paths by kind.
    """
    if not rows:
        raise ValueError("no sweep rows to write")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": directory / "budget_sweep.csv",
        "json": directory / "budget_sweep.json",
        "plot": directory / "budget_sweep.png",
    }
    atomic_write_text(paths["csv"], rows_to_csv(rows))
    atomic_write_json(paths["json"], list(rows))
    label = f"{rows[0].get('method', 'run')}"
    plot_sweep({label: rows}, paths["plot"])
    if layer_usage is not None:
        paths["usage"] = directory / "layer_usage.png"
        plot_layer_usage(layer_usage, [int(r["budget_layers"]) for r in rows], paths["usage"])
    return paths


def load_sweep(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a sweep from a CSV/JSON file or a run directory holding ``budget_sweep.json``/``.csv``.

    Raises:
        FileNotFoundError: nothing sweep-like at ``path`` (the message names what was looked for).
    """
    path = Path(path)
    if path.is_dir():
        for name in ("budget_sweep.json", "budget_sweep.csv"):
            if (path / name).is_file():
                return load_sweep(path / name)
        found = sorted(path.rglob("budget_sweep.json"))
        if len(found) == 1:
            return load_sweep(found[0])
        raise FileNotFoundError(
            f"{str(path)!r} holds no budget_sweep.json or budget_sweep.csv"
            + (f" (several below it: {[str(f) for f in found]})" if found else "")
        )
    if not path.is_file():
        raise FileNotFoundError(f"no sweep file {str(path)!r} (expected budget_sweep.csv/.json or a run directory)")
    if path.suffix == ".json":
        return json.loads(path.read_text())
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{k: _parse(v) for k, v in row.items()} for row in rows]


def _parse(value: str) -> Any:
    if value == "":
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def compare_sweeps(
    paths: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    metric: str | None = None,
    labels: Sequence[str] | None = None,
) -> tuple[str, Path]:
    """Overlay several sweeps (e.g. input-driven vs random vs early exit vs static) in one plot and table.

    Returns the Markdown table and the path of ``compare.png`` (``compare.md`` is written beside it).
    """
    runs: dict[str, list[dict[str, Any]]] = {}
    for i, path in enumerate(paths):
        rows = load_sweep(path)
        label = labels[i] if labels else str(rows[0].get("method", Path(path).stem))
        while label in runs:
            label += "'"
        runs[label] = rows
    name = metric or primary_metric(next(iter(runs.values())))
    table_rows = []
    for label, rows in runs.items():
        for r in rows:
            table_rows.append({
                "run": label,
                "budget_layers": r.get("budget_layers"),
                "executed_layers": r.get("executed_layers"),
                "gflops_per_utterance": r.get("gflops_per_utterance"),
                name: r.get(name),
                f"{name}_std": r.get(f"{name}_std"),
            })
    table = markdown_table(table_rows)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    plot_path = output_dir / "compare.png"
    plot_sweep(runs, plot_path, metric=name)
    atomic_write_text(output_dir / "compare.md", table + "\n")
    return table, plot_path
