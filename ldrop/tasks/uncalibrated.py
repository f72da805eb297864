"""The :class:`UncalibratedSelectorWarning` of a loaded model (``ldrop.load_model``, ``Task.load_from_checkpoint``):
a trained model whose selector needs fitting on validation data and was not fitted warns once, at its first call
below full depth (not at load, not at full depth, where the fit changes nothing). ``ldrop test`` and ``ldrop
predict`` fit it first and never call the model's ``forward``, so they never warn."""

from __future__ import annotations

import os
import sys
import warnings
from typing import TYPE_CHECKING, Any

import torch

from ldrop.budgets import budget_to_layers

if TYPE_CHECKING:
    from ldrop.tasks.base import LayerDropTask


class UncalibratedSelectorWarning(UserWarning):
    """A loaded model ran below full depth with a selector that needs fitting on validation data and was not
    fitted: its layer choices differ from those of ``ldrop test`` and ``ldrop predict``."""


def warn_when_used_uncalibrated(model: LayerDropTask) -> None:
    """Arm the warning of a loaded (trained) model: its first call (``model(waveforms, lengths, budget)``) below
    full depth while its selector is not fitted warns once; idempotent."""
    model._warn_if_uncalibrated = True
    if getattr(model, "_uncalibrated_hook", None) is None:
        model._uncalibrated_hook = model.register_forward_pre_hook(_warn_at_forward, with_kwargs=True)


def warn_if_uncalibrated(model: LayerDropTask, budget: Any) -> bool:
    """Emit the :class:`UncalibratedSelectorWarning` of a loaded model once, at its first use below full depth
    (a tensor or target budget counts as below); returns whether it warned."""
    selector = model.selector
    if not getattr(model, "_warn_if_uncalibrated", False) or selector is None or not selector.needs_calibration:
        return False
    if _full_depth(budget, model.num_layers) or selector.calibrated:
        return False
    model._warn_if_uncalibrated = False
    warnings.warn(
        f"the {type(selector).__name__} has not been fitted on validation data (threshold calibration or the "
        "per-budget input-blind fallback), so its layer choices differ from those of 'ldrop test' and 'ldrop "
        "predict', which fit it first; call model.calibrate_on_dataloader(validation_loader) once before using it "
        "(the README shows how to build the loader)",
        UncalibratedSelectorWarning, stacklevel=_caller_stacklevel(),
    )
    return True


def _warn_at_forward(model: LayerDropTask, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Forward pre-hook of a loaded model (``model(waveforms, lengths, budget)``)."""
    if getattr(model, "_warn_if_uncalibrated", False):
        warn_if_uncalibrated(model, kwargs.get("budget", args[2] if len(args) > 2 else None))


def _full_depth(budget: Any, num_layers: int) -> bool:
    """Whether ``budget`` runs every layer (a tensor or a target counts as below: no host sync here)."""
    try:
        return budget is None or budget_to_layers(budget, num_layers) == num_layers
    except ValueError:  # a tensor or a target; a bad budget is the forward call's to report
        return False


def _caller_stacklevel() -> int:
    """The ``stacklevel`` (for a ``warnings.warn`` in the caller) of the first frame outside torch and ldrop:
    the user's call of the model."""
    inside = tuple(os.path.dirname(os.path.abspath(f)) + os.sep for f in (torch.__file__, os.path.dirname(__file__)))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(inside):
        frame, level = frame.f_back, level + 1
    return level
