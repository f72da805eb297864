"""Run-time use of a trained model: loading it (``checkpoints``), the streaming ``AdaptiveModel`` that meets a
target per call, and the ``TargetBudgets`` predict callback.

Imports point one way: runtime knows the tasks, the budgets, the engine and the backbones; nothing in
ldrop below ``ldrop.cli`` and ``ldrop.bench`` imports runtime.
"""

from ldrop.runtime.adaptive import AdaptiveModel, AdaptiveOutput
from ldrop.runtime.checkpoints import (
    UncalibratedSelectorWarning,
    load_exported,
    load_model,
    load_task_checkpoint,
    warn_if_uncalibrated,
)
from ldrop.runtime.targets import TargetBudgets

__all__ = [
    "AdaptiveModel",
    "AdaptiveOutput",
    "TargetBudgets",
    "UncalibratedSelectorWarning",
    "load_exported",
    "load_model",
    "load_task_checkpoint",
    "warn_if_uncalibrated",
]
