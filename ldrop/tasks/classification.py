"""Utterance classification (keyword spotting, sound events, emotion): pooled encoder states -> classes."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from ldrop.tasks.base import LayerDropTask


def masked_mean(hidden: Tensor, frame_mask: Tensor) -> Tensor:
    """Mean over real frames: ``[batch, frames, dim]``, ``[batch, frames]`` -> ``[batch, dim]``."""
    weights = frame_mask.to(hidden.dtype)[..., None]
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class ClassificationTask(LayerDropTask):
    """Utterance classification with masked mean pooling, a linear head, cross-entropy and accuracy.

    Args:
        labels: the class names in id order (the CLI links them from the datamodule); ``predict`` outputs
            them. Give either ``labels`` or ``num_classes``.
        num_classes: number of classes when there are no names (then ``predict`` outputs class ids).
        label_smoothing: cross-entropy label smoothing.
        **kwargs: the :class:`~ldrop.tasks.base.LayerDropTask` arguments (backbone, selector, budgets, ...).
    """

    metric_names = ("acc",)
    higher_is_better = True
    has_item_errors = True

    def __init__(
        self,
        labels: list[str] | None = None,
        num_classes: int | None = None,
        label_smoothing: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if labels is None and num_classes is None:
            raise ValueError("give the class names (labels) or num_classes")
        if labels is not None and num_classes is not None and len(labels) != num_classes:
            raise ValueError(f"labels has {len(labels)} names but num_classes={num_classes}")
        if labels is not None and len(set(labels)) != len(labels):
            raise ValueError("labels must be distinct class names")
        self.num_classes = len(labels) if labels is not None else int(num_classes)
        if self.num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {self.num_classes}")
        self.class_names = list(labels) if labels is not None else None
        super().__init__(**kwargs)
        self.save_hyperparameters("labels", "num_classes", "label_smoothing")

    def configure_head(self) -> nn.Module:
        return nn.Linear(self.backbone.hidden_size, self.num_classes)

    def compute_logits(self, head: nn.Module, hidden: Tensor, frame_mask: Tensor) -> Tensor:
        return head(masked_mean(hidden, frame_mask))

    def class_ids(self, batch: Any, check_range: bool = False) -> Tensor:
        """The batch's targets, which must be class ids (a LongTensor ``[batch]``); else a ``ValueError`` (one
        line) saying what they are. ``check_range``: also that every id is in ``0..num_classes-1`` (reads them
        on the host)."""
        targets = batch.targets
        if isinstance(targets, Tensor) and targets.dim() == 1 and not targets.dtype.is_floating_point \
                and not targets.dtype.is_complex and targets.dtype != torch.bool:
            targets = targets.long()  # int32, uint8, ... ids: as cross-entropy and the metrics take them
        if not (isinstance(targets, Tensor) and targets.dtype == torch.long and targets.dim() == 1):
            if isinstance(targets, Tensor):
                got = f"a tensor of {str(targets.dtype).removeprefix('torch.')} of shape {list(targets.shape)}"
            elif isinstance(targets, list | tuple):
                kinds = "/".join(sorted({type(t).__name__ for t in targets})) or "nothing"
                shown = ", ".join(repr(t) for t in list(targets)[:3]) + (", ..." if len(targets) > 3 else "")
                got = f"a {type(targets).__name__} of {kinds} ({shown})"
            else:
                got = f"a {type(targets).__name__}"
            raise ValueError(
                f"{type(self).__name__}: a batch's targets must be class ids in 0..{self.num_classes - 1}, a "
                f"LongTensor [batch], got {got}: the datamodule must map each class name to its index in "
                "class_names")
        if check_range and (int(targets.max()) >= self.num_classes or int(targets.min()) < 0):
            raise ValueError(f"a target class id is outside 0..{self.num_classes - 1}: {targets.tolist()}")
        return targets

    def task_loss(self, logits: Tensor, frame_mask: Tensor, batch: Any) -> Tensor:
        targets = self.class_ids(batch, check_range=True)
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.hparams.label_smoothing)

    def item_losses(self, logits: Tensor, frame_mask: Tensor, batch: Any) -> Tensor:
        """Per input: its cross-entropy (with the task's label smoothing), ``[batch]``."""
        return F.cross_entropy(logits.float(), self.class_ids(batch), label_smoothing=self.hparams.label_smoothing,
                               reduction="none")

    def configure_metrics(self) -> dict[str, Metric]:
        return {"acc": MulticlassAccuracy(num_classes=self.num_classes, average="micro")}

    def update_metrics(self, metrics: dict[str, Metric], logits: Tensor, frame_mask: Tensor, batch: Any) -> None:
        metrics["acc"].update(logits.argmax(-1), self.class_ids(batch))

    def item_errors(self, logits: Tensor, frame_mask: Tensor, batch: Any) -> tuple[Tensor, Tensor]:
        """Per input: 1 if its prediction is wrong, else 0; each input counts once."""
        wrong = (logits.argmax(-1) != self.class_ids(batch)).double()
        return wrong, torch.ones_like(wrong)

    def decode(self, logits: Tensor, frame_mask: Tensor) -> list[Any]:
        ids = logits.argmax(-1).tolist()
        return ids if self.class_names is None else [self.class_names[i] for i in ids]


__all__ = ["ClassificationTask", "masked_mean"]
