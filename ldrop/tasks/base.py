"""LayerDropTask: the shared LightningModule behind every ldrop task (CTC, classification).

A task subclass only says what its head is, how logits are scored and decoded. Here: the hooks, forward,
the training and validation steps, in one path that every task shares. Beside it: who decides the depth
(:mod:`ldrop.tasks.depth`, :mod:`ldrop.tasks.early_exit`), the typed argument groups (:mod:`ldrop.tasks.config`),
prediction (:mod:`ldrop.tasks.prediction`), fitting on validation data (:mod:`ldrop.tasks.calibration`),
checkpoints (:mod:`ldrop.tasks.checkpointing`), the training step's safeguards (:mod:`ldrop.tasks.training`);
the test-time budget sweep is a callback (``ldrop.sweeps.BudgetSweep``, which ``ldrop test`` adds).
"""

from __future__ import annotations

import inspect
import itertools
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection

from ldrop._lightning import attached_trainer
from ldrop.backbones import load_backbone
from ldrop.budgets import budget_list
from ldrop.selectors import SelectorFactory, build_selector, selector_spec
from ldrop.tasks import calibration, checkpointing, gating, hooks, training
from ldrop.tasks.allocation import AllocatedLayers, AllocationConfig, DepthHead
from ldrop.tasks.config import (
    BudgetSampling,
    DistillationConfig,
    OptimizerConfig,
    as_config,
    as_dict,
    check_method,
)
from ldrop.tasks.depth import DepthPolicy, SelectedLayers
from ldrop.tasks.early_exit import EarlyExit, EarlyExitConfig
from ldrop.tasks.gating import EncodedBatch, GatingMixin
from ldrop.tasks.prediction import PredictionMixin, check_chunking, check_predict_budget
from ldrop.tasks.statistics import SelectorStatistics
from ldrop.tasks.waveforms import model_batch

log = logging.getLogger(__name__)


