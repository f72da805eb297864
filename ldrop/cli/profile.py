"""``ldrop profile``: measure a device profile (:func:`ldrop.budgets.profile_model`) from the command line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentParser

from ldrop._io import check_writable_folder
from ldrop.budgets.profile import PARTS, DeviceProfile, profile_model
from ldrop.cli.errors import ConfigError, command_parser, os_error_line, parse_command


def build_parser() -> ArgumentParser:
    """The parser of ``ldrop profile (MODEL | --backbone NAME) [--out profile.json] ...``."""
    parser = command_parser(
        "profile",
        "Measure how long the fixed part (CNN, front end, selector, head) and one encoder layer of "
        "a model take on this device, dtype and thread count, over a grid of input lengths and sub-batch "
        "sizes; fit a cost model; report its accuracy on held-out batches; write it as JSON (the input of "
        "ms / rtf budget targets).",
    )
    parser.add_argument("model", nargs="?", type=str | None, help="a .ckpt written by ldrop fit, or a folder written by ldrop export")
    parser.add_argument("--backbone", type=str | None, help="instead of MODEL: a backbone (e.g. random:wavlm, tiny:wavlm, a hub id "
                        "or folder) with the input-conditioned selector and a 2-class head, weights random")
    parser.add_argument("--overrides", type=str | None, default=None, help="JSON dict of backbone config overrides (with --backbone)")
    parser.add_argument("--seconds", default="1,2,4,8", help="input lengths of the grid in seconds")
    parser.add_argument("--batch-sizes", default="1,2,4", help="sub-batch sizes of the grid")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per grid point, median")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before them")
    parser.add_argument("--validate", type=int, default=12, help="held-out random batches to check the fit on")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (--runtime torch; onnx runs on the CPU)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16", "fp64"),
                        help="the model's dtype: its weights are converted, so every activation is in it (bf16: as "
                        "bf16-true, or AdaptiveModel on a model converted with .to(torch.bfloat16))")
    parser.add_argument("--autocast", default=None, choices=("bf16", "fp16"),
                        help="run float32 weights under torch.autocast with this dtype (as --trainer.precision "
                        "bf16-mixed, or AdaptiveModel(model, autocast=torch.bfloat16))")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (none: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs, masks and (with --backbone) weights")
    parser.add_argument("--out", default="profile.json", help="output JSON")
    parser.add_argument("--runtime", default="torch", choices=("torch", "onnx"),
                        help="onnx: time MODEL, an ONNX export folder (ldrop export --format onnx) or a checkpoint, "
                        "on ONNX Runtime (--threads are then its threads)")
    return parser


def main(argv: Sequence[str]) -> int:
    """``ldrop profile``: measure a device profile."""
    ns = parse_command(build_parser(), argv)
    if (ns.model is None) == (ns.backbone is None):
        raise ConfigError("give either MODEL (a checkpoint or exported folder) or --backbone NAME")
    seconds, batch_sizes, overrides = _grid_and_overrides(ns)
    if Path(ns.out).is_dir():
        raise ConfigError(f"--out {ns.out}: a folder, not a file")
    try:
        check_writable_folder(Path(ns.out).parent)  # before the measurement, not after it
    except OSError as error:
        raise ConfigError(f"--out {ns.out}: {os_error_line(error)}") from error
    try:
        profile = _measure(ns, seconds, batch_sizes, overrides)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(str(error)) from error
    profile.save(ns.out)
    for part in PARTS:
        fit = getattr(profile, part)
        print(f"{part:>5}: {1000 * fit.overhead:.3f} ms + {1e6 * fit.per_frame:.3f} us x batch x frames "
              f"+ {1e9 * fit.per_frame_sq:.3f} ns x batch x frames^2")
    if profile.validation:
        check = profile.validation
        print(f"held-out batches: median |error| {100 * check['median_abs_relative_error']:.1f}% "
              f"(max {100 * check['max_abs_relative_error']:.1f}%) over {len(check['batches'])} batches: "
              f"{'within' if check['passed'] else 'OUTSIDE'} the {100 * check['tolerance']:.0f}% tolerance")
    print(f"profile: {ns.out}")
    return 0


def _grid_and_overrides(ns: Any) -> tuple[list[float], list[int], dict | None]:
    """``--seconds``, ``--batch-sizes`` and ``--overrides`` parsed, the counts checked; a :class:`ConfigError`
    naming the option."""
    def numbers(option: str, text: str, kind: type, least: float) -> list:
        try:
            values = [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            values = []
        if not values or any(not v > least for v in values):
            raise ConfigError(f"{option} {text!r}: expected a comma-separated list of numbers above {least}")
        return values

    for option, value, least in (("--repeats", ns.repeats, 1), ("--warmup", ns.warmup, 0), ("--validate", ns.validate, 0)):
        if value < least:
            raise ConfigError(f"{option} {value}: expected at least {least}")
    if ns.threads is not None and ns.threads < 1:
        raise ConfigError(f"--threads {ns.threads}: expected a positive integer (leave it out for the runtime's choice)")
    if ns.overrides is not None and ns.backbone is None:
        raise ConfigError("--overrides applies with --backbone only (a checkpoint keeps its own configuration)")
    try:
        overrides = json.loads(ns.overrides) if ns.overrides else None
    except ValueError as error:
        raise ConfigError(f"--overrides {ns.overrides!r}: not JSON ({error})") from error
    if overrides is not None and not isinstance(overrides, dict):
        raise ConfigError(f"--overrides {ns.overrides!r}: expected a JSON object of backbone config fields, e.g. "
                          "'{\"num_hidden_layers\": 4}'")
    return numbers("--seconds", ns.seconds, float, 0), numbers("--batch-sizes", ns.batch_sizes, int, 0), overrides


def _measure(ns: Any, seconds: list[float], batch_sizes: list[int], overrides: dict | None) -> DeviceProfile:
    """The profile the parsed command line asks for; a ValueError (or FileNotFoundError) for one it cannot."""
    if ns.runtime == "onnx":
        if ns.model is None:
            raise ValueError("--runtime onnx times an ONNX export: give MODEL, not --backbone")
        if ns.dtype != "fp32" or ns.autocast:
            raise ValueError("--dtype and --autocast apply to --runtime torch: an ONNX export runs in its own dtype")
        if ns.device != "cpu":
            raise ValueError(f"--device {ns.device} applies to --runtime torch: ONNX Runtime is timed on the CPU")
        from ldrop.runtime.onnx_profile import profile_onnx

        return profile_onnx(ns.model, seconds, batch_sizes, repeats=ns.repeats, warmup=ns.warmup,
                            validation_batches=ns.validate, seed=ns.seed, threads=ns.threads)
    if ns.threads:
        torch.set_num_threads(ns.threads)
    if ns.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    torch.manual_seed(ns.seed)
    if ns.model is not None:
        from ldrop.runtime.checkpoints import load_model, refuse_onnx_export

        refuse_onnx_export(ns.model, "time it with --runtime onnx, or give the .ckpt it was exported from")
        model = load_model(ns.model)
    else:
        from ldrop.selectors import InputConditionedSelector
        from ldrop.tasks import ClassificationTask

        model = ClassificationTask(labels=["a", "b"], backbone=ns.backbone, pretrained=False,
                                   backbone_overrides=overrides, selector=InputConditionedSelector)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
    if ns.autocast and ns.dtype != "fp32":
        raise ValueError(f"--autocast {ns.autocast} runs float32 weights: leave --dtype at fp32, not {ns.dtype}")
    device = torch.device(ns.device)
    model = model.to(device, dtypes[ns.dtype]).eval()
    with torch.autocast(device.type, dtype=dtypes.get(ns.autocast), enabled=ns.autocast is not None):
        return profile_model(model, seconds, batch_sizes, repeats=ns.repeats, warmup=ns.warmup,
                             validation_batches=ns.validate, seed=ns.seed)
