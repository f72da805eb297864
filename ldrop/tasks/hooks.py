"""Checks on what a task subclass's hooks return, so that a mistake in a downstream task is one line naming the
hook and what it must return, at the first batch, not an ``IndexError`` deep inside ldrop later (a chunked
prediction, a sweep's oracle, the end of the first validation epoch)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from torch import Tensor
from torchmetrics import Metric

if TYPE_CHECKING:
    from ldrop.tasks.base import LayerDropTask


def check_logits(task: LayerDropTask, logits: Tensor, batch: int) -> Tensor:
    """``logits`` if they are ``[batch, outputs]`` or ``[batch, frames, outputs]`` for ``batch`` inputs (those a
    head read: a group of them under early exit), else a ``ValueError``."""
    if not isinstance(logits, Tensor) or logits.dim() not in (2, 3) or logits.shape[0] != batch:
        shape = list(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"{type(task).__name__}.compute_logits returned {shape} for {batch} inputs: return "
                         "[batch, outputs] (one output: [batch, 1]) or [batch, frames, outputs]")
    return logits


def check_item_losses(task: LayerDropTask, losses: Tensor, batch: int) -> Tensor:
    """``losses`` if they are ``[batch]`` (one loss per input), else a ``ValueError``."""
    if not isinstance(losses, Tensor) or tuple(losses.shape) != (batch,):
        shape = list(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise ValueError(f"{type(task).__name__}.item_losses returned {shape} for a batch of {batch}: return "
                         "[batch], each input's own loss (the terms task_loss averages), not their mean")
    return losses


def checked_metrics(task: LayerDropTask) -> dict[str, Metric]:
    """``task.configure_metrics()`` if it holds a metric for each of ``task.metric_names``, else a ``ValueError``."""
    metrics = task.configure_metrics()
    if not isinstance(metrics, Mapping):
        raise ValueError(f"{type(task).__name__}.configure_metrics returned a {type(metrics).__name__}: return a dict "
                         f"of a metric per name in its metric_names {list(task.metric_names)}")
    missing = [name for name in task.metric_names if name not in metrics]
    if missing:
        raise ValueError(f"{type(task).__name__}.configure_metrics returned {list(metrics)}, without "
                         f"{missing} of its metric_names {list(task.metric_names)}: key each metric by its name there")
    return metrics
