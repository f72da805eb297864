"""Run-time control: device cost profiles, a target -> budget controller, and the streaming ``AdaptiveModel``.

Imports point one way: runtime knows the task modules, the engine and the backbones; nothing below it
knows runtime.
"""

from ldrop.runtime.adaptive import AdaptiveModel, AdaptiveOutput
from ldrop.runtime.controller import BudgetController, BudgetDecision, UnmeetableTargetWarning
from ldrop.runtime.loading import (
    UnfittedSelectorWarning,
    load_exported,
    load_model,
    load_task_checkpoint,
    warn_if_unfitted,
)
from ldrop.runtime.profile import DeviceProfile, PartFit, fit_part, profile_model, validate_profile
from ldrop.tasks.budget import Target

__all__ = [
    "AdaptiveModel",
    "AdaptiveOutput",
    "BudgetController",
    "BudgetDecision",
    "DeviceProfile",
    "PartFit",
    "Target",
    "UnfittedSelectorWarning",
    "UnmeetableTargetWarning",
    "fit_part",
    "load_exported",
    "load_model",
    "load_task_checkpoint",
    "profile_model",
    "validate_profile",
    "warn_if_unfitted",
]
