"""Batched against alone: how many test clips change their layers or their prediction when they share a batch.

A trained checkpoint scores its test split (the ``data`` of ``--config``) in the test loader's batches (longest
first, as ``ldrop test``) and in shuffled batches of the same size, and each clip alone, at every budget, after
fitting the selector on the validation split as ``ldrop test`` does. ``batch_independent: true`` gives zero.
It also times the CNN (``extract_features``) on the test loader's batches with ``batch_independent`` on and off,
the checkpoint's backbone or ``--timing-backbone`` (e.g. ``random:wavlm``, base size), interleaved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

from ldrop._io import atomic_write_json
from ldrop.bench.onnx_parity import config_datamodule
from ldrop.bench.speedup import say
from ldrop.budgets.machine import machine_info
from ldrop.data.batch import collate_audio
from ldrop.sweeps import markdown_table


def batching_record(checkpoint: str, config: str, seed: int = 0) -> dict[str, Any]:
    """Per budget and batching: clips whose keep mask or argmax changes, and the largest logit change."""
    from ldrop.runtime import load_model

    datamodule = config_datamodule(config)
    task = load_model(checkpoint).eval()
    task.calibrate_on_dataloader(datamodule.val_dataloader())
    loader = datamodule.test_dataloader()
    examples = [loader.dataset[i] for i in range(len(loader.dataset))]
    size = max(len(batch) for batch in loader.batch_sampler)
    batchings = {"test loader": [list(map(int, batch)) for batch in loader.batch_sampler],
                 "shuffled": torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed))
                 .split(size)}
    rows = []
    with torch.inference_mode():
        for k in range(1, task.num_layers + 1):
            alone = [task(example.waveform[None], None, k) for example in examples]
            for name, batches in batchings.items():
                layers = predictions = 0
                largest = 0.0
                for indices in batches:
                    indices = [int(i) for i in indices]
                    batch = collate_audio([examples[i] for i in indices])
                    logits, keep = task(batch.waveforms, batch.lengths, k)
                    for row, i in enumerate(indices):
                        own_logits, own_keep = alone[i]
                        layers += int(not torch.equal(keep[row], own_keep[0]))
                        predictions += int(int(logits[row].argmax()) != int(own_logits[0].argmax()))
                        largest = max(largest, float((logits[row] - own_logits[0]).abs().max()))
                rows.append({"k": k, "batching": name, "clips": len(examples), "layers_changed": layers,
                             "predictions_changed": predictions, "max_logit_change": largest})
            say(f"budget {k}/{task.num_layers}: {len(examples)} clips alone and in each batching")
    return {"checkpoint": checkpoint, "config": config, "batch_size": size,
            "batch_independent": bool(task.backbone.batch_independent), "rows": rows}


def cnn_timing(backbone: Any, batches: list[Any], repeats: int = 5) -> dict[str, float]:
    """Seconds of ``backbone.extract_features`` over ``batches`` with ``batch_independent`` off and on (the
    medians of ``repeats`` interleaved passes) and the median of the per-pass ratios."""
    seconds: dict[bool, list[float]] = {False: [], True: []}
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first pass warms up
            for independent in (False, True):
                backbone.batch_independent = independent
                started = time.perf_counter()
                for batch in batches:
                    backbone.extract_features(batch.waveforms, batch.lengths)
                seconds[independent].append(time.perf_counter() - started)
    off, on = seconds[False][1:], seconds[True][1:]
    return {"off_s": statistics.median(off), "on_s": statistics.median(on),
            "ratio": statistics.median(b / a for a, b in zip(off, on, strict=True))}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ldrop.bench batching", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a trained classification checkpoint")
    parser.add_argument("--config", default="configs/quickstart.yaml", help="the YAML whose data it uses")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled batches")
    parser.add_argument("--timing-backbone", default=None, help="time this backbone's CNN instead (e.g. random:wavlm)")
    parser.add_argument("--json", required=True, help="output JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = batching_record(args.ckpt, args.config, args.seed)
    from ldrop.backbones import load_backbone
    from ldrop.runtime import load_model

    backbone = (load_backbone(args.timing_backbone) if args.timing_backbone else load_model(args.ckpt).backbone).eval()
    batches = list(config_datamodule(args.config).test_dataloader())
    say("timing the CNN with batch_independent off and on")
    result.update(cnn_timing=cnn_timing(backbone, batches), timing_backbone=args.timing_backbone or args.ckpt,
                  benchmark="batching", machine=machine_info("cpu"), argv=list(argv or []))
    atomic_write_json(args.json, result)
    print(markdown_table([{**row, "max_logit_change": f"{row['max_logit_change']:.2g}"} for row in result["rows"]],
                         list(result["rows"][0])))
    timing = result["cnn_timing"]
    print(f"\nbatch_independent: {result['batch_independent']}; CNN of {result['timing_backbone']} on the test "
          f"batches: {timing['off_s']:.3f} s off, {timing['on_s']:.3f} s on (x{timing['ratio']:.2f}); "
          f"{json.dumps(result['machine']['cpu'])}; wrote {args.json}")
    return 0
