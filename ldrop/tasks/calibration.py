"""Fitting on validation data before test, predict and each validation pass in training: whatever the task's
depth policy :meth:`~ldrop.tasks.depth.DepthPolicy.needs_calibration` is fitted by one loop, outside Lightning's
step methods, so under the trainer's precision (:mod:`ldrop.tasks.precision`). A fit is kept
(``task.calibrated_budgets``) until training starts or a checkpoint is loaded (the weights then change).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.model_helpers import is_overridden

from ldrop._lightning import attached_trainer
from ldrop._progress import Phase, heartbeat
from ldrop.tasks.gating import EncodedBatch
from ldrop.tasks.precision import precision_context, to_model_precision

if TYPE_CHECKING:
    from ldrop.tasks.base import LayerDropTask

log = logging.getLogger(__name__)


def stop_if_sigterm(task: LayerDropTask) -> None:
    """Raise Lightning's ``SIGTERMException`` when the task's trainer received SIGTERM: a fit on validation data
    (minutes, outside Lightning's loops) stops at the next batch, as the loops do."""
    if getattr(attached_trainer(task), "received_sigterm", False):
        raise SIGTERMException


@torch.no_grad()
def calibrate_on_batches(task: LayerDropTask, batches: Callable[[], Iterable[Any]], budgets: Sequence[int],
                   at_validation: bool = False, source: str = "validation data") -> None:
    """Fit the task's depth policy for ``budgets`` on ``batches()`` (a fresh iterable per call).
    ``at_validation``: before a validation pass in training, only what refits each validation (a selector's
    ``calibrates_at_validation``); such a fit does not count for evaluation. ``source``: what the progress lines
    say the batches are."""
    budgets = [int(k) for k in budgets]
    if at_validation:
        task.calibrated_budgets.clear()
    policy = task.depth
    if not policy.needs_calibration(at_validation):
        return
    # Before each validation pass in training it is one quick calibration: no lines; before test and
    # predict it can take minutes (several passes per budget, a greedy search): progress lines.
    phase = Phase(f"fitting {policy} on {source}", unit="validation batch") if not at_validation else None

    def model_batches() -> Iterator[Any]:  # on the model's device, in the trainer's precision
        for batch in batches():
            stop_if_sigterm(task)
            yield to_model_precision(task, task.transfer_batch_to_device(batch, task.device, 0))
            if phase is not None:
                phase.step()

    with precision_context(task), phase or contextlib.nullcontext():
        policy.calibrate(task, _TaskCalibrationData(task, model_batches), budgets)
    if not at_validation:
        task.calibrated_budgets.update(budgets)


def has_validation_split(datamodule: Any) -> bool:
    """Whether ``datamodule`` has a validation split: ``has_split("val")`` where it says (ldrop's
    ``AudioDataModule``), else whether it implements ``val_dataloader`` (a plain Lightning datamodule); the
    notion of fitting on validation data, of the sweep's validation headroom and of ``ldrop export``'s fit."""
    if datamodule is None:
        return False
    has_split = getattr(datamodule, "has_split", None)
    if callable(has_split):
        return bool(has_split("val"))
    return isinstance(datamodule, L.LightningDataModule) and is_overridden("val_dataloader", datamodule)


def validation_datamodule(trainer: L.Trainer | None) -> Any:
    """The trainer's datamodule if it has a validation split (:func:`has_validation_split`), else ``None``."""
    datamodule = getattr(trainer, "datamodule", None)
    return datamodule if has_validation_split(datamodule) else None


def validation_limit(trainer: L.Trainer | None, loader: Any) -> tuple[int | None, str]:
    """How many of ``loader``'s batches a pass over the validation split outside a fit takes (the fit before test
    and predict, the sweep's validation headroom), as the trainer limits validation: ``--trainer.fast_dev_run`` (its
    batches), ``--trainer.limit_val_batches`` (an int: that many; a float: that fraction of the loader's length, at
    least one batch; 0: none). ``None``: all of them. Also how to say it: ``"4 batches"``, ``"2 of 20 batches
    (--trainer.limit_val_batches 0.1)"``, ``""`` for all of a loader without a length."""
    limit = getattr(trainer, "limit_val_batches", None)
    limit = 1.0 if limit is None else limit
    try:
        length: int | None = len(loader)
    except TypeError:  # an iterable loader
        length = None
    if limit == 0:
        count = 0
    elif isinstance(limit, int):
        count = limit if length is None else min(limit, length)
    else:  # a fraction; of a loader without a length: all of it (Lightning's loops refuse it there)
        count = None if limit >= 1.0 or length is None else max(1, int(length * limit))
    option = "--trainer.fast_dev_run" if getattr(trainer, "fast_dev_run", False) else f"--trainer.limit_val_batches {limit}"
    if count is None or count == length:
        return count, "" if length is None else f"{length} {'batch' if length == 1 else 'batches'}"
    return count, f"{count} of {length if length is not None else 'its'} batches, {option}"


def calibrate_on_validation_data(task: LayerDropTask, budgets: Sequence[int] | None = None) -> None:
    """Fit what is not fitted yet for ``budgets`` (default: every ``k``) on the validation split of the
    trainer's datamodule, as many batches as the trainer validates (:func:`validation_limit`). Without one (or
    with ``--trainer.limit_val_batches 0``), state the model holds is used (a fit that only refines the selector is
    skipped with a warning), else a RuntimeError says to call ``calibrate_on_dataloader`` first."""
    budgets = [int(k) for k in (range(1, task.num_layers + 1) if budgets is None else budgets)]
    missing = [k for k in budgets if k not in task.calibrated_budgets]
    policy = task.depth
    if not policy.needs_calibration() or not missing:
        return
    trainer = attached_trainer(task)
    datamodule = validation_datamodule(trainer)
    why, fix = "a trainer without a datamodule with a validation split", "pass datamodule=... to the trainer"
    if datamodule is not None:
        datamodule.setup("validate")
        loader = datamodule.val_dataloader()
        for sampler in (getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)):
            if getattr(sampler, "num_replicas", 1) > 1:  # it shards by rank: every rank fits on all of the split
                sampler.num_replicas, sampler.rank = 1, 0
                if hasattr(sampler, "total_size"):  # torch's DistributedSampler sized itself for one shard
                    sampler.num_samples = sampler.total_size = len(sampler.dataset)
        count, described = validation_limit(trainer, loader)
        if count != 0:
            calibrate_on_batches(task, lambda: itertools.islice(loader, count), missing,
                                 source=f"validation data ({described})" if described else "validation data")
            if task.trainer.world_size > 1:  # then takes rank 0's fit: float noise cannot break a tie apart
                fitted = task.trainer.strategy.broadcast({name: b.cpu() for name, b in task.named_buffers()})
                task.load_state_dict(fitted, strict=False)
            return
        why = f"--trainer.limit_val_batches {trainer.limit_val_batches}: no validation batch"
        fix = "give --trainer.limit_val_batches at least one batch"
    if policy.calibrated_for(missing):
        return
    if policy.calibration_is_optional:
        log.warning("%s: no validation data to fit it on (%s): it runs unfitted, as with fallback: false; to fit it, "
                    "call model.calibrate_on_dataloader(val_loader) first or %s", policy, why, fix)
        return
    raise RuntimeError(f"{policy} must be fitted on validation data before test and predict (budgets {missing}), and "
                       f"there is none ({why}): call model.calibrate_on_dataloader(val_loader) first, or {fix}")


