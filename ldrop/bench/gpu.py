"""Every GPU figure in one command: the speed-up table (per-sample and shared masks, realized/ideal), host syncs
per sparse forward, `ldrop profile` and a few quickstart fit steps and its test sweep; writes <out>/gpu.json and
<out>/gpu.md. Without CUDA (or with --small): a small mode (tiny geometry, one round) for tests.

Each phase is timed and recorded even when it fails, ``gpu.json`` after each; ``ldrop`` runs as a child process;
a phase that would start after ``--time-limit`` is skipped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ldrop._io import atomic_write_json, atomic_write_text
from ldrop.bench import at_least, positive, run_ldrop
from ldrop.bench.speedup import (
    DTYPES,
    SAMPLING_RATE,
    build_config,
    keep_masks,
    load_average,
    names,
    parse_budgets,
    random_batch,
    run_speedup,
    say,
    sparse_forward,
    torch_threads,
)
from ldrop.budgets.machine import machine_info
from ldrop.sweeps import markdown_table

#: Phases that ``--skip`` can leave out.
PHASES = ("speedup", "syncs", "profile", "quickstart")

#: Trainer options of both quickstart commands: no logger (the run folder is the bench's), no bars.
_QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
          "--trainer.enable_model_summary", "false"]
#: The small mode's quickstart: a few short generated clips, two optimiser steps, no sanity check.
_SMALL_QUICKSTART = ["--data.init_args.num_train", "8", "--data.init_args.num_val", "8",
                     "--data.init_args.num_test", "8", "--data.init_args.batch_size", "4",
                     "--data.init_args.duration_range", "[0.3, 0.5]",
                     "--trainer.max_steps", "2", "--trainer.max_epochs", "1", "--trainer.num_sanity_val_steps", "0"]
#: ... and a sweep without the headroom oracles (the slowest part of a test on a CPU).
_SMALL_SWEEP = ["--sweep.headroom", "false"]


def settings_for(args: argparse.Namespace) -> argparse.Namespace:
    """The run's settings: a copy of the command line with the defaults of the CUDA or the small mode filled in,
    the lists parsed, the paths as :class:`~pathlib.Path` and ``profile_args``, the options of ``ldrop profile``."""
    s = argparse.Namespace(**vars(args))
    if s.device == "auto":
        s.device = "cuda" if torch.cuda.is_available() else "cpu"
    s.small = s.small or s.device == "cpu"
    if s.small:
        defaults: dict[str, Any] = dict(
            families="wavlm", sizes="tiny", batch_sizes="1,2", seconds=0.5, repeats=1, warmup=0, dtype="fp32",
            # One thread: a small run is for tests, often on a busy machine, where spinning OpenMP threads
            # that lose their core make tiny models many times slower.
            threads=1,
            profile_args=["--backbone", "tiny:wavlm", "--seconds", "0.5,1", "--batch-sizes", "1,2", "--repeats", "1",
                          "--warmup", "0", "--validate", "2"],
        )
    else:
        defaults = dict(
            families="wavlm,hubert", sizes="base,large", batch_sizes="1,8,32", seconds=4.0, repeats=20, warmup=3,
            dtype="bf16", profile_args=["--backbone", "random:wavlm"], threads=None,
        )
    for name, value in defaults.items():
        if getattr(s, name, None) is None:
            setattr(s, name, value)
    s.out, s.quickstart_config = Path(s.out), Path(s.quickstart_config)
    s.families, s.sizes, s.skip = names(s.families), names(s.sizes), set(names(s.skip))
    s.batch_sizes = [int(b) for b in names(s.batch_sizes)]
    return s


# ---------------------------------------------------------------------------------------------- the machine
def _nvidia_smi() -> dict[str, Any] | None:
    """Driver, utilisation and memory in use from ``nvidia-smi`` (``None`` where it is not installed)."""
    if shutil.which("nvidia-smi") is None:
        return None
    fields = ("name", "driver_version", "memory.total", "memory.used", "utilization.gpu", "temperature.gpu",
              "power.draw", "clocks.sm", "pstate")
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return {"error": f"{type(error).__name__}: {error}"}
    return {"gpus": [dict(zip(fields, (v.strip() for v in line.split(",")), strict=False))
                     for line in out.strip().splitlines()]}


def describe_machine(device: str) -> dict[str, Any]:
    """The machine the figures come from: CPU, GPU, driver, library versions and the current load."""
    import lightning

    info = machine_info(device)
    info["lightning"] = lightning.__version__
    info["cuda_runtime"] = torch.version.cuda
    info["load_average_1min"] = load_average()
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info["gpu"] = {
            "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count, "capability": f"{props.major}.{props.minor}",
            "cudnn": torch.backends.cudnn.version(), "bf16_supported": torch.cuda.is_bf16_supported(),
            "nvidia_smi": _nvidia_smi(),
        }
    return info


# ---------------------------------------------------------------------------------------------- host syncs
def count_sparse_syncs(model: Any, batch_size: int, seconds: float, device: str, dtype: str,
                       seed: int = 0) -> dict[str, Any]:
    """The host syncs of one sparse inference forward on a padded batch, each input keeping its own random
    half of the layers: ``{"layers", "counted", "counted_in_engine", "where", "cuda_sync_debug"}`` (the last,
    on CUDA only, from ``torch.cuda.set_sync_debug_mode("warn")``)."""
    from ldrop.engine.host_syncs import HostSyncCounter

    torch_device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    samples = round(seconds * SAMPLING_RATE)
    waves, lengths = random_batch(torch.linspace(samples, samples // 2, batch_size).round(), generator)
    num_layers = model.num_layers
    keep = keep_masks(batch_size, num_layers, max(1, num_layers // 2), generator)["per_sample"]
    waves, lengths, keep = waves.to(torch_device, DTYPES[dtype]), lengths.to(torch_device), keep.to(torch_device)
    with torch.inference_mode():
        sparse_forward(model, waves, lengths, keep)  # warm-up: one-time work is not per forward
        with HostSyncCounter() as syncs:
            sparse_forward(model, waves, lengths, keep)
        debug_warnings = None
        if torch_device.type == "cuda":
            torch.cuda.synchronize(torch_device)
            previous = torch.cuda.get_sync_debug_mode()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    sparse_forward(model, waves, lengths, keep)
                finally:
                    torch.cuda.set_sync_debug_mode(previous)
            debug_warnings = sum("synchroniz" in str(w.message) for w in caught)
    return {
        "layers": num_layers, "batch_size": batch_size, "counted": syncs.count,
        "counted_in_engine": syncs.count_in("ldrop/engine"), "where": syncs.where(),
        "cuda_sync_debug": debug_warnings,
    }


# ---------------------------------------------------------------------------------------------- CLI phases
def run_profile(settings: argparse.Namespace) -> dict[str, Any]:
    """``ldrop profile`` on this device and dtype; returns the fitted parts and the held-out check."""
    path = settings.out / "profile.json"
    options = [*settings.profile_args, "--device", settings.device, "--dtype", settings.dtype]
    run_ldrop(["profile", *options, "--seed", str(settings.seed), "--out", str(path)], settings.out / "profile.log",
              settings.threads)
    profile = json.loads(path.read_text())
    validation = profile.get("validation") or {}
    return {
        "command": "ldrop profile " + " ".join(options),
        "path": str(path),
        "model": profile.get("model"),
        "fixed": profile.get("fixed"),
        "layer": profile.get("layer"),
        "held_out": {key: validation.get(key) for key in
                     ("median_abs_relative_error", "max_abs_relative_error", "tolerance", "passed")},
        "held_out_batches": len(validation.get("batches", [])),
    }


def run_quickstart(settings: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """``ldrop fit`` (a few steps) then ``ldrop test`` of the quickstart at ``settings.precision``."""
    if not settings.quickstart_config.is_file():
        raise FileNotFoundError(f"no quickstart config at {settings.quickstart_config} (--quickstart-config)")
    from ldrop.sweeps import load_sweep

    root = settings.out / "quickstart"
    accelerator = "gpu" if settings.device.startswith("cuda") else "cpu"
    common = ["--config", str(settings.quickstart_config), *_QUIET, "--trainer.accelerator", accelerator,
              "--trainer.devices", "1", "--trainer.precision", settings.precision]
    if settings.small:
        common += _SMALL_QUICKSTART
    elif settings.quickstart_steps is not None:
        common += ["--trainer.max_steps", str(settings.quickstart_steps)]
    fit_dir, test_dir = root / "fit", root / "test"
    shutil.rmtree(root, ignore_errors=True)  # a rerun starts from scratch, not from an old checkpoint
    fit_seconds = run_ldrop(["fit", *common, "--trainer.default_root_dir", str(fit_dir)],
                            settings.out / "quickstart-fit.log", settings.threads)
    checkpoint = fit_dir / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        raise FileNotFoundError(f"ldrop fit wrote no {checkpoint}")
    steps = int(torch.load(checkpoint, map_location="cpu", weights_only=False).get("global_step", -1))
    log(f"quickstart: fit {steps} steps in {fit_seconds:.1f} s; testing (the budget sweep)")
    sweep_options = _SMALL_SWEEP if settings.small else []
    test_seconds = run_ldrop(["test", *common, *sweep_options, "--trainer.default_root_dir", str(test_dir),
                              "--ckpt_path", str(checkpoint)], settings.out / "quickstart-test.log", settings.threads)
    return {
        "config": str(settings.quickstart_config), "precision": settings.precision,
        "accelerator": accelerator, "fit_steps": steps, "fit_seconds": fit_seconds,
        "test_seconds": test_seconds, "sweep": load_sweep(test_dir), "folder": str(root),
    }


# ---------------------------------------------------------------------------------------------- the run
class Run:
    """The phases of one command, their records and the files they are written to."""

    def __init__(self, settings: argparse.Namespace, argv: Sequence[str], log: Callable[[str], None]) -> None:
        self.settings = settings
        self.start = time.perf_counter()
        self._print = log
        self.report: dict[str, Any] = {
            "benchmark": "gpu", "command": "python -m ldrop.bench gpu " + " ".join(argv),
            "mode": "small" if settings.small else "full", "device": settings.device, "dtype": settings.dtype,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "finished": False,
            "elapsed_s": 0.0, "machine": {}, "phases": [],
        }

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def log(self, line: str) -> None:
        self._print(f"[{self.elapsed():6.1f} s] {line}")

    def phase(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run one phase: time it, record its result or its error, write the files; ``None`` on failure."""
        record: dict[str, Any] = {"name": name}
        self.report["phases"].append(record)
        if self.settings.time_limit and self.elapsed() > self.settings.time_limit:
            record.update(status="skipped", error=f"time limit of {self.settings.time_limit:g} s reached")
            self.log(f"{name}: skipped (past the {self.settings.time_limit:g} s time limit)")
            self.save()
            return None
        self.log(f"{name}: start")
        start = time.perf_counter()
        result = None
        try:
            result = fn()
            record.update(status="ok", result=result)
        except Exception as error:  # a failed phase is a figure too; the other phases still run
            record.update(status="failed", error=f"{type(error).__name__}: {error}",
                          traceback=traceback.format_exc(limit=-8))
            self.log(f"{name}: FAILED: {_brief(record['error'])}")
        finally:
            record["elapsed_s"] = time.perf_counter() - start
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.save()
        if record["status"] == "ok":
            self.log(f"{name}: done in {record['elapsed_s']:.1f} s")
        return result

    def save(self) -> None:
        self.report["elapsed_s"] = self.elapsed()
        atomic_write_json(self.settings.out / "gpu.json", self.report)
        atomic_write_text(self.settings.out / "gpu.md", summary_markdown(self.report))


