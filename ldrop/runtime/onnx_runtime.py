"""``OnnxAdaptiveModel``: an exported ldrop model on ONNX Runtime, each input running only its kept layers.

    >>> model = OnnxAdaptiveModel("model-onnx/")  # written by: ldrop export CKPT model-onnx --format onnx  # doctest: +SKIP
    >>> out = model(waveform, target={"ms": 80})  # doctest: +SKIP

The call is :class:`~ldrop.runtime.AdaptiveModel`'s; an
:class:`~ldrop.runtime.onnx_budgets.OnnxBudgetController` turns a target into a budget per input. Layers are
skipped by not running their graph (one per part, see :mod:`ldrop.runtime.onnx_export`): layer ``i`` runs on
the sub-batch that keeps it, trimmed to its longest input, as the PyTorch engine's sparse path does. Top-k,
threshold and fallback decisions are made here in numpy (ONNX's ``TopK`` takes one ``k`` per batch). Imports
numpy, onnxruntime and soundfile only: no torch, Lightning or transformers.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import numpy as np

from ldrop._waveforms import as_batch, read_audio_file  # noqa: F401 - read_audio_file: this module's name too
from ldrop.budgets.cost import DeviceProfile
from ldrop.budgets.loop import ClosedLoopModel
from ldrop.budgets.targets import Target
from ldrop.runtime.onnx_budgets import FlopsLaw, OnnxBudgetController, resolve_budget

log = logging.getLogger(__name__)

#: What an export folder's ``manifest.json`` says it is, and the layout version this runtime reads.
FORMAT = "ldrop-onnx"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: The ONNX opsets (default domain) this runtime runs: the exporter's and the neighbouring ones.
SUPPORTED_OPSETS = range(17, 24)
#: The device profile an export folder may hold (``ldrop profile --runtime onnx DIR --out DIR/profile.json``),
#: used when no profile is given.
PROFILE_FILE = "profile.json"

#: The metadata keys that stamp each graph with its export's ``export_id`` (the manifest's) and its own file name.
GRAPH_STAMP = ("ldrop_export_id", "ldrop_graph")

#: Input and output names of each graph (the exporter writes them, the runtime feeds them).
GRAPH_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "fixed": (("waveforms", "lengths"), ("features", "frame_mask", "hidden")),
    "context": (("frame_mask",), ("position_bias",)),
    "selector": (("features", "frame_mask", "budget"), ("scores",)),
    "layer": (("hidden", "frame_mask"), ("hidden_out",)), "head": (("hidden", "frame_mask"), ("logits",)),
    "depth_head": (("features", "frame_mask"), ("losses",)),
}


class OnnxFolderError(ValueError):
    """An export folder that this runtime cannot run (missing file, other format version, wrong opset)."""


class MissingExtraError(ModuleNotFoundError):
    """A package of the ``onnx`` extra is not installed: the message names it and the command that installs it."""


def require_onnx_extra(what: str, modules: Sequence[str] = ("onnxruntime",)) -> None:
    """Raise :class:`MissingExtraError` naming ``what`` if any of ``modules`` is not installed (checked without
    importing them; a bare folder of that name, a namespace package, is not the package)."""
    import importlib.util

    def installed(name: str) -> bool:
        try:
            spec = importlib.util.find_spec(name)
        except ValueError:  # in sys.modules without a spec
            return True
        return spec is not None and spec.origin not in (None, "namespace")

    missing = [name for name in modules if not installed(name)]
    if missing:
        raise MissingExtraError(f"{what} needs the onnx extra, which is not installed (no {', '.join(missing)}): "
                                "pip install 'ldrop[onnx]'", name=missing[0])


Array = TypeVar("Array")


@dataclass
class RunOutput(Generic[Array]):
    """One call of a runtime model: decoded ``outputs``, float32 ``logits``, masks, budgets and times, as tensors
    (:class:`~ldrop.runtime.AdaptiveOutput`) or numpy arrays (:class:`OnnxOutput`).

    ``predicted_ms`` is ``None`` without a profile; ``target`` is ``None`` for a plain budget.
    """

    outputs: list[Any]
    logits: Array
    frame_mask: Array
    keep_mask: Array
    layers_run: Array
    budget: Array
    predicted_ms: float | None
    measured_ms: float
    correction: float
    target: Target | None


class OnnxOutput(RunOutput[np.ndarray]):
    """One call of :class:`OnnxAdaptiveModel`, in numpy."""


# ---------------------------------------------------------------------------------------------- the folder
def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The checked manifest of an export folder; :class:`OnnxFolderError` for one this runtime cannot run."""
    folder = Path(folder)
    rerun = "(re-export it with 'ldrop export CHECKPOINT DIR --format onnx')"
    if not folder.is_dir():
        raise OnnxFolderError(f"no ONNX export folder at {str(folder)!r} {rerun}")
    path = folder / MANIFEST
    if not path.is_file():
        raise OnnxFolderError(f"{str(folder)!r} has no {MANIFEST}: it is not an ldrop ONNX export {rerun}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise OnnxFolderError(f"{str(path)!r} is not valid JSON ({error}) {rerun}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise OnnxFolderError(f"{str(path)!r} is not an ldrop ONNX manifest (format is not {FORMAT!r}) {rerun}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise OnnxFolderError(
            f"{str(path)!r} has format version {version} (written by ldrop {manifest.get('ldrop_version')}); this "
            f"ldrop reads version {FORMAT_VERSION} {rerun}"
        )
    opset = manifest.get("opset")
    if opset not in SUPPORTED_OPSETS:
        raise OnnxFolderError(
            f"{str(path)!r}: ONNX opset {opset} is not one this runtime runs ({SUPPORTED_OPSETS.start}.."
            f"{SUPPORTED_OPSETS.stop - 1}) {rerun}"
        )
    for keys in ("task", "selector", "backbone", "preprocessing", "graphs", "backbone.num_layers",
                 "backbone.receptive_field", "preprocessing.sample_rate"):
        value: Any = manifest
        for key in keys.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        count = "." in keys  # the others are objects
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1 if count else isinstance(value, dict)):
            raise OnnxFolderError(f"{str(path)!r}: {keys!r} must be {'an integer >= 1' if count else 'an object'}, "
                                  f"got {value!r} {rerun}")
    graphs = manifest["graphs"]
    listed = [graphs.get("fixed"), graphs.get("head"), *graphs.get("layers", [])]
    listed += [graphs[name] for name in ("context", "selector", "depth_head") if graphs.get(name)]
    listed += graphs.get("exit_heads", {}).values()
    if None in listed[:2] or len(graphs.get("layers", [])) != manifest.get("backbone", {}).get("num_layers"):
        raise OnnxFolderError(f"{str(path)!r} does not list a fixed part, a head and one graph per layer {rerun}")
    missing = [name for name in listed if not (folder / name).is_file()]
    if missing:
        raise OnnxFolderError(
            f"{str(folder)!r} is incomplete: {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} listed in "
            f"{MANIFEST} {'is' if len(missing) == 1 else 'are'} missing {rerun}"
        )
    return manifest