def calibrate_before_validation(task: LayerDropTask) -> None:
    """Re-fit what refits at each validation pass (threshold mode, confidence exit: they depend on the current
    weights) on the batches this pass is about to score, so ``val/<metric>@<k>`` is the method as ``ldrop test``
    runs it, at a mean of ``k`` layers on those batches. Under DDP each process fits on its own shard."""
    if not task.depth.needs_calibration(at_validation=True):
        return
    trainer = task.trainer
    loaders = trainer.val_dataloaders
    loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
    limits = trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches

    def batches():  # lazily, the batches the loop will validate (limit_val_batches, sanity steps)
        for loader, limit in zip(loaders, limits, strict=False):
            yield from itertools.islice(loader, None if math.isinf(limit) else int(limit))

    calibrate_on_batches(task, batches, task.val_budget_list, at_validation=True)


class _TaskCalibrationData:
    """The :class:`~ldrop.selectors.base.CalibrationData` a task hands to ``selector.calibrate``: its validation
    batches, encoded, and its primary metric with fixed layers."""

    def __init__(self, task: LayerDropTask, batches: Callable[[], Iterable[Any]]) -> None:
        # batches: a fresh iterable of batches on the task's device, in its precision, per call
        self.task = task
        self.batches = batches
        self.higher_is_better = task.higher_is_better
        self._encoded: list[tuple[Any, EncodedBatch]] | None = None

    def inputs(self) -> Iterator[EncodedBatch]:
        """Each batch encoded (streamed: nothing is kept)."""
        for batch in self.batches():
            yield self.task.encode(batch.waveforms, batch.lengths)

    def metric_with_layers(self, layers: Sequence[int]) -> float:
        """The task's primary metric when every input runs ``layers`` (batches encoded once, then kept)."""
        keep = torch.zeros(self.task.num_layers, device=self.task.device)
        keep[list(layers)] = 1.0
        return self.metric_with_masks(lambda encoded: keep.expand(encoded.frame_mask.shape[0], -1))

    def metric_with_masks(self, choose: Callable[[EncodedBatch], torch.Tensor]) -> float:
        """The task's primary metric when each batch runs the ``[batch, layers]`` masks ``choose`` returns
        for its encoded batch (batches encoded once, then kept)."""
        task = self.task
        if self._encoded is None:
            self._encoded = [(b, task.encode(b.waveforms, b.lengths)) for b in self.batches()]
        metrics = task._metrics_on_device()
        metrics[task.metric_names[0]].distributed_available_fn = lambda: False  # no sync: a fit is per process
        for batch, encoded in self._encoded:
            stop_if_sigterm(task)
            heartbeat()  # a fit's step (a budget, a layer removal) is many passes over the validation split
            keep = choose(encoded).to(device=task.device, dtype=torch.float32)
            task.update_metrics(metrics, task.logits_with_mask(encoded, keep), encoded.frame_mask, batch)
        return float(metrics[task.metric_names[0]].compute())
