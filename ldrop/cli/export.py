"""``ldrop export``: a trained checkpoint as a Hugging Face ``save_pretrained`` folder, or (``--format onnx``)
as ONNX graphs for :class:`~ldrop.runtime.OnnxAdaptiveModel` (:mod:`ldrop.runtime.onnx_export`)."""

from __future__ import annotations

from collections.abc import Sequence

from jsonargparse import ArgumentParser

from ldrop.cli.errors import command_parser, parse_command
from ldrop.runtime.checkpoints import load_task_checkpoint


def build_parser() -> ArgumentParser:
    """The parser of ``ldrop export CHECKPOINT OUT_DIR [--format hf|onnx] [--quantize dynamic]``."""
    parser = command_parser(
        "export",
        "Write the backbone of a trained ldrop checkpoint as a Hugging Face save_pretrained directory (usable as "
        "model.backbone), with the heads and selector in ldrop_task_state.pt beside it; or, with --format onnx, "
        "the model as ONNX graphs (fixed part, selector, one per encoder layer, head) and a manifest for "
        "OnnxAdaptiveModel on ONNX Runtime.",
    )
    parser.add_argument("checkpoint", help="a .ckpt written by ldrop fit (--format onnx: or an ldrop export folder)")
    parser.add_argument("out_dir", help="output directory (--format onnx: must not exist yet, or be empty)")
    parser.add_argument("--format", choices=("hf", "onnx"), default="hf", help="hf (default) or onnx")
    parser.add_argument("--quantize", choices=("dynamic",), default=None,
                        help="with --format onnx: int8 dynamic quantization of the layer graphs (default: fp32)")
    parser.add_argument("--no-check", action="store_true",
                        help="with --format onnx: skip the ONNX Runtime vs PyTorch parity check")
    return parser


def main(argv: Sequence[str]) -> int:
    ns = parse_command(build_parser(), argv)
    if ns.format == "onnx":
        from ldrop.runtime.onnx_export import export_onnx

        export_onnx(ns.checkpoint, ns.out_dir, quantize=ns.quantize, check=not ns.no_check,
                    progress=lambda line: print(line, flush=True))
        return 0
    model = load_task_checkpoint(ns.checkpoint)
    out = model.export_pretrained(ns.out_dir)
    print(f"exported {type(model).__name__} backbone to {out}")
    return 0
