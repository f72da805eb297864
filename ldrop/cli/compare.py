"""``ldrop compare``: overlay budget sweeps in one plot and one Markdown table."""

from __future__ import annotations

from collections.abc import Sequence

from jsonargparse import ArgumentParser

from ldrop.cli.errors import ConfigError, command_parser, parse_command
from ldrop.sweeps import compare_sweeps


def build_parser() -> ArgumentParser:
    """The parser of ``ldrop compare RUN_OR_CSV... [--out DIR] [--metric NAME] [--labels A,B,...]
    [--reference LABEL] [--oracles]``."""
    parser = command_parser(
        "compare",
        "Overlay budget sweeps (run directories, budget_sweep.csv or .json files) in one plot and Markdown "
        "tables: per budget, and at the equal GFLOPs of N/4, N/2, 3N/4 layers of a reference run plus the mean "
        "over the common GFLOPs range, with paired 95% bootstrap intervals of the differences where the sweeps "
        "hold per-item errors (budget_items.json) on the same items. Only complete sweeps are read: a folder whose sweep_manifest.json is missing or does not match "
        "its files (an interrupted 'ldrop test') is an error.",
    )
    parser.add_argument("runs", nargs="+", help="run directories or sweep files")
    parser.add_argument("--out", default="compare", help="output folder for compare.png, compare.md, compare.json")
    parser.add_argument("--metric", type=str | None, default=None,
                        help="metric column (default: the sweeps' first metric)")
    parser.add_argument("--labels", type=str | None, default=None,
                        help="comma-separated labels, one per run (default: each sweep's method; runs of one method "
                        "are told apart by the folder names where their paths differ)")
    parser.add_argument("--reference", type=str | None, default=None,
                        help="label of the run whose layers set the GFLOPs and that the others are compared with "
                        "(default: the first run of several depths)")
    parser.add_argument("--oracles", action="store_true", help="draw the reference run's oracle lines")
    return parser


def main(argv: Sequence[str]) -> int:
    ns = parse_command(build_parser(), argv)
    labels = ns.labels.split(",") if ns.labels else None
    if labels is not None and len(labels) != len(ns.runs):
        raise ConfigError(f"--labels has {len(labels)} names for {len(ns.runs)} runs")
    table, plot = compare_sweeps(ns.runs, ns.out, metric=ns.metric, labels=labels, reference=ns.reference,
                                 oracles=ns.oracles)
    print(table)
    print(f"\nplot: {plot}\ntable: {plot.with_name('compare.md')}")
    return 0
