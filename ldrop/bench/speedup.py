"""Wall-clock speed-up of sparse gated execution vs the full model (random weights).

Per budget ``k`` it times ``per_sample`` masks (each sample its own random ``k`` layers), ``shared`` masks (a
static pruned model), ``full`` and ``fixed`` (CNN + front end; the ideal is ``T_full / (T_fixed + k / N *
(T_full - T_fixed))``), interleaved in a fresh random order per repeat, medians reported. Weights are random:
dense speed does not depend on them.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import Tensor
from transformers import PretrainedConfig

from ldrop._io import atomic_write_json
from ldrop.backbones import FAMILIES, SpeechBackbone, tiny_config
from ldrop.bench import at_least, positive
from ldrop.budgets.machine import machine_info
from ldrop.engine.flops import count_forward_flops
from ldrop.engine.gated import run_gated_layers
from ldrop.sweeps import markdown_table

SIZES = ("base", "large", "tiny")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SAMPLING_RATE = 16_000
KINDS = ("per_sample", "shared")

#: The usual "large" geometry (wav2vec 2.0 / HuBERT / WavLM / data2vec large).
LARGE = dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, intermediate_size=4096)


def large_overrides(family: str) -> dict[str, Any]:
    """The config overrides of ``family`` at the "large" size: :data:`LARGE`, pre-norm but Data2VecAudio."""
    return dict(LARGE) if family == "data2vec" else {**LARGE, "do_stable_layer_norm": True, "feat_extract_norm": "layer"}


def build_config(family: str, size: str) -> PretrainedConfig:
    """A config of ``family`` at ``size``: ``base``, ``large`` (24 layers, pre-norm but Data2VecAudio) or
    ``tiny``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown backbone {family!r}; choose from {sorted(FAMILIES)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {SIZES}")
    if size == "tiny":
        return tiny_config(family)
    return FAMILIES[family][0](**(large_overrides(family) if size == "large" else {}))


def parse_budgets(text: str, num_layers: int) -> list[int]:
    """Comma-separated budgets: layer counts (``"3,6,9"``) or fractions (``"0.25,0.5"``), duplicates dropped.

    ``ValueError`` for an empty list or a budget outside ``0..num_layers``.
    """
    budgets: list[int] = []
    for item in names(text):
        if "." in item or "e" in item.lower():
            fraction = float(item)
            if not 0.0 <= fraction <= 1.0:
                raise ValueError(f"budget fraction {item} is outside [0, 1]")
            k = round(fraction * num_layers)
        else:
            k = int(item)
        if not 0 <= k <= num_layers:
            raise ValueError(f"budget {item} is outside 0..{num_layers} layers")
        if k not in budgets:
            budgets.append(k)
    if not budgets:
        raise ValueError("no budgets given")
    return budgets


def names(text: str) -> list[str]:
    """The non-empty items of a comma-separated list, stripped."""
    return [name.strip() for name in text.split(",") if name.strip()]


def keep_masks(batch: int, num_layers: int, k: int, generator: torch.Generator) -> dict[str, Tensor]:
    """``{"per_sample": [batch, layers], "shared": [batch, layers]}`` 0/1 masks keeping ``k`` layers."""
    per_sample = torch.zeros(batch, num_layers)
    for row in range(batch):
        per_sample[row, torch.randperm(num_layers, generator=generator)[:k]] = 1.0
    shared = torch.zeros(num_layers)
    shared[torch.randperm(num_layers, generator=generator)[:k]] = 1.0
    return {"per_sample": per_sample, "shared": shared.expand(batch, num_layers).clone()}


def sparse_forward(model: SpeechBackbone, waves: Tensor, lengths: Tensor, keep: Tensor | None) -> Tensor:
    """The timed inference forward: CNN, front end, sparse gated layers under ``keep`` (``None``: none, the fixed
    part only), final norm."""
    features, frame_mask = model.extract_features(waves, lengths)
    hidden = model.frontend(features, frame_mask)
    return hidden if keep is None else run_gated_layers(model, hidden, frame_mask, keep, mode="sparse")


def random_batch(lengths: Sequence[int] | Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Waveforms of Gaussian noise, ``lengths`` samples each (zeros after), and the lengths."""
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    waves = torch.randn(len(lengths), int(lengths.max()), generator=generator)
    waves[torch.arange(waves.shape[1])[None, :] >= lengths[:, None]] = 0.0
    return waves, lengths


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on every platform
        return None


#: A benchmark's progress line, printed at once.
say = partial(print, flush=True)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Torch's intra-op threads set to ``threads`` (``None``: as they are) inside, restored after: a
    benchmark's ``main`` may run inside a larger process (tests)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def ideal_speedup(full: float, fixed: float, k: int, num_layers: int) -> float:
    """``T_full / (T_fixed + k / N * (T_full - T_fixed))``: the speed-up if the layers' time scaled with ``k``."""
    return full / (fixed + k / num_layers * (full - fixed))


def speedup_fields(times: dict[str, list[float]], k: int, num_layers: int, prefix: str = "") -> dict[str, Any]:
    """A budget's ``speedup``, ``ideal_speedup``, ``realized_over_ideal`` and ``realized_over_ideal_paired``
    (the median over rounds of realized/ideal within each round: cancels load that drifts over minutes) of
    both :data:`KINDS`, from the seconds of ``<prefix>full``, ``<prefix>fixed`` and ``<prefix><kind>@<k>``."""
    median = {name: statistics.median(values) for name, values in times.items()}
    ideal = ideal_speedup(median[f"{prefix}full"], median[f"{prefix}fixed"], k, num_layers)
    speedup = {kind: median[f"{prefix}full"] / median[f"{prefix}{kind}@{k}"] for kind in KINDS}

    def paired(kind: str) -> float:
        rounds = zip(times[f"{prefix}full"], times[f"{prefix}fixed"], times[f"{prefix}{kind}@{k}"], strict=True)
        return statistics.median([full / variant / ideal_speedup(full, fixed, k, num_layers)
                                  for full, fixed, variant in rounds])

    return {"speedup": speedup, "ideal_speedup": ideal,
            "realized_over_ideal": {kind: value / ideal for kind, value in speedup.items()},
            "realized_over_ideal_paired": {kind: paired(kind) for kind in KINDS}}


def interleaved_times(
    variants: Sequence[str], call: Callable[[str, dict[int, dict[str, Tensor]]], Callable[[], Any]],
    budgets: Sequence[int], batch_size: int, num_layers: int, repeats: int, warmup: int, seed: int,
    sync: Callable[[], Any] = lambda: None, log: Callable[[str], None] | None = None,
    detail: Callable[[dict[str, float]], str] = lambda elapsed: "",
) -> dict[str, list[float]]:
    """Seconds of each variant in ``repeats`` timed rounds after ``warmup`` untimed ones (inference mode).

    Each round draws fresh :func:`keep_masks` per budget (the per-sample cost depends on how the kept layers
    fall into sub-batches: the median covers many draws), then times ``call(name, masks)()`` of every variant
    once, between two ``sync()``, in a fresh random order; ``log`` gets a line per round, ``detail`` its end.
    """
    mask_generator = torch.Generator().manual_seed(seed + 1)
    order_rng = random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for round_index in range(warmup + repeats):
            masks = {k: keep_masks(batch_size, num_layers, k, mask_generator) for k in budgets}
            order = list(variants)
            order_rng.shuffle(order)
            elapsed: dict[str, float] = {}
            for name in order:
                run = call(name, masks)
                sync()
                start = time.perf_counter()
                run()
                sync()
                elapsed[name] = time.perf_counter() - start
                if round_index >= warmup:
                    times[name].append(elapsed[name])
            if log is not None:
                phase = "warm-up" if round_index < warmup else "round"
                log(f"{phase} {round_index + 1}/{warmup + repeats}{detail(elapsed)}")
    return times


def timed_records(
    variants: Sequence[str], call: Callable[[str, dict[int, dict[str, Tensor]]], Callable[[], Any]],
    budgets: Sequence[int], num_layers: int, device: str | torch.device, run: dict[str, Any], prefix: str = "",
    full_names: bool = False, sync: Callable[[], Any] = lambda: None, log: Callable[[str], None] | None = None,
    detail: Callable[[dict[str, float]], str] = lambda elapsed: "",
) -> list[dict[str, Any]]:
    """Time ``variants`` (:func:`interleaved_times`, with ``run``'s ``batch_size``, ``repeats``, ``warmup`` and
    ``seed``) and return one record per budget: ``run``, the machine with the load average before and after, the
    seconds of the variants without a budget and of the budget's own (``time_s``: medians under their names
    without ``@k``; ``times_s``: every round, likewise or, with ``full_names``, with it) and the
    :func:`speedup_fields` of the ``prefix``-ed variants."""
    load_before = load_average()
    cores = os.cpu_count() or 1
    if log is not None and torch.device(device).type == "cpu" and load_before is not None and load_before > cores / 2:
        log(
            f"note: load average {load_before:.1f} on {cores} cores; other processes will add noise (and, with "
            "spinning OpenMP threads, slow down many-small-op runs: OMP_WAIT_POLICY=PASSIVE helps)"
        )
    times = interleaved_times(variants, call, budgets, run["batch_size"], num_layers, run["repeats"], run["warmup"],
                              run["seed"], sync, log, detail)
    machine = machine_info(device)
    # Other processes competing for the cores are the main source of noise on a shared CPU machine.
    machine["load_average_1min"] = {"before": load_before, "after": load_average()}
    records = []
    for k in budgets:
        own = {name: name.partition("@")[0] for name in variants if "@" not in name or name.endswith(f"@{k}")}
        records.append({
            "benchmark": "speedup", **run, "num_layers": num_layers, "budget": k, "budget_fraction": k / num_layers,
            "machine": machine, "time_s": {key: statistics.median(times[name]) for name, key in own.items()},
            "times_s": {(name if full_names else key): times[name] for name, key in own.items()},
            **speedup_fields(times, k, num_layers, prefix),
        })
    return records


def _config_summary(config: PretrainedConfig) -> dict[str, Any]:
    keys = (
        "model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
        "do_stable_layer_norm", "feat_extract_norm", "conv_dim", "num_conv_pos_embeddings",
        "num_conv_pos_embedding_groups", "conv_pos_kernel_size",
    )
    summary = {key: getattr(config, key) for key in keys if hasattr(config, key)}
    summary["attn_implementation"] = getattr(config, "_attn_implementation", None)
    return {key: list(value) if isinstance(value, tuple) else value for key, value in summary.items()}


def run_speedup(
    backbone: str = "wavlm", size: str = "base", batch_size: int = 8, seconds: float = 4.0,
    budgets: str | Sequence[int] = "0.25,0.5,0.75", repeats: int = 10, warmup: int = 1, device: str = "cpu",
    dtype: str = "fp32", seed: int = 0, log: Callable[[str], None] | None = None,
    model: SpeechBackbone | None = None,
) -> list[dict[str, Any]]:
    """Measure the speed-up of sparse gated execution; one JSON-serialisable record per budget.

    Args:
        size: ``"base"``, ``"large"`` or ``"tiny"`` (tests), see :func:`build_config`.
        budgets: layer counts, or a string for :func:`parse_budgets`.
        repeats, warmup: timed rounds (each runs every variant once) and untimed rounds before them.
        seed: seeds the weights, the audio, the keep masks and the order of the variants.
        model: the backbone on ``device`` in ``dtype``, in eval mode (to time several batch sizes); ``None``:
            built.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    torch_device = torch.device(device)
    torch.manual_seed(seed)
    if model is None:
        model = SpeechBackbone.from_config(build_config(backbone, size)).eval().to(torch_device, DTYPES[dtype])
    config, num_layers = model.config, model.num_layers
    if isinstance(budgets, str):
        budgets = parse_budgets(budgets, num_layers)
    waves, lengths = random_batch([round(seconds * SAMPLING_RATE)] * batch_size, torch.Generator().manual_seed(seed))
    on_device = waves.to(torch_device, DTYPES[dtype]), lengths.to(torch_device)

    def call(name: str, masks: dict[int, dict[str, Tensor]]) -> Callable[[], Any]:
        if name == "full":
            return lambda: model(*on_device)
        kind, _, k = name.partition("@")
        keep = None if name == "fixed" else masks[int(k)][kind].to(torch_device)
        return lambda: sparse_forward(model, *on_device, keep)

    run = dict(backbone=backbone, size=size, batch_size=batch_size, seconds=seconds, repeats=repeats, warmup=warmup,
               seed=seed)
    records = timed_records(["full", "fixed"] + [f"{kind}@{k}" for k in budgets for kind in KINDS], call, budgets,
                            num_layers, torch_device, run, log=log,
                            sync=torch.cuda.synchronize if torch_device.type == "cuda" else (lambda: None),
                            detail=lambda elapsed: f": full forward {elapsed['full']:.3f} s")
    full_flops = count_forward_flops(config, lengths)
    for record in records:
        keep = torch.zeros(batch_size, num_layers)  # utterances of one length: any k kept layers cost the same
        keep[:, :record["budget"]] = 1.0
        flops = count_forward_flops(config, lengths, keep)
        record.update(config=_config_summary(config), sampling_rate=SAMPLING_RATE, dtype=dtype,
                      frames=int(model.frame_lengths(lengths[:1]).item()), flops={
                          "full_per_utterance": full_flops.total[0].item(),
                          "fixed_per_utterance": flops.fixed[0].item(),
                          "budget_per_utterance": flops.total[0].item(),
                          "budget_per_second": flops.per_second(lengths[:1])[0].item(),
                          "ideal_speedup": (full_flops.total.sum() / flops.total.sum()).item(),
                      })
    return records


def results_table(records: Sequence[dict[str, Any]]) -> str:
    """The records as a Markdown table, one row per budget."""
    rows = []
    for r in records:
        t, s, q, p = r["time_s"], r["speedup"], r["realized_over_ideal"], r["realized_over_ideal_paired"]
        rows.append({
            "k": r["budget"], "k/N": f"{r['budget_fraction']:.2f}", "full (s)": f"{t['full']:.3f}",
            "fixed (s)": f"{t['fixed']:.3f}", "per-sample (s)": f"{t['per_sample']:.3f}",
            "shared (s)": f"{t['shared']:.3f}", "speed-up per-sample": f"{s['per_sample']:.2f}x",
            "speed-up shared": f"{s['shared']:.2f}x", "ideal": f"{r['ideal_speedup']:.2f}x",
            "realized/ideal per-sample": f"{q['per_sample']:.3f}",
            "realized/ideal shared": f"{q['shared']:.3f}",
            "paired realized/ideal (per-sample / shared)": f"{p['per_sample']:.3f} / {p['shared']:.3f}",
            "FLOPs ideal": f"{r['flops']['ideal_speedup']:.2f}x",
        })
    return markdown_table(rows, list(rows[0]) if rows else [])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ldrop.bench speedup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", choices=sorted(FAMILIES), default="wavlm")
    parser.add_argument("--size", choices=SIZES, default="base", help="tiny is for tests")
    parser.add_argument("--batch-size", type=at_least(1), default=8)
    parser.add_argument("--seconds", type=positive, default=4.0, help="length of every utterance")
    parser.add_argument(
        "--budgets", default="0.25,0.5,0.75",
        help="comma-separated layers kept per sample: counts (3,6,9) or fractions of the depth (0.25,0.5)",
    )
    parser.add_argument("--json", required=True, help="where to write the records (a JSON list)")
    parser.add_argument("--threads", type=at_least(1), default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=at_least(1), default=10, help="timed rounds; the median is reported")
    parser.add_argument("--warmup", type=at_least(0), default=1, help="untimed rounds first")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                        help="onnx: export the model and time ONNX Runtime against PyTorch eager (ldrop.bench.onnx_speed)")
    parser.add_argument("--quantize", choices=("dynamic",), default=None, help="with --runtime onnx: int8 layer graphs")
    parser.add_argument("--export-dir", default=None, help="with --runtime onnx: reuse (or write) the export here")
    return parser


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options :func:`run_speedup` and :func:`~ldrop.bench.onnx_speed.run_onnx_speedup` share, from the
    command line, and :func:`say` as the log."""
    names = ("backbone", "size", "batch_size", "seconds", "budgets", "repeats", "warmup", "seed")
    return {name: getattr(args, name) for name in names} | {"log": say}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m ldrop.bench speedup``."""
    args = build_parser().parse_args(argv)
    if args.runtime == "onnx":
        from ldrop.bench.onnx_speed import main as onnx_main

        return onnx_main(args)
    with torch_threads(args.threads):
        records = run_speedup(**run_options(args), device=args.device, dtype=args.dtype)
    atomic_write_json(args.json, records)
    first = records[0]
    print(
        f"\n{args.backbone} {args.size}, batch {args.batch_size}, {args.seconds:g} s, {args.dtype} on "
        f"{first['machine']['device_name']} ({first['machine']['threads']} threads, torch "
        f"{first['machine']['torch']}), median of {args.repeats}\n"
    )
    print(results_table(records))
    print(f"\nwrote {len(records)} records to {args.json}")
    return 0
