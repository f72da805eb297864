"""Export a trained ldrop model to ONNX: one graph per part, so that ONNX Runtime can skip layers per input.

``export_onnx(CHECKPOINT, DIR)`` (``ldrop export CHECKPOINT DIR --format onnx``) writes ``manifest.json``,
``fixed.onnx`` (normalisation, CNN, front end; a filterbank selector's filterbank), ``context.onnx`` (WavLM's position bias, computed once for
every layer), ``selector.onnx`` (the selector's eval-mode scores; input-blind selectors keep a mask per budget
in the manifest instead), ``layers/layer_NN.onnx``, ``head.onnx``, for early exit ``heads/exit_NN.onnx`` (the head
of each exit layer but the last, whose head is ``head.onnx``) and for depth allocation ``depth_head.onnx`` (each
input's predicted loss at every depth); batch, samples and frames are dynamic axes.

All parts are traced by one ``torch.onnx.export(..., dynamo=True)`` and cut apart; the layers share one traced
graph, written with each layer's weights. The folder is then checked against PyTorch (an fp32 export more than
``1e-4`` away is refused). ``quantize="dynamic"`` makes the layer graphs int8 (``quantize_dynamic``).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import logging
import math
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from ldrop import __version__
from ldrop._io import staged_folder
from ldrop.backbones.adapter import LayerContext
from ldrop.engine.flops import decision_flops, frontend_flops, layer_flops, passed_head_flops
from ldrop.runtime.checkpoints import load_model
from ldrop.runtime.onnx_runtime import (
    FORMAT,
    FORMAT_VERSION,
    GRAPH_STAMP,
    MANIFEST,
    PROFILE_FILE,
    OnnxAdaptiveModel,
    read_manifest,
    require_onnx_extra,
)
from ldrop.tasks import LayerDropTask

log = logging.getLogger(__name__)

#: What an export imports beyond torch: the exporter (onnxscript, onnx_ir), onnx and, for its parity check,
#: ONNX Runtime (all of the ``onnx`` extra).
EXPORT_MODULES = ("onnx", "onnxscript", "onnx_ir", "onnxruntime")

#: An fp32 export whose logits are further than this from PyTorch's is refused.
PARITY_TOLERANCE = 1e-4
#: The manifest tabulates the frame-dependent fixed FLOPs up to this many frames (60 s at 16 kHz), affine beyond.
FLOPS_TABLE_FRAMES = 3000

DYNAMIC = torch.export.Dim.DYNAMIC


class OnnxExportError(ValueError):
    """A model this exporter cannot write (a random or unknown selector, a depth policy it does not know, ...)."""


# ---------------------------------------------------------------------------------------------- graph modules
class FixedPart(nn.Module):
    """``waveforms, lengths -> features, frame_mask, hidden``: the task's ``encode`` up to the encoder layers.

    A selector's prefix layers are not in it: the runtime runs them with the layer graphs.
    """

    def __init__(self, task: LayerDropTask) -> None:
        super().__init__()
        self.task = task

    def forward(self, waveforms: Tensor, lengths: Tensor) -> tuple[Tensor, ...]:
        encoded = self.task.encode(waveforms, lengths, run_prefix=False)
        frontend = getattr(self.task.selector, "frontend", None)
        if frontend is None:
            return encoded.features, encoded.frame_mask, encoded.hidden
        # a selector with its own filterbank: it reads that (and its frames) instead of the CNN features
        features, selector_mask = frontend(encoded.waveforms, encoded.lengths)
        model_features = (encoded.features,) if hasattr(self.task.depth, "depth_head") else ()  # the depth head's
        return features, encoded.frame_mask, encoded.hidden, selector_mask, *model_features


class SharedContext(nn.Module):
    """``frame_mask [B, T] -> position_bias [heads, T, T]``: the backbone's per-forward layer context."""

    def __init__(self, task: LayerDropTask) -> None:
        super().__init__()
        self.backbone = task.backbone

    def forward(self, frame_mask: Tensor) -> Tensor:
        return self.backbone.prepare_layers(frame_mask).position_bias


