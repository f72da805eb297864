"""Checkpoints and exports of a task: initialising from an earlier run, refusing NaN weights, recording the
input normalisation the weights were trained with, and ``ldrop export``'s folder."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pickle
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ldrop._io import (
    CheckpointError,
    atomic_torch_save,
    check_archive,
    load_checkpoint_file,
    pickled_class_error,
    staged_folder,
)
from ldrop.selectors import selector_spec
from ldrop.tasks.allocation import AllocationConfig
from ldrop.tasks.config import BudgetSampling, DistillationConfig, OptimizerConfig, as_config, as_dict
from ldrop.tasks.early_exit import EarlyExitConfig
from ldrop.tasks.uncalibrated import warn_when_used_uncalibrated

log = logging.getLogger(__name__)

#: Checkpoint key recording whether the weights were trained on normalised waveforms.
NORMALIZE_KEY = "ldrop_normalize_waveforms"

#: Checkpoint key holding the backbone's ``config.json`` and ``preprocessor_config.json`` (text): the checkpoint
#: loads where the folder or hub id it was trained from is not.
BACKBONE_FILES_KEY = "ldrop_backbone_files"

#: File written beside an exported backbone: the task head(s) and the selector state.
EXPORT_STATE_FILE = "ldrop_task_state.pt"


def load_weights_from(task: nn.Module, checkpoint_path: str) -> None:
    """Initialise ``task``'s matching weights from an earlier run's Lightning checkpoint (or exported state)."""
    path = Path(checkpoint_path)
    state = load_checkpoint_file(path, what="init_from checkpoint")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"init_from {checkpoint_path!r} holds no weights (a {type(state).__name__})")
    state = state.get("state_dict", state)
    own = task.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    task.load_state_dict(usable, strict=False)
    log.info("init_from %s: loaded %d tensors, kept %d fresh, ignored %d", path, len(usable), len(own) - len(usable),
             len(state) - len(usable))
    if not any(k.startswith("backbone.") for k in usable):
        raise ValueError(f"init_from {checkpoint_path!r} holds no backbone weights matching this model")


def check_finite_weights(task: nn.Module) -> None:
    """A FloatingPointError naming NaN/inf parameters (a diverged run) instead of saving them; buffers are not
    checked (uncalibrated thresholds are NaN by design)."""
    bad = [name for name, p in task.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
    if bad:
        raise FloatingPointError(
            f"refusing to save non-finite weights ({len(bad)} tensors, e.g. {bad[:4]}): training diverged; "
            "lower the learning rate or use precision 'bf16-mixed'/'32', and resume from an earlier checkpoint"
        )


def _class_path(task: nn.Module) -> str:
    return f"{type(task).__module__}.{type(task).__qualname__}"


def export_pretrained(task: Any, directory: str | Path) -> Path:
    """The backbone as a ``save_pretrained`` folder (with ``preprocessor_config.json``), the rest of the task's
    state, its hyper-parameters and class in ``ldrop_task_state.pt`` beside it (a new or empty folder)."""
    directory = Path(directory)
    check_finite_weights(task)
    state = {"state_dict": dict(task.state_dict()), "hparams": dict(task.hparams), "task_class": _class_path(task)}
    with staged_folder(directory) as staging:  # complete or absent; never into a file or a non-empty folder
        task.backbone.save_pretrained(staging)
        atomic_torch_save(state, staging / EXPORT_STATE_FILE)
    return directory


#: The argument groups a task stores as dicts (``load_from_checkpoint`` rebuilds the dataclasses from them).
_CONFIG_GROUPS = {"early_exit": EarlyExitConfig, "allocation": AllocationConfig, "budgets": BudgetSampling,
                  "distillation": DistillationConfig, "optimization": OptimizerConfig}


def serialisable_hparams(hparams: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """``hparams`` (changed in place, and returned) with the selector as its ``{class_path, init_args}`` spec and
    the argument groups as dicts: what a checkpoint stores, so that it loads with ``torch.load(weights_only=True)``
    (Lightning's default), whatever a subclass's own ``save_hyperparameters()`` put there (a class, a dataclass)."""
    if "selector" in hparams:
        hparams["selector"] = selector_spec(hparams["selector"])
    for name, kind in _CONFIG_GROUPS.items():
        if name in hparams and not isinstance(hparams[name], dict):
            hparams[name] = as_dict(as_config(kind, hparams[name]))
    return hparams


class NamedPickledObjects:
    """``LayerDropTask.load_from_checkpoint``: Lightning's (still refused on an instance), after the checksums of
    a checkpoint file (:func:`~ldrop._io.check_archive`, as ldrop's own loading verifies them), with the
    ``UnpicklingError`` of a checkpoint that holds a pickled class as one line (:func:`~ldrop._io.pickled_class_error`);
    the model it returns warns once if it runs below full depth before its selector is fitted (as
    ``ldrop.load_model``'s: :func:`~ldrop.tasks.uncalibrated.warn_when_used_uncalibrated`)."""

    def __init__(self, lightning_method: Any) -> None:
        self.lightning_method = lightning_method  # Lightning's descriptor

    def __get__(self, instance: Any, owner: type) -> Any:
        load = self.lightning_method.__get__(instance, owner)

        @functools.wraps(load)
        def load_from_checkpoint(checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
            if instance is None and isinstance(checkpoint_path, str | os.PathLike) and Path(checkpoint_path).is_file():
                check_archive(checkpoint_path)  # torch.load would load changed bytes without a word
            try:
                model = load(checkpoint_path, *args, **kwargs)
            except pickle.UnpicklingError as err:
                named = pickled_class_error(checkpoint_path, err, owner.__name__)
                if named is None:
                    raise
                raise named from err
            warn_when_used_uncalibrated(model)  # trained weights (not a resumed fit: on_load_checkpoint)
            return model

        return load_from_checkpoint


def record_checkpoint(task: Any, checkpoint: dict[str, Any]) -> None:
    """``on_save_checkpoint``: the task class and the input normalisation in use, the hyper-parameters in their
    serialisable form; refuses NaN weights."""
    checkpoint["ldrop_task_class"] = _class_path(task)
    if isinstance(checkpoint.get(task.CHECKPOINT_HYPER_PARAMS_KEY), MutableMapping):
        serialisable_hparams(checkpoint[task.CHECKPOINT_HYPER_PARAMS_KEY])
    checkpoint[NORMALIZE_KEY] = bool(task.backbone.normalize_waveforms)
    checkpoint[BACKBONE_FILES_KEY] = {"config.json": task.backbone.model.config.to_json_string(use_diff=False),
                                      "preprocessor_config.json": task.backbone.input_processor().to_json_string()}
    check_finite_weights(task)


def restore_from_checkpoint(task: Any, checkpoint: dict[str, Any]) -> None:
    """``on_load_checkpoint``: use the input normalisation the checkpoint's weights were trained with, keep its
    hyper-parameters for :func:`named_mismatch` (``load_state_dict`` comes next)."""
    task._loading_hparams = checkpoint.get(task.CHECKPOINT_HYPER_PARAMS_KEY)
    trained_with = checkpoint.get(NORMALIZE_KEY, task.backbone.normalize_waveforms)  # absent: not an ldrop task's
    if trained_with != task.backbone.normalize_waveforms:
        log.warning("checkpoint was trained %s waveform normalisation: using that, not normalize_waveforms=%s",
                    "with" if trained_with else "without", task.hparams.get("normalize_waveforms"))
        task.backbone.normalize_waveforms = trained_with


@contextlib.contextmanager
def named_mismatch(task: Any, state_dict: Mapping[str, Any], strict: bool) -> Iterator[None]:
    """``load_state_dict``'s error on weights that do not fit ``task`` as one :class:`~ldrop._io.CheckpointError`
    line: the options that differ (when known), the tensors of another shape, the modules missing."""
    saved_hparams, task._loading_hparams = getattr(task, "_loading_hparams", None), None
    try:
        yield
    except RuntimeError as err:
        summary = state_dict_mismatch(task.state_dict(), state_dict, strict)
        if not summary:  # not a mismatch of names or shapes: PyTorch's own error
            raise
        options = hparams_difference(saved_hparams, dict(task.hparams)) if saved_hparams else ""
        raise CheckpointError(
            f"the checkpoint's weights do not fit this {type(task).__name__}"
            + (f": options that differ: {options}" if options else "")
            + f" ({summary}); use the configuration the checkpoint was trained with"
        ) from err


def _modules(keys: set[str], depth: int = 2) -> str:
    """``"selector.net, head (+3 more)"``: the modules (first ``depth`` name parts) of parameter names."""
    modules = sorted({".".join(key.split(".")[:depth]) for key in keys})
    return ", ".join(modules[:4]) + (f" (+{len(modules) - 4} more)" if len(modules) > 4 else "")


def state_dict_mismatch(own: Mapping[str, Any], loaded: Mapping[str, Any], strict: bool = True) -> str:
    """One line on how ``loaded`` differs from a model's ``own`` state dict (``""`` when it fits).

    Tensors of another shape always count; names missing on either side only when ``strict``.
    """
    parts = []
    shapes = [k for k in own if k in loaded and hasattr(loaded[k], "shape") and tuple(own[k].shape) != tuple(loaded[k].shape)]
    if shapes:
        shown = ", ".join(f"{k} {list(loaded[k].shape)} in the checkpoint, {list(own[k].shape)} here" for k in shapes[:3])
        parts.append(f"{len(shapes)} tensor(s) of another shape: {shown}" + (", ..." if len(shapes) > 3 else ""))
    if strict:
        missing, unexpected = set(own) - set(loaded), set(loaded) - set(own)
        if missing:
            parts.append(f"not in the checkpoint: {_modules(missing)}")
        if unexpected:
            parts.append(f"not in this model: {_modules(unexpected)}")
    return "; ".join(parts)


def _differences(saved: Any, current: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, saved, current)`` where two (nested) hyper-parameter values differ."""
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        return [d for k in dict.fromkeys([*saved, *current])
                for d in _differences(saved.get(k), current.get(k), f"{key}.{k}" if key else str(k))]
    return [] if saved == current else [(key, saved, current)]


def _shown(value: Any) -> str:
    if isinstance(value, Mapping) and "class_path" in value:  # a selector spec: its class
        return str(value["class_path"]).rsplit(".", 1)[-1]
    if isinstance(value, list | tuple) and len(value) > 3:
        return f"{len(value)} items"
    return repr(value)


def hparams_difference(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """``"backbone ('tiny:hubert' in the checkpoint, 'tiny:wavlm' here), ..."``: the hyper-parameters that
    differ between a checkpoint and a model (only those that describe what the model is)."""
    # how it was built or trained, or how it is evaluated: never why weights do not fit
    ignored = ("_instantiator", "init_from", "pretrained", "freeze", "normalize_waveforms", "budgets",
               "predict_budget", "predict_chunk_seconds", "predict_chunk_overlap_seconds", "distillation",
               "optimization", "statistics_batches", "label_smoothing")
    if "_class_path" not in saved or "_class_path" not in current:  # recorded by the CLI only
        ignored += ("_class_path",)
    differ = [d for d in _differences(dict(saved), dict(current)) if d[0].split(".")[0] not in ignored]
    return ", ".join(f"{key} ({_shown(old)} in the checkpoint, {_shown(new)} here)" for key, old, new in differ[:6]) + (
        f", +{len(differ) - 6} more" if len(differ) > 6 else "")
