"""Running a task module outside Lightning's step methods under the trainer's precision.

Lightning runs the step methods inside its precision plugin's ``forward_context()`` and hands them batches
through its ``convert_input``; everything else that runs the model (the sweep's scoring, fitting on validation
data, refreshing a selector's statistics) must do the same, or it meets bf16 activations with fp32 weights
(``bf16-mixed``) or fp32 inputs with bf16 weights (``bf16-true``). Without a trainer, inputs are cast to the
dtype of the model's parameters.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import apply_to_collection
from torch import Tensor, nn

from ldrop._lightning import attached_trainer

__all__ = ["model_dtype", "precision_context", "to_model_precision"]


def model_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of the module's first floating-point parameter (``float32`` if it has none)."""
    for param in module.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


def precision_context(module: nn.Module) -> AbstractContextManager:
    """The attached trainer's ``precision_plugin.forward_context()`` (a no-op context without a trainer)."""
    trainer = attached_trainer(module)
    return trainer.precision_plugin.forward_context() if trainer is not None else contextlib.nullcontext()


def to_model_precision(module: nn.Module, batch: Any) -> Any:
    """``batch`` (any collection of tensors) as the step methods get it: the trainer's ``convert_input``, or
    without a trainer floating tensors cast to :func:`model_dtype`; integer tensors are never touched."""
    trainer = attached_trainer(module)
    if trainer is not None:
        return trainer.precision_plugin.convert_input(batch)
    dtype = model_dtype(module)
    return apply_to_collection(batch, Tensor, lambda tensor: tensor.to(dtype) if tensor.is_floating_point() else tensor)