# ---------------------------------------------------------------------------------------------- selection
def topk_mask(scores: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``[batch, layers]`` bool: the ``k[b]`` best-scoring layers of each row, ties to the lower index."""
    order = np.argsort(-scores, axis=-1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(scores.shape[-1]), order.shape), axis=-1)
    return ranks < np.asarray(k)[:, None]


def threshold_mask(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The layers whose score is ``>= threshold`` and at least the best one (as ``topk.threshold_mask``)."""
    passing = scores >= thresholds[:, None]
    best = topk_mask(scores, np.ones(scores.shape[0], dtype=np.int64))
    return np.where(passing.any(-1, keepdims=True), passing, best)


def allocate_depths(losses: np.ndarray, budget: np.ndarray, depth: dict[str, Any], num_layers: int) -> np.ndarray:
    """``[batch]`` layers per input under depth allocation, from the depth head's ``[batch, N]`` predicted losses
    (as :mod:`ldrop.budgets.allocation`): mode ``batch`` gives the budgets' sum of layers to the largest gains
    of one more layer, ``stream`` takes each input's gains at or above its budget's calibrated threshold."""
    least = depth["min_layers"]
    eligible = np.minimum.accumulate((losses[:, :-1] - losses[:, 1:])[:, least - 1:], axis=1)
    inputs, slots = eligible.shape
    if depth["mode"] == "batch":
        extra = int(budget.sum()) - least * inputs
        if extra < 0:
            raise ValueError(f"the budgets sum to {int(budget.sum())} layers, below min_layers={least} per input")
        taken = np.argsort(-eligible.ravel(), kind="stable")[:min(extra, inputs * slots)]
        return least + np.bincount(taken // slots, minlength=inputs).astype(np.int64)
    thresholds = np.array(depth["thresholds"], dtype=np.float64)[budget - 1]  # None: nan
    if bool(np.isnan(thresholds).any()):
        raise RuntimeError(f"allocation (mode: stream) has no gain threshold for budgets "
                           f"{sorted(set(budget[np.isnan(thresholds)].tolist()))}: calibrate it before exporting")
    return np.minimum(least + (eligible >= thresholds[:, None]).sum(1), num_layers).astype(np.int64)


def ctc_greedy(logits: np.ndarray, frame_mask: np.ndarray, vocabulary: Sequence[str]) -> list[str]:
    """Greedy CTC decoding (best class per real frame, repeats collapsed, blank 0 dropped), as ``CTCTask``."""
    best = np.where(frame_mask, logits.argmax(-1), 0)
    texts = []
    for row in best:
        collapsed = row[np.concatenate([[True], row[1:] != row[:-1]])]
        chars = [vocabulary[int(i) - 1] for i in collapsed if int(i) != 0]
        texts.append(" ".join("".join(chars).split()))
    return texts


# ---------------------------------------------------------------------------------------------- the model
class OnnxAdaptiveModel(ClosedLoopModel):
    """An ldrop ONNX export whose depth follows a budget or a target, on ONNX Runtime.

    Args:
        folder: an export folder (``ldrop export CKPT DIR --format onnx``); see :meth:`from_pretrained`.
        profile: a :class:`DeviceProfile` or its JSON path; ``None``: the folder's ``profile.json``, else one is
            measured at the first time target (needs torch); ``False``: none, not even the folder's.
        closed_loop, margin, on_unmeetable, **controller_options: as :class:`~ldrop.runtime.AdaptiveModel`.
        threads: ONNX Runtime intra-op threads (``None``: its default).
        providers: ONNX Runtime execution providers (default ``["CPUExecutionProvider"]``).
        spinning: let idle threads spin; off by default, as each part's session has its own threads and
            spinning ones slow the next part (1.7x on 2 cores).
        guard: as :class:`~ldrop.runtime.AdaptiveModel`'s.
        sample_rate: of the waveforms given; ``ValueError`` unless it is the export's (it does not resample).
    """

    def __init__(
        self, folder: str | os.PathLike, profile: DeviceProfile | str | os.PathLike | Literal[False] | None = None,
        closed_loop: bool = True, margin: float = 0.1, on_unmeetable: Literal["min", "raise"] = "min",
        threads: int | None = None, providers: Sequence[str] | None = None, spinning: bool = False,
        guard: bool = True, sample_rate: int | None = None, **controller_options: Any,
    ) -> None:
        require_onnx_extra("running an ONNX export (OnnxAdaptiveModel)")
        import onnxruntime

        self.folder = Path(folder)
        self.manifest = manifest = read_manifest(folder)
        backbone = manifest["backbone"]
        self.num_layers = int(backbone["num_layers"])
        self.receptive_field = int(backbone["receptive_field"])
        self.sample_rate = int(manifest["preprocessing"]["sample_rate"])
        if sample_rate is not None and sample_rate != self.sample_rate:
            raise ValueError(f"sample_rate={sample_rate}, but the export reads {self.sample_rate} Hz audio and "
                             f"OnnxAdaptiveModel does not resample: resample the waveforms to {self.sample_rate} Hz")
        selector = manifest["selector"]
        self.prefix_layers = int(selector.get("prefix_layers", 0))
        self._selector = selector
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        # no memory plan kept per input shape: each new length added one, and a service's memory grew for good
        options.enable_mem_pattern = False
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = list(providers or ["CPUExecutionProvider"])
        graphs = manifest["graphs"]
        load = functools.partial(self._session, onnxruntime, options=options, providers=providers)
        self._fixed = load(graphs["fixed"], "fixed")
        self._context, self._scorer, self._depth_head = (load(graphs[name], name) if graphs.get(name) else None
                                                         for name in ("context", "selector", "depth_head"))
        self._layers = [load(name, "layer") for name in graphs["layers"]]
        self._head = load(graphs["head"], "head")
        #: ``selected`` (the selector's layers, one head), ``early_exit`` (a head per exit layer) or ``allocated``
        #: (a depth head says how many layers each input runs, the selector which).
        self.depth = manifest.get("depth") or {"kind": "selected"}  # folders before early exit have none
        self._exit_heads = {int(k): self._head if name == graphs["head"] else load(name, "head")
                            for k, name in graphs.get("exit_heads", {}).items()}
        if ("position_bias" in {i.name for i in self._layers[0].get_inputs()}) != (self._context is not None):
            raise OnnxFolderError(f"{str(self.folder)!r}: the layer graphs and the context graph do not go together")
        self._table = np.asarray(selector["table"], dtype=bool) if selector["kind"] == "table" else None
        if selector["kind"] == "scores":
            self._uses_input = np.asarray(selector["uses_input"], dtype=bool)
            self._blind_masks = np.asarray(selector["blind_masks"], dtype=bool)
            self._thresholds = np.array(selector["thresholds"], dtype=np.float64)  # None: nan
        if profile is None and (self.folder / PROFILE_FILE).is_file():
            profile = self.folder / PROFILE_FILE
        self.controller = self._controller(profile or None, closed_loop, margin, on_unmeetable, **controller_options)
        self.guard = guard
        #: Whether a budget below full depth runs fewer layers (an export without a selector or exits does not).
        self.skips_layers = selector["kind"] != "full" or self.depth["kind"] != "selected"
        self.clock = time.perf_counter  # the timer of calls and of the guard
        self._temporary: Any = None  # keeps a folder exported by from_pretrained alive

    def _controller(self, profile: Any, closed_loop: bool, margin: float, on_unmeetable: str,
                    **options: Any) -> OnnxBudgetController:
        if profile is not None and not isinstance(profile, DeviceProfile):
            profile = DeviceProfile.load(profile)
        flops = self.manifest.get("flops")
        controller = OnnxBudgetController(
            self.num_layers, profile, flops=FlopsLaw(**flops) if flops else None, closed_loop=closed_loop,
            margin=margin, on_unmeetable=on_unmeetable, sample_rate=self.sample_rate,
            min_budget=max(1, self.prefix_layers, int(options.pop("min_budget", 1))), **options,
        )
        if profile is not None and (warning := controller.profile_warning(profile) or self._graphs_warning(profile)):
            warnings.warn(warning, stacklevel=3)
        return controller

    def _graphs_warning(self, profile: DeviceProfile) -> str | None:
        """Why an ONNX profile's times are not of these graphs (fp32 and int8 layers), or ``None``."""
        measured, here = profile.model.get("quantize", "?"), self.manifest.get("quantize")
        if measured == "?" or measured == here:  # profiles without the entry are not judged
            return None
        kind = {None: "fp32", "dynamic": "int8 (dynamic)"}
        return (f"this device profile was measured on {kind.get(measured, measured)} layer graphs, this folder's are "
                f"{kind.get(here, here)}: its times are another model's, only the closed loop will correct them "
                f"(measure one: 'ldrop profile --runtime onnx {self.folder}')")

    def with_controller(self, profile: DeviceProfile | str | os.PathLike | None = None, closed_loop: bool = True,
                        margin: float = 0.1, on_unmeetable: Literal["min", "raise"] = "min",
                        **controller_options: Any) -> OnnxAdaptiveModel:
        """This model (the same loaded graphs) with a controller of its own: several policies on one model."""
        view = copy.copy(self)
        view.controller = self._controller(profile, closed_loop, margin, on_unmeetable, **controller_options)
        return view

    def _session(self, onnxruntime: Any, name: str, kind: str, options: Any, providers: list[str]) -> Any:
        path = self.folder / name
        try:
            session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
            reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
            raise OnnxFolderError(f"cannot load {str(path)!r} with onnxruntime: {reason}") from None
        stamp = session.get_modelmeta().custom_metadata_map
        export_id = self.manifest.get("export_id")  # folders written before the stamp have none
        if export_id and (stamp.get(GRAPH_STAMP[0]), stamp.get(GRAPH_STAMP[1])) != (export_id, name):
            where = "another export" if stamp.get(GRAPH_STAMP[0]) != export_id else f"this export's {stamp.get(GRAPH_STAMP[1])}"
            raise OnnxFolderError(f"{str(path)!r} is {where}, not the {name} that {MANIFEST} lists: the folder's graphs "
                                  "were mixed (re-export it with 'ldrop export CHECKPOINT DIR --format onnx')")
        inputs, outputs = GRAPH_IO[kind]
        names = {i.name for i in session.get_inputs()}
        if not set(inputs) <= names or not set(outputs) <= {o.name for o in session.get_outputs()}:
            raise OnnxFolderError(f"{str(path)!r} does not take/give {inputs} -> {outputs}: not an ldrop {kind} graph")
        return session

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, profile: DeviceProfile | str | Literal[False] | None = None,
                        quantize: Literal["dynamic"] | None = None, **kwargs: Any) -> OnnxAdaptiveModel:
        """From an ONNX export folder, or a ``.ckpt`` / ``ldrop export`` folder exported now (to a temporary
        folder)."""
        path = Path(path)
        if (path / MANIFEST).is_file() or path.is_dir() and not (path / "config.json").is_file():
            return cls(path, profile=profile, **kwargs)  # an ONNX export, or read_manifest says what the folder lacks
        import tempfile

        from ldrop.runtime.onnx_export import export_onnx  # needs torch

        temporary = tempfile.TemporaryDirectory(prefix="ldrop-onnx-")
        folder = export_onnx(path, Path(temporary.name) / "model", quantize=quantize)
        model = cls(folder, profile=profile, **kwargs)
        model._temporary = temporary
        return model

    # ------------------------------------------------------------------ facts
    @property
    def labels(self) -> list[str] | None:
        """Class names (classification) or characters (CTC) in output order, ``None`` when unnamed."""
        return self.manifest["task"].get("labels")

    # ------------------------------------------------------------------ the forward, in parts
    def encode(self, waveforms: np.ndarray, lengths: np.ndarray, run_prefix: bool = True) -> dict[str, np.ndarray]:
        """The budget-independent part, as ``LayerDropTask.encode``: ``{"features", "frame_mask", "hidden"}``,
        with ``"position_bias"`` (WavLM), a selector's ``"prefix"`` layers' output, and a filterbank selector's
        frames (``"selector_mask"``; its ``"features"`` are the filterbank, the model's are ``"model_features"``
        when a depth head reads them)."""
        if int(lengths.min()) < self.receptive_field:
            raise ValueError(
                f"waveforms must have at least {self.receptive_field} samples (the CNN receptive field); got a "
                f"length of {int(lengths.min())}: zero-pad short clips to that many samples and give the padded "
                "length as theirs (ldrop predict does this itself)"
            )
        names = [output.name for output in self._fixed.get_outputs()]  # a filterbank selector's and allocation's too
        encoded = dict(zip(names, self._fixed.run(names, {"waveforms": waveforms, "lengths": lengths}), strict=True))
        frame_mask, hidden = encoded["frame_mask"], encoded["hidden"]
        if self._context is not None:
            encoded["position_bias"] = self._context.run(None, {"frame_mask": frame_mask})[0]
        if run_prefix and self.prefix_layers:
            prefix = hidden
            for index in range(self.prefix_layers):
                prefix = self._run_layer(index, prefix, frame_mask, encoded)
            encoded["prefix"] = encoded["features"] = prefix
        return encoded

    def _run_layer(self, index: int, hidden: np.ndarray, frame_mask: np.ndarray, encoded: dict[str, np.ndarray]
                   ) -> np.ndarray:
        feeds = {"hidden": hidden, "frame_mask": frame_mask}
        if self._context is not None:
            feeds["position_bias"] = encoded["position_bias"]
        return self._layers[index].run(None, feeds)[0]

    def select(self, encoded: dict[str, np.ndarray], budget: np.ndarray) -> np.ndarray:
        """``[batch, layers]`` bool: the layers each input runs at its ``budget`` (the selector's choice)."""
        kind, batch, n, j = self._selector["kind"], len(budget), self.num_layers, self.prefix_layers
        if kind == "full":
            return np.ones((batch, n), dtype=bool)
        if kind == "table":
            keep = self._table[budget - 1]
            if not bool(keep.any(-1).all()):
                raise RuntimeError(f"the selector has no layers for budgets {sorted(set(budget[~keep.any(-1)].tolist()))}")
            return keep
        mask = encoded.get("selector_mask", encoded["frame_mask"])  # a filterbank selector's own frames
        scores = self._scorer.run(None, {"features": encoded["features"], "frame_mask": mask, "budget": budget})[0]
        rest = scores[:, j:]
        if self._selector["mode"] == "threshold":
            thresholds = np.where(budget == n, -np.inf, self._thresholds[budget - 1])
            if bool(np.isnan(thresholds).any()):
                raise RuntimeError(f"threshold mode: budgets {sorted(set(budget[np.isnan(thresholds)].tolist()))} are "
                                   "not calibrated (fit the selector on validation data before exporting)")
            keep = threshold_mask(rest, thresholds)
        else:
            keep = topk_mask(rest, np.clip(budget - j, 0, None))
        keep = np.concatenate([np.ones((batch, j), dtype=bool), keep], axis=1)
        if self._selector["mode"] == "topk":  # the validation fallback's input-blind mask where it was chosen
            rows = budget - 1
            keep = np.where(self._uses_input[rows][:, None], keep, self._blind_masks[rows])
        return keep

    def depth_losses(self, encoded: dict[str, np.ndarray]) -> np.ndarray:
        """``[batch, N]`` depth allocation's predicted loss of each input after ``1..N`` layers (its depth head
        reads what the selector reads: the CNN features, or the prefix layers' output)."""
        features = encoded["prefix"] if "prefix" in encoded else encoded.get("model_features", encoded["features"])
        return self._depth_head.run(None, {"features": features, "frame_mask": encoded["frame_mask"]})[0]

    def run_layers(self, encoded: dict[str, np.ndarray], keep: np.ndarray, guard: Any = None) -> np.ndarray:
        """Run each layer on the inputs that keep it (padding trimmed per sub-batch); a layer ``guard(index,
        inputs, frames)`` refuses is skipped (:class:`~ldrop.budgets.DeadlineGuard`)."""
        frame_mask = encoded["frame_mask"]
        j = self.prefix_layers
        start = j if "prefix" in encoded and bool(keep[:, :j].all()) else 0
        hidden = encoded["prefix"] if start else encoded["hidden"]
        owned = False  # whether ``hidden`` is this call's own array (written in place) or the encoded one
        batch, frames = frame_mask.shape
        lengths = frame_mask.sum(1)
        for index in range(start, self.num_layers):
            rows = np.flatnonzero(keep[:, index])
            if rows.size == 0:
                continue
            sub_frames = int(lengths[rows].max())
            if guard is not None and not guard(index, rows.size, sub_frames):
                continue
            if rows.size == batch and sub_frames == frames:
                hidden, owned = self._run_layer(index, hidden, frame_mask, encoded), True
                continue
            sub_hidden = np.ascontiguousarray(hidden[rows, :sub_frames])
            sub_mask = np.ascontiguousarray(frame_mask[rows, :sub_frames])
            out = self._run_layer(index, sub_hidden, sub_mask, encoded)
            if not owned:
                hidden, owned = hidden.copy(), True
            hidden[rows, :sub_frames] = out
        return hidden

    def head(self, hidden: np.ndarray, frame_mask: np.ndarray, exit_layer: int | None = None) -> np.ndarray:
        """Final norm (pre-norm models), padding zeroed, task head (early exit: ``exit_layer``'s): the logits."""
        head = self._head if exit_layer is None else self._exit_heads[int(exit_layer)]
        return head.run(None, {"hidden": hidden, "frame_mask": frame_mask})[0]

    def forward(self, waveforms: np.ndarray, lengths: np.ndarray, budget: np.ndarray,
                encoded: dict[str, np.ndarray] | None = None, guard: Any = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(logits, keep [batch, layers] bool, frame_mask)`` of a batch at ``budget [batch]`` layers
        (``encoded``: :meth:`encode`'s output when it has run already; ``guard``: see :meth:`run_layers`,
        not for early exit; ``keep`` leaves out the layers it skipped)."""
        budget = resolve_budget(np.asarray(budget), self.num_layers, len(lengths))
        encoded = self.encode(waveforms, lengths) if encoded is None else encoded
        if self.depth["kind"] == "early_exit":
            return (*self.early_exit(encoded, budget), encoded["frame_mask"])
        if self.depth["kind"] == "allocated":  # how many layers each input runs; the selector says which
            keep = self.select(encoded, allocate_depths(self.depth_losses(encoded), budget, self.depth, self.num_layers))
        else:
            keep = self.select(encoded, budget)
        hidden = self.run_layers(encoded, keep, guard)
        if guard is not None and guard.skipped:
            keep = keep.copy()
            keep[:, guard.skipped] = False
        return self.head(hidden, encoded["frame_mask"]), keep, encoded["frame_mask"]

    def early_exit(self, encoded: dict[str, np.ndarray], budget: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(logits, keep)`` of early exit at ``budget [batch]``, as ``EarlyExit.logits`` at eval: policy ``budget``
        (or full depth) runs each input to the deepest exit within its budget; ``confidence`` stops each input at
        the first exit whose confidence passes its budget's threshold, later layers running on the inputs still
        active."""
        exits, n, frame_mask = self.depth["exit_layers"], self.num_layers, encoded["frame_mask"]
        if self.depth["policy"] == "budget" or bool((budget >= n).all()):
            exit_at = np.array([max([k for k in exits if k <= b], default=exits[0]) for b in budget.tolist()])
            keep = np.arange(n) < exit_at[:, None]
            hidden, logits = self.run_layers(encoded, keep), None
            for exit_layer in np.unique(exit_at).tolist():
                rows = np.flatnonzero(exit_at == exit_layer)
                out = self.head(hidden[rows], frame_mask[rows], exit_layer)
                logits = np.zeros((len(keep), *out.shape[1:]), dtype=out.dtype) if logits is None else logits
                logits[rows] = out
            return logits, keep
        missing = sorted({b for b in budget.tolist() if b < n and self.depth["thresholds"][b - 1] is None})
        if missing:
            raise RuntimeError(f"no confidence threshold calibrated for budget {missing[0]}: calibrate the early exit "
                               "on validation data before exporting")
        thresholds = np.array([self.depth["thresholds"][b - 1] if b < n else np.inf for b in budget.tolist()])
        state, active, start, logits = dict(encoded), np.ones(len(frame_mask), dtype=bool), 0, None
        keep = np.zeros((len(frame_mask), n), dtype=bool)
        for exit_layer in exits:
            rows = np.flatnonzero(active)
            keep[rows, start:exit_layer] = True  # the inputs still active run the layers up to this exit
            state["hidden"] = self.run_layers(state, keep & (np.arange(n) >= start))
            start, rows = exit_layer, rows if exit_layer == n else rows[thresholds[rows] < np.inf]
            if not len(rows):  # only inputs at full budget, which read the last head alone
                continue
            out = self.head(state["hidden"][rows], frame_mask[rows], exit_layer)
            logits = np.zeros((len(keep), *out.shape[1:]), dtype=out.dtype) if logits is None else logits
            done = self.confidence(out, frame_mask[rows]) >= thresholds[rows] if exit_layer < n else np.ones(len(rows), bool)
            logits[rows[done]] = out[done]
            active[rows[done]] = False
            if not active.any():
                break
        return logits, keep

    def confidence(self, logits: np.ndarray, frame_mask: np.ndarray) -> np.ndarray:
        """``[batch]`` early-exit confidence (mean max posterior or negative entropy over real frames)."""
        log_probs = logits.astype(np.float32) - logits.max(-1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
        probs = np.exp(log_probs)
        per_position = probs.max(-1) if self.depth["confidence"] == "max_prob" else (probs * log_probs).sum(-1)
        if per_position.ndim == 1:
            return per_position
        weights = frame_mask.astype(per_position.dtype)
        return (per_position * weights).sum(1) / np.maximum(weights.sum(1), 1)

    def run_with_mask(self, waveforms: np.ndarray, lengths: np.ndarray, keep: np.ndarray,
                      exit_layer: int | None = None) -> np.ndarray:
        """The logits when every input runs the layers of ``keep [batch, layers]`` (no selector; benchmarks),
        read by the last head or (early exit) ``exit_layer``'s."""
        keep = np.asarray(keep) > 0.5
        if keep.shape != (len(lengths), self.num_layers):
            raise ValueError(f"keep must be [batch, layers] = [{len(lengths)}, {self.num_layers}], got {list(keep.shape)}")
        encoded = self.encode(waveforms, lengths)
        return self.head(self.run_layers(encoded, keep), encoded["frame_mask"], exit_layer)

    def decode(self, logits: np.ndarray, frame_mask: np.ndarray) -> list[Any]:
        """Per input: the label (classification), the transcript (CTC), or its logits (other tasks)."""
        task = self.manifest["task"]
        if task["kind"] == "classification":
            ids = logits.argmax(-1).tolist()
            return ids if task.get("labels") is None else [task["labels"][i] for i in ids]
        if task["kind"] == "ctc":
            return ctc_greedy(logits, frame_mask, task["labels"])
        return list(logits)

    # ------------------------------------------------------------------ budgets and the closed loop
    _resolve_budget = staticmethod(resolve_budget)

    def _measure_profile(self, **grid: Any) -> DeviceProfile:
        """A profile measured now on this runtime with a quick grid (:meth:`ensure_profile`; needs torch)."""
        try:
            from ldrop.budgets.controller import QUICK_GRID
            from ldrop.runtime.onnx_profile import profile_onnx
        except ImportError as error:
            raise ValueError(
                "a time target needs a device profile of this model on ONNX Runtime: run 'ldrop profile --runtime "
                f"onnx {self.folder} --out {self.folder / PROFILE_FILE}' (measuring one here needs torch: {error})"
            ) from None
        return profile_onnx(self, **{**QUICK_GRID, **grid})

    def __call__(self, waveforms: Any, target: Any = None, lengths: Any = None) -> OnnxOutput:
        """Run one utterance, a padded batch (with ``lengths``) or a list of clips or paths under ``target``.

        ``target`` is ``{"ms": 80}``, ``{"rtf": 0.1}``, ``{"gflops_per_second": 2.0}`` (or ``"rtf=0.1"``) or a
        plain budget; ``None`` runs every layer (see :meth:`ldrop.runtime.AdaptiveModel.__call__`).
        """
        waves, lengths = as_batch(waveforms, lengths, self.sample_rate)
        parsed, profile = self._parse_target(target)
        correction, guard = self.controller.correction, None
        start = self.clock()
        if parsed is not None and parsed.kind in ("ms", "rtf"):  # decided after the fixed part, from its time
            encoded = self.encode(waves, lengths)
            budget, correction, guard = self._plan(lengths, parsed, profile, start, self.clock, self.prefix_layers,
                                                   self.depth["kind"] != "early_exit")
        else:
            encoded, budget = None, self.budget_for(lengths, target)[0]
        logits, keep, frame_mask = self.forward(waves, lengths, budget, encoded, guard)
        measured = self.clock() - start
        outputs = self.decode(logits, frame_mask)
        predicted_ms = self._feedback(lengths, keep, measured, correction, profile)
        keep_mask = keep.astype(np.float32)
        return OnnxOutput(outputs, logits, frame_mask, keep_mask, keep.sum(1).astype(np.int64), budget, predicted_ms,
                          1000.0 * measured, self.controller.correction, parsed)
