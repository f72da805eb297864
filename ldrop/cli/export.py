"""``ldrop export``: a trained checkpoint as a Hugging Face ``save_pretrained`` folder, or (``--format onnx``)
as ONNX graphs for :class:`~ldrop.runtime.OnnxAdaptiveModel` (:mod:`ldrop.runtime.onnx_export`)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from jsonargparse import ArgumentParser

from ldrop._io import check_new_folder, check_writable_folder
from ldrop.cli.errors import (
    ConfigError,
    checkpoint_folder_problem,
    command_parser,
    os_error_line,
    parse_command,
)
from ldrop.runtime.checkpoints import (
    fit_on_run_validation_data,
    load_task_checkpoint,
    refuse_onnx_export,
    run_config,
)
from ldrop.tasks import LayerDropTask


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
    parser.add_argument("out_dir", help="output directory: it must not exist yet, or be empty")
    parser.add_argument("--format", choices=("hf", "onnx"), default="hf", help="hf or onnx")
    parser.add_argument("--quantize", choices=("dynamic",), default=None,
                        help="with --format onnx: int8 dynamic quantization of the layer graphs (none: fp32)")
    parser.add_argument("--no-check", action="store_true",
                        help="with --format onnx: skip the ONNX Runtime vs PyTorch parity check")
    parser.add_argument("--config", default=None,
                        help="the run's config.yaml (none: the one ldrop fit wrote beside the checkpoints/ folder): "
                             "a selector or exit that is fitted on validation data before ldrop test and predict is "
                             "fitted on its datamodule's validation split first, so the export decides as predict does")
    parser.add_argument("--no-fit", action="store_true",
                        help="export the checkpoint's decisions as they are, without that fit")
    parser.add_argument("--device", default="cpu",
                        help="where that fit runs: cpu, cuda or cuda:N (it runs the model many times over the "
                             "validation split, minutes on a CPU at real size; the export itself runs on the CPU)")
    return parser


def _fit_device(device: str, no_fit: bool) -> torch.device:
    """``--device`` as a torch device, or a ConfigError naming it (before the model is loaded)."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device}: not a device (cpu, cuda or cuda:N)") from None
    if parsed.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device}: the fit runs on cpu, cuda or cuda:N")
    if parsed.type != "cpu" and no_fit:
        raise ConfigError(f"--device {device} is where the validation fit runs, and --no-fit skips it")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is available (torch.cuda.is_available() is False)")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 ...)")
    return parsed


def _fitted(model: LayerDropTask, checkpoint: str, config: str | None, no_fit: bool,
            device: torch.device) -> LayerDropTask:
    """``model``, fitted on the run's validation data (on ``device``, then back on the CPU) where ``ldrop
    predict`` would fit it first."""
    depth = model.eval().depth
    if no_fit or depth.calibrated_for(range(1, model.num_layers + 1)):  # fitted already, or nothing to fit
        return model
    path = Path(config) if config else run_config(checkpoint)
    if config and not path.is_file():
        raise ConfigError(f"--config {config}: no such file")
    if not path.is_file():
        warnings.warn(f"{depth} is fitted on validation data before 'ldrop predict', and no run config is beside "
                      f"the checkpoint ({path}): the export keeps its unfitted decisions; give the run's config.yaml "
                      "with --config", UserWarning, stacklevel=2)
        return model
    fit_on_run_validation_data(model.to(device), path, say=lambda line: print(line, flush=True))
    return model.cpu()


def main(argv: Sequence[str]) -> int:
    ns = parse_command(build_parser(), argv)
    refuse_onnx_export(ns.checkpoint, "export the .ckpt it was exported from")
    if ns.format == "hf" and (ns.quantize or ns.no_check):
        raise ConfigError(f"{'--quantize' if ns.quantize else '--no-check'} applies to --format onnx only")
    if ns.format == "hf" and (problem := checkpoint_folder_problem(ns.checkpoint, "CHECKPOINT")):
        raise ConfigError(problem)
    out_dir = check_new_folder(ns.out_dir, ConfigError)  # before the model is loaded and fitted
    try:
        check_writable_folder(out_dir.parent)  # where the export is staged
    except OSError as err:
        raise ConfigError(f"{str(out_dir)!r} cannot be made: {os_error_line(err)}") from err
    device = _fit_device(ns.device, ns.no_fit)
    if ns.format == "onnx":
        from ldrop.runtime.onnx_export import EXPORT_MODULES, export_onnx, load_task, require_onnx_extra

        require_onnx_extra("an ONNX export", EXPORT_MODULES)  # before a selector is fitted for it
        model = _fitted(load_task(ns.checkpoint), ns.checkpoint, ns.config, ns.no_fit, device)
        export_onnx(model, ns.out_dir, quantize=ns.quantize, check=not ns.no_check,
                    progress=lambda line: print(line, flush=True))
        return 0
    model = _fitted(load_task_checkpoint(ns.checkpoint), ns.checkpoint, ns.config, ns.no_fit, device)
    out = model.export_pretrained(ns.out_dir)
    print(f"exported {type(model).__name__} backbone to {out}")
    return 0
