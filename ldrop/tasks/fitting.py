"""Fitting on validation data: selectors that say :attr:`~ldrop.selectors.LayerSelector.needs_fitting`
(threshold calibration, static subset search, a user's own) and confidence-based early exit are fitted by
one loop, whatever their class."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ldrop.tasks.gating import EncodedBatch

if TYPE_CHECKING:
    from ldrop.tasks.base import LayerDropTask


class ValidationFittingMixin:
    """The fitting loop of :class:`~ldrop.tasks.LayerDropTask` (mixed into it)."""

    def _selector_needs_fitting(self, at_validation: bool = False) -> bool:
        selector = self.selector
        return selector is not None and selector.needs_fitting and (selector.fits_at_validation or not at_validation)

    def _needs_fitting(self, at_validation: bool = False) -> bool:
        early_exit = self.early_exit is not None and self.early_exit.needs_fitting
        return self._selector_needs_fitting(at_validation) or early_exit

    @torch.no_grad()
    def fit_on_batches(self, batches: Callable[[], Iterable[Any]], budgets: Sequence[int],
                       at_validation: bool = False) -> None:
        """Fit the selector (any that says :attr:`~LayerSelector.needs_fitting`) and confidence early exit.

        Args:
            batches: returns a fresh iterable of validation batches each time it is called.
            budgets: the budgets that will be evaluated (thresholds, subsets per budget).
            at_validation: a fit before a validation pass in training: only selectors that refit each
                validation (:attr:`~LayerSelector.fits_at_validation`).
        """
        if self._selector_needs_fitting(at_validation):
            self.selector.fit(_TaskFittingData(self, batches), [int(k) for k in budgets])
        if self.early_exit is not None and self.early_exit.needs_fitting:
            self.calibrate_exit_thresholds(batches())

    def fit_on_dataloader(self, dataloader: Iterable[Any], budgets: Sequence[int] | None = None,
                          max_batches: int | None = None) -> None:
        """:meth:`fit_on_batches` on a dataloader (``budgets`` default: every ``k`` in ``1..N``)."""
        budgets = range(1, self.num_layers + 1) if budgets is None else budgets
        self.fit_on_batches(lambda: itertools.islice(dataloader, max_batches), budgets)

    def fit_on_validation_data(self, budgets: Sequence[int] | None = None) -> None:
        """Fit what needs validation data on the validation split of the trainer's datamodule (test, predict).

        Raises:
            RuntimeError: fitting is needed but the trainer has no datamodule.
        """
        if not self._needs_fitting():
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            raise RuntimeError("calibration/search needs a datamodule with validation data")
        datamodule.setup("validate")
        self.fit_on_dataloader(datamodule.val_dataloader(), budgets)


class _TaskFittingData:
    """The :class:`~ldrop.selectors.base.FittingData` a task hands to ``selector.fit``: its validation batches,
    encoded, and its primary metric with fixed layers."""

    def __init__(self, task: LayerDropTask, batches: Callable[[], Iterable[Any]]) -> None:
        self.task = task
        self.batches = batches
        self.higher_is_better = task.higher_is_better
        self._encoded: list[tuple[Any, EncodedBatch]] | None = None

    def _device_batches(self) -> Iterator[Any]:
        for batch in self.batches():
            yield self.task.transfer_batch_to_device(batch, self.task.device, 0)

    def inputs(self) -> Iterator[EncodedBatch]:
        """Each batch encoded (streamed: nothing is kept)."""
        for batch in self._device_batches():
            yield self.task.encode(batch.waveforms, batch.lengths)

    def metric_with_layers(self, layers: Sequence[int]) -> float:
        """The task's primary metric when every input runs ``layers`` (batches encoded once, then kept)."""
        layers = list(layers)

        def fixed(encoded: EncodedBatch) -> torch.Tensor:
            keep = torch.zeros(encoded.frame_mask.shape[0], self.task.num_layers, device=self.task.device)
            keep[:, layers] = 1.0
            return keep

        return self.metric_with_masks(fixed)

    def metric_with_masks(self, choose: Callable[[EncodedBatch], torch.Tensor]) -> float:
        """The task's primary metric when each batch runs the ``[batch, layers]`` masks ``choose`` returns
        for its encoded batch (batches encoded once, then kept)."""
        task = self.task
        if self._encoded is None:
            self._encoded = [(b, task.encode(b.waveforms, b.lengths)) for b in self._device_batches()]
        metrics = task._metrics_on_device()
        for batch, encoded in self._encoded:
            keep = choose(encoded).to(device=task.device, dtype=torch.float32)
            task.update_metrics(metrics, task.logits_with_mask(encoded, keep), encoded.frame_mask, batch)
        return float(metrics[task.metric_names[0]].compute())
