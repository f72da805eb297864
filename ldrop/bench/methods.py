"""``python -m ldrop.bench methods [--config BENCH.yaml]``: every layer-dropping method trained and swept on
the same data, through the real ``ldrop`` command line.

Stage 1 trains a full-depth model (``configs/method/full.yaml``) on the base config; stage 2 fine-tunes each
method (``configs/method/<name>.yaml``) and each named variant (a method plus overrides) from it and sweeps
every budget with ``ldrop test``; ``ldrop compare`` overlays the sweeps, and ``methods.md`` / ``methods.json``
hold one row per budget and one column per method and control, with each stage's command and time.
Everything goes to ``--out``; a stage that finished with the same command and configs (its ``stage.json``)
is skipped on a rerun, so an interrupted benchmark continues. The default config is
``configs/bench/methods.yaml`` (a generated mixed-cue set, a tiny 8-layer WavLM).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser

from ldrop import bench
from ldrop._io import atomic_write_json, atomic_write_text, check_writable_folder
from ldrop.bench import StageError, run_ldrop
from ldrop.budgets.machine import machine_info
from ldrop.sweeps.paired import equal_compute
from ldrop.sweeps.report import (
    load_items,
    load_sweep,
    markdown_table,
    metric_direction,
    primary_metric,
    sweep_metrics,
)

#: The shipped methods the benchmark compares by default (``configs/method/<name>.yaml``).
DEFAULT_METHODS = ["full", "input-conditioned", "allocate", "schedule", "random", "static", "early-exit"]

#: Read when no ``--config`` is given (relative to the working folder: the repository root).
DEFAULT_CONFIG = "configs/bench/methods.yaml"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
# A variant's overrides are separated by ':' before a dotted key and '=' (so 'tiny:wavlm' stays a value).
_OVERRIDE_SPLIT = re.compile(r":(?=[A-Za-z_][\w.]*=)")


@dataclass(frozen=True)
class Variant:
    """One compared run: a method config plus overrides, under a name (its folder and its label).

    Args:
        name: label in the table and plot, and the folder of its runs.
        method: a method name (``<method_dir>/<method>.yaml``) or the path of a method YAML file.
        overrides: dotted ``ldrop`` options and their values, applied to its fit and test
            (``{"model.init_args.selector.init_args.hidden_dim": 64}``).
    """

    name: str
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str | dict[str, Any]) -> Variant:
        """From ``"NAME=METHOD[:KEY=VALUE[:KEY=VALUE...]]"`` or ``{name, method, overrides}``.

        A plain ``"METHOD"`` is the method under its own name. Values are YAML (``true``, ``[1, 2]``, ``fbank``).
        """
        if isinstance(spec, dict):
            unknown = set(spec) - {"name", "method", "overrides"}
            if unknown or "method" not in spec:
                raise ValueError(f"a variant needs 'method' (and optionally 'name', 'overrides'), got {spec}")
            variant = cls(str(spec.get("name") or spec["method"]), str(spec["method"]),
                          dict(spec.get("overrides") or {}))
        else:
            import yaml

            head, *pairs = _OVERRIDE_SPLIT.split(spec)
            name, _, method = head.partition("=")
            overrides = {}
            for pair in pairs:
                key, _, value = pair.partition("=")
                overrides[key] = yaml.safe_load(value)
            variant = cls(name if method else Path(name).stem, method or name, overrides)
        if not _NAME.fullmatch(variant.name):
            raise ValueError(f"variant name {variant.name!r} must be letters, digits and _.+- (it names a folder)")
        return variant


def overrides_to_args(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """``{"model.init_args.optimization.lr": 1e-3}`` -> ``["--model.init_args.optimization.lr=0.001"]`` (``prefix`` before each key; a
    value that is not a string as JSON, which the ``ldrop`` command line reads as YAML)."""
    return [f"--{prefix}{key}={value if isinstance(value, str) else json.dumps(value)}"
            for key, value in overrides.items()]


@dataclass
class Stage:
    """One ``ldrop`` run of the benchmark: its command, folder and what it depends on."""

    name: str
    args: list[str]
    folder: Path
    after: Stage | None = None

    @property
    def marker(self) -> Path:
        return self.folder / f"{self.args[0]}.stage.json"

    @property
    def log(self) -> Path:
        return self.folder / f"{self.args[0]}.log"

    def identity(self) -> str:
        """What makes this stage's result valid: its command, the config files it reads, its upstream result."""
        # The upstream record, not just its command: a stage whose upstream ran again runs again too.
        upstream = self.after.marker.read_text() if self.after is not None and self.after.marker.is_file() else ""
        configs = [Path(path).read_text() for flag, path in zip(self.args, self.args[1:], strict=False)
                   if flag == "--config" and Path(path).is_file()]
        return hashlib.sha256(json.dumps([self.args, configs, upstream]).encode()).hexdigest()

    def finished(self) -> bool:
        if not self.marker.is_file():
            return False
        try:
            return json.loads(self.marker.read_text()).get("identity") == self.identity()
        except json.JSONDecodeError:
            return False


