"""The quickstart's metric under each training precision, through the real command line.

For each seed and precision: ``ldrop fit --config configs/quickstart.yaml --trainer.precision P`` then ``ldrop
test`` at that precision; each ``32-true`` checkpoint is also tested at the other precisions. Writes
``precision.md`` and ``precision.json`` (per budget, mean and spread over seeds, paired difference to
``32-true`` with a 95% t interval); a run that finished with the same command and config is kept (as in
:mod:`ldrop.bench.methods`; a refit is tested again).
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser

from ldrop._io import atomic_write_json, atomic_write_text
from ldrop.bench import StageError
from ldrop.bench.methods import Stage, run_stage
from ldrop.budgets.machine import machine_info
from ldrop.sweeps.report import load_sweep, markdown_table, primary_metric

# Two-sided 95% quantiles of Student's t for 1..10 degrees of freedom (more: t975 below).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]


def t975(dof: int) -> float:
    """The 0.975 quantile of Student's t: the table to 10 degrees of freedom, then the Cornish-Fisher expansion
    around the normal's (within 1e-3 from 11 on)."""
    if dof <= len(_T975):
        return _T975[dof - 1]
    z = 1.959963985
    return (z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * dof**3))


def paired_interval(differences: Sequence[float]) -> tuple[float, float]:
    """Mean of paired differences and the half-width of its 95% Student-t interval (``nan`` for one pair)."""
    n = len(differences)
    mean = statistics.fmean(differences)
    if n < 2:
        return mean, math.nan
    return mean, t975(n - 1) * statistics.stdev(differences) / math.sqrt(n)


def _scores(folder: Path) -> dict[int, float]:
    rows = load_sweep(folder / "sweep")
    metric = primary_metric(rows)
    return {int(row["budget_layers"]): float(row[metric]) for row in rows}


def run(args: Any, argv: Sequence[str] = ()) -> dict[str, Any]:
    out = Path(args.out)
    reference = args.precisions[0]
    results: dict[str, dict[int, dict[int, float]]] = {}  # "fit P / test Q" -> seed -> budget -> metric
    for seed in args.seeds:
        for precision in args.precisions:
            folder = out / f"fit-{precision}-seed{seed}"
            fit = Stage(f"fit {precision} seed {seed}", [
                "fit", "--config", args.config, "--seed_everything", str(seed), "--trainer.precision", precision,
                "--trainer.default_root_dir", str(folder), "--trainer.logger", "false"], folder)
            run_stage(fit, tag="precision")
            tests = [precision] if precision != reference else args.precisions
            for test_precision in tests:
                folder = out / f"test-{precision}-as-{test_precision}-seed{seed}"
                ckpt = next(fit.folder.rglob("last.ckpt"))
                run_stage(Stage(f"test of the {precision} fit at {test_precision}, seed {seed}", [
                    "test", "--config", args.config, "--ckpt_path", str(ckpt), "--trainer.precision", test_precision,
                    "--trainer.logger", "false", "--trainer.default_root_dir", str(folder),
                    "--sweep.directory", str(folder / "sweep")], folder, after=fit), tag="precision")
                results.setdefault(f"fit {precision}, test {test_precision}", {})[seed] = _scores(folder)
    base = results[f"fit {reference}, test {reference}"]
    budgets = sorted(next(iter(base.values())))
    rows = []
    for name, by_seed in results.items():
        for budget in budgets:
            values = [by_seed[s][budget] for s in args.seeds]
            row = {"run": name, "budget": budget, "mean": statistics.fmean(values),
                   "sd": statistics.stdev(values) if len(values) > 1 else math.nan, "per_seed": values}
            if not name.endswith(f"test {reference}") or not name.startswith(f"fit {reference}"):
                diff, half = paired_interval([by_seed[s][budget] - base[s][budget] for s in args.seeds])
                row.update(diff=diff, ci95=half)
            rows.append(row)
    columns = ["run", "budget", f"mean over {len(args.seeds)} seeds", "sd", f"paired difference to {reference} (95% CI)"]
    cells = [(r["run"], f"{r['budget']:g}", f"{r['mean']:.4f}", f"{r['sd']:.4f}",
              f"{r['diff']:+.4f} ± {r['ci95']:.4f}" if "diff" in r else "(reference)") for r in rows]
    table = markdown_table([dict(zip(columns, c, strict=True)) for c in cells], columns)
    record = {"command": ["python", "-m", "ldrop.bench", "precision", *argv], "machine": machine_info(),
              "config": args.config, "seeds": list(args.seeds), "rows": rows}
    atomic_write_json(out / "precision.json", record)
    atomic_write_text(out / "precision.md", table + "\n")
    print(table)
    return record


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m ldrop.bench precision", description=__doc__.split("\n\n")[0],
                            allow_abbrev=False)
    parser.add_argument("--config", default="configs/quickstart.yaml", help="the ldrop config to fit and test")
    parser.add_argument("--seeds", type=list[int], default=[0, 1, 2, 3, 4], help="seeds (one fit each per precision)")
    parser.add_argument("--precisions", type=list[str], default=["32-true", "bf16-mixed"],
                        help="trainer precisions; the first is the reference")
    parser.add_argument("--out", default="bench-precision", help="output folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.seeds or not args.precisions:
        parser.error("--seeds and --precisions need at least one value each")
    if not Path(args.config).is_file():
        parser.error(f"--config {args.config}: no such file")
    try:
        run(args, argv)
    except StageError as error:
        raise SystemExit(str(error)) from None
    return 0