class LayerDropTask(PredictionMixin, GatingMixin, L.LightningModule, ABC):
    """A speech foundation model whose encoder depth adapts to the input and to a budget.

    Subclasses implement the small hooks :meth:`configure_head`, :meth:`compute_logits`,
    :meth:`task_loss`, :meth:`configure_metrics`, :meth:`update_metrics` and :meth:`decode`.

    Args:
        backbone: a hub id, a ``save_pretrained`` folder, ``"tiny:<family>[-large]"`` or ``"random:<family>"``.
        selector: builds the layer selector from ``(num_layers, feature_dim)`` (YAML: ``class_path`` and
            ``init_args``); ``None`` without ``early_exit``: the full model.
        pretrained: load the backbone's weights (``False``: random init from its config).
        backbone_overrides: config values to change when building the backbone (e.g. dropout).
        normalize_waveforms: zero mean, unit variance per waveform before the CNN (``None``: as the
            checkpoint's ``preprocessor_config.json`` says); a trained ldrop checkpoint keeps its own setting.
        batch_independent: each input's output is what it gets alone, whatever its batch-mates' padding
            (:class:`~ldrop.backbones.SpeechBackbone`; off: as Hugging Face batches).
        freeze: ``"cnn"`` (the CNN feature encoder), ``"backbone"`` (all of it) or ``"none"``.
        init_from: a checkpoint of an earlier ldrop run whose matching weights initialise this model.
        early_exit: the early-exit baseline instead of a selector (``None``: no early exit).
        allocation: the input decides how many layers it runs, the selector which (``None``: every input
            runs the budget).
        budgets: training and validation budgets (without a selector every layer trains at every budget).
        predict_budget: budget of ``predict``: layers, a fraction, or a target (``{rtf: 0.1}``, see
            :mod:`ldrop.runtime`).
        predict_chunk_seconds: ``predict`` splits longer inputs into chunks of this length (``None``: never).
        predict_chunk_overlap_seconds: audio shared by consecutive chunks.
        distillation: self-distillation of a selector's passes from the full-depth pass.
        optimization: AdamW and its schedule.
        statistics_batches: recent training batches on which a selector's running statistics are
            re-estimated (:class:`~ldrop.tasks.statistics.SelectorStatistics`, which the task installs).
    """

    #: Hyper-parameters are stored under this checkpoint key (``load_from_checkpoint`` reads it). Not the
    #: default ``"hyper_parameters"``: LightningCLI applies that over the config given with ``--ckpt_path``,
    #: so a selector option on the command line would be silently ignored; here the command line decides.
    CHECKPOINT_HYPER_PARAMS_KEY = "ldrop_hyper_parameters"

    #: Name of the metric reported in sweeps; subclasses override.
    metric_names: tuple[str, ...] = ("metric",)
    #: Whether a larger primary metric is better (the others': their torchmetrics ``higher_is_better``).
    higher_is_better: bool = True
    #: Whether the task implements :meth:`item_errors` (the sweep's oracles need it).
    has_item_errors: bool = False

    def __init__(
        self,
        backbone: str = "tiny:wavlm",
        selector: SelectorFactory | None = None,
        pretrained: bool = True,
        backbone_overrides: dict[str, Any] | None = None,
        normalize_waveforms: bool | None = None,
        batch_independent: bool = False,
        freeze: Literal["cnn", "backbone", "none"] = "cnn",
        init_from: str | None = None,
        early_exit: EarlyExitConfig | None = None,
        allocation: AllocationConfig | None = None,
        budgets: BudgetSampling = BudgetSampling(),
        predict_budget: int | float | dict[str, Any] = 1.0,
        predict_chunk_seconds: float | None = 30.0,
        predict_chunk_overlap_seconds: float = 2.0,
        distillation: DistillationConfig = DistillationConfig(),
        optimization: OptimizerConfig = OptimizerConfig(),
        statistics_batches: int = 16,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["selector"])
        early_exit, allocation = as_config(EarlyExitConfig, early_exit), as_config(AllocationConfig, allocation)
        self.budgets, self.distillation, self.optimization = (
            as_config(BudgetSampling, budgets), as_config(DistillationConfig, distillation),
            as_config(OptimizerConfig, optimization))
        self.hparams.update(selector=selector_spec(selector), early_exit=as_dict(early_exit),
                            allocation=as_dict(allocation), budgets=as_dict(self.budgets),
                            distillation=as_dict(self.distillation), optimization=as_dict(self.optimization))
        check_method(selector is not None, early_exit, allocation)
        check_chunking(predict_chunk_seconds, predict_chunk_overlap_seconds)
        backbone_module = load_backbone(backbone, pretrained, backbone_overrides, freeze != "none",
                                        normalize_waveforms, batch_independent)
        training.freeze_backbone(backbone_module, freeze)
        num_layers, feature_dim = backbone_module.num_layers, backbone_module.feature_dim
        self.configure_gating(
            backbone_module,
            build_selector(selector, num_layers, feature_dim, backbone_module.hidden_size)
            if selector is not None else None,
        )
        self.train_budget_choices = budget_list(self.budgets.train, num_layers, "budgets.train")
        self.val_budget_list = budget_list(self.budgets.validation, num_layers, "budgets.validation")
        check_predict_budget(predict_budget, backbone_module.config, num_layers)
        self.depth: DepthPolicy  # who decides the depth
        if early_exit is not None:
            self.depth = EarlyExit(early_exit, num_layers, self.configure_head)
        else:
            self.head = self.configure_head()
            self.depth = SelectedLayers(self.selector, self.head)
        if allocation is not None:  # reads what the selector reads: the CNN features or the prefix's output
            dim = backbone_module.hidden_size if self.prefix_layers else feature_dim
            self.depth_head = DepthHead(dim, num_layers, allocation.hidden_dim)
            self.depth = AllocatedLayers(self.selector, self.head, self.depth_head, allocation)
        self.calibrated_budgets: set[int] = set()  # fitted on validation data for these weights (calibration.py)
        if init_from:
            checkpointing.load_weights_from(self, init_from)

    def save_hyperparameters(self, *args: Any, ignore: Sequence[str] | str | None = None, frame: Any = None,
                             logger: bool = True) -> None:
        """Lightning's ``save_hyperparameters``, keeping what ldrop stores in serialisable form (the selector as
        ``{class_path, init_args}``, the argument groups as dicts) when a subclass's ``__init__`` calls it
        again, so that its checkpoints still load (``torch.load(weights_only=True)``)."""
        super().save_hyperparameters(*args, ignore=ignore, frame=frame or inspect.currentframe().f_back,
                                     logger=logger)
        checkpointing.serialisable_hparams(self.hparams)

    #: Lightning's; a checkpoint holding a pickled class (see :meth:`save_hyperparameters`) is one line.
    load_from_checkpoint = checkpointing.NamedPickledObjects(vars(L.LightningModule)["load_from_checkpoint"])

    # ------------------------------------------------------------------ hooks for subclasses
    @abstractmethod
    def configure_head(self) -> nn.Module:
        """The task head reading ``[batch, frames, hidden]`` encoder states."""

    @abstractmethod
    def compute_logits(self, head: nn.Module, hidden: Tensor, frame_mask: Tensor) -> Tensor:
        """Logits of ``head`` on encoder states (``[batch, classes]`` or ``[batch, frames, vocab]``)."""

    @abstractmethod
    def task_loss(self, logits: Tensor, frame_mask: Tensor, batch: Any) -> Tensor:
        """The task loss of a batch (mean over samples)."""

    @abstractmethod
    def configure_metrics(self) -> dict[str, Metric]:
        """Fresh metric objects keyed by the names in :attr:`metric_names`."""

    @abstractmethod
    def update_metrics(self, metrics: dict[str, Metric], logits: Tensor, frame_mask: Tensor, batch: Any) -> None:
        """Update metric objects with a batch."""

    def item_losses(self, logits: Tensor, frame_mask: Tensor, batch: Any) -> Tensor:
        """``[batch]`` task loss of each input (the terms :meth:`task_loss` averages; counterfactual objective)."""
        raise NotImplementedError(f"{type(self).__name__} has no item_losses: the counterfactual objective and "
                                  "depth allocation need it")

    def item_errors(self, logits: Tensor, frame_mask: Tensor, batch: Any) -> tuple[Tensor, Tensor]:
        """``(errors, counts)``, each ``[batch]``: the primary metric's terms per input (the sweep's oracles);
        a task that implements it sets :attr:`has_item_errors`."""
        raise NotImplementedError

    @abstractmethod
    def decode(self, logits: Tensor, frame_mask: Tensor) -> list[Any]:
        """Per-sample outputs (transcripts or label names) from logits."""

    # ------------------------------------------------------------------ forward
    def forward(self, waveforms: Tensor, lengths: Tensor | None = None, budget: int | float | Tensor | None = None):
        """``(logits, keep_mask [batch, layers])`` of ``waveforms`` (``[batch, samples]`` zero-padded with
        ``lengths``, one utterance ``[samples]``, or arrays, lists of clips or audio files, as ``AdaptiveModel``
        takes them) under ``budget`` (layers, a fraction, a ``[batch]`` tensor; ``None``: every layer)."""
        encoded = self.encode(*model_batch(self, waveforms, lengths, self.sample_rate))
        logits, keep, _ = self.logits_at_budget(encoded, self.num_layers if budget is None else budget)
        return logits, keep

    @property
    def example_input_array(self) -> tuple[Tensor, Tensor] | Any:
        """``(waveforms [1, samples], lengths [1])``: 1 s of silence in the model's dtype (``bf16-true``,
        ``64-true``), run by Lightning's model summary (the FLOPs of a full-depth forward pass, selector included)."""
        if self._example_input_array is not None:
            return self._example_input_array
        return torch.zeros(1, self.sample_rate, dtype=self.dtype), torch.tensor([self.sample_rate])

    @example_input_array.setter
    def example_input_array(self, example: Any) -> None:
        self._example_input_array = example

    def logits_at_budget(self, encoded: EncodedBatch, budget: int | float | Tensor):
        """``(logits, keep_mask, selector output or None)`` for one budget, reusing the encoded batch."""
        return self.depth.logits(self, encoded, budget)  # each policy checks its logits (tasks.hooks)

    def logits_with_mask(self, encoded: EncodedBatch, keep: Tensor) -> Tensor:
        """Logits when every sample runs the layers of ``keep`` (controls and static search)."""
        hidden, _ = self.run_layers(encoded, keep)
        return hooks.check_logits(self, self.compute_logits(self.depth.head_for(), hidden, encoded.frame_mask), len(keep))

    def method_label(self) -> str:
        """How this run is named in sweeps (unless the sweep's ``method_name`` says otherwise)."""
        return self.depth.label()

    # ------------------------------------------------------------------ training
    def sample_train_budget(self) -> int:
        """One budget for this batch: full depth with ``full_depth_prob``, else uniform over the choices."""
        if torch.rand(()) < self.budgets.full_depth_prob:
            return self.num_layers
        choices = self.train_budget_choices
        return choices[int(torch.randint(len(choices), ()))]

    def setup(self, stage: str) -> None:  # data at another rate than the model takes is refused (the CLI: earlier)
        gating.check_data_sample_rate(self)  # encode checks again: a subclass's setup may not call this one
        if stage == "fit":  # training-only options: checkpoints saved with them still load
            training.check_fit_options(self)

    def on_train_start(self) -> None:
        self.calibrated_budgets.clear()  # training changes the weights the fits were made for

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.selector is not None and self.trainer is not None:
            self.selector.set_progress(min(1.0, self.global_step / training.fit_steps(self)))

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any] | Tensor | None:
        """``{"loss": loss, "encoded": encoded batch}``: callbacks read ``outputs["encoded"]`` (the selector's
        statistics refresh, :class:`~ldrop.tasks.statistics.SelectorStatistics`), so an override returns this
        dict with its ``"loss"`` changed, not the loss alone. ``None`` (or, under DDP, a zero loss) for an empty
        batch, which is skipped."""
        if len(batch) == 0:
            return training.empty_batch_loss(self)
        encoded = self.encode(batch.waveforms, batch.lengths)
        losses, keep, budget = self.depth.training_losses(self, encoded, batch)
        loss = sum(losses.values())
        training.check_finite_loss(self, loss, losses, batch)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            loss = loss + training.unused_parameter_anchor(self, keep)
        size = len(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        for name, value in losses.items():
            self.log(f"train/{name}_loss", value, batch_size=size)
        self.log("train/executed_layers", keep.detach().sum(1).float().mean(), batch_size=size)
        self.log("train/budget", float(budget), batch_size=size)
        # The encoded batch reaches callbacks' on_train_batch_end (SelectorStatistics keeps recent inputs).
        return {"loss": loss, "encoded": encoded}

    def configure_optimizers(self):
        """AdamW with three groups: backbone (``lr``), selector (``selector_lr``) and every other trainable
        parameter (``head_lr``: the head(s) and any module a subclass adds), then the warm-up/decay schedule."""
        return self.optimization.configure(self, self.backbone, self.selector, training.optimizer_steps(self))

    # ------------------------------------------------------------------ validation
    def configure_callbacks(self) -> list[L.Callback]:
        """The selector-statistics refresh, unless the trainer has its own."""
        present = self.trainer.callbacks if attached_trainer(self) is not None else []
        if any(isinstance(c, SelectorStatistics) for c in present):
            return []
        return [SelectorStatistics(self.hparams.statistics_batches)]

    def on_validation_epoch_start(self) -> None:
        calibration.calibrate_before_validation(self)
        # compute_groups off: WER and CER share state names, never their values.
        metrics = MetricCollection(hooks.checked_metrics(self), compute_groups=False)
        self._val_metrics = {k: metrics.clone(prefix="val/", postfix=f"@{k}").to(self.device)
                             for k in self.val_budget_list}

    def _metrics_on_device(self) -> dict[str, Metric]:
        return {name: metric.to(self.device) for name, metric in hooks.checked_metrics(self).items()}

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        encoded = self.encode(batch.waveforms, batch.lengths)
        for k in self.val_budget_list:
            logits, keep, _ = self.logits_at_budget(encoded, k)
            self.update_metrics(self._val_metrics[k], logits, encoded.frame_mask, batch)
            if k == self.val_budget_list[-1]:
                self.log("val/loss", self.task_loss(logits, encoded.frame_mask, batch), batch_size=len(batch),
                         sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        primary = self.metric_names[0]
        values = []
        for k, metrics in self._val_metrics.items():
            results = metrics.compute()  # {"val/<metric>@<k>": value}, synchronised: the same on every process
            self.log_dict(results, sync_dist=True)  # a mean of equal values; unsynced, Lightning warns under DDP
            values.append(results[f"val/{primary}@{k}"])
        # Mean over the validation budgets: what checkpointing monitors ("val/<metric>").
        self.log(f"val/{primary}", torch.stack(values).mean(), prog_bar=True, sync_dist=True)

    # ------------------------------------------------------------------ fitting on validation data
    def calibrate_on_dataloader(self, dataloader: Iterable[Any], budgets: Sequence[int] | None = None,
                          max_batches: int | None = None) -> None:
        """Fit what needs validation data on ``dataloader``'s batches for ``budgets`` (default: every ``k``),
        e.g. before ``Trainer.test(model, dataloaders=...)`` or on a model from ``ldrop.load_model``."""
        budgets = range(1, self.num_layers + 1) if budgets is None else budgets
        calibration.calibrate_on_batches(self, lambda: itertools.islice(dataloader, max_batches), budgets)

    def calibrate_on_validation_data(self, budgets: Sequence[int] | None = None) -> None:
        """Before test and predict: fit what is not fitted yet for ``budgets`` on the trainer's datamodule's
        validation split (:func:`ldrop.tasks.calibration.calibrate_on_validation_data`)."""
        calibration.calibrate_on_validation_data(self, budgets)

    # ------------------------------------------------------------------ test and predict
    def on_test_start(self) -> None:
        if not any(type(c).on_test_batch_end is not L.Callback.on_test_batch_end  # a scorer, not a progress bar
                   and not type(c).__module__.startswith("lightning.") for c in self.trainer.callbacks):
            log.warning("no callback scores the test batches (e.g. ldrop.sweeps.BudgetSweep): test scores nothing")

    def test_step(self, batch: Any, batch_idx: int) -> EncodedBatch:
        """The encoded batch; a callback (``ldrop.sweeps.BudgetSweep``) scores it at each budget."""
        return self.encode(batch.waveforms, batch.lengths)

    def on_predict_start(self) -> None:
        self.calibrate_on_validation_data()

    @property
    def sample_rate(self) -> int:
        """The attached datamodule's sample rate, else the backbone's (:attr:`SpeechBackbone.sample_rate`)."""
        datamodule = getattr(self.trainer, "datamodule", None) if attached_trainer(self) is not None else None
        return int(getattr(datamodule, "sample_rate", None) or self.backbone.sample_rate)

    # ------------------------------------------------------------------ checkpoints (ldrop.tasks.checkpointing)
    def export_pretrained(self, directory: str | Path) -> Path:
        """The backbone as a ``save_pretrained`` folder, heads and selector beside it (a later ``backbone``)."""
        return checkpointing.export_pretrained(self, directory)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpointing.record_checkpoint(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.calibrated_budgets.clear()  # other weights
        checkpointing.restore_from_checkpoint(self, checkpoint)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``; weights that do not fit are one line naming what differs."""
        with checkpointing.named_mismatch(self, state_dict, strict):
            return super().load_state_dict(state_dict, strict=strict, assign=assign)


def metric_properties(task: LayerDropTask) -> dict[str, dict[str, bool | None]]:
    """Per name in ``task.metric_names``: ``higher_is_better`` (the primary metric's: the task's attribute; the
    others': their torchmetrics ``higher_is_better``, ``None`` if unset) and ``fraction`` (torchmetrics'
    ``plot_lower_bound``/``plot_upper_bound`` are 0 and 1: accuracy, WER; differences shown in points x100)."""
    metrics = task.configure_metrics()
    properties = {}
    for i, name in enumerate(task.metric_names):
        metric = metrics.get(name)
        own = getattr(metric, "higher_is_better", None)
        properties[name] = {
            "higher_is_better": bool(task.higher_is_better) if i == 0 else own if isinstance(own, bool) else None,
            "fraction": (getattr(metric, "plot_lower_bound", None), getattr(metric, "plot_upper_bound", None)) == (0, 1),
        }
    return properties