def run_stage(stage: Stage, threads: int | None = None, tag: str = "methods") -> dict[str, Any]:
    """Run ``stage`` unless it finished with the same command; returns its record (``stage.json``). ``tag``
    starts the progress lines."""
    if stage.finished():
        record = json.loads(stage.marker.read_text())
        print(f"[{tag}] {stage.name}: done earlier ({record['seconds']:.0f} s), skipped", flush=True)
        return {**record, "skipped": True}
    if stage.args[0] == "fit" and stage.folder.exists():
        shutil.rmtree(stage.folder)  # an unfinished or outdated fit: start it afresh, not beside old checkpoints
    stage.folder.mkdir(parents=True, exist_ok=True)
    print(f"[{tag}] {stage.name}: ldrop {shlex.join(stage.args)}\n[{tag}]   log: {stage.log}", flush=True)
    seconds = run_ldrop(stage.args, stage.log, threads, name=f"stage {stage.name!r}")
    record = {"stage": stage.name, "command": ["ldrop", *stage.args], "seconds": round(seconds, 2),
              "finished_at": time.time(), "identity": stage.identity()}
    atomic_write_json(stage.marker, record)
    print(f"[{tag}] {stage.name}: finished in {seconds:.0f} s", flush=True)
    return {**record, "skipped": False}


def best_checkpoint(folder: Path, which: str) -> Path:
    """``best-*.ckpt`` (the best on validation) or ``last.ckpt`` of a finished fit in ``folder``."""
    checkpoints = folder / "checkpoints"
    found = sorted(checkpoints.glob("best-*.ckpt")) if which == "best" else [checkpoints / "last.ckpt"]
    found = [p for p in found if p.is_file()]
    if not found:
        raise StageError(f"no {which} checkpoint in {checkpoints} (see {folder / 'fit.log'})")
    return found[-1]


# ---------------------------------------------------------------------------------------------- the table
#: Extra columns per input-dependent run: sweep column suffix -> table header suffix.
CONTROL_COLUMNS = {"shuffled": "shuffled", "most_common": "most common", "input_oracle": "input oracle",
                   "static_oracle": "static oracle", "depth_oracle": "depth oracle"}


