"""The training step's safeguards: the backbone's frozen part, a non-finite loss stopped before it reaches the
weights, and what keeps DDP's gradient all-reduce complete (empty batches, layers no input ran)."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ldrop._lightning import attached_trainer
from ldrop.backbones import SpeechBackbone
from ldrop.selectors import LayerSelector

if TYPE_CHECKING:
    from ldrop.tasks.base import LayerDropTask

log = logging.getLogger(__name__)


def freeze_backbone(backbone: SpeechBackbone, freeze: str) -> None:
    """``"cnn"``: the CNN feature encoder is frozen (by the backbone's loader), ``"backbone"``: all of it,
    ``"none"``: nothing."""
    if freeze not in ("cnn", "backbone", "none"):
        raise ValueError(f"freeze must be 'cnn', 'backbone' or 'none', got {freeze!r}")
    if freeze == "backbone":
        for p in backbone.parameters():
            p.requires_grad_(False)
        backbone.freeze_feature_encoder = True


def check_fit_options(task: LayerDropTask) -> None:
    """A ``ValueError`` before a fit for training options that would do nothing in it (checked at fit, not
    when a model is built, so checkpoints saved with them still load and predict)."""
    if task.distillation.weight > 0 and task.selector is None:
        raise ValueError(f"distillation.weight is {task.distillation.weight} but the model has no selector (the full "
                         "model, early exit): every layer trains, so there is nothing to distil; set it to 0")
    diversity = getattr(task.selector, "diversity_weight", 0.0)
    if diversity > 0 and not getattr(task.selector, "differentiable", True):
        raise ValueError(f"the selector's diversity_weight {diversity} does nothing with objective 'counterfactual', "
                         "which has no relaxed mask: set it to 0 or use objective 'both'")


def fit_steps(task: LayerDropTask) -> float:
    """The fit's optimizer steps (Lightning's estimate, at least 1; 1 without a trainer), ``math.inf`` for a fit
    without a set length (``--trainer.max_epochs -1`` and no ``--trainer.max_steps``)."""
    trainer = attached_trainer(task)
    total = trainer.estimated_stepping_batches if trainer is not None else 1
    return max(1, int(total)) if math.isfinite(total) else math.inf


def optimizer_steps(task: LayerDropTask) -> float:
    """:func:`fit_steps`, for the learning-rate schedule (which refuses a fit without a set length unless it needs
    none); a selector whose training progress (its temperature annealing) needs the length then stays at its start,
    and a warning says so."""
    total = fit_steps(task)
    if math.isinf(total) and task.selector is not None and (
            type(task.selector).set_progress is not LayerSelector.set_progress):
        log.warning("the fit has no set length (--trainer.max_epochs -1 without --trainer.max_steps): %s's training "
                    "progress stays at 0 (its temperature is not annealed); give --trainer.max_steps to anneal it",
                    type(task.selector).__name__)
    return total


def check_finite_loss(task: LayerDropTask, loss: Tensor, losses: dict[str, Tensor], batch: Any) -> None:
    """A FloatingPointError on a NaN/inf loss naming the batch's items, the loss terms and a likely cause,
    raised before ``backward``: the weights (and every later checkpoint) stay finite."""
    if bool(torch.isfinite(loss.detach()).all()):
        return
    terms = [name for name, value in losses.items() if not bool(torch.isfinite(value.detach()).all())]
    ids = list(getattr(batch, "ids", []))
    shown = ", ".join(map(str, ids[:16])) + (f", ... ({len(ids)} items)" if len(ids) > 16 else "")
    waveforms = getattr(batch, "waveforms", None)
    if waveforms is not None and not bool(torch.isfinite(waveforms).all()):
        cause = "the audio of this batch holds NaN/inf samples: check or remove these files"
    elif not all(bool(torch.isfinite(p).all()) for p in task.parameters()):
        cause = ("the weights are already non-finite (an earlier step diverged): lower the learning rate, "
                 "use precision 'bf16-mixed' or '32' instead of fp16, or enable gradient clipping")
    else:
        cause = ("likely causes: a learning rate too high (try a lower lr/head_lr or a longer warmup), fp16 "
                 "overflow (use precision 'bf16-mixed' or '32'), or a corrupt/silent file among these items")
    raise FloatingPointError(
        f"non-finite training loss ({float(loss.detach())}; term(s): {', '.join(terms) or 'total'}) at "
        f"step {task.global_step}, batch {shown}: {cause}. Training stopped before updating the weights."
    )


def empty_batch_loss(task: LayerDropTask) -> Tensor | None:
    """The step of a batch whose examples all failed to load (``skip_bad_files``): ``None`` (skipped), or
    under DDP, where every process must take part in the all-reduce, a zero loss on every parameter."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    return sum(p.sum() for p in task.parameters() if p.requires_grad) * 0.0


def unused_parameter_anchor(task: LayerDropTask, keep: Tensor) -> Tensor:
    """0 x the parameters a DDP step may leave without a gradient (DDP rejects them unless
    ``find_unused_parameters``): those of layers no input ran (sparse training), and every trainable parameter
    outside the backbone, which are few (a selector trained only by its own losses has none from the task's loss
    at a full-depth step, ``objective: counterfactual``)."""
    unused = (keep.detach() <= 0.5).all(0).nonzero().flatten().tolist()
    backbone = {id(p) for p in task.backbone.parameters()}
    params = [p for i in unused for p in task.backbone.layers[i].parameters() if p.requires_grad]
    params += [p for p in task.parameters() if p.requires_grad and id(p) not in backbone]
    return sum(p.sum() for p in params) * 0.0 if params else keep.new_zeros(())
