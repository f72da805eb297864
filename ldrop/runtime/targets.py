"""``TargetBudgets``: the predict callback that resolves a task's target ``predict_budget`` per input."""

from __future__ import annotations

from typing import Any

import lightning as L

from ldrop.budgets import TargetResolver


class TargetBudgets(L.Callback):
    """The predict callback that gives a task with a target ``predict_budget`` per-input budgets
    (:class:`~ldrop.budgets.TargetResolver`); ``ldrop predict`` adds it."""

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        target, resolver = pl_module.predict_target(), TargetResolver()  # controllers and counts of this run
        self.resolver = resolver
        pl_module.budget_provider = None if target is None else (
            lambda lengths: resolver.decide(pl_module, lengths, target))

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        pl_module.budget_provider = None
        self.resolver.close("this predict run")
