"""Load a trained ldrop model in plain Python: from a ``.ckpt`` (``ldrop fit``) or an exported folder
(``ldrop export``)."""

from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from ldrop.tasks import LayerDropTask
from ldrop.tasks.base import EXPORT_STATE_FILE

#: Hyper-parameters that only describe how a model was built or trained, not what it is.
_BUILD_ONLY = ("_class_path", "_instantiator", "init_from", "backbone_overrides")


def _task_class(class_path: str) -> type[LayerDropTask]:
    module, _, name = class_path.rpartition(".")
    if not module:
        module = "ldrop.tasks"
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, LayerDropTask)):
        raise ValueError(f"{class_path!r} is not an ldrop task class")
    return cls


def load_task_checkpoint(path: str | os.PathLike) -> LayerDropTask:
    """Load any ldrop task from a checkpoint written by ``ldrop fit`` (the task class is recorded in it)."""
    path = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    class_path = checkpoint.get("ldrop_task_class") if isinstance(checkpoint, dict) else None
    if not class_path:
        raise ValueError(f"{path!r} was not written by an ldrop task (no 'ldrop_task_class' entry)")
    return _task_class(class_path).load_from_checkpoint(path, map_location="cpu")


def _exported_task_class(payload: dict[str, Any]) -> str:
    hparams = payload.get("hparams", {})
    class_path = payload.get("task_class") or hparams.get("_class_path")
    if class_path:
        return class_path
    # Exports of a plain-Python model (no CLI) before the class was recorded: tell the two tasks apart.
    return "ldrop.tasks.CTCTask" if "lowercase" in hparams else "ldrop.tasks.ClassificationTask"


def load_exported(directory: str | os.PathLike) -> LayerDropTask:
    """Rebuild a task from an ``ldrop export`` folder (``save_pretrained`` backbone + ``ldrop_task_state.pt``)."""
    directory = Path(directory)
    state_file = directory / EXPORT_STATE_FILE
    if not (directory / "config.json").is_file() or not state_file.is_file():
        raise FileNotFoundError(
            f"{str(directory)!r} is not an exported ldrop model: expected config.json and {EXPORT_STATE_FILE} "
            "(written by 'ldrop export CHECKPOINT DIR')"
        )
    payload = torch.load(state_file, map_location="cpu", weights_only=False)
    hparams = {k: v for k, v in payload.get("hparams", {}).items() if k not in _BUILD_ONLY}
    # The folder's config.json already holds any overrides; its weights come from the state dict below.
    hparams.update(backbone=str(directory), pretrained=False)
    model = _task_class(_exported_task_class(payload))(**hparams)
    model.load_state_dict(payload["state_dict"])
    return model


def load_model(path: str | os.PathLike) -> LayerDropTask:
    """A trained ldrop model in eval mode, from a ``.ckpt`` file or an exported folder.

    The result takes waveforms and a budget: ``logits, keep_mask = model(waveforms, lengths, budget)``
    (under ``torch.inference_mode()`` the sparse path skips the dropped layers for real).

    Raises:
        FileNotFoundError: ``path`` is neither a checkpoint file nor an exported folder.
    """
    path = Path(path)
    if path.is_dir():
        model = load_exported(path)
    elif path.is_file():
        model = load_task_checkpoint(path)
    else:
        raise FileNotFoundError(
            f"no model at {str(path)!r}: give a .ckpt written by 'ldrop fit' or a folder written by 'ldrop export'"
        )
    selector = model.selector
    if selector is not None and selector.needs_fitting and not selector.fitted:
        warnings.warn(
            f"{path}: the {type(selector).__name__} has not been fitted on validation data (threshold calibration "
            "or the per-budget input-blind fallback), as 'ldrop test' and 'ldrop predict' do before they run; "
            "call model.fit_on_dataloader(validation_loader) before using it, or results will differ from theirs",
            UserWarning, stacklevel=2,
        )
    return model.eval()
