"""Loading benchmark: seconds of audio per second of wall time through each DataModule's train loader.

Each layout is built at benchmark scale with :mod:`ldrop.testing.fixtures`, then iterated with ``--workers``
workers: ``python -m ldrop.bench loading --dataset all --workers 2 --json loading.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ldrop._io import atomic_write_json
from ldrop.bench import at_least
from ldrop.budgets.machine import machine_info
from ldrop.data import (
    AudioDataModule,
    ESC50DataModule,
    LibriSpeechDataModule,
    SpeechCommandsDataModule,
    SyntheticClassificationDataModule,
    SyntheticCTCDataModule,
    TedliumDataModule,
)
from ldrop.sweeps import markdown_table
from ldrop.testing.fixtures import (
    make_esc50_tree,
    make_librispeech_tree,
    make_speech_commands_tree,
    make_tedlium_tree,
)

DATASETS = ("librispeech", "tedlium", "speechcommands", "esc50", "synthetic-cls", "synthetic-ctc")


def _build(name: str, folder: Path, scale: float, common: dict[str, Any]) -> AudioDataModule:
    """Write ``name``'s layout under ``folder`` and return its DataModule."""
    def n(count: float, cap: float = math.inf) -> int:
        return max(1, round(count * min(scale, cap)))

    if name == "librispeech":
        tree = make_librispeech_tree(folder, speakers=n(4), chapters=2, utterances=n(8), seconds=(2.0, 16.0))
        return LibriSpeechDataModule(tree.root, **common)
    if name == "tedlium":
        tree = make_tedlium_tree(folder, train_talks=n(4), segments_per_talk=20, seconds=(2.0, 12.0))
        return TedliumDataModule(tree.root, **common)
    if name == "speechcommands":
        return SpeechCommandsDataModule(make_speech_commands_tree(folder, clips_per_word=2 + n(10)).root,
                                        num_classes=12, **common)
    if name == "esc50":
        return ESC50DataModule(make_esc50_tree(folder, targets=range(n(50, cap=1.0)), seconds=5.0).root, **common)
    data_class = {"synthetic-cls": SyntheticClassificationDataModule, "synthetic-ctc": SyntheticCTCDataModule}[name]
    return data_class(num_train=n(1024), **common)


def benchmark_loading(
    dataset: str, workers: int = 2, batch_size: int = 8, epochs: int = 2, scale: float = 1.0,
    root: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Build ``dataset`` at benchmark ``scale`` and time full passes over its training loader (new workers
    each pass)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {DATASETS}")
    with tempfile.TemporaryDirectory(prefix=f"ldrop-bench-{dataset}-", dir=root) as tmp:
        dm = _build(dataset, Path(tmp), scale, {"batch_size": batch_size, "num_workers": workers})
        start = time.perf_counter()
        dm.setup("fit")
        setup_seconds = time.perf_counter() - start
        loader = dm.train_dataloader()
        walls, samples, batches = [], 0, 0
        for epoch in range(epochs):
            loader.batch_sampler.set_epoch(epoch)
            samples, batches = 0, 0
            start = time.perf_counter()
            for batch in loader:
                samples += int(batch.lengths.sum())
                batches += 1
            walls.append(time.perf_counter() - start)
        audio_seconds = samples / dm.sample_rate
        wall = sum(walls) / len(walls)
        return {
            "dataset": dataset, "items": len(dm.dataset("train")), "batches": batches,
            "audio_seconds": round(audio_seconds, 2), "setup_seconds": round(setup_seconds, 3),
            "wall_seconds": round(wall, 3), "audio_seconds_per_second": round(audio_seconds / wall, 1),
            "workers": workers,
        }


def _table(results: list[dict[str, Any]]) -> str:
    rows = [
        {
            "dataset": r["dataset"], "train items": r["items"], "audio (s)": f"{r['audio_seconds']:.1f}",
            "setup (s)": f"{r['setup_seconds']:.2f}", "wall / pass (s)": f"{r['wall_seconds']:.2f}",
            "audio s / wall s": f"{r['audio_seconds_per_second']:.0f}",
        }
        for r in results
    ]
    return markdown_table(rows, list(rows[0]) if rows else [])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ldrop.bench loading", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=[*DATASETS, "all"], default="all")
    parser.add_argument("--workers", type=at_least(0), default=2, help="DataLoader worker processes (default 2)")
    parser.add_argument("--batch-size", type=at_least(1), default=8)
    parser.add_argument("--epochs", type=at_least(1), default=2, help="timed passes per dataset (default 2)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the number of files written")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m ldrop.bench loading [--dataset NAME|all] [--workers N] [--json PATH]``."""
    args = build_parser().parse_args(argv)

    names = DATASETS if args.dataset == "all" else (args.dataset,)
    results = [
        benchmark_loading(
            name, workers=args.workers, batch_size=args.batch_size, epochs=args.epochs, scale=args.scale
        )
        for name in names
    ]
    info = machine_info()
    print(f"{info['cpu']}, {info['cpu_count']} cores, Python {info['python']}, torch {info['torch']}")
    print(f"workers={args.workers} batch_size={args.batch_size} epochs={args.epochs} scale={args.scale}")
    print(_table(results))
    if args.json is not None:
        atomic_write_json(args.json, {"machine": info, "args": vars(args) | {"json": str(args.json)},
                                      "results": results})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
