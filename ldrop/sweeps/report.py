"""Budget-sweep results: one row per budget, written as CSV + JSON + plots, and compared across runs.

Plain Python + matplotlib (Agg); no Lightning. A row is a flat ``dict`` whose keys are the columns below
plus the task's metric names (``acc``, ``wer``, ``cer``) and their optional ``_std``/control columns.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ldrop._io import atomic_write_files, remove_stale_temporaries
from ldrop.sweeps.paired import equal_compute, layer_gflops

log = logging.getLogger(__name__)

#: Columns every sweep row has, in the order they are written.
BASE_COLUMNS = ["method", "backbone", "dataset", "budget_layers", "budget_fraction", "executed_layers",
                "gflops_per_utterance", "gflops_per_second", "ms_per_utterance", "utterances", "distinct_masks",
                "mean_hamming", "top_mask_share", "uses_input"]

#: By name, for a sweep written without its metrics' properties (:func:`sweep_metrics`): the metrics where lower
#: is better (everything else: higher is better), and those that are fractions (differences in points x100).
LOWER_IS_BETTER = {"wer", "cer", "loss"}
FRACTIONS = {"acc", "wer", "cer"}
#: Cost columns: lower is better, in their own units.
COSTS = {"ms_per_utterance", "gflops_per_utterance", "gflops_per_second", "executed_layers"}


def _png(fig: Any) -> bytes:
    """The figure rendered as PNG bytes (in memory: a failing render leaves no file behind)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


