"""``python -m ldrop.bench overhead``: what the selector costs, and what each method costs to train.

At base size (random weights): the input-conditioned selector's parameters, FLOPs and wall time as a share of
the backbone's, and each method's training-step time relative to plain full-depth fine-tuning.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch

from ldrop._io import atomic_write_json
from ldrop.bench import at_least, positive
from ldrop.bench.speedup import SAMPLING_RATE, names, random_batch, say, torch_threads
from ldrop.budgets.machine import machine_info
from ldrop.budgets.profile import time_call
from ldrop.engine.flops import count_forward_flops
from ldrop.selectors import InputConditionedSelector, LearnedScheduleSelector, RandomSelector, StaticSelector
from ldrop.sweeps import markdown_table
from ldrop.tasks import AllocationConfig, ClassificationTask, EarlyExitConfig

METHODS: dict[str, dict[str, Any]] = {
    "full": {},
    # the shipped configs/method/input-conditioned.yaml: the first layer's output, the counterfactual objective
    "input_conditioned": {"selector": partial(InputConditionedSelector, input="layers", objective="counterfactual")},
    "input_conditioned_both": {"selector": partial(InputConditionedSelector, input="layers", objective="both")},
    # configs/method/allocate.yaml: the same selector without the fallback, and the depth head's k-1/k+1 signal
    "allocate": {"selector": partial(InputConditionedSelector, input="layers", objective="counterfactual",
                                     fallback=False), "allocation": AllocationConfig()},
    "input_conditioned_straight_through": {"selector": InputConditionedSelector},  # the CNN features (before)
    "learned_schedule": {"selector": LearnedScheduleSelector},
    "random": {"selector": RandomSelector},
    "static": {"selector": StaticSelector},
    "early_exit": {"early_exit": EarlyExitConfig()},
}
CPU = torch.device("cpu")


def _batch(batch_size: int, seconds: float, classes: int, seed: int = 0):
    from ldrop.data import AudioBatch

    gen = torch.Generator().manual_seed(seed)
    waves, lengths = random_batch([int(seconds * SAMPLING_RATE)] * batch_size, gen)
    return AudioBatch(waveforms=waves, lengths=lengths, targets=torch.randint(classes, (batch_size,), generator=gen),
                      ids=[str(i) for i in range(batch_size)])


def selector_overhead(backbone: str, batch_size: int, seconds: float, repeats: int, warmup: int) -> dict[str, Any]:
    """Parameters, FLOPs and wall time of the default input-conditioned selector vs the full backbone."""
    model = ClassificationTask(num_classes=10, backbone=backbone, **METHODS["input_conditioned"]).eval()
    batch = _batch(batch_size, seconds, 10)
    backbone_params = sum(p.numel() for p in model.backbone.parameters())
    selector_params = sum(p.numel() for p in model.selector.parameters())
    with torch.inference_mode():
        encoded = model.encode(batch.waveforms, batch.lengths)  # what the selector reads (the prefix's output)
        features, frame_mask = encoded.features, encoded.frame_mask
        frames = frame_mask.sum(1)
        budget = torch.full((batch_size,), model.num_layers // 2, dtype=torch.long)
        selector_flops = float(model.selector.flops(frames).sum())
        full_flops = float(count_forward_flops(model.backbone.config, batch.lengths).total.sum())
        t_selector = time_call(lambda: model.selector(features, frame_mask, budget), CPU, repeats, warmup)
        t_full = time_call(lambda: model.backbone(batch.waveforms, batch.lengths), CPU, repeats, warmup)
    return {
        "backbone_params": backbone_params, "selector_params": selector_params,
        "params_pct": 100.0 * selector_params / backbone_params, "selector_gflops": selector_flops / 1e9,
        "full_gflops": full_flops / 1e9, "flops_pct": 100.0 * selector_flops / full_flops,
        "selector_ms": 1000 * t_selector, "full_forward_ms": 1000 * t_full,
        "time_pct": 100.0 * t_selector / t_full,
    }


def _training_step(model: ClassificationTask, optimizer: torch.optim.Optimizer, batch: Any, budget: int):
    """One ``training_step`` (every loss term, the counterfactual masks included) + backward + AdamW step of
    ``model`` on ``batch`` at ``budget`` (early exit: the mean of exit losses)."""
    model.sample_train_budget = lambda: budget  # the budget of every step, instead of a random draw
    model.log = lambda *args, **kwargs: None  # no trainer to log to

    def step() -> None:
        loss = model.training_step(batch, 0)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def training_step_times(backbone: str, batch_size: int, seconds: float, repeats: int, warmup: int,
                        methods: Sequence[str]) -> list[dict[str, Any]]:
    """Seconds per training step (forward, backward, AdamW) of each method on one fixed batch."""
    batch = _batch(batch_size, seconds, 10)
    records = []
    for name in methods:
        torch.manual_seed(0)
        model = ClassificationTask(num_classes=10, backbone=backbone, **METHODS[name]).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        budget = model.num_layers // 2
        seconds_per_step = time_call(_training_step(model, optimizer, batch, budget), CPU, repeats, warmup)
        say(f"training step {len(records) + 1}/{len(methods)}: {name} {seconds_per_step:.3f} s")
        records.append({"method": name, "step_seconds": seconds_per_step,
                        "budget_layers": budget if METHODS[name] and not model.depth.exit_layers else model.num_layers})
    full = next((r["step_seconds"] for r in records if r["method"] == "full"), None)
    for record in records:
        record["relative_to_full"] = record["step_seconds"] / full if full else None
    return records


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ldrop.bench overhead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="wavlm", choices=["wavlm", "hubert", "wav2vec2", "data2vec"])
    parser.add_argument("--size", default="base", choices=["base", "tiny"], help="tiny: for smoke tests")
    parser.add_argument("--batch-size", type=at_least(1), default=4)
    parser.add_argument("--seconds", type=positive, default=4.0, help="audio seconds per input")
    parser.add_argument("--threads", type=at_least(1), default=2)
    parser.add_argument("--repeats", type=at_least(1), default=5)
    parser.add_argument("--warmup", type=at_least(0), default=1)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from: " + ",".join(METHODS))
    parser.add_argument("--skip-training", action="store_true", help="only the selector overhead")
    parser.add_argument("--json", default=None, help="write the results here (atomically)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    methods = names(args.methods)
    if unknown := sorted(set(methods) - set(METHODS)):
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    with torch_threads(args.threads):
        return _run(args, methods)


def _run(args: argparse.Namespace, methods: list[str]) -> int:
    backbone = f"{'random' if args.size == 'base' else 'tiny'}:{args.backbone}"
    result: dict[str, Any] = {
        "machine": machine_info("cpu"), "backbone": args.backbone, "batch_size": args.batch_size,
        "seconds": args.seconds, "size": args.size,
        "selector": selector_overhead(backbone, args.batch_size, args.seconds, args.repeats, args.warmup),
    }
    sel = result["selector"]
    print(f"selector: {sel['selector_params']:,} params ({sel['params_pct']:.3f}% of the backbone), "
          f"{sel['flops_pct']:.3f}% of the forward FLOPs, {sel['time_pct']:.2f}% of the full forward's wall time "
          f"({sel['selector_ms']:.2f} ms vs {sel['full_forward_ms']:.1f} ms)")
    if not args.skip_training:
        result["training"] = training_step_times(backbone, args.batch_size, args.seconds, args.repeats,
                                                 args.warmup, methods)
        rows = [
            {
                "method": r["method"],
                "budget (layers)": r["budget_layers"],
                "s / step": f"{r['step_seconds']:.3f}",
                "vs full-depth fine-tuning": f"{r['relative_to_full']:.2f}x" if r["relative_to_full"] else "n/a",
            }
            for r in result["training"]
        ]
        print("\n" + markdown_table(rows, ["method", "budget (layers)", "s / step", "vs full-depth fine-tuning"]))
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
