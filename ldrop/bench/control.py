"""Replay a stream of utterances with a per-utterance deadline while a load generator takes part of the CPU;
compare full depth, a fixed budget, the open-loop and the closed-loop controller.

Utterances of mixed lengths are replayed one at a time with one deadline, while ``--load-procs`` CPU-burning
processes load the machine for ``--load-span`` of the stream; each utterance runs under ``full``, ``fixed``
(the largest budget meeting the deadline idle), ``open_loop`` and ``closed_loop``. Reports miss rates and mean
layers (idle, loaded), accuracy with ``--ckpt``, JSON and plots.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ldrop._io import atomic_write, atomic_write_json
from ldrop._progress import Phase
from ldrop.bench import at_least
from ldrop.bench.speedup import load_average, names, torch_threads
from ldrop.budgets import DeviceProfile, profile_model
from ldrop.budgets.machine import machine_info
from ldrop.runtime import AdaptiveModel, load_model

POLICIES = ("full", "fixed", "open_loop", "closed_loop")

#: The default model: WavLM base's 12 x 768 encoder, with a 256-channel CNN and a 32-tap positional
#: convolution (on these CPUs the base CNN alone is about half of the base model's time, and no budget can
#: save it; here the layers dominate, as they do on accelerators).
DEFAULT_OVERRIDES = {"conv_dim": [256] * 7, "num_conv_pos_embeddings": 32}


# ---------------------------------------------------------------------------------------------- load
def _burn(stop_at: float) -> None:
    """Spin until ``stop_at`` (a ``time.time()``): one core's worth of load, bounded in time."""
    x = 0
    while time.time() < stop_at:
        for _ in range(10_000):
            x = (x * 1103515245 + 12345) & 0xFFFFFFFF


