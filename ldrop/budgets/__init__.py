"""Budgets: layer counts, targets (a deadline, a real-time factor, a FLOPs rate), the device cost profile and
the controller that turns a target into per-input layer counts.

Below the tasks: it imports the engine, the backbones and ``ldrop._io``/``ldrop._progress`` only; models are
duck-typed (the task protocol: ``num_layers``, ``backbone``, ``selector``, ``encode``, ``decide``, ...).
"""

from ldrop.budgets.controller import (
    QUICK_GRID,
    BudgetController,
    BudgetDecision,
    TargetResolver,
    UnmeetableTargetWarning,
)
from ldrop.budgets.layers import Budget, budget_list, budget_to_layers, resolve_budget
from ldrop.budgets.profile import DeviceProfile, PartFit, fit_part, profile_model, validate_profile
from ldrop.budgets.targets import Target, is_target

__all__ = [
    "QUICK_GRID",
    "Budget",
    "BudgetController",
    "BudgetDecision",
    "DeviceProfile",
    "PartFit",
    "Target",
    "TargetResolver",
    "UnmeetableTargetWarning",
    "budget_list",
    "budget_to_layers",
    "fit_part",
    "is_target",
    "profile_model",
    "resolve_budget",
    "validate_profile",
]