def methods_table(sweeps: dict[str, list[dict[str, Any]]], metric: str | None = None) -> tuple[list[dict], str]:
    """One row per budget ``k``, one column per run (``mean ± std`` over repeats) and per control it has
    (its masks shuffled and the most common mask, where its masks differ across inputs; the per-input and
    static oracles, where the sweep scored the headroom; the depth oracle, where it has per-item errors).

    Returns the rows (as written to ``methods.json``) and the metric's name.
    """
    metric = metric or primary_metric(next(iter(sweeps.values())))
    budgets = sorted({int(r["budget_layers"]) for rows in sweeps.values() for r in rows})
    table = []
    for k in budgets:
        row: dict[str, Any] = {"k": k}
        for name, rows in sweeps.items():
            hit = next((r for r in rows if int(r["budget_layers"]) == k), None)
            value, std = (hit or {}).get(metric), (hit or {}).get(f"{metric}_std")
            row[name] = None if value is None else (
                round(value, 4) if std in (None, "") else f"{value:.4f} ± {std:.4f}")
            varies = any(int(r.get("distinct_masks") or 1) > 1 for r in rows)
            for suffix, header in CONTROL_COLUMNS.items():
                if suffix in ("shuffled", "most_common") and not varies:
                    continue  # one mask for every input (a learned schedule): the controls repeat its column
                if any(r.get(f"{metric}_{suffix}") not in (None, "") for r in rows):
                    control = (hit or {}).get(f"{metric}_{suffix}")
                    row[f"{name}: {header}"] = None if control in (None, "") else round(float(control), 4)
        table.append(row)
    return table, metric


#: Input-blind methods that run a fixed number of layers: the equal-GFLOPs table's baseline (the best at each point).
BLIND_METHODS = {"static", "schedule", "random"}


def equal_gflops_table(sweeps: dict[str, list[dict[str, Any]]], items: dict[str, dict | None], metric: str,
                       methods: dict[str, str], higher_is_better: bool | None = None,
                       fraction: bool | None = None) -> tuple[list[dict], list[dict]]:
    """``ldrop compare``'s equal-GFLOPs table of the runs (``methods``: name -> method), each against the best
    input-blind fixed-depth run at each point and against ``full``, with paired intervals; the metric's
    direction and whether it is a fraction as the sweeps recorded them (``None``: by its name)."""
    guess = metric_direction(metric, [])
    higher_is_better = guess[0] if higher_is_better is None else higher_is_better
    fraction = guess[1] if fraction is None else fraction
    blind = [n for n, m in methods.items() if Path(m).stem in BLIND_METHODS]
    several = [n for n, rows in sweeps.items() if len({r["executed_layers"] for r in rows}) > 1]
    if not several:
        return [], []
    sign = 1 if higher_is_better else -1
    baselines: dict[str, Any] = {}
    if blind:
        baselines["vs best input-blind"] = lambda at, values: max(
            (n for n in blind if values.get(n) is not None), key=lambda n: sign * values[n], default=None)
    if "full" in sweeps:
        baselines["vs full"] = lambda at, values: "full"
    items = {n: found for n, found in items.items() if found and found.get("metric", metric) == metric}  # its terms
    return equal_compute({n: (rows, items.get(n)) for n, rows in sweeps.items()}, metric,
                         next((n for n in blind if n in several), several[0]), higher_is_better,
                         baselines or None, fraction=fraction)


# ---------------------------------------------------------------------------------------------- protocol
def _folders(folder: Path) -> list[str]:
    return [f"--trainer.default_root_dir={folder}", f"--checkpoint.dirpath={folder / 'checkpoints'}"]


def _method_file(method_dir: str, method: str) -> str:
    path = Path(method) if method.endswith((".yaml", ".yml")) else Path(method_dir) / f"{method}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"method config {str(path)!r} not found (a name in {method_dir} or a YAML path)")
    return str(path)


def _configs(args: Any, method: str) -> list[str]:
    return [arg for path in [*args.base, _method_file(args.method_dir, method)] for arg in ("--config", str(path))]


def stage_one(args: Any) -> Stage:
    """Stage 1: the full-depth model on the base configs."""
    folder = Path(args.out) / "stage1"
    return Stage("stage 1: full depth", ["fit", *_configs(args, "full"), *overrides_to_args(args.full_depth),
                                         *_folders(folder)], folder)


def _shared(args: Any, variant: Variant) -> list[str]:
    return [*_configs(args, variant.method), *overrides_to_args(args.finetune), *overrides_to_args(variant.overrides)]


def stage_two_fit(args: Any, variant: Variant, stage1: Stage) -> Stage:
    """Stage 2, training: ``variant`` fine-tuned from stage 1's checkpoint (stage 1 must have finished)."""
    folder = Path(args.out) / variant.name
    init = best_checkpoint(stage1.folder, args.checkpoint)
    return Stage(f"stage 2: {variant.name} fit", ["fit", *_shared(args, variant),
                                                  f"--model.init_args.init_from={init}", *_folders(folder)],
                 folder, after=stage1)


