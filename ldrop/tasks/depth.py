"""Who decides the depth: a :class:`DepthPolicy` says, for an encoded batch and a budget, which layers run and
which head reads them; how it trains; and whether it is fitted on validation data first.

Two policies: :class:`SelectedLayers` (a layer selector, or none for the full model, and one head) and
:class:`~ldrop.tasks.early_exit.EarlyExit` (a head after each exit layer). The task asks its policy
(``task.depth``) and never which one it has; the sweep, the runtime and the calibration loop ask it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ldrop.selectors import LayerSelector, SelectorOutput
from ldrop.tasks.counterfactual import counterfactual_loss
from ldrop.tasks.gating import EncodedBatch

if TYPE_CHECKING:
    from ldrop.selectors.base import FittingData
    from ldrop.tasks.base import LayerDropTask

Budget = int | float | Tensor


class DepthPolicy:
    """The interface; the methods taking ``task`` run its layers and heads (``task.run_layers``,
    ``task.compute_logits``), the others answer from the policy's own state."""

    #: 1-based layers with a head of their own (early exit), else empty.
    exit_layers: Sequence[int] = ()

    def logits(self, task: LayerDropTask, encoded: EncodedBatch,
               budget: Budget) -> tuple[Tensor, Tensor, SelectorOutput | None]:
        """``(logits, keep_mask [batch, layers], selector output or None)`` of ``encoded`` under ``budget``
        (layers, a fraction of them, or a ``[batch]`` tensor)."""
        raise NotImplementedError

    def head_for(self, exit_layer: int | None = None) -> nn.Module:
        """The head reading the output of ``exit_layer`` (default: the last layer)."""
        raise NotImplementedError

    def training_losses(self, task: LayerDropTask, encoded: EncodedBatch,
                        batch: Any) -> tuple[dict[str, Tensor], Tensor, int]:
        """``(named loss terms, keep_mask [batch, layers], budget)`` of one training batch."""
        raise NotImplementedError

    def batch_budget(self, budget: Tensor) -> Tensor:
        """The ``[batch]`` budgets this policy can run for per-input ``budget`` (all of them by default)."""
        return budget

    def needs_fitting(self, at_validation: bool = False) -> bool:
        """Whether it is fitted on validation data (``at_validation``: also before each validation pass)."""
        return False

    def fitted_for(self, budgets: Sequence[int]) -> bool:
        """Whether it holds a fit for ``budgets`` (always, when it needs none)."""
        return True

    @property
    def fit_is_optional(self) -> bool:
        """Whether, without validation data, it may run unfitted (a fit that only refines it)."""
        return False

    def fit(self, task: LayerDropTask, data: FittingData, budgets: Sequence[int]) -> None:
        """Fit on ``data`` (the task's validation batches) for ``budgets``."""

    def label(self) -> str:
        """How a run of this method is named in sweeps."""
        raise NotImplementedError


class SelectedLayers(DepthPolicy):
    """A selector picks the layers per input and budget and one head reads the last layer's output;
    without a selector every input runs every layer (the full model).

    Args:
        selector: the layer selector (registered on the task, which trains it), or ``None``.
        head: the task head (registered on the task).
    """

    def __init__(self, selector: LayerSelector | None, head: nn.Module) -> None:
        self.selector, self.head = selector, head

    def logits(self, task: LayerDropTask, encoded: EncodedBatch,
               budget: Budget) -> tuple[Tensor, Tensor, SelectorOutput | None]:
        keep, _, selection = task.decide(encoded, budget)
        hidden, _ = task.run_layers(encoded, keep)
        return task.compute_logits(self.head, hidden, encoded.frame_mask), keep, selection

    def head_for(self, exit_layer: int | None = None) -> nn.Module:
        return self.head

    def training_losses(self, task: LayerDropTask, encoded: EncodedBatch,
                        batch: Any) -> tuple[dict[str, Tensor], Tensor, int]:
        """The task loss at a sampled budget, the selector's own losses and, when set, the counterfactual
        ranking and self-distillation from the full-depth pass (below full depth only)."""
        budget = task.sample_train_budget()
        logits, keep, selection = self.logits(task, encoded, budget)
        losses = {"task": task.task_loss(logits, encoded.frame_mask, batch)}
        below_full = budget < task.num_layers
        if selection is not None:
            losses.update({f"selector_{k}": v for k, v in selection.losses.items()})
            if self.selector.counterfactual_candidates > 0 and below_full:
                losses["selector_counterfactual"] = counterfactual_loss(task, encoded, batch, keep, logits, selection)
            for name, value in selection.stats.items():
                task.log(f"train/selector_{name}", value.float().mean(), batch_size=len(batch))
        if task.distillation.weight > 0 and below_full:
            with torch.no_grad():  # the teacher reuses the selector's prefix layers, if any
                hidden, _ = task.run_layers(encoded.detached(), torch.ones_like(keep))
                teacher = task.compute_logits(self.head, hidden, encoded.frame_mask)
            losses["distill"] = task.distillation.loss(logits, teacher, encoded.frame_mask)
        return losses, keep, budget

    def needs_fitting(self, at_validation: bool = False) -> bool:
        selector = self.selector
        return selector is not None and selector.needs_fitting and (selector.fits_at_validation or not at_validation)

    def fitted_for(self, budgets: Sequence[int]) -> bool:
        return not self.needs_fitting() or self.selector.fitted_for(budgets)

    @property
    def fit_is_optional(self) -> bool:
        return self.selector is not None and self.selector.fit_is_optional

    def fit(self, task: LayerDropTask, data: FittingData, budgets: Sequence[int]) -> None:
        self.selector.fit(data, budgets)

    def label(self) -> str:
        if self.selector is None:
            return "full"
        name = type(self.selector).__name__.removesuffix("Selector")
        mode = getattr(self.selector, "mode", None)
        return f"{name}-{mode}" if mode == "threshold" else name

    def __str__(self) -> str:  # how messages name what is fitted
        return type(self.selector).__name__