class LoadGenerator:
    """``procs`` CPU-burning processes, each stopping by itself after ``max_seconds``."""

    def __init__(self, procs: int, max_seconds: float) -> None:
        self.procs = procs
        self.max_seconds = max_seconds
        self._workers: list[multiprocessing.process.BaseProcess] = []
        #: ``time.time()`` of the last start and stop (the burners also stop by themselves at the cap).
        self.started_at: float | None = None
        self.stopped_at: float | None = None

    def start(self) -> None:
        if self._workers or self.procs <= 0:
            return
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self.started_at = time.time()
        stop_at = self.started_at + self.max_seconds
        self._workers = [context.Process(target=_burn, args=(stop_at,), daemon=True) for _ in range(self.procs)]
        for worker in self._workers:
            worker.start()

    def stop(self) -> None:
        if self._workers:
            self.stopped_at = min(time.time(), (self.started_at or 0) + self.max_seconds)
        for worker in self._workers:
            if worker.is_alive():
                worker.terminate()
        for worker in self._workers:
            worker.join(timeout=5)
        self._workers = []

    @property
    def running(self) -> bool:
        return any(w.is_alive() for w in self._workers)

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------- stream
def build_stream(args: argparse.Namespace, model: Any) -> tuple[list[torch.Tensor], list[int | None]]:
    """The utterances (1-D waveforms) and their class ids (``None`` without a labelled test set)."""
    labels = getattr(model, "class_names", None)
    if args.ckpt and labels:
        from ldrop.data import SyntheticClassificationDataModule

        data = SyntheticClassificationDataModule(num_classes=len(labels), num_test=args.utterances,
                                                 batch_size=1, seed=args.data_seed)
        if list(data.class_names) == list(labels):
            data.setup("test")
            clips, targets = [], []
            for batch in data.test_dataloader():
                clips.append(batch.waveforms[0, : int(batch.lengths[0])].clone())
                targets.append(int(batch.targets[0]))
            return clips, targets
        print("the checkpoint's labels are not the generated set's: streaming random audio, no metric")
    rng = random.Random(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    low, high = args.seconds_range
    clips = [torch.randn(int(rng.uniform(low, high) * 16_000), generator=generator) * 0.1
             for _ in range(args.utterances)]
    return clips, [None] * len(clips)


def idle_times(model: Any, longest: torch.Tensor, repeats: int, seed: int, runner_class: Any = AdaptiveModel
               ) -> dict[int, float]:
    """Offline, idle: median ms of the forward on ``longest`` at every budget (interleaved rounds)."""
    runner = runner_class(model, closed_loop=False)
    order = random.Random(seed)
    budgets = list(range(1, model.num_layers + 1))
    samples: dict[int, list[float]] = {k: [] for k in budgets}
    for _ in range(repeats):
        for k in order.sample(budgets, len(budgets)):
            samples[k].append(runner(longest, k).measured_ms)
    return {k: sorted(v)[len(v) // 2] for k, v in samples.items()}


def choose_fixed_budget(times: dict[int, float], deadline_ms: float) -> int:
    """The largest budget whose idle time on the longest utterance meets the deadline (at least 1)."""
    meeting = [k for k, ms in times.items() if ms <= deadline_ms]
    return max(meeting) if meeting else 1


def replay(policies: Sequence[str], model: Any, profile: DeviceProfile, clips: Sequence[torch.Tensor],
           targets: Sequence[int | None], deadline_ms: float, fixed_k: int, load: LoadGenerator,
           load_span: tuple[int, int], margin: float, seed: int = 0, runner_class: Any = AdaptiveModel,
           controller_options: dict[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Stream ``clips`` one at a time, the load on in ``load_span``; every policy runs each utterance."""
    runners = {p: runner_class(model, profile=profile, closed_loop=(p == "closed_loop"), margin=margin,
                               **(controller_options or {})) for p in policies}
    budgets: dict[str, Any] = {p: {"full": None, "fixed": fixed_k}.get(p, {"ms": deadline_ms}) for p in policies}
    records: dict[str, list[dict[str, Any]]] = {p: [] for p in policies}
    order = random.Random(seed)
    start = time.perf_counter()
    with load, Phase(f"replay, {len(policies)} policies", total=len(clips), unit="utterance") as phase:
        for index, (clip, target) in enumerate(zip(clips, targets, strict=True)):
            if index == load_span[0]:
                load.start()
                time.sleep(0.2)  # let the burners get going
            if index == load_span[1]:
                load.stop()
            for policy in order.sample(list(policies), len(policies)):
                out = runners[policy](clip, budgets[policy])
                correct = None if target is None else bool(int(out.logits.argmax(-1)[0]) == target)
                records[policy].append({
                    "index": index, "t": round(time.perf_counter() - start, 4), "seconds": len(clip) / 16_000,
                    "loaded": load_span[0] <= index < load_span[1], "budget": int(out.budget[0]),
                    "layers_run": int(out.layers_run[0]), "measured_ms": out.measured_ms,
                    "predicted_ms": out.predicted_ms, "missed": out.measured_ms > deadline_ms,
                    "correction": out.correction, "planned": runners[policy].controller.planned,
                    "probe": runners[policy].controller.probe, "correct": correct,
                })
            phase.step("under load" if load_span[0] <= index < load_span[1] else "")
    return records


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Miss rates and mean layers (overall, idle, loaded) and accuracy of one policy's replay."""
    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    out: dict[str, Any] = {}
    for name, rows in (("all", records), ("idle", [r for r in records if not r["loaded"]]),
                       ("loaded", [r for r in records if r["loaded"]])):
        out[f"miss_rate_{name}"] = mean([float(r["missed"]) for r in rows])
        out[f"layers_{name}"] = mean([float(r["layers_run"]) for r in rows])
        out[f"mean_ms_{name}"] = mean([r["measured_ms"] for r in rows])
    scored = [r["correct"] for r in records if r["correct"] is not None]
    out["accuracy"] = mean([float(c) for c in scored])
    return out


def plot(results: dict[str, list[dict[str, Any]]], deadline_ms: float, load_span: tuple[int, int],
         path: Path) -> None:
    """Latency and chosen depth over the stream, one line per policy, the loaded span shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    for policy, records in results.items():
        index = [r["index"] for r in records]
        top.plot(index, [r["measured_ms"] for r in records], label=policy, lw=1)
        bottom.plot(index, [r["layers_run"] for r in records], label=policy, lw=1, drawstyle="steps-mid")
    for axis in (top, bottom):
        axis.axvspan(load_span[0] - 0.5, load_span[1] - 0.5, color="0.85", label="load on")
    top.axhline(deadline_ms, color="k", ls="--", lw=1, label="deadline")
    top.set_ylabel("latency (ms)")
    bottom.set_ylabel("layers run")
    bottom.set_xlabel("utterance")
    top.legend(fontsize=8, ncol=3)
    top.set_title("per-utterance deadline under a load change")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120), suffix=".png")
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main
def onnx_runtime(task: Any, threads: int | None, export_dir: str | None) -> tuple[Any, Any, Any]:
    """``(model, runner, profile)`` on ONNX Runtime: ``task`` exported to (or reused from) ``export_dir``."""
    from ldrop.runtime.onnx_export import export_onnx
    from ldrop.runtime.onnx_profile import profile_onnx
    from ldrop.runtime.onnx_runtime import OnnxAdaptiveModel

    scratch = None
    if export_dir is None:
        scratch = tempfile.TemporaryDirectory(prefix="ldrop-control-onnx-")
        export_dir = str(Path(scratch.name) / "model")
    if not (Path(export_dir) / "manifest.json").is_file():
        export_onnx(task, export_dir, progress=lambda line: print(line, flush=True))
    model = OnnxAdaptiveModel(export_dir, threads=threads)
    model._temporary = scratch  # a temporary folder lives as long as the model
    return (model, lambda onnx_model, **options: onnx_model.with_controller(**options),
            lambda onnx_model, **grid: profile_onnx(onnx_model, threads=threads, **grid))


def _json(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not JSON ({error}): {text!r}") from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ldrop.bench control", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", help="a trained classification checkpoint / export (e.g. the quickstart's): "
                        "streams its generated test set and reports accuracy")
    parser.add_argument("--backbone", default="random:wavlm",
                        help="without --ckpt: the backbone (random weights, input-conditioned selector)")
    parser.add_argument("--overrides", type=_json, default=json.dumps(DEFAULT_OVERRIDES),
                        help="JSON backbone config overrides (with --backbone); default: a base-size encoder with a "
                        "narrower CNN and positional convolution, so the skippable layers are most of the time; "
                        "'{}' for the plain base model")
    parser.add_argument("--utterances", type=int, default=90, help="utterances in the stream")
    parser.add_argument("--seconds-range", type=_floats, default="1,3", help="utterance lengths, uniform (s) (default 1,3)")
    parser.add_argument("--deadline-ms", type=float, default=None,
                        help="per-utterance deadline (default: from the idle machine, see the module doc)")
    parser.add_argument("--load-procs", type=at_least(0), default=2, help="CPU-burning processes while loaded")
    parser.add_argument("--load-span", type=_floats, default="0.33,0.67",
                        help="fractions of the stream between which the load is on (default 0.33,0.67)")
    parser.add_argument("--max-load-seconds", type=float, default=120.0,
                        help="each load phase stops by itself after this long")
    parser.add_argument("--margin", type=float, default=0.1, help="controller margin (fraction of the deadline)")
    parser.add_argument("--controller", type=_json, default="{}", help="JSON of further controller options "
                        "(alpha_up, alpha_down, window, quantile, correction_bounds), e.g. '{\"quantile\": 0.75}'")
    parser.add_argument("--profile", help="a device profile JSON to use instead of measuring one")
    parser.add_argument("--profile-repeats", type=at_least(1), default=5, help="timed calls per profiling grid point")
    parser.add_argument("--policies", type=names, default=",".join(POLICIES), help=f"subset of {','.join(POLICIES)}")
    parser.add_argument("--threads", type=at_least(1), default=None,
                        help="torch and ONNX Runtime threads (default: torch's, for both)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the generated set with --ckpt")
    parser.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                        help="onnx: export the model and run every policy on ONNX Runtime")
    parser.add_argument("--export-dir", default=None, help="with --runtime onnx: reuse (or write) the export here")
    parser.add_argument("--json", required=True, help="output JSON")
    parser.add_argument("--plot", default=None, help="output plot (default: the JSON's name with .png)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    span = args.load_span
    if len(args.seconds_range) != 2 or not 0 < args.seconds_range[0] <= args.seconds_range[1]:
        parser.error("--seconds-range is LOW,HIGH seconds with 0 < LOW <= HIGH")
    if len(span) != 2 or not 0 <= span[0] <= span[1] <= 1:
        parser.error("--load-span is START,END fractions of the stream with 0 <= START <= END <= 1")
    if not isinstance(args.controller, dict):
        parser.error("--controller is a JSON object of controller options")
    if unknown := sorted(set(args.policies) - set(POLICIES)):
        parser.error(f"unknown policies {unknown}; choose from {list(POLICIES)}")
    if args.utterances < 1:
        parser.error("--utterances must be >= 1")
    with torch_threads(args.threads or None):
        return run(args)


def run(args: argparse.Namespace) -> int:
    """The benchmark of the module docstring with the checked options of :func:`build_parser`."""
    torch.manual_seed(args.seed)
    if args.ckpt:
        model = load_model(args.ckpt)
    else:
        from ldrop.selectors import InputConditionedSelector
        from ldrop.tasks import ClassificationTask

        model = ClassificationTask(labels=["a", "b"], backbone=args.backbone, pretrained=False,
                                   backbone_overrides=args.overrides, selector=InputConditionedSelector).eval()
    clips, targets = build_stream(args, model)
    runner_class, measure_profile = AdaptiveModel, profile_model
    if args.runtime == "onnx":
        # as many ONNX Runtime threads as torch has (ORT's own default is the physical cores: 1 on a 2-vCPU VM)
        model, runner_class, measure_profile = onnx_runtime(model, args.threads or torch.get_num_threads(), args.export_dir)
    lengths = [len(c) / 16_000 for c in clips]
    longest = max(clips, key=len)
    load_before = load_average()
    began = time.time()

    # Offline, on the idle machine: the profile, the deadline and the fixed budget.
    for _ in range(2):
        runner_class(model)(longest, None)  # warm-up
    if args.profile:
        profile = DeviceProfile.load(args.profile)
    else:
        low, high = min(lengths), max(lengths)
        grid = sorted({round(low + (high - low) * f / 5, 3) for f in range(6)})
        profile = measure_profile(model, seconds=grid, batch_sizes=(1,), repeats=args.profile_repeats,
                                  validation_batches=6)
    fixed_times = idle_times(model, longest, repeats=3, seed=args.seed, runner_class=runner_class)
    deadline_ms = args.deadline_ms
    if deadline_ms is None:  # 10% above the idle time of two thirds of the layers on the longest utterance
        deadline_ms = 1.1 * fixed_times[max(1, round(2 * model.num_layers / 3))]
    fixed_k = choose_fixed_budget(fixed_times, deadline_ms)
    print(f"deadline {deadline_ms:.1f} ms; fixed budget chosen offline: {fixed_k} of {model.num_layers} layers")

    load_span = (round(args.load_span[0] * len(clips)), round(args.load_span[1] * len(clips)))
    with LoadGenerator(args.load_procs, args.max_load_seconds) as load:
        results = replay(args.policies, model, profile, clips, targets, deadline_ms, fixed_k, load, load_span,
                         args.margin, args.seed, runner_class, args.controller)
    load_after = load_average()
    summaries = {p: summarize(r) for p, r in results.items()}
    for policy, s in summaries.items():
        print(f"{policy:>11}: misses {100 * s['miss_rate_all']:5.1f}% (idle {100 * (s['miss_rate_idle'] or 0):.1f}%, "
              f"loaded {100 * (s['miss_rate_loaded'] or 0):.1f}%), layers idle {s['layers_idle'] or 0:.2f} "
              f"loaded {s['layers_loaded'] or 0:.2f}" + (f", accuracy {s['accuracy']:.3f}" if s["accuracy"] is not None else ""))
    checks = {}
    if {"closed_loop", "fixed"} <= set(summaries):
        closed, fixed = summaries["closed_loop"], summaries["fixed"]
        checks = {
            "closed_loop_misses_at_most_5pct": closed["miss_rate_all"] <= 0.05,
            "closed_loop_misses_while_loaded_at_most_5pct": (closed["miss_rate_loaded"] or 0.0) <= 0.05,
            "fixed_misses_more": fixed["miss_rate_all"] > closed["miss_rate_all"],
            "closed_loop_idle_layers_at_least_fixed": (closed["layers_idle"] or 0) >= fixed_k,
        }
    json_path = Path(args.json)
    plot_path = Path(args.plot) if args.plot else json_path.with_suffix(".png")
    payload = {
        "benchmark": "control",
        "runtime": args.runtime,
        "machine": machine_info(torch.device("cpu")),
        "load": {"load_average_1min_before": load_before, "load_average_1min_after": load_after,
                 "load_procs": args.load_procs, "loaded_utterances": list(load_span),
                 "max_load_seconds": args.max_load_seconds,
                 "load_on_seconds": (load.stopped_at - load.started_at) if load.started_at and load.stopped_at else None},
        "model": profile.model,
        "checkpoint": args.ckpt,
        "stream": {"utterances": len(clips), "seconds_min": min(lengths), "seconds_max": max(lengths),
                   "seconds_mean": sum(lengths) / len(lengths)},
        "deadline_ms": deadline_ms,
        "margin": args.margin,
        "controller": args.controller,
        "fixed_budget": fixed_k,
        "fixed_budget_idle_ms_on_longest": fixed_times,
        "profile": {"fixed": vars(profile.fixed), "layer": vars(profile.layer),
                    "validation_median_abs_relative_error": profile.validation.get("median_abs_relative_error")},
        "summary": summaries,
        "checks": checks,
        "wall_seconds": time.time() - began,
        "records": results,
        "plot": str(plot_path),
    }
    atomic_write_json(json_path, payload)
    plot(results, deadline_ms, load_span, plot_path)
    if checks:
        print("checks: " + ", ".join(f"{k}={v}" for k, v in checks.items()))
    print(f"json: {json_path}\nplot: {plot_path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