def stage_two_test(args: Any, variant: Variant, fit: Stage) -> Stage:
    """Stage 2, the budget sweep of ``variant``'s checkpoint (its fit must have finished)."""
    folder = fit.folder
    return Stage(f"stage 2: {variant.name} sweep",
                 ["test", *_shared(args, variant), f"--ckpt_path={best_checkpoint(folder, args.checkpoint)}",
                  f"--trainer.default_root_dir={folder}", f"--sweep.directory={folder / 'sweep'}",
                  f"--sweep.method_name={variant.name}", *overrides_to_args(args.sweep, prefix="sweep.")],
                 folder, after=fit)


def check_overrides(args: Any, variants: Sequence[Variant]) -> None:
    """Parse the stage-2 options of every run with overrides of its own (or of the first run, for ``--finetune``'s
    alone) as ``ldrop fit ... --print_config``, which builds and trains nothing: a misspelt key is a
    ``ValueError`` naming the run and the key now, not after stage 1 trained."""
    checked = [v for v in variants if v.overrides] or (list(variants[:1]) if args.finetune else [])
    with tempfile.TemporaryDirectory() as scratch:
        for variant in checked:
            log = Path(scratch) / "check.log"
            if bench.launch(["fit", *_shared(args, variant), "--print_config"], log, args.threads) != 0:
                lines = bench._tail(log, 5) or ["(no output)"]
                error = next((line for line in lines if line.startswith("ldrop: error: ")), lines[-1])
                error = error.removeprefix("ldrop: error: ").removesuffix(" (LDROP_DEBUG=1 shows the traceback)")
                debug = os.environ.get("LDROP_DEBUG", "0") not in ("", "0")  # the child's traceback, from its log
                raise ValueError(f"checking the options of variant {variant.name!r}: {error}" + (
                    "".join(f"\n    {line}" for line in bench._tail(log, 40)) if debug else ""))