def columns_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The base columns first, then every other key in first-seen order."""
    extra = dict.fromkeys(k for row in rows for k in row if k not in BASE_COLUMNS)
    return [c for c in BASE_COLUMNS if any(c in r for r in rows)] + list(extra)


def rows_to_csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns_of(rows), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


def primary_metric(rows: Sequence[dict[str, Any]]) -> str:
    """The first metric column of a sweep (``acc``, ``wer``, ...)."""
    names = metric_names(rows)
    if not names:
        raise ValueError("the sweep rows hold no metric column")
    return names[0]


def sweep_title(rows: Iterable[dict[str, Any]], prefix: str = "budget sweep",
                keys: Sequence[str] = ("method", "dataset", "backbone")) -> str:
    """``"<prefix>: <method(s)> | <dataset(s)> | <backbone(s)>"`` (``keys``) from the rows (values that are set)."""
    rows = list(rows)
    parts = [", ".join(dict.fromkeys(str(r[key]) for r in rows if r.get(key) not in (None, ""))) for key in keys]
    parts = [part for part in parts if part]
    return f"{prefix}: " + " | ".join(parts) if parts else prefix


def sweep_figure(
    runs: dict[str, Sequence[dict[str, Any]]], metric: str | None = None, title: str | None = None,
    oracles: str | bool = True, fixed: float | None = None, higher_is_better: bool | None = None,
) -> Any:
    """Metric vs GFLOPs per utterance, one line per run (label -> rows), each point labelled ``k=<budget>``.

    ``oracles``: draw the oracle columns of every run (``True``), of the run with that label, or of none;
    ``fixed``: shade the GFLOPs that do not shrink with the layers (from 0 to ``fixed``); ``higher_is_better``:
    the metric's direction (``None``: by its name). Returns the matplotlib ``Figure`` (titled with the runs'
    method, dataset and backbone by default).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))  # not pyplot: no global figure registry, no change of the user's backend
    ax = fig.add_subplot()
    name = metric or primary_metric(next(iter(runs.values())))
    for label, rows in runs.items():
        rows = sorted((r for r in rows if r.get(name) not in (None, "")),
                      key=lambda r: float(r["gflops_per_utterance"]))
        if not rows:
            continue
        xs = [float(r["gflops_per_utterance"]) for r in rows]
        ys = [float(r[name]) for r in rows]
        stds = [float(r.get(f"{name}_std") or 0.0) for r in rows]
        line = ax.plot(xs, ys, marker="o", label=label)[0]
        if any(stds):
            ax.fill_between(xs, [y - s for y, s in zip(ys, stds, strict=True)],
                            [y + s for y, s in zip(ys, stds, strict=True)], color=line.get_color(), alpha=0.2)
        drawn = oracles is True or oracles == label
        for oracle, style in (("input_oracle", "--"), ("static_oracle", ":"), ("depth_oracle", "-.")) if drawn else ():
            points = [(x, float(r[f"{name}_{oracle}"])) for x, r in zip(xs, rows, strict=True)
                      if r.get(f"{name}_{oracle}") not in (None, "")]
            if points:
                ax.plot(*zip(*points, strict=True), linestyle=style, color=line.get_color(), alpha=0.7,
                        label=f"{label}: {oracle.replace('_', ' ')}")
        for x, y, row in zip(xs, ys, rows, strict=True):
            if row.get("budget_layers") not in (None, ""):
                ax.annotate(f"k={row['budget_layers']}", (x, y), xytext=(3, 4), textcoords="offset points",
                            fontsize=7, color=line.get_color())
    ax.set_xlabel("GFLOPs per utterance")
    lower = name in LOWER_IS_BETTER if higher_is_better is None else not higher_is_better
    ax.set_ylabel(name.upper() + (" (lower is better)" if lower else ""))
    ax.set_title(title or sweep_title(r for rows in runs.values() for r in rows), fontsize=9)
    if fixed:
        ax.axvspan(0.0, fixed, color="grey", alpha=0.15, label="fixed part (CNN, selector)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # outside the axes: hides no point
    return fig


def layer_usage_figure(
    usage: Sequence[Sequence[float]], budgets: Sequence[int], title: str | None = None
) -> Any:
    """Heat map: how often each layer ran (columns) at each budget ``k`` (rows); returns the ``Figure``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 0.35 * len(budgets) + 1.5))
    ax = fig.add_subplot()
    image = ax.imshow(usage, vmin=0.0, vmax=1.0, aspect="auto", cmap="viridis")
    ax.set_xlabel("layer")
    ax.set_ylabel("budget k (layers)")
    ax.set_yticks(range(len(budgets)), [f"k={b}" for b in budgets])
    ax.set_xticks(range(len(usage[0])), [str(i) for i in range(len(usage[0]))])
    ax.set_title(title or "layer usage", fontsize=9)
    fig.colorbar(image, ax=ax, label="share of inputs running the layer")
    return fig


def add_sweep_to_tensorboard(
    writer: Any,
    rows: Sequence[dict[str, Any]],
    layer_usage: Sequence[Sequence[float]] | None = None,
    table: str | None = None,
    step: int = 0,
    higher_is_better: bool | None = None,
) -> None:
    """Add the sweep plot, the layer-usage plot and the Markdown table to a TensorBoard ``SummaryWriter``.

    Tags: ``sweep/budget_sweep``, ``sweep/layer_usage`` (figures) and ``sweep/table`` (text).
    """
    label = str(rows[0].get("method", "run"))
    writer.add_figure("sweep/budget_sweep", sweep_figure({label: rows}, higher_is_better=higher_is_better),
                      global_step=step)
    if layer_usage is not None:
        budgets = [int(r["budget_layers"]) for r in rows]
        figure = layer_usage_figure(layer_usage, budgets, sweep_title(rows, "layer usage"))
        writer.add_figure("sweep/layer_usage", figure, global_step=step)
    writer.add_text("sweep/table", table if table is not None else markdown_table(rows), global_step=step)
    writer.flush()


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


#: The files of one sweep, as :func:`write_sweep` writes them (the target sweep's only with targets).
SWEEP_FILES = {
    "csv": "budget_sweep.csv",
    "json": "budget_sweep.json",
    "plot": "budget_sweep.png",
    "usage": "layer_usage.png",
    "target_csv": "target_sweep.csv",
    "target_json": "target_sweep.json",
    "items": "budget_items.json",
}
#: Written last: the names and SHA-256 digests of the set it completes. Readers require it.
SWEEP_MANIFEST = "sweep_manifest.json"


class IncompleteSweepError(ValueError):
    """A folder holds sweep files that are not one complete set (an interrupted or failed write)."""


def write_sweep(
    rows: Sequence[dict[str, Any]],
    directory: str | os.PathLike,
    layer_usage: Sequence[Sequence[float]] | None = None,
    target_rows: Sequence[dict[str, Any]] | None = None,
    items: dict[str, Any] | None = None,
    metrics: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Path]:
    """Write a sweep as one set: ``budget_sweep.csv``/``.json``/``.png``, ``layer_usage.png``, with
    ``target_rows`` ``target_sweep.csv``/``.json``, with ``items`` (per-item errors, :func:`load_items`)
    ``budget_items.json``, completed by ``sweep_manifest.json`` (which also records ``metrics``, the properties
    of the metrics, :func:`ldrop.tasks.base.metric_properties`, for :func:`sweep_metrics`).

    Everything is rendered in memory, then every file is written beside its target before any is renamed
    into place, the manifest (names and digests) last: a failure (plotting, a full disk) leaves an earlier
    sweep in ``directory`` as it was, and a kill while renaming leaves files that do not match the manifest,
    which :func:`load_sweep` refuses. Files of an earlier sweep that this one lacks are removed, and so are
    temporaries that a killed write left. Returns the paths by kind (``csv``, ``json``, ``plot``,
    ``usage``, ``target_csv``, ``target_json``, ``items``, ``manifest``).
    """
    if not rows:
        raise ValueError("no sweep rows to write")
    directory = Path(directory)
    contents: dict[str, bytes] = {
        "csv": rows_to_csv(rows).encode("utf-8"),
        "json": (json.dumps(list(rows), indent=2) + "\n").encode("utf-8"),
        "plot": _png(sweep_figure({str(rows[0].get("method", "run")): rows},
                                  higher_is_better=metric_direction(primary_metric(rows), [metrics or {}])[0])),
    }
    if layer_usage is not None:
        budgets = [int(r["budget_layers"]) for r in rows]
        contents["usage"] = _png(layer_usage_figure(layer_usage, budgets, sweep_title(rows, "layer usage")))
    if target_rows:
        contents["target_csv"] = rows_to_csv(target_rows).encode("utf-8")
        contents["target_json"] = (json.dumps(list(target_rows), indent=2) + "\n").encode("utf-8")
    if items:
        contents["items"] = (json.dumps(items) + "\n").encode("utf-8")
    files = {directory / SWEEP_FILES[kind]: data for kind, data in contents.items()}
    manifest = {"files": {path.name: hashlib.sha256(data).hexdigest() for path, data in files.items()},
                **({"metrics": metrics} if metrics else {})}
    files[directory / SWEEP_MANIFEST] = (json.dumps(manifest, indent=2) + "\n").encode("utf-8")
    # a killed earlier write of these files may have left its hidden temporaries behind
    remove_stale_temporaries(directory, [*SWEEP_FILES.values(), SWEEP_MANIFEST])
    atomic_write_files(files, remove=[directory / name for name in SWEEP_FILES.values()])
    paths = {kind: directory / SWEEP_FILES[kind] for kind in contents}
    paths["manifest"] = directory / SWEEP_MANIFEST
    return paths


def _manifest(directory: Path) -> dict[str, Any]:
    """The ``sweep_manifest.json`` of ``directory``, checked to be ``{"files": {name: sha256, ...}, ...}`` with at
    least one file (:class:`IncompleteSweepError` naming it and what is wrong)."""
    advice = "rerun 'ldrop test' to write it again"
    path = directory / SWEEP_MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IncompleteSweepError(
            f"{str(directory)!r} holds no complete budget sweep: no {SWEEP_MANIFEST} (the write was "
            f"interrupted, or an older ldrop wrote it); {advice}"
        ) from None
    except ValueError as err:  # not JSON, not UTF-8 text
        raise IncompleteSweepError(f"{str(path)!r} is damaged ({err}); {advice}") from err
    files = manifest.get("files") if isinstance(manifest, dict) else None
    wrong = ("not a JSON object" if not isinstance(manifest, dict) else "no 'files' entry" if "files" not in manifest
             else f"'files' is {json.dumps(files)[:40]}, not an object of file names and digests"
             if not isinstance(files, dict) else "'files' lists no file" if not files
             else "a digest in 'files' is not a string" if not all(isinstance(d, str) for d in files.values())
             else "'metrics' is not an object" if not isinstance(manifest.get("metrics", {}), dict) else None)
    if wrong:
        raise IncompleteSweepError(f"{str(path)!r} is damaged ({wrong}: expected {{\"files\": {{name: sha256, ...}}}}); "
                                   f"{advice}")
    return manifest


def check_sweep_set(directory: str | os.PathLike) -> dict[str, str]:
    """The manifest's files (name -> digest) of the sweep in ``directory``, once checked complete.

    Raises:
        IncompleteSweepError: no manifest, a listed file missing, or one that differs from the manifest.
    """
    directory = Path(directory)
    advice = "rerun 'ldrop test' to write it again"
    files = _manifest(directory)["files"]
    for name, digest in files.items():
        path = directory / name
        if not path.is_file():
            raise IncompleteSweepError(f"{str(directory)!r} holds an incomplete budget sweep: {name} is "
                                       f"missing; {advice}")
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise IncompleteSweepError(f"{str(directory)!r} holds an incomplete budget sweep: {name} is not the "
                                       f"one its {SWEEP_MANIFEST} lists (an interrupted write); {advice}")
    return files


def _sweep_file(path: Path) -> Path:
    """The sweep file at ``path``: itself, or a run directory's ``budget_sweep.json``/``.csv`` (or the one
    below it)."""
    if path.is_dir():
        for name in ("budget_sweep.json", "budget_sweep.csv"):
            if (path / name).is_file():
                return path / name
        found = sorted(path.rglob("budget_sweep.json"))
        if len(found) == 1:
            return found[0]
        raise FileNotFoundError(
            f"{str(path)!r} holds no budget_sweep.json or budget_sweep.csv"
            + (f" (several below it: {[str(f) for f in found]})" if found else "")
        )
    if not path.is_file():
        raise FileNotFoundError(f"no sweep file {str(path)!r} (expected budget_sweep.csv/.json or a run directory)")
    return path


def load_sweep(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a sweep from a CSV/JSON file or a run directory holding ``budget_sweep.json``/``.csv``.

    A file that :func:`write_sweep` writes is read only as part of its complete set (its folder's
    ``sweep_manifest.json`` lists it with the same content); any other CSV/JSON file is read as it is.

    Raises:
        FileNotFoundError: nothing sweep-like at ``path`` (the message names what was looked for).
        IncompleteSweepError: the sweep there is not one complete set (an interrupted or failed write).
    """
    path = _sweep_file(Path(path))
    if path.name in SWEEP_FILES.values() and path.name not in check_sweep_set(path.parent):
        raise IncompleteSweepError(f"{str(path.parent / SWEEP_MANIFEST)!r} does not list {path.name}, so it is not part "
                                   "of the complete sweep; rerun 'ldrop test' to write it again")
    if path.suffix not in (".csv", ".json"):
        raise _not_a_sweep(path, f"a {path.suffix or 'extensionless'} file")
    try:
        if path.suffix == ".json":
            rows = json.loads(path.read_text(encoding="utf-8"))
        else:
            with path.open(newline="", encoding="utf-8") as handle:
                rows = [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    except (ValueError, csv.Error) as err:  # not JSON, not UTF-8 text
        raise _not_a_sweep(path, f"unreadable: {err}") from None
    if not isinstance(rows, list) or not rows or not all(isinstance(row, dict) for row in rows):
        raise _not_a_sweep(path, "no rows" if rows in ([], {}) else "not a list of rows")
    if any(row.get("gflops_per_utterance") in (None, "") for row in rows):
        raise _not_a_sweep(path, "no gflops_per_utterance column" if all("gflops_per_utterance" not in row for row in rows)
                           else "a row without gflops_per_utterance")
    if not metric_names(rows):
        raise _not_a_sweep(path, "no metric column")
    return rows


def _not_a_sweep(path: Path, why: str) -> ValueError:
    return ValueError(f"{str(path)!r} is not an ldrop budget sweep ({why}): expected a budget_sweep.csv or "
                      "budget_sweep.json that 'ldrop test' wrote, or its run folder")


#: Suffixes of the columns derived from a metric (spread, controls, oracles, the validation split's values).
DERIVED_SUFFIXES = ("_std", "_shuffled", "_most_common", "_oracle", "_oracle_val", "_val")


def metric_names(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The metric columns of a sweep (``acc``, ``wer``, ...), without the columns derived from them."""
    return [key for key in columns_of(rows) if key not in BASE_COLUMNS and key != "target"
            and key != "over_target" and not key.endswith(DERIVED_SUFFIXES)]


def load_items(path: str | os.PathLike) -> dict[str, Any] | None:
    """The per-item errors of the sweep at ``path`` (as :func:`load_sweep` finds it), ``None`` when its set
    has none (an older sweep, a task without ``item_errors``): ``{metric, ids, counts, budgets, errors:
    {"<k>": [...]}, fixed_errors: {"<k>": [...]}}``, the errors of the method's own result (its first repeat)
    and at its fixed-``k`` masks, per item in the order of ``ids``."""
    path = _sweep_file(Path(path))
    if path.name not in SWEEP_FILES.values() or SWEEP_FILES["items"] not in check_sweep_set(path.parent):
        return None
    return json.loads((path.parent / SWEEP_FILES["items"]).read_text())


def sweep_metrics(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The properties of its metrics that the sweep at ``path`` recorded (name -> ``{higher_is_better,
    fraction}``); empty for a sweep written without them (an older ldrop, a CSV/JSON file of its own)."""
    path = _sweep_file(Path(path))
    if path.name not in SWEEP_FILES.values() or not (path.parent / SWEEP_MANIFEST).is_file():
        return {}
    return _manifest(path.parent).get("metrics") or {}


def base_metric(column: str) -> str:
    """The metric of a sweep column: ``wer`` of ``wer_input_oracle``, ``acc`` of ``acc_depth_oracle_val``."""
    return column.split("_oracle")[0].rsplit("_", 1)[0] if "_oracle" in column else column


def metric_direction(name: str, recorded: Sequence[dict[str, dict[str, Any]]]) -> tuple[bool, bool]:
    """``(higher_is_better, fraction)`` of metric ``name``: as the sweeps' ``recorded`` properties
    (:func:`sweep_metrics`) that have it say, else guessed from its name (:data:`LOWER_IS_BETTER`,
    :data:`FRACTIONS`); ``ValueError`` if they disagree (two tasks' metrics of one name). An oracle column
    (``wer_input_oracle``, ``acc_depth_oracle_val``) is its metric's; a cost column (:data:`COSTS`) is lower-better."""
    if name in COSTS:
        return False, False
    name = base_metric(name)
    said = {r[name]["higher_is_better"] for r in recorded if r.get(name, {}).get("higher_is_better") is not None}
    if len(said) > 1:
        raise ValueError(f"the sweeps disagree on whether a higher {name} is better: metrics of different tasks?")
    higher = next((r[name]["higher_is_better"] for r in recorded if r.get(name, {}).get("higher_is_better") is not None),
                  name not in LOWER_IS_BETTER)
    fraction = next((bool(r[name]["fraction"]) for r in recorded if "fraction" in r.get(name, {})), name in FRACTIONS)
    return bool(higher), fraction


def _parse(value: str) -> Any:
    if value == "":
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def _run_labels(paths: Sequence[str | os.PathLike], methods: list[str]) -> list[str]:
    """Each run's method; runs of one method are told apart by where their paths differ: the fewest folder (or
    file) names from the first that differs, ``input-conditioned (lr-1e-3)``, ``input-conditioned (lr-1e-4)``."""
    labels = list(methods)
    for method in set(methods):
        same = [i for i, m in enumerate(methods) if m == method]
        parts = [Path(paths[i]).resolve().parts for i in same]
        if len(same) < 2 or len(set(parts)) < len(parts):
            continue  # one run, or one path given twice
        longest = max(map(len, parts))
        first = next(j for j in range(longest) if len({p[j:j + 1] for p in parts}) > 1)
        count = next(n for n in range(1, longest + 1) if len({p[first:first + n] for p in parts}) == len(parts))
        for i, part in zip(same, parts, strict=True):
            labels[i] = f"{method} ({'/'.join(part[first:first + count]) or Path(paths[i]).name})"
    return labels


def compare_sweeps(
    paths: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    metric: str | None = None,
    labels: Sequence[str] | None = None,
    reference: str | None = None,
    oracles: bool = False,
) -> tuple[str, Path]:
    """Overlay several sweeps (e.g. input-driven vs random vs early exit vs static) in one plot and two tables:
    per budget, and at equal GFLOPs (:func:`~ldrop.sweeps.paired.equal_compute` against ``reference``, a
    label; default: the first run of several depths), with paired intervals where the runs have per-item errors.

    Returns the Markdown tables and the path of ``compare.png`` (``compare.md`` and ``compare.json`` beside it);
    ``oracles`` draws the reference's oracle lines.
    """
    runs: dict[str, list[dict[str, Any]]] = {}
    items: dict[str, dict[str, Any] | None] = {}
    sweeps = [load_sweep(path) for path in paths]
    labels = labels or _run_labels(paths, [str(rows[0].get("method", Path(path).stem)) for path, rows in
                                           zip(paths, sweeps, strict=True)])
    for path, rows, label in zip(paths, sweeps, labels, strict=True):
        while label in runs:
            label += "'"
        runs[label], items[label] = rows, load_items(path)
    name = metric or primary_metric(next(iter(runs.values())))
    lacking = [label for label, rows in runs.items() if all(r.get(name) in (None, "") for r in rows)]
    if lacking:  # the metric of every run, or nothing is written
        have = dict.fromkeys(m for label in (lacking if len(lacking) < len(runs) else runs)
                             for m in metric_names(runs[label]))
        where = ("the sweeps" if len(runs) > 1 else "the sweep") if len(lacking) == len(runs) else (
            "the sweep of " + ", ".join(lacking))
        given = (f"--metric {name!r} is not a column of {where}" if metric else
                 f"the first sweep's metric {name!r} is not a column of {where} (--metric picks another)")
        raise ValueError(f"{given}; metrics there: {', '.join(have)}")
    recorded = [sweep_metrics(path) for path in paths]
    higher, fraction = metric_direction(name, recorded)
    base = base_metric(name)
    if base not in LOWER_IS_BETTER | FRACTIONS | COSTS and all(r.get(base, {}).get("higher_is_better") is None
                                                              for r in recorded):
        log.warning("the sweeps do not record whether a higher %s is better (written by an older ldrop, or not a "
                    "metric of the task, or one without higher_is_better): taken as %s", name,
                    "higher" if higher else "lower")
    # per-item errors are the terms of the sweep's primary metric: no paired interval for another metric
    items = {label: found if found and found.get("metric", name) == name else None for label, found in items.items()}
    if reference is not None and reference not in runs:
        raise ValueError(f"--reference {reference!r} is not one of the runs {list(runs)}")
    several = [label for label, rows in runs.items() if len({r.get("executed_layers") for r in rows}) > 1]
    if reference is not None and reference not in several:
        raise ValueError(f"--reference {reference!r} runs one depth: its GFLOPs per layer are unknown")
    reference = reference or (several or [None])[0]
    table_rows = [{"run": label, **{c: r.get(c) for c in ("budget_layers", "executed_layers", "gflops_per_utterance",
                                                            name, f"{name}_std")}}
                  for label, rows in runs.items() for r in rows]
    equal, paired = equal_compute({label: (rows, items[label]) for label, rows in runs.items()}, name, reference,
                                  higher, fraction=fraction) if reference else ([], [])
    table = markdown_table(table_rows) + (f"\n\nAt equal GFLOPs per utterance (those of N/4, N/2, 3N/4 layers of "
             f"{reference}; AUC: the mean over the common GFLOPs range); differences in "
             f"{'points x100' if fraction else f'{name} units'} ({name}: {'higher' if higher else 'lower'} is "
             f"better), paired 95 % bootstrap interval where both runs have per-item errors:\n\n"
             + markdown_table(equal) if equal else "")
    output_dir = Path(output_dir)
    plot_path = output_dir / "compare.png"
    title = sweep_title([r for rows in runs.values() for r in rows], "compare", ("dataset", "backbone"))
    fixed = layer_gflops(runs[reference], 0.0) if reference else None
    summary = {"metric": name, "higher_is_better": higher, "reference": reference, "budgets": table_rows,
               "equal_gflops": equal, "paired": paired}
    # the plot and the tables as one set: a failure leaves an earlier comparison as it was
    atomic_write_files({plot_path: _png(sweep_figure(runs, name, title, oracles and reference, fixed, higher)),
                        output_dir / "compare.md": (table + "\n").encode("utf-8"),
                        output_dir / "compare.json": (json.dumps(summary, indent=2) + "\n").encode("utf-8")})
    return table, plot_path
