"""Fitting on validation data: selectors that say :attr:`~ldrop.selectors.LayerSelector.needs_fitting`
(threshold calibration, static subset search, a user's own) and confidence-based early exit are fitted by
one loop, whatever their class.

The loop runs outside Lightning's step methods, so it applies the trainer's precision itself
(:mod:`ldrop.tasks.precision`): every batch is moved to the model's device and converted as the step
methods get it, and every forward runs in the precision plugin's context.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ldrop._progress import Phase
from ldrop.tasks.gating import EncodedBatch
from ldrop.tasks.precision import precision_context, to_model_precision

if TYPE_CHECKING:
    from ldrop.tasks.base import LayerDropTask

log = logging.getLogger(__name__)


class ValidationFittingMixin:
    """The fitting loop of :class:`~ldrop.tasks.LayerDropTask` (mixed into it).

    A fit is kept: the budgets fitted by :meth:`fit_on_dataloader` (or by :meth:`fit_on_validation_data`
    before an earlier test or predict) are not fitted again before the next test or predict, until training
    starts or Lightning loads a checkpoint into the model (its weights then change).
    """

    def _selector_needs_fitting(self, at_validation: bool = False) -> bool:
        selector = self.selector
        return selector is not None and selector.needs_fitting and (selector.fits_at_validation or not at_validation)

    def _needs_fitting(self, at_validation: bool = False) -> bool:
        early_exit = self.early_exit is not None and self.early_exit.needs_fitting
        return self._selector_needs_fitting(at_validation) or early_exit

    @property
    def fitted_budgets(self) -> frozenset[int]:
        """Budgets fitted on validation data for evaluation with the current weights (see the class docs)."""
        return frozenset(getattr(self, "_fitted_budgets", ()))

    def _forget_fits(self) -> None:
        self._fitted_budgets: set[int] = set()

    def on_train_start(self) -> None:
        self._forget_fits()  # training changes the weights the fits were made for
        super().on_train_start()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._forget_fits()  # other weights
        super().on_load_checkpoint(checkpoint)

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
        budgets = [int(k) for k in budgets]
        fit_selector = self._selector_needs_fitting(at_validation)
        fit_exits = self.early_exit is not None and self.early_exit.needs_fitting
        if at_validation:
            self._forget_fits()  # a fit on the validation batches of training is not one for evaluation
        if not (fit_selector or fit_exits):
            return
        what = " and ".join([type(self.selector).__name__] * fit_selector + ["early-exit thresholds"] * fit_exits)
        # Before each validation pass in training it is one quick calibration: no lines; before test and
        # predict it can take minutes (several passes per budget, a greedy search): progress lines.
        phase = Phase(f"fitting {what} on validation data", unit="validation batch") if not at_validation else None

        def model_batches() -> Iterator[Any]:  # on the model's device, in the trainer's precision
            for batch in batches():
                yield to_model_precision(self, self.transfer_batch_to_device(batch, self.device, 0))
                if phase is not None:
                    phase.step()

        with precision_context(self), phase or contextlib.nullcontext():
            if fit_selector:
                self.selector.fit(_TaskFittingData(self, model_batches), budgets)
            if fit_exits:
                self.calibrate_exit_thresholds(model_batches())
        if not at_validation:
            self._fitted_budgets = set(self.fitted_budgets) | set(budgets)

    def fit_on_dataloader(self, dataloader: Iterable[Any], budgets: Sequence[int] | None = None,
                          max_batches: int | None = None) -> None:
        """:meth:`fit_on_batches` on a dataloader (``budgets`` default: every ``k`` in ``1..N``).

        Use it to fit a model outside ``ldrop test``/``ldrop predict`` (e.g. before ``Trainer.test(model,
        dataloaders=...)``, or on a model from ``ldrop.load_model``): ``dataloader`` yields the validation
        batches (``AudioBatch``), e.g. ``datamodule.setup("validate"); datamodule.val_dataloader()``.
        """
        budgets = range(1, self.num_layers + 1) if budgets is None else budgets
        self.fit_on_batches(lambda: itertools.islice(dataloader, max_batches), budgets)

    def fit_on_validation_data(self, budgets: Sequence[int] | None = None) -> None:
        """Before test and predict: fit what needs validation data and is not fitted yet for ``budgets``.

        Budgets already fitted (:attr:`fitted_budgets`) are not fitted again. The rest is fitted on the
        validation split of the trainer's datamodule. Without one (``Trainer.test(model, dataloaders=...)``):
        a selector whose fit only refines it (the input-conditioned selector's fallback) runs unfitted, as
        with ``fallback: false``, and says so in one warning; state the model already holds for ``budgets``
        (thresholds from a checkpoint) is used as it is.

        Args:
            budgets: the budgets that will be evaluated (default: every ``k`` in ``1..N``).

        Raises:
            RuntimeError: fitting is needed, the model holds no fit for ``budgets`` and there is no validation
                data; the message says how to fit (``model.fit_on_dataloader(val_loader)``).
        """
        budgets = [int(k) for k in (range(1, self.num_layers + 1) if budgets is None else budgets)]
        missing = [k for k in budgets if k not in self.fitted_budgets]
        if not self._needs_fitting() or not missing:
            return
        loader = self._validation_dataloader()
        if loader is not None:
            self.fit_on_dataloader(loader, missing)
            return
        selector_fitted = not self._selector_needs_fitting() or self.selector.fitted_for(missing)
        exits_fitted = self.early_exit is None or not self.early_exit.needs_fitting or self.early_exit.fitted_for(missing)
        if selector_fitted and exits_fitted:
            return
        if exits_fitted and self.selector.fit_is_optional:
            log.warning(
                "%s: no validation data to fit it on (a trainer without a datamodule with a validation split): it "
                "runs unfitted, as with fallback: false; to fit it, call model.fit_on_dataloader(val_loader) "
                "first or pass a datamodule", type(self.selector).__name__)
            return
        what = type(self.selector).__name__ if not selector_fitted else "early exit (policy: confidence)"
        raise RuntimeError(
            f"{what} must be fitted on validation data before test and predict (budgets {missing}), and the trainer "
            "has no datamodule with a validation split: call model.fit_on_dataloader(val_loader) first, or pass "
            "datamodule=... to the trainer"
        )

    def _validation_dataloader(self) -> Iterable[Any] | None:
        """The validation loader of the trainer's datamodule, or ``None`` without one (or without that split)."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        has_split = getattr(datamodule, "has_split", None)
        if datamodule is None or (callable(has_split) and not has_split("val")):
            return None
        datamodule.setup("validate")
        return datamodule.val_dataloader()


class _TaskFittingData:
    """The :class:`~ldrop.selectors.base.FittingData` a task hands to ``selector.fit``: its validation batches,
    encoded, and its primary metric with fixed layers."""

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
            self._encoded = [(b, task.encode(b.waveforms, b.lengths)) for b in self.batches()]
        metrics = task._metrics_on_device()
        for batch, encoded in self._encoded:
            keep = choose(encoded).to(device=task.device, dtype=torch.float32)
            task.update_metrics(metrics, task.logits_with_mask(encoded, keep), encoded.frame_mask, batch)
        return float(metrics[task.metric_names[0]].compute())
