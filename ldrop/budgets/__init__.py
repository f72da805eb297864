"""Budgets: layer counts, targets, the device cost profile and the controller that turns a target into
per-input layer counts. Names are imported on first use: ``targets``, ``loop`` and ``cost`` need no torch."""

import importlib

#: Public name -> the module that defines it.
_EXPORTS = {
    **dict.fromkeys(("QUICK_GRID", "BudgetController", "TargetResolver", "torch_profile_warning"),
                    "ldrop.budgets.controller"),
    **dict.fromkeys(("BudgetDecision", "ControlLoop", "DeadlineGuard", "UnmeetableTargetWarning"), "ldrop.budgets.loop"),
    **dict.fromkeys(("Budget", "budget_list", "budget_to_layers", "resolve_budget"), "ldrop.budgets.layers"),
    **dict.fromkeys(("DeviceProfile", "PartFit"), "ldrop.budgets.cost"),
    **dict.fromkeys(("fit_part", "profile_model", "validate_profile"), "ldrop.budgets.profile"),
    **dict.fromkeys(("Target", "is_target"), "ldrop.budgets.targets"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ldrop.budgets' has no attribute {name!r}")