class SelectorScores(nn.Module):
    """``features [B, T, C], frame_mask [B, T], budget [B] -> scores [B, N]``: the eval-mode layer scores."""

    def __init__(self, task: LayerDropTask) -> None:
        super().__init__()
        self.selector = task.selector
        # the module itself, in a tuple so that it is no submodule here: what forward reads through the tracer's
        # proxy must not be what it puts back
        self.frontend = (getattr(task.selector, "frontend", None),)

    def forward(self, features: Tensor, frame_mask: Tensor, budget: Tensor) -> Tensor:
        if self.frontend[0] is None:
            return self.selector.score(features, frame_mask, budget)
        self.selector.frontend = None  # the features are its filterbank already (the fixed graph's)
        try:
            return self.selector.score(features, frame_mask, budget)
        finally:
            self.selector.frontend = self.frontend[0]


class EncoderLayer(nn.Module):
    """``hidden [B, T, H], frame_mask [B, T] (, position_bias [heads, T', T'], T' >= T) -> hidden_out``: one
    layer through the backbone's own :meth:`~ldrop.backbones.SpeechBackbone.run_layer`."""

    def __init__(self, task: LayerDropTask, index: int) -> None:
        super().__init__()
        self.backbone = task.backbone
        self.index = index

    def forward(self, hidden: Tensor, frame_mask: Tensor, position_bias: Tensor | None = None) -> Tensor:
        context = LayerContext(max_frames=hidden.shape[1], position_bias=position_bias)
        return self.backbone.run_layer(self.index, hidden, frame_mask, context)


class Head(nn.Module):
    """``hidden [B, T, H], frame_mask [B, T] -> logits``: what follows the gated layers in the task (the
    post-stack norm and zeroed padding of :func:`~ldrop.engine.run_gated_layers`, then the task head; with
    ``exits``, one logits output per exit layer's head)."""

    def __init__(self, task: LayerDropTask, exits: Sequence[int | None] = (None,)) -> None:
        super().__init__()
        self.task, self.exits = task, list(exits)

    def forward(self, hidden: Tensor, frame_mask: Tensor) -> Tensor | tuple[Tensor, ...]:
        hidden = self.task.backbone.finalize(hidden).masked_fill(~frame_mask[..., None], 0.0)
        out = tuple(self.task.compute_logits(self.task.depth.head_for(k), hidden, frame_mask) for k in self.exits)
        return out if len(out) > 1 else out[0]


# ---------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter (optional torchvision ops, constant folding notes); errors still raise."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@dataclass
class Part:
    """One graph of the folder: its module, example inputs, output names and the dynamic axes of the inputs
    whose axes are not batch and frames (``{0: DYNAMIC, 1: DYNAMIC}``)."""

    name: str
    module: nn.Module
    inputs: dict[str, Tensor]
    outputs: list[str]
    dynamic: dict[str, dict[int, Any]] = field(default_factory=dict)