def run(args: Any, command: list[str]) -> dict[str, Any]:
    """Run the protocol; returns the summary written to ``methods.json``."""
    variants = [Variant.parse(m) for m in args.methods] + [Variant.parse(v) for v in args.variant]
    names = [v.name for v in variants]
    if not variants:
        raise ValueError("no methods and no variants to compare")
    if len(set(names)) != len(names) or "stage1" in names:
        raise ValueError(f"run names must be unique and not 'stage1', got {names}")
    for variant in variants:  # a missing method file fails now, not after stage 1
        _method_file(args.method_dir, variant.method)
    check_overrides(args, variants)  # so does a misspelt option
    out = Path(args.out)
    stage1 = stage_one(args)
    records = [run_stage(stage1, args.threads)]
    for variant in variants:  # a stage's command names the checkpoint of the one before: built once it ran
        fit = stage_two_fit(args, variant, stage1)
        records.append(run_stage(fit, args.threads))
        records.append(run_stage(stage_two_test(args, variant, fit), args.threads))
    compare = Stage("compare", ["compare", *(str(out / name / "sweep") for name in names), f"--out={out}",
                                f"--labels={','.join(names)}"], out)
    compare.marker.unlink(missing_ok=True)  # cheap: always redrawn from the sweeps
    records.append(run_stage(compare, args.threads))
    sweeps = {name: load_sweep(out / name / "sweep") for name in names}
    rows, metric = methods_table(sweeps, args.metric)
    higher, fraction = metric_direction(metric, [sweep_metrics(out / name / "sweep") for name in names])
    equal, paired = equal_gflops_table(sweeps, {name: load_items(out / name / "sweep") for name in names}, metric,
                                       {v.name: v.method for v in variants}, higher, fraction)
    atomic_write_text(out / "methods.md", markdown_table(rows) + "\n" + (
        f"\nAt equal GFLOPs ({metric}, {'higher' if higher else 'lower'} is better; differences in "
        f"{'points x100' if fraction else f'{metric} units'}, paired 95 % bootstrap interval):\n\n"
        + markdown_table(equal) + "\n" if equal else ""))
    summary = {
        "command": command,
        "metric": metric,
        "table": rows,
        "equal_gflops": equal,
        "paired": paired,
        "variants": [{"name": v.name, "method": v.method, "overrides": v.overrides} for v in variants],
        "stages": records,
        "seconds_this_run": round(sum(r["seconds"] for r in records if not r["skipped"]), 2),
        "seconds_all_stages": round(sum(r["seconds"] for r in records), 2),
        "machine": machine_info(),  # of this process; the stages ran with stage_threads threads
        "stage_threads": args.threads,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_json(out / "methods.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------- CLI
def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m ldrop.bench methods",
        description=__doc__.split("\n\n")[0],
        default_config_files=[DEFAULT_CONFIG],
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a benchmark config (YAML with the options below)")
    parser.add_argument("--base", type=list[str], default=["configs/bench/methods-data.yaml"],
                        help="ldrop config files (trainer, model, data) shared by every stage")
    parser.add_argument("--methods", type=list[str], default=DEFAULT_METHODS,
                        help="method names (in --method_dir) or YAML paths, each run under its own name")
    parser.add_argument("--variant", type=list[str | dict[str, Any]], default=[],
                        help="extra named runs: 'NAME=METHOD:KEY=VALUE[:KEY=VALUE...]' (repeatable) or, in "
                        "YAML, {name, method, overrides: {KEY: VALUE}}; KEYs are dotted ldrop options")
    parser.add_argument("--method_dir", type=str, default="configs/method", help="where method names are looked up")
    parser.add_argument("--full_depth", type=dict[str, Any], default={},
                        help="stage 1 options ({dotted.ldrop.option: value}), after the base configs")
    parser.add_argument("--finetune", type=dict[str, Any], default={},
                        help="stage 2 options for every method (fit and test), before the variant's own")
    parser.add_argument("--sweep", type=dict[str, Any], default={"controls": True, "repeats": 3},
                        help="BudgetSweep options of every test ({controls: true, repeats: 3, ...})")
    parser.add_argument("--checkpoint", type=str, default="best", choices=["best", "last"],
                        help="the checkpoint stage 2 starts from and is tested with")
    parser.add_argument("--metric", type=str | None, default=None, help="metric of the table (default: the first)")
    parser.add_argument("--threads", type=int | None, default=None,
                        help="CPU threads of every stage (OMP_NUM_THREADS; default: torch's choice)")
    parser.add_argument("--out", type=str, default="runs/bench-methods", help="folder of every output")
    return parser


def _repeatable_variant(argv: Sequence[str]) -> list[str]:
    """``--variant SPEC`` may be given several times: each appends (jsonargparse's ``--variant+``)."""
    out, items = [], list(argv)
    for i, arg in enumerate(items):
        if arg == "--variant" and i + 1 < len(items) and not items[i + 1].lstrip().startswith("["):
            arg = "--variant+"
        elif arg.startswith("--variant=") and not arg.partition("=")[2].lstrip().startswith("["):
            arg = "--variant+=" + arg.partition("=")[2]
        out.append(arg)
    return out


def parse_args(argv: Sequence[str]) -> Any:
    """The parsed command line; ``--variant SPEC`` may be given several times."""
    return build_parser().parse_args(_repeatable_variant(argv))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = ["python", "-m", "ldrop.bench", "methods", *argv]
    try:
        check_writable_folder(args.out)  # a file in its path: one line, before any stage
        summary = run(args, command)
    except (StageError, ValueError, OSError) as err:
        print(f"ldrop.bench methods: error: {err}", file=sys.stderr)
        return 1
    out = Path(args.out)
    print(f"\n{markdown_table(summary['table'])}\n\n({summary['metric']}; table: {out / 'methods.md'}, "
          f"plot: {out / 'compare.png'}, details: {out / 'methods.json'})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