def _build_model(built: list[Any], family: str, size: str, s: argparse.Namespace) -> dict[str, Any]:
    """``family`` at ``size`` on ``s``'s device and dtype, appended to ``built``; returns its size."""
    from ldrop.backbones import SpeechBackbone

    torch.manual_seed(s.seed)
    model = SpeechBackbone.from_config(build_config(family, size)).eval()
    built.append(model.to(device=s.device, dtype=DTYPES[s.dtype]))
    return {"parameters": sum(p.numel() for p in model.parameters()), "layers": model.num_layers}


def _speedup_phases(run: Run) -> None:
    """Per family and geometry: build one model, time every batch size, count its syncs."""
    s = run.settings
    if "speedup" in s.skip and "syncs" in s.skip:
        return
    for family in s.families:
        for size in s.sizes:
            label = f"{family} {size}"
            built: list[Any] = []
            if run.phase(f"build {label}", partial(_build_model, built, family, size, s)) is None:
                continue
            model = built.pop()
            if "speedup" not in s.skip:
                for batch in s.batch_sizes:
                    log = _every(5.0, lambda line, where=f"{label} b{batch}": run.log(f"  {where}: {line}"))
                    run.phase(f"speedup {label} b{batch}", partial(
                        run_speedup, backbone=family, size=size, batch_size=batch, seconds=s.seconds, budgets=s.budgets,
                        repeats=s.repeats, warmup=s.warmup, device=s.device, dtype=s.dtype, seed=s.seed, model=model,
                        log=log))
            if "syncs" not in s.skip:
                run.phase(f"host syncs {label}", partial(count_sparse_syncs, model, min(8, max(s.batch_sizes)),
                                                         s.seconds, s.device, s.dtype, s.seed))
            del model  # free the device memory before the next geometry
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _every(seconds: float, log: Callable[[str], None]) -> Callable[[str], None]:
    """``log`` for at most one line per ``seconds`` (notes always): rounds on a GPU take milliseconds."""
    last = [-float("inf")]

    def throttled(line: str) -> None:
        now = time.perf_counter()
        if line.startswith("note") or now - last[0] >= seconds:
            last[0] = now
            log(line)

    return throttled