class AllParts(nn.Module):
    """Every part side by side in one module, so that one ``torch.onnx.export`` traces them all."""

    def __init__(self, parts: Sequence[Part]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(part.module for part in parts)
        self.arity = [len(part.inputs) for part in parts]

    def forward(self, i0: Tensor, i1: Tensor, i2: Tensor | None = None, i3: Tensor | None = None,
                i4: Tensor | None = None, i5: Tensor | None = None, i6: Tensor | None = None, i7: Tensor | None = None,
                i8: Tensor | None = None, i9: Tensor | None = None, i10: Tensor | None = None,
                i11: Tensor | None = None, i12: Tensor | None = None) -> tuple[Tensor, ...]:
        # named slots rather than *inputs: torch 2.9's export fails on the guards of a varargs forward
        inputs = (i0, i1, i2, i3, i4, i5, i6, i7, i8, i9, i10, i11, i12)
        outputs: list[Tensor] = []
        start = 0
        for module, arity in zip(self.parts, self.arity, strict=True):
            result = module(*inputs[start:start + arity])
            outputs += list(result) if isinstance(result, tuple) else [result]
            start += arity
        return tuple(outputs)


def _export_parts(parts: Sequence[Part]) -> tuple[Any, AllParts]:
    """One unoptimised ``onnx.ModelProto`` holding every part (inputs and outputs named ``<part>.<name>``),
    and the module traced (its parameter names are the graph's initializer names)."""
    args = tuple(tensor for part in parts for tensor in part.inputs.values())
    dynamic = {f"i{index}": axes for index, axes in
               enumerate(part.dynamic.get(name, {0: DYNAMIC, 1: DYNAMIC}) for part in parts for name in part.inputs)}
    module = AllParts(parts)
    with _quiet_exporter():
        program = torch.onnx.export(
            module, args, dynamo=True, dynamic_shapes=dynamic, optimize=False, verbose=False,
            input_names=[f"{part.name}.{name}" for part in parts for name in part.inputs],
            output_names=[f"{part.name}.{name}" for part in parts for name in part.outputs],
        )
    return program.model_proto, module


def _cut(proto: Any, part: Part) -> Any:
    """The ``onnx_ir.Model`` of one part, cut from the traced whole, with its own input and output names."""
    import onnx
    import onnx_ir

    model = onnx.utils.Extractor(proto).extract_model([f"{part.name}.{name}" for name in part.inputs],
                                                      [f"{part.name}.{name}" for name in part.outputs])
    graph = onnx_ir.serde.deserialize_model(model)
    taken = {value.name for node in graph.graph for value in node.outputs}
    for value in (*graph.graph.inputs, *graph.graph.outputs):
        name = value.name.split(".", 1)[1]
        if name in taken - {value.name}:
            raise OnnxExportError(f"the traced {part.name} graph already has a value named {name!r}")
        value.name = name
    return graph


def _save(model: Any, folder: Path, name: str, say: Callable[[str], None], note: str = "",
          export_id: str = "") -> None:
    """Optimise (constant folding, fusions: what ``torch.onnx.export(optimize=True)`` does) and save as ``name``
    in ``folder`` (its subfolder made), stamped with the export's id and its own name (which the runtime checks:
    a graph copied in from another export is refused)."""
    program = torch.onnx.ONNXProgram(model, None)
    with _quiet_exporter():
        program.optimize()
    program.model.metadata_props.update({GRAPH_STAMP[0]: export_id, GRAPH_STAMP[1]: name})
    (folder / name).parent.mkdir(exist_ok=True)
    program.save(str(folder / name))
    say(f"  wrote {name}{note}")


def load_task(checkpoint_or_model: LayerDropTask | str | os.PathLike) -> LayerDropTask:
    """An eval-mode fp32 CPU copy of a task module, or the task of a ``.ckpt`` / ``ldrop export`` folder."""
    model = checkpoint_or_model
    task = copy.deepcopy(model) if isinstance(model, LayerDropTask) else load_model(model)
    return task.to("cpu", torch.float32).eval()


def task_description(task: LayerDropTask) -> dict[str, Any]:
    """The manifest's ``task``: its class, how outputs decode and their labels."""
    description: dict[str, Any] = {"class": f"{type(task).__module__}.{type(task).__qualname__}",
                                   "metric_names": list(task.metric_names)}
    if hasattr(task, "vocabulary"):  # CTC: index 0 is the blank, i + 1 is vocabulary[i]
        description.update(kind="ctc", labels=list(task.vocabulary), blank=0)
    elif hasattr(task, "class_names"):
        description.update(kind="classification", labels=task.class_names, num_classes=task.num_classes)
    else:  # a downstream task: the runtime returns its logits
        description.update(kind="logits", labels=None)
    return description


def selector_description(task: LayerDropTask) -> dict[str, Any]:
    """The manifest's ``selector``: ``full``, ``table`` (one mask per budget) or ``scores``;
    :class:`OnnxExportError` for a selector the runtime cannot reproduce."""
    selector, n = task.selector, task.num_layers
    if selector is None:
        return {"kind": "full", "class": None, "prefix_layers": 0}
    name = f"{type(selector).__module__}.{type(selector).__qualname__}"
    if selector.needs_calibration and not selector.calibrated:
        warnings.warn(f"exporting {type(selector).__name__}, which has not been fitted on validation data: the "
                      "export has its unfitted decisions", UserWarning, stacklevel=3)
    # a scoring selector with threshold calibration and the input-blind fallback (the input-conditioned one)
    if selector.input_dependent and all(hasattr(selector, a) for a in ("score", "calibration", "fallback", "mode")):
        thresholds = [None if math.isnan(t) else float(t) for t in selector.calibration.thresholds.tolist()]
        return {"kind": "scores", "class": name, "mode": selector.mode, "prefix_layers": selector.prefix_layers,
                "input": "fbank" if selector.reads_waveforms else "model",
                "thresholds": thresholds, "uses_input": selector.fallback.uses_input.tolist(),
                "blind_masks": selector.fallback.blind_masks.int().tolist()}
    if selector.input_dependent or selector.random_at_eval:
        raise OnnxExportError(
            f"{type(selector).__name__} is not exportable to ONNX: its masks are "
            f"{'random at evaluation' if selector.random_at_eval else 'input-dependent'}; the ONNX runtime runs the "
            "input-conditioned selector and input-blind ones (static subsets, learned schedules, evenly spaced)"
        )
    # input-blind: the eval-mode mask of every budget, from the selector itself
    features = torch.zeros(n, 2, selector.feature_dim)
    with torch.no_grad():
        table = selector(features, torch.ones(n, 2, dtype=torch.bool), torch.arange(1, n + 1)).keep_mask > 0.5
    return {"kind": "table", "class": name, "prefix_layers": selector.prefix_layers, "table": table.int().tolist()}


def depth_description(task: LayerDropTask) -> dict[str, Any]:
    """The manifest's ``depth``: ``selected`` (the selector's layers, one head), ``early_exit`` (its exit
    layers, policy, confidence and calibrated thresholds per budget, ``None`` where uncalibrated) or
    ``allocated`` (depth allocation's mode, least depth and stream-mode gain thresholds per budget)."""
    depth = task.depth
    if hasattr(depth, "depth_head"):
        if depth.needs_calibration() and not depth.calibrated_for(range(1, task.num_layers + 1)):
            warnings.warn("exporting a stream-mode depth allocation that is not calibrated for every budget: the "
                          "export runs only the calibrated ones", UserWarning, stacklevel=3)
        return {"kind": "allocated", "mode": depth.config.mode, "min_layers": depth.min_layers,
                "thresholds": [None if math.isnan(t) else float(t) for t in depth.depth_head.thresholds.tolist()]}
    if not depth.exit_layers:
        return {"kind": "selected"}
    thresholds = [None if math.isnan(t) else float(t) for t in depth.thresholds.tolist()]
    return {"kind": "early_exit", "exit_layers": list(depth.exit_layers), "policy": depth.config.policy,
            "confidence": depth.config.confidence, "thresholds": thresholds}


def flops_law(task: LayerDropTask) -> dict[str, Any]:
    """The manifest's ``flops``: :class:`~ldrop.runtime.onnx_budgets.FlopsLaw` of this model, from
    :mod:`ldrop.engine.flops` and the selector's own :meth:`~ldrop.selectors.LayerSelector.flops`."""
    config = task.backbone.config
    cnn, in_channels = [], 1
    for out_channels, kernel, stride in zip(config.conv_dim, config.conv_kernel, config.conv_stride, strict=True):
        cnn.append([int(kernel), int(stride), 2.0 * out_channels * in_channels * kernel])
        in_channels = out_channels
    frames = torch.arange(FLOPS_TABLE_FRAMES + 1)
    rest = frontend_flops(config, frames)
    own = decision_flops(task, frames)  # the selector's and the depth head's
    if own is not None:
        rest = rest + own.to(torch.float64)
    one, two = layer_flops(config, torch.tensor([1, 2])).tolist()
    squared = (two - 2 * one) / 2
    law = {"cnn": cnn, "frames_table": rest.tolist(), "frames_slope": float(rest[-1] - rest[-3]) / 2,
           "layer": [one - squared, squared]}
    law["budget"] = budget_law(task)
    return law


#: The frame counts at which :func:`budget_law` measures the heads an input passes (the last the table's end).
BUDGET_LAW_FRAMES = (1, 2, 3, 10, 64, 512, FLOPS_TABLE_FRAMES)


def budget_law(task: LayerDropTask) -> list[list[float]] | None:
    """The manifest's ``flops.budget``: per budget, ``[c, a, b]`` of ``c + a T + b T²``, the FLOPs of the heads
    confidence early exit passes (:func:`~ldrop.engine.flops.passed_head_flops`), fitted to their count at
    :data:`BUDGET_LAW_FRAMES`; a head whose cost is not of that form (measured against the fit) warns."""
    frames = torch.tensor(BUDGET_LAW_FRAMES)
    passed = passed_head_flops(task, frames)  # [frames, layers]
    if passed is None:
        return None
    t = frames.to(torch.float64)[:, None]
    coefficients = torch.linalg.lstsq(torch.cat([torch.ones_like(t), t, t * t], 1), passed).solution  # [3, layers]
    fitted = torch.cat([torch.ones_like(t), t, t * t], 1) @ coefficients
    error = float(((fitted - passed).abs() / passed.abs().clamp(min=1.0)).max())
    if error > 1e-6:
        warnings.warn(f"the exit heads' FLOPs are not c + a T + b T² in the frames T: the export's FLOPs law is off "
                      f"by up to {error:.1%} for them (gflops_per_second targets on ONNX Runtime)", UserWarning,
                      stacklevel=3)
    return coefficients.T.tolist()


def example_batch(seed: int = 0) -> tuple[Tensor, Tensor]:
    """Two padded waveforms of different lengths (the trace never sees a size of 0 or 1 on a dynamic axis)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([16000, 11000])
    waves = 0.1 * torch.randn(2, 16000, generator=generator)
    waves[1, 11000:] = 0.0
    return waves, lengths


# ---------------------------------------------------------------------------------------------- export
def export_onnx(
    checkpoint_or_model: LayerDropTask | str | os.PathLike, out_dir: str | os.PathLike,
    quantize: Literal["dynamic"] | None = None, *, check: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write a trained model as an ONNX export folder (see the module docstring); returns ``out_dir``.

    Args:
        checkpoint_or_model: a task module, a ``.ckpt`` written by ``ldrop fit`` or an ``ldrop export``
            folder.
        out_dir: the folder to write; it must not exist yet (or be empty). It appears complete or not at all.
        quantize: ``"dynamic"``: int8 dynamic quantization of the layer graphs; ``None``: fp32.
        check: compare ONNX Runtime's logits with PyTorch's on a random batch (an fp32 export more than
            :data:`PARITY_TOLERANCE` away raises :class:`OnnxExportError`).
        progress: called with one line per exported part (default: the module's logger).
    """
    if quantize not in (None, "dynamic"):
        raise OnnxExportError(f"quantize must be None or 'dynamic', got {quantize!r}")
    require_onnx_extra("an ONNX export", EXPORT_MODULES)
    out_dir = Path(out_dir)
    say = progress or log.info
    task = load_task(checkpoint_or_model)
    if not task.depth.onnx_exportable:
        raise OnnxExportError(f"{task.depth} is not exported to ONNX; export a selector, early-exit, depth "
                              "allocation or full model")
    selector = selector_description(task)
    try:
        with staged_folder(out_dir, OnnxExportError) as staging:
            _write_folder(task, staging, selector, say)
            if check:
                _check_parity(task, staging, say)
            if quantize == "dynamic":
                _quantize_layers(staging, say)
                if check:
                    _check_parity(task, staging, say)
    finally:
        # torch.export's tracer subclasses each traced module's class under the same name (an AttrProxy), kept
        # until the garbage collector runs: until then LightningCLI in this process would find two
        # 'ClassificationTask' classes and refuse the name. A failed export leaves them too.
        gc.collect()
    say(f"wrote {out_dir} ({folder_megabytes(out_dir):.1f} MB)")
    return out_dir


def quantize_export(folder: str | os.PathLike, out_dir: str | os.PathLike,
                    progress: Callable[[str], None] | None = None) -> Path:
    """An int8 copy of an fp32 export folder (dynamic quantization of its layer graphs, no new trace): another
    export, with its own ``export_id`` (a graph copied between the two folders is refused). The fp32 folder's
    device profile is not copied: its times are of the fp32 graphs."""
    require_onnx_extra("an int8 copy of an ONNX export", ("onnx", "onnxruntime"))
    source, out_dir = Path(folder), Path(out_dir)
    if read_manifest(source).get("quantize"):
        raise OnnxExportError(f"{str(source)!r} is already quantized")
    say = progress or log.info
    with staged_folder(out_dir, OnnxExportError) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        if (staging / PROFILE_FILE).is_file():
            (staging / PROFILE_FILE).unlink()
            say(f"{PROFILE_FILE} (of the fp32 graphs) not copied: measure the int8 copy with "
                f"'ldrop profile --runtime onnx {out_dir} --out {out_dir / PROFILE_FILE}'")
        _quantize_layers(staging, say)
        _restamp(staging, uuid.uuid4().hex)
    return out_dir


def _restamp(folder: Path, export_id: str) -> None:
    """Give the export in ``folder`` a new ``export_id``: in its manifest and in every graph's stamp (the runtime
    compares each graph's with the manifest's)."""
    import onnx

    for path in sorted(folder.rglob("*.onnx")):
        model = onnx.load(str(path), load_external_data=False)  # external weights stay where they are
        props = {prop.key: prop.value for prop in model.metadata_props}
        onnx.helper.set_model_props(model, {**props, GRAPH_STAMP[0]: export_id,
                                            GRAPH_STAMP[1]: path.relative_to(folder).as_posix()})
        onnx.save(model, str(path))
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["export_id"] = export_id
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def example_inputs(batch: int, frames: int, width: int, seed: int, name: str = "hidden") -> dict[str, Tensor]:
    """``{name: [batch, frames, width] random, "frame_mask": [batch, frames] with the last input shorter}``."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, frames, dtype=torch.bool)
    mask[-1, frames - 5:] = False
    return {name: torch.randn(batch, frames, width, generator=generator), "frame_mask": mask}


def _write_folder(task: LayerDropTask, folder: Path, selector: dict[str, Any], say: Callable[[str], None]) -> None:
    backbone, n, hidden_size = task.backbone, task.num_layers, task.backbone.hidden_size
    waves, lengths = example_batch()
    depth, exits = depth_description(task), list(task.depth.exit_layers)[:-1]
    # Every dynamic size differs from every other (batches 2..7 and 9, frames 31..59): the exporter gives equal
    # sizes one symbol, which would tie axes that are independent at run time (a sub-batch's frames and the
    # position bias's, one part's batch and another's).
    template = n - 1  # the layer traced for all (the layers share one structure; WavLM's last has no bias table)
    layer_inputs = example_inputs(5, 37, hidden_size, seed=1)
    with torch.no_grad():
        context = backbone.prepare_layers(torch.ones(1, 41, dtype=torch.bool))
    if context.extra:
        raise OnnxExportError(f"the {backbone.family} adapter's layer context has entries {sorted(context.extra)} "
                              "the exporter does not know how to feed to the layers")
    if context.position_bias is not None:
        layer_inputs["position_bias"] = context.position_bias
    fbank = selector.get("input") == "fbank"  # the selector's own filterbank in "features"; the model's beside it
    fixed_outputs = ["features", "frame_mask", "hidden"] + (["selector_mask"] if fbank else [])
    fixed_outputs += ["model_features"] if fbank and depth["kind"] == "allocated" else []
    parts = [
        Part("layer", EncoderLayer(task, template), layer_inputs, ["hidden_out"],
             {"position_bias": {1: DYNAMIC, 2: DYNAMIC}}),
        Part("fixed", FixedPart(task), {"waveforms": waves, "lengths": lengths}, fixed_outputs,
             {"lengths": {0: DYNAMIC}}),
        Part("head", Head(task), example_inputs(6, 31, hidden_size, 2), ["logits"]),
    ]
    if exits:
        parts.append(Part("exit_heads", Head(task, exits), example_inputs(7, 59, hidden_size, 5),
                          [f"logits_{k}" for k in exits]))
    if context.position_bias is not None:
        parts.append(Part("context", SharedContext(task), {"frame_mask": example_inputs(3, 47, 1, 3)["frame_mask"]},
                          ["position_bias"]))
    if selector["kind"] == "scores":
        inputs = {**example_inputs(4, 43, task.selector.feature_dim, 4, "features"),
                  "budget": torch.tensor([1, n, 2, n - 1]).clamp(1, n)}
        parts.append(Part("selector", SelectorScores(task), inputs, ["scores"], {"budget": {0: DYNAMIC}}))
    if depth["kind"] == "allocated":  # the depth head: features [B, T, C], frame_mask [B, T] -> losses [B, N]
        head = task.depth.depth_head
        parts.append(Part("depth_head", head, example_inputs(9, 53, head.frame[1].in_features, 6, "features"),
                          ["losses"]))
    # the graph files: a part's own (None for an optional part not exported), one per layer and per exit head
    names = {part.name for part in parts}
    graphs: dict[str, Any] = {name: f"{name}.onnx" if name in names else None
                              for name in ("fixed", "context", "selector", "head")}
    graphs["layers"] = [f"layers/layer_{i:02d}.onnx" for i in range(n)]
    if exits:  # early exit: the last exit's head is head.onnx
        graphs["exit_heads"] = {**{str(k): f"heads/exit_{k:02d}.onnx" for k in exits}, str(n): "head.onnx"}
    if "depth_head" in names:
        graphs["depth_head"] = "depth_head.onnx"
    export_id = uuid.uuid4().hex  # in the manifest and in every graph: graphs of two exports are not mixed
    say(f"tracing {', '.join(part.name for part in parts)} with torch.onnx.export(dynamo=True)")
    proto, traced = _export_parts(parts)
    opset = next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))
    for part in parts:
        if part.name == "layer":
            _write_layers(task, folder, graphs["layers"], _cut(proto, part),
                          _weight_keys(traced, backbone.layers[template]), say, export_id)
        elif part.name == "exit_heads":  # one graph per exit head, cut from the traced whole
            for k, output in zip(exits, part.outputs, strict=True):
                graph = _cut(proto, replace(part, outputs=[output]))
                graph.graph.outputs[0].name = "logits"
                _save(graph, folder, graphs["exit_heads"][str(k)], say, export_id=export_id)
        else:
            _save(_cut(proto, part), folder, graphs[part.name], say, export_id=export_id)

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "ldrop_version": __version__,
        "export_id": export_id,
        "exporter": {"torch": torch.__version__, "onnx_exporter": "torch.onnx.export(dynamo=True)"},
        "opset": opset,
        "task": task_description(task),
        "backbone": {
            "family": backbone.family, "num_layers": n, "hidden_size": hidden_size,
            "num_attention_heads": int(backbone.config.num_attention_heads),
            "conv_kernel": list(backbone.config.conv_kernel), "conv_stride": list(backbone.config.conv_stride),
            "receptive_field": backbone.receptive_field, "stable_layer_norm": backbone.stable_layer_norm,
        },
        "preprocessing": {"sample_rate": backbone.sample_rate, "do_normalize": backbone.normalize_waveforms, "padding_value": 0.0,
                          "mono": True},
        "graphs": graphs,
        "io": {part.name: {"inputs": list(part.inputs), "outputs": part.outputs} for part in parts},
        "layer_order": list(range(n)),
        "shared_context": ({"position_bias": {"graph": graphs["context"], "shape": ["heads", "frames", "frames"],
                                              "computed_from": "layer 0's relative position embedding",
                                              "fed_to": "every layer graph, sliced inside to its sub-batch's frames"}}
                           if graphs["context"] else {}),
        "selector": selector,
        "depth": depth,
        "flops": flops_law(task),
        "quantize": None,
        "profile": PROFILE_FILE,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def _weight_keys(traced: nn.Module, layer: nn.Module) -> dict[str, str]:
    """Initializer name in the trace -> the layer's state-dict key, by identity (parts share modules)."""
    own = {id(tensor): key for key, tensor in layer.state_dict(keep_vars=True).items()}
    return {name: own[id(tensor)] for name, tensor in
            (*traced.named_parameters(remove_duplicate=False), *traced.named_buffers(remove_duplicate=False))
            if id(tensor) in own}


def _write_layers(task: LayerDropTask, folder: Path, names: Sequence[str], traced: Any, keys: dict[str, str],
                  say: Callable[[str], None], export_id: str) -> None:
    """Write every layer as the traced layer graph with its own weights, optimised per layer (the trace is
    not: constant folding would bake the traced layer's weights in)."""
    import onnx_ir

    weights_in_graph = {name: keys[name] for name in traced.graph.initializers if name in keys}
    if not weights_in_graph:
        raise OnnxExportError("the traced layer graph holds none of the layer's weights")
    serialized = onnx_ir.serde.serialize_model(traced)
    for index, name in enumerate(names):
        model = onnx_ir.serde.deserialize_model(serialized)
        weights = task.backbone.layers[index].state_dict()
        for initializer, key in weights_in_graph.items():
            if key not in weights or weights[key].shape != model.graph.initializers[initializer].shape:
                raise OnnxExportError(f"layer {index} has no {key!r} of the traced layer's shape: its layers differ "
                                      "in structure, so one traced graph cannot serve them all")
            model.graph.initializers[initializer].const_value = onnx_ir.tensor(weights[key].detach().cpu().numpy())
        _save(model, folder, name, say, f" ({index + 1}/{len(names)})", export_id)


def _quantize_layers(folder: Path, say: Callable[[str], None]) -> None:
    """Dynamic int8 quantization (int8 weights, activations quantized per call) of a folder's layer graphs, in
    place; the fixed part, the selector and the head stay fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    manifest = json.loads((folder / MANIFEST).read_text())
    for index, name in enumerate(manifest["graphs"]["layers"]):
        path = folder / name
        prepared = path.with_suffix(".prepared.onnx")
        with _quiet_exporter():
            # ONNX Runtime's recommended preparation (its graph optimisations, ONNX shape inference); its symbolic
            # shape inference cannot follow the position bias sliced to the sub-batch's frames, so it is skipped
            quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
            quantize_dynamic(str(prepared), str(path), weight_type=QuantType.QInt8)
        prepared.unlink()
        say(f"  quantized {name} to int8 ({index + 1}/{len(manifest['graphs']['layers'])})")
    manifest["quantize"] = "dynamic"
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def _check_parity(task: LayerDropTask, folder: Path, say: Callable[[str], None]) -> float:
    """ONNX Runtime vs PyTorch logits on a random batch at full depth and with per-input masks."""
    runtime = OnnxAdaptiveModel(folder)
    waves, lengths = example_batch(seed=1)
    n = task.num_layers
    generator = torch.Generator().manual_seed(1)
    keeps: list[tuple[Tensor, int | None]] = [(torch.ones(2, n), None)]
    for _ in range(2):  # per-input masks (the selector's prefix kept, as any mask the runtime gets)
        keep = (torch.rand(2, n, generator=generator) < 0.5).float()
        keep[:, : task.prefix_layers] = 1.0
        keep[torch.arange(2), torch.randint(n, (2,), generator=generator)] = 1.0
        keeps.append((keep, None))
    keeps += [((torch.arange(n) < k).float().expand(2, n), k) for k in task.depth.exit_layers[:-1]]  # exit heads
    worst = 0.0
    with torch.inference_mode():
        encoded = task.encode(waves, lengths)
        for keep, exit_layer in keeps:
            expected = task.compute_logits(task.depth.head_for(exit_layer), task.run_layers(encoded, keep)[0],
                                           encoded.frame_mask).numpy()
            got = runtime.run_with_mask(waves.numpy(), lengths.numpy(), keep.numpy(), exit_layer)
            worst = max(worst, float(np.abs(got - expected).max()))
        if runtime.depth["kind"] == "allocated":  # the depth head's predicted losses
            expected = task.depth.depth_head(encoded.features, encoded.frame_mask).numpy()
            got = runtime.depth_losses(runtime.encode(waves.numpy(), lengths.numpy()))
            worst = max(worst, float(np.abs(got - expected).max()))
    quantized = runtime.manifest["quantize"]
    if not quantized and not worst <= PARITY_TOLERANCE:
        raise OnnxExportError(f"the ONNX graphs' logits differ from PyTorch's by {worst:.3g} (more than "
                              f"{PARITY_TOLERANCE:g}): not writing the export")
    say(f"checked: ONNX Runtime logits within {worst:.2g} of PyTorch's"
        + (" (int8 layers)" if quantized else ""))
    return worst


def folder_megabytes(folder: str | os.PathLike) -> float:
    """Size of a folder's files in MB (10^6 bytes)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6
