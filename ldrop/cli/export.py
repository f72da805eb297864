"""``ldrop export``: the backbone of a trained checkpoint as a Hugging Face ``save_pretrained`` folder."""

from __future__ import annotations

from collections.abc import Sequence

from ldrop.cli.errors import command_parser, parse_command
from ldrop.runtime.checkpoints import load_task_checkpoint


def main(argv: Sequence[str]) -> int:
    """``ldrop export CHECKPOINT OUT_DIR``."""
    parser = command_parser(
        "export",
        "Write the backbone of a trained ldrop checkpoint as a Hugging Face save_pretrained directory (usable as "
        "model.backbone), with the heads and selector in ldrop_task_state.pt beside it.",
    )
    parser.add_argument("checkpoint", help="a .ckpt written by ldrop fit")
    parser.add_argument("out_dir", help="output directory")
    ns = parse_command(parser, argv)
    model = load_task_checkpoint(ns.checkpoint)
    out = model.export_pretrained(ns.out_dir)
    print(f"exported {type(model).__name__} backbone to {out}")
    return 0