def run_all(settings: argparse.Namespace, argv: Sequence[str], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every phase; returns the report (also written to ``<out>/gpu.json`` and ``gpu.md``)."""
    settings.out.mkdir(parents=True, exist_ok=True)
    run = Run(settings, argv, log)
    run.log(f"ldrop.bench gpu: {run.report['mode']} mode on {settings.device}, {settings.dtype}; "
            f"writing {settings.out / 'gpu.json'}")
    machine = run.phase("machine", lambda: describe_machine(settings.device))
    run.report["machine"] = machine or {}
    _speedup_phases(run)
    if "profile" not in settings.skip:
        run.phase("profile", lambda: run_profile(settings))
    if "quickstart" not in settings.skip:
        run.phase("quickstart", lambda: run_quickstart(settings, run.log))
    run.report["load_average_1min_after"] = load_average()
    run.report["finished"] = True
    run.save()
    failed = [p["name"] for p in run.report["phases"] if p["status"] != "ok"]
    run.log(f"done: {len(run.report['phases']) - len(failed)} phases ok"
            + (f", not ok: {', '.join(failed)}" if failed else "")
            + f"; wrote {settings.out / 'gpu.json'} and {settings.out / 'gpu.md'}")
    return run.report


# ---------------------------------------------------------------------------------------------- summary
def _ok(report: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    return [p for p in report["phases"] if p["name"].startswith(prefix) and p["status"] == "ok"]


def summary_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the machine line, one table per phase kind, and what failed."""
    machine = report.get("machine") or {}
    gpu = machine.get("gpu") or {}
    smi = ((gpu.get("nvidia_smi") or {}).get("gpus") or [{}])[0]
    where = (f"{gpu['name']} ({gpu.get('memory_gib')} GiB, driver {smi.get('driver_version', '?')}, CUDA "
             f"{machine.get('cuda_runtime')})" if gpu else f"{machine.get('cpu', '?')} (no GPU)")
    lines = [
        f"**`{report['command']}`** ({report['mode']} mode, {report['dtype']}), {report['started']}: {where}; "
        f"CPU {machine.get('cpu', '?')} ({machine.get('cpu_count', '?')} cores); torch {machine.get('torch', '?')}, "
        f"transformers {machine.get('transformers', '?')}, lightning {machine.get('lightning', '?')}; 1-minute "
        f"load average {_fmt(machine.get('load_average_1min'))} before, "
        f"{_fmt(report.get('load_average_1min_after'))} after; {report['elapsed_s']:.0f} s in all"
        + ("" if report["finished"] else " (unfinished)") + ".",
        "",
    ]
    rows = []
    for phase in _ok(report, "speedup "):
        for r in phase["result"]:
            t, s, q = r["time_s"], r["speedup"], r["realized_over_ideal"]
            rows.append({
                "backbone": f"{r['backbone']} {r['size']}", "batch": r["batch_size"],
                "k of N": f"{r['budget']} of {r['num_layers']}", "full (ms)": f"{1000 * t['full']:.2f}",
                "fixed (ms)": f"{1000 * t['fixed']:.2f}", "speed-up per-sample": f"{s['per_sample']:.2f}x",
                "speed-up shared": f"{s['shared']:.2f}x", "ideal": f"{r['ideal_speedup']:.2f}x",
                "realized / ideal (per-sample, shared)": f"{q['per_sample']:.3f}, {q['shared']:.3f}",
            })
    if rows:
        first = _ok(report, "speedup ")[0]["result"][0]
        lines += _section(f"Speed-up of sparse gated execution ({first['dtype']}, {first['seconds']:g} s utterances, "
                          f"median of {first['repeats']} interleaved rounds after {first['warmup']} warm-up):", rows)
    lines += _section("Host syncs of one sparse inference forward (padded batch, per-sample masks):", [
        {"backbone": p["name"].removeprefix("host syncs "), "layers": p["result"]["layers"],
         "syncs counted": p["result"]["counted"], "of them in ldrop/engine": p["result"]["counted_in_engine"],
         "CUDA sync debug mode": _fmt(p["result"]["cuda_sync_debug"]),
         "where (file:line x calls)": ", ".join(_where(p["result"]["where"]))} for p in _ok(report, "host syncs ")])
    for phase in _ok(report, "profile"):
        p = phase["result"]
        fixed, layer, check = p["fixed"] or {}, p["layer"] or {}, p["held_out"]
        lines += [f"Device profile (`{p['command']}`): fixed part {_part(fixed)}; one layer {_part(layer)}; "
                  f"held-out median |error| {_pct(check.get('median_abs_relative_error'))} (max "
                  f"{_pct(check.get('max_abs_relative_error'))}) over {p['held_out_batches']} batches.", ""]
    for phase in _ok(report, "quickstart"):
        q = phase["result"]
        wanted = ("budget_layers", "acc", "wer", "loss", "gflops_per_utterance", "ms_per_utterance")
        columns = [key for key in wanted if q["sweep"] and key in q["sweep"][0]]
        title = (f"Quickstart at {q['precision']} ({q['accelerator']}): `ldrop fit` {q['fit_steps']} steps in "
                 f"{q['fit_seconds']:.1f} s, `ldrop test` (the budget sweep) in {q['test_seconds']:.1f} s:")
        lines += _section(title, [{key: _fmt(row.get(key)) for key in columns} for row in q["sweep"]]) or [title, ""]
    lines += _section("Phases that did not run to the end:", [
        {"phase": p["name"], "status": p["status"], "error": _brief(p.get("error", ""))}
        for p in report["phases"] if p["status"] != "ok"])
    return "\n".join(lines)


def _section(title: str, rows: list[dict[str, Any]]) -> list[str]:
    """``title`` and ``rows`` as a Markdown table; nothing without rows."""
    return [title, "", markdown_table(rows, list(rows[0])), ""] if rows else []


def _brief(error: str) -> str:
    """An error's first line and, where it has more (a failed command's output), its last."""
    lines = error.strip().splitlines() or [""]
    return lines[0] + (f" ... {lines[-1].strip()}" if len(lines) > 1 else "")


def _where(where: dict[str, int]) -> list[str]:
    """``{"read Tensor.tolist at ldrop/engine/gated.py:53": 1}`` -> ``["gated.py:53 x1"]``."""
    return [f"{key.rsplit(' at ', 1)[-1].rsplit('/', 1)[-1]} x{count}" for key, count in where.items()]


def _part(fit: dict[str, Any]) -> str:
    return (f"{1000 * fit.get('overhead', 0.0):.3f} ms + {1e6 * fit.get('per_frame', 0.0):.4f} us x B x T "
            f"+ {1e9 * fit.get('per_frame_sq', 0.0):.4f} ns x B x T^2")


def _pct(value: Any) -> str:
    return "?" if value is None else f"{100 * value:.1f}%"


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ---------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ldrop.bench gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench-gpu", help="output folder (default bench-gpu)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="auto: cuda when available (default)")
    parser.add_argument("--small", action="store_true", help="the small mode even on CUDA")
    parser.add_argument("--families", default=None, help="backbone families, comma-separated "
                        "(default wavlm,hubert; small: wavlm)")
    parser.add_argument("--sizes", default=None, help="geometries: base, large, tiny (default base,large; small: tiny)")
    parser.add_argument("--batch-sizes", default=None, help="speed-up batch sizes (default 1,8,32; small: 1,2)")
    parser.add_argument("--seconds", type=positive, default=None, help="utterance length (default 4; small: 0.5)")
    parser.add_argument("--budgets", default="0.25,0.5,0.75", help="layers kept, as for the speedup benchmark")
    parser.add_argument("--repeats", type=at_least(1), default=None, help="timed rounds (default 20; small: 1)")
    parser.add_argument("--warmup", type=at_least(0), default=None, help="untimed rounds first (default 3; small: 0)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="speed-up and profile dtype (default bf16; small: fp32)")
    parser.add_argument("--precision", default="bf16-mixed",
                        help="trainer precision of the quickstart fit and test (default bf16-mixed)")
    parser.add_argument("--quickstart-config", default="configs/quickstart.yaml",
                        help="the quickstart config (default: the one in the current folder's configs/)")
    parser.add_argument("--quickstart-steps", type=int, default=None,
                        help="optimiser steps of the quickstart fit (default: the config's 8 epochs, 256 steps; "
                        "small: 2 steps on 8 clips)")
    parser.add_argument("--time-limit", type=float, default=480.0,
                        help="seconds after which the remaining phases are skipped (default 480; 0: none)")
    parser.add_argument("--skip", default="", help=f"phases to leave out, comma-separated: {','.join(PHASES)}")
    parser.add_argument("--threads", type=at_least(1), default=None,
                        help="torch CPU threads during the run (default: torch's; small: 1)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m ldrop.bench gpu``; 0 when every phase ran, 1 when one did not."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    try:
        settings = settings_for(args)
        for family in settings.families:
            for size in settings.sizes:
                parse_budgets(settings.budgets, build_config(family, size).num_hidden_layers)
    except ValueError as error:  # a bad list, family, size or budget: one line before any work
        parser.error(str(error))
    unknown = settings.skip - set(PHASES)
    if unknown:
        parser.error(f"--skip: unknown phase(s) {sorted(unknown)}; phases are {', '.join(PHASES)}")
    if "quickstart" not in settings.skip and not settings.quickstart_config.is_file():  # not after the GPU phases
        parser.error(f"--quickstart-config: no file at {settings.quickstart_config} (run from the repository's "
                     "folder, give its path, or --skip quickstart)")
    if settings.dtype == "bf16" and settings.device == "cpu":
        print("note: bf16 on CPU is slow; the CUDA figures are the point of this benchmark", file=sys.stderr)
    with torch_threads(settings.threads or None):
        report = run_all(settings, argv, log=say)
    print()
    print(summary_markdown(report))
    return 0 if all(p["status"] == "ok" for p in report["phases"]) else 1
