"""Who decides the depth (``task.depth``): for an encoded batch and a budget, which layers run and which head
reads them, how that trains, and what is fitted on validation data first. :class:`SelectedLayers` (a selector,
or none, and one head) and :class:`~ldrop.tasks.early_exit.EarlyExit` implement it; nobody asks which it is."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ldrop.selectors import LayerSelector, SelectorOutput
from ldrop.selectors.candidates import one_layer_swaps
from ldrop.tasks.gating import EncodedBatch
from ldrop.tasks.hooks import check_item_losses, check_logits

if TYPE_CHECKING:
    from ldrop.selectors.base import CalibrationData
    from ldrop.tasks.base import LayerDropTask

Budget = int | float | Tensor


class DepthPolicy:
    """The interface; methods taking ``task`` run its layers and heads, the others answer from own state."""

    #: 1-based layers with a head of their own (early exit), else empty.
    exit_layers: Sequence[int] = ()
    #: Whether ``ldrop export --format onnx`` reproduces it (a selector's masks at each budget, exit heads).
    onnx_exportable: bool = True
    #: Whether a budget below full depth runs fewer layers (not so without a selector: the full baseline).
    skips_layers: bool = True

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

    def needs_calibration(self, at_validation: bool = False) -> bool:
        """Whether it is fitted on validation data (``at_validation``: also before each validation pass)."""
        return False

    def calibrated_for(self, budgets: Sequence[int]) -> bool:
        """Whether it holds a fit for ``budgets`` (always, when it needs none)."""
        return True

    @property
    def calibration_is_optional(self) -> bool:
        """Whether, without validation data, it may run unfitted (a fit that only refines it)."""
        return False

    def calibrate(self, task: LayerDropTask, data: CalibrationData, budgets: Sequence[int]) -> None:
        """Fit on ``data`` (the task's validation batches) for ``budgets``."""

    def label(self) -> str:
        """How a run of this method is named in sweeps."""
        raise NotImplementedError

    def head_flops(self, task: LayerDropTask, keep: Tensor, frame_lengths: Tensor, budget: Budget) -> Tensor | None:
        """``[batch]`` FLOPs of the heads an input ran at ``budget`` beside the one it was read by, from its
        ``keep`` mask (``None``: none; the head read is the task head, which every method runs)."""
        return None

    def flops(self, frame_lengths: Tensor) -> Tensor | None:
        """``[batch]`` FLOPs of its own modules beside the selector (``None``: none)."""
        return None


class SelectedLayers(DepthPolicy):
    """A selector (registered on the task; ``None``: every layer runs) picks the layers per input and budget,
    one head (registered on the task) reads the last layer's output."""

    def __init__(self, selector: LayerSelector | None, head: nn.Module) -> None:
        self.selector, self.head = selector, head

    @property
    def skips_layers(self) -> bool:
        return self.selector is not None

    def logits(self, task: LayerDropTask, encoded: EncodedBatch,
               budget: Budget) -> tuple[Tensor, Tensor, SelectorOutput | None]:
        keep, _, selection = task.decide(encoded, budget)
        hidden, _ = task.run_layers(encoded, keep)
        return check_logits(task, task.compute_logits(self.head, hidden, encoded.frame_mask), len(keep)), keep, selection

    def head_for(self, exit_layer: int | None = None) -> nn.Module:
        return self.head

    def training_losses(self, task: LayerDropTask, encoded: EncodedBatch,
                        batch: Any) -> tuple[dict[str, Tensor], Tensor, int]:
        """The task loss at a sampled budget, the selector's own losses and, when set, the counterfactual
        ranking and self-distillation from the full-depth pass (below full depth only). Without a selector
        every layer runs: the budget is ``N`` (one is still drawn, so the random stream is the other methods')."""
        budget = task.sample_train_budget()
        return self.losses_at(task, encoded, batch, budget if self.skips_layers else task.num_layers)[:3]

    def losses_at(self, task: LayerDropTask, encoded: EncodedBatch, batch: Any,
                  budget: int) -> tuple[dict[str, Tensor], Tensor, int, Tensor]:
        """:meth:`training_losses` at ``budget``, and the logits."""
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
        return losses, keep, budget, logits

    def needs_calibration(self, at_validation: bool = False) -> bool:
        selector = self.selector
        return selector is not None and selector.needs_calibration and (selector.calibrates_at_validation or not at_validation)

    def calibrated_for(self, budgets: Sequence[int]) -> bool:
        return not self.needs_calibration() or self.selector.calibrated_for(budgets)

    @property
    def calibration_is_optional(self) -> bool:
        return self.selector is not None and self.selector.calibration_is_optional

    def calibrate(self, task: LayerDropTask, data: CalibrationData, budgets: Sequence[int]) -> None:
        self.selector.calibrate(data, budgets)

    def label(self) -> str:
        if self.selector is None:
            return "full"
        name = type(self.selector).__name__.removesuffix("Selector")
        mode = getattr(self.selector, "mode", None)
        return f"{name}-{mode}" if mode == "threshold" else name

    def __str__(self) -> str:  # how messages name what is fitted
        return type(self.selector).__name__


def counterfactual_loss(task: LayerDropTask, encoded: EncodedBatch, batch: Any, keep: Tensor, logits: Tensor,
                        selection: SelectorOutput) -> Tensor:
    """The selector's ranking loss of its chosen masks ``keep`` against one-layer swaps of them on this training
    batch: each input also runs ``selector.counterfactual_candidates`` swaps of its mask (same budget), without
    gradient and on the sparse path (about ``candidates * k / N`` of a forward pass per step), and its task loss
    under each is compared with the chosen mask's (its per-input losses from ``logits``, not recomputed; see
    :meth:`~ldrop.selectors.LayerSelector.counterfactual_loss`); the gradient reaches ``selection.scores``.
    """
    if selection.scores is None:
        raise ValueError(f"{type(task.selector).__name__} returns no scores: it cannot rank masks")
    with torch.no_grad():  # the alternatives only give targets: no graph, the sparse path
        own = (keep.detach() > 0.5).to(logits.dtype)
        own_losses = check_item_losses(task, task.item_losses(logits.detach(), encoded.frame_mask, batch), len(own))
        keep_first = task.selector.prefix_layers  # layers every mask keeps: never swapped out
        candidates = torch.stack([one_layer_swaps(own, keep_first=keep_first)
                                  for _ in range(task.selector.counterfactual_candidates)])
        candidate_losses = torch.stack([
            task.item_losses(task.logits_with_mask(encoded, mask), encoded.frame_mask, batch) for mask in candidates
        ])
    return task.selector.counterfactual_loss(selection.scores, own, candidates, own_losses, candidate_losses)
