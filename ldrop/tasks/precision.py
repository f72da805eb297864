"""Running a task module outside Lightning's step methods under the trainer's precision.

Lightning runs ``training_step``, ``validation_step``, ``test_step`` and ``predict_step`` inside its precision
plugin's ``forward_context()`` (autocast for ``bf16-mixed``/``16-mixed``, the half default dtype for
``bf16-true``) and hands them batches through the plugin's ``convert_input`` (``bf16-true``: floating tensors
in bf16). Everything else that runs the model (the budget sweep's scoring in ``on_test_batch_end``, its
controls and oracles, fitting on validation data before test or predict, refreshing a selector's running
statistics) must do the same, or it meets bf16 activations with fp32 weights (``bf16-mixed``) or fp32 inputs
with bf16 weights (``bf16-true``). These two helpers are that one rule, for every such place.

Without a trainer (a model used from plain PyTorch, e.g. :meth:`~ldrop.tasks.LayerDropTask.fit_on_dataloader`
on a loaded model) there is no precision plugin: inputs are cast to the dtype of the model's parameters, so a
model converted with ``.to(torch.bfloat16)`` runs bf16 end to end.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import apply_to_collection
from torch import Tensor, nn

__all__ = ["model_dtype", "precision_context", "to_model_precision"]


def _trainer(module: nn.Module) -> Any:
    # LightningModule.trainer raises when detached; _trainer is None then (and absent on a plain nn.Module).
    return getattr(module, "_trainer", None)


def model_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of the module's first floating-point parameter (``float32`` if it has none)."""
    for param in module.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


def precision_context(module: nn.Module) -> AbstractContextManager:
    """The attached trainer's ``precision_plugin.forward_context()`` (a no-op context without a trainer).

    Wrap every forward that Lightning does not run itself (a callback's scoring, fitting on validation data)
    in it, so that it runs as the step methods do: autocast under ``bf16-mixed``, bf16 default dtype under
    ``bf16-true``, nothing under ``32-true``.
    """
    trainer = _trainer(module)
    return trainer.precision_plugin.forward_context() if trainer is not None else contextlib.nullcontext()


def to_model_precision(module: nn.Module, batch: Any) -> Any:
    """``batch`` (any collection of tensors, an ``AudioBatch`` included) as the model's step methods get it.

    With a trainer: its precision plugin's ``convert_input`` (``bf16-true``: floating tensors to bf16, the
    mixed and full precisions: unchanged). Without one: floating tensors cast to :func:`model_dtype` (a
    bf16 model gets bf16 waveforms). Integer tensors (lengths, class ids) are never touched.
    """
    trainer = _trainer(module)
    if trainer is not None:
        return trainer.precision_plugin.convert_input(batch)
    dtype = model_dtype(module)

    def cast(tensor: Tensor) -> Tensor:
        return tensor.to(dtype) if tensor.is_floating_point() else tensor

    return apply_to_collection(batch, Tensor, cast)
