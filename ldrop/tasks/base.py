"""LayerDropTask: the shared LightningModule behind every ldrop task (CTC, classification).

A task subclass only says what its head is, how logits are scored and decoded. Here: the hooks, forward,
the training and validation steps and the optimisers, in one path that every task shares. The other
responsibilities live beside it: prediction and long inputs (:mod:`ldrop.tasks.prediction`), fitting on
validation data (:mod:`ldrop.tasks.fitting`), checkpoints and exports (:mod:`ldrop.tasks.checkpointing`),
early exit (:mod:`ldrop.tasks.early_exit`), selector statistics (:mod:`ldrop.tasks.statistics`); the budget
sweep is a callback (:class:`ldrop.sweeps.BudgetSweep`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection

from ldrop.backbones import SpeechBackbone, load_backbone
from ldrop.budgets import Target, budget_list, budget_to_layers, is_target, resolve_budget
from ldrop.selectors import SelectorFactory, build_selector, selector_spec
from ldrop.tasks.checkpointing import EXPORT_STATE_FILE, NORMALIZE_KEY, CheckpointMixin  # noqa: F401 (re-exported)
from ldrop.tasks.counterfactual import counterfactual_loss
from ldrop.tasks.early_exit import EarlyExit, EarlyExitConfig
from ldrop.tasks.fitting import ValidationFittingMixin
from ldrop.tasks.gating import EncodedBatch, GatingMixin
from ldrop.tasks.prediction import PredictionMixin
from ldrop.tasks.schedules import lr_schedule
from ldrop.tasks.statistics import SelectorStatistics

log = logging.getLogger(__name__)


class LayerDropTask(PredictionMixin, ValidationFittingMixin, CheckpointMixin, GatingMixin, L.LightningModule, ABC):
    """A speech foundation model whose encoder depth adapts to the input and to a budget.

    Subclasses implement the small hooks :meth:`configure_head`, :meth:`compute_logits`,
    :meth:`task_loss`, :meth:`configure_metrics`, :meth:`update_metrics` and :meth:`decode`.

    Args:
        backbone: Hugging Face hub id (``"microsoft/wavlm-base-plus"``), a local ``save_pretrained``
            directory, or ``"tiny:<family>"`` for a tiny random model (tests, quickstart).
        selector: builds the layer selector from ``(num_layers, feature_dim)``; in YAML a ``class_path``
            with ``init_args``. ``None`` without ``early_exit`` is the full model (no dropping). A selector
            with ``input: layers`` gets the backbone's hidden size as ``feature_dim``.
        pretrained: load the backbone's weights (``False``: random init from its config).
        backbone_overrides: config values to change when building the backbone (e.g. dropout).
        normalize_waveforms: normalise each waveform to zero mean and unit variance over its real samples
            before the CNN (padding stays zero). ``None``: as the checkpoint's ``preprocessor_config.json``
            says (``do_normalize``); no normalisation for ``tiny:``/``random:`` backbones or a folder without
            that file.
        freeze: ``"cnn"`` freezes the CNN feature encoder (usual fine-tuning), ``"backbone"`` trains only
            the head(s) and the selector, ``"none"`` trains everything.
        init_from: a Lightning checkpoint of an earlier ldrop run (e.g. a full-depth fine-tune) whose
            matching weights initialise this model; the selector is kept fresh when it is absent there.
        early_exit: the early-exit baseline (:class:`~ldrop.tasks.early_exit.EarlyExitConfig`: exit layers,
            loss weights, policy, confidence): a head after each exit layer, trained with the weighted sum of
            exit losses; budget ``k`` exits after the last exit layer ``<= k``. ``None``: no early exit.
        train_budgets: budgets sampled (uniformly, once per batch) in training; ints are layers, floats
            fractions; ``None``: every ``k`` in ``1..N``. One trained model serves every budget.
        full_depth_prob: extra probability of training a batch at full depth.
        val_budgets: budgets evaluated at validation (metric logged as ``val/<metric>@<k>``).
        predict_budget: budget used by ``predict``: layers, a fraction, or a target such as ``{rtf: 0.1}``,
            ``{ms: 80, profile: profile.json}`` or ``{gflops_per_second: 2}`` (see :mod:`ldrop.runtime`).
        predict_chunk_seconds: ``predict`` splits inputs longer than this into chunks of this length (each
            chunk runs the selector and the budget on its own) and merges them: classification averages the
            chunk logits weighted by chunk length, CTC joins the chunk logits frame by frame. Bounds memory
            on long recordings (WavLM's position bias grows with frames squared). ``None``: no chunking.
        predict_chunk_overlap_seconds: audio shared by consecutive chunks; for CTC each chunk's frames
            in the first/last half of the overlap are dropped (the neighbour's, with more context, are
            kept). At least the CNN's receptive field minus one frame hop is always shared.
        distill_weight: weight of self-distillation from the full-depth pass (KL, teacher without gradient).
        distill_temperature: softmax temperature of that KL.
        lr: learning rate of the backbone.
        head_lr: learning rate of the head(s) (default ``lr``).
        selector_lr: learning rate of the selector (default ``head_lr``).
        weight_decay: AdamW weight decay.
        warmup: warm-up steps (int) or fraction of all training steps (float).
        schedule: after warm-up: ``"linear"`` decay to 0, ``"tri_stage"`` (hold, then exponential decay to
            5%), or ``"constant"``.
        statistics_batches: for selectors that standardise scores with running statistics: before each
            validation during fit and at the end of training, the statistics are re-estimated on this many
            recent training batches (:class:`~ldrop.tasks.statistics.SelectorStatistics`, which the task
            installs), so that the checkpoint's statistics match its weights.

    The test-time budget sweep (budgets, repeats, controls, method label) is the
    :class:`~ldrop.sweeps.BudgetSweep` callback (``--sweep.*`` in the CLI), not a model setting.
    """

    #: Hyper-parameters are stored under this checkpoint key (``load_from_checkpoint`` reads it). Not the
    #: default ``"hyper_parameters"``: LightningCLI applies that over the config given with ``--ckpt_path``,
    #: so a selector option on the command line would be silently ignored; here the command line decides.
    CHECKPOINT_HYPER_PARAMS_KEY = "ldrop_hyper_parameters"

    #: Name of the metric reported in sweeps; subclasses override.
    metric_names: tuple[str, ...] = ("metric",)
    #: Whether a larger primary metric is better.
    higher_is_better: bool = True

    def __init__(
        self,
        backbone: str = "tiny:wavlm",
        selector: SelectorFactory | None = None,
        pretrained: bool = True,
        backbone_overrides: dict[str, Any] | None = None,
        normalize_waveforms: bool | None = None,
        freeze: Literal["cnn", "backbone", "none"] = "cnn",
        init_from: str | None = None,
        early_exit: EarlyExitConfig | None = None,
        train_budgets: list[int | float] | None = None,
        full_depth_prob: float = 0.1,
        val_budgets: list[int | float] | None = [0.25, 0.5, 1.0],  # noqa: B006 (read-only default)
        predict_budget: int | float | dict[str, Any] = 1.0,
        predict_chunk_seconds: float | None = 30.0,
        predict_chunk_overlap_seconds: float = 2.0,
        distill_weight: float = 0.0,
        distill_temperature: float = 1.0,
        lr: float = 5e-5,
        head_lr: float | None = 1e-3,
        selector_lr: float | None = None,
        weight_decay: float = 0.01,
        warmup: int | float = 0.1,
        schedule: Literal["linear", "tri_stage", "constant"] = "linear",
        statistics_batches: int = 16,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["selector"])
        self.hparams["selector"] = selector_spec(selector)
        if isinstance(early_exit, dict):  # as stored in a checkpoint
            early_exit = EarlyExitConfig(**early_exit)
        self.hparams["early_exit"] = dataclasses.asdict(early_exit) if early_exit is not None else None
        if early_exit is not None and selector is not None:
            raise ValueError("early_exit is a method of its own: leave selector unset (None)")
        if not 0.0 <= full_depth_prob <= 1.0:
            raise ValueError(f"full_depth_prob must be in [0, 1], got {full_depth_prob}")
        if predict_chunk_seconds is not None and predict_chunk_seconds <= predict_chunk_overlap_seconds:
            raise ValueError(
                f"predict_chunk_seconds ({predict_chunk_seconds}) must exceed predict_chunk_overlap_seconds "
                f"({predict_chunk_overlap_seconds}), or be None (no chunking)"
            )
        if predict_chunk_overlap_seconds < 0:
            raise ValueError(f"predict_chunk_overlap_seconds must be >= 0, got {predict_chunk_overlap_seconds}")
        backbone_module = load_backbone(backbone, pretrained, backbone_overrides, freeze != "none",
                                        normalize_waveforms)
        self.configure_backbone_freezing(backbone_module, freeze)
        num_layers, feature_dim = backbone_module.num_layers, backbone_module.feature_dim
        self.configure_gating(
            backbone_module,
            build_selector(selector, num_layers, feature_dim, backbone_module.hidden_size)
            if selector is not None else None,
        )
        self.train_budget_choices = budget_list(train_budgets, num_layers)
        self.val_budget_list = budget_list(val_budgets, num_layers)
        if is_target(predict_budget):  # validate early
            Target.parse(predict_budget)
        else:
            budget_to_layers(predict_budget, num_layers)
        self.configure_heads(early_exit)
        if init_from:
            self.load_weights_from(init_from)

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
        """``[batch]`` task loss of each input (the terms :meth:`task_loss` averages). Selectors with a
        counterfactual objective compare masks with them; tasks without it cannot train such selectors."""
        raise NotImplementedError(f"{type(self).__name__} has no item_losses: no counterfactual objective")

    def item_errors(self, logits: Tensor, frame_mask: Tensor, batch: Any) -> tuple[Tensor, Tensor]:
        """``(errors, counts)``, each ``[batch]``: the primary metric's error terms per input (the sweep's
        oracles pick the candidate mask with the fewest errors per input). Tasks without it get no oracles."""
        raise NotImplementedError

    @abstractmethod
    def decode(self, logits: Tensor, frame_mask: Tensor) -> list[Any]:
        """Per-sample outputs (transcripts or label names) from logits."""

    def distillation_loss(self, student: Tensor, teacher: Tensor, frame_mask: Tensor) -> Tensor:
        """KL(teacher || student) over classes, averaged over samples (and real frames)."""
        tau = self.hparams.distill_temperature
        kl = F.kl_div(
            (student.float() / tau).log_softmax(-1), (teacher.float() / tau).log_softmax(-1), log_target=True,
            reduction="none",
        ).sum(-1)
        if kl.dim() == 2:
            weights = frame_mask.to(kl.dtype)
            kl = (kl * weights).sum(1) / weights.sum(1).clamp(min=1)
        return kl.mean() * tau**2

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def configure_backbone_freezing(backbone: SpeechBackbone, freeze: str) -> None:
        if freeze not in ("cnn", "backbone", "none"):
            raise ValueError(f"freeze must be 'cnn', 'backbone' or 'none', got {freeze!r}")
        if freeze == "backbone":
            for p in backbone.parameters():
                p.requires_grad_(False)
            backbone.freeze_feature_encoder = True

    def configure_heads(self, early_exit: EarlyExitConfig | None) -> None:
        """The task head, or the early-exit component with one head per exit layer."""
        if early_exit is not None:
            self.early_exit = EarlyExit(early_exit, self.num_layers, self.configure_head)
        else:
            self.early_exit = None
            self.head = self.configure_head()

    @property
    def exit_layers(self) -> list[int]:
        """1-based exit layers with early exit, else empty."""
        return self.early_exit.layers if self.early_exit is not None else []

    def head_for(self, exit_layer: int | None = None) -> nn.Module:
        """The head reading the output of ``exit_layer`` (early exit), or the single task head."""
        return self.head if self.early_exit is None else self.early_exit.head_for(exit_layer)

    # ------------------------------------------------------------------ forward
    def forward(self, waveforms: Tensor, lengths: Tensor | None = None, budget: int | float | Tensor | None = None):
        """Logits under a budget (the selector or the early-exit rule decides which layers run).

        Args:
            waveforms: ``[batch, samples]`` zero-padded, or one utterance ``[samples]`` (a batch of one).
            lengths: ``[batch]`` valid samples; ``None``: no padding.
            budget: layers (int), a fraction of them (float) or a ``[batch]`` tensor; ``None``: every layer.

        Returns:
            ``(logits, keep_mask [batch, layers])``; a 1-D input gives ``batch = 1``.
        """
        encoded = self.encode(waveforms, lengths)
        budget = self.num_layers if budget is None else budget
        logits, keep, _ = self.logits_at_budget(encoded, budget)
        return logits, keep

    @property
    def example_input_array(self) -> tuple[Tensor, Tensor] | Any:
        """``(waveforms [1, samples], lengths [1])``: 1 s of silence, run by Lightning's model summary.

        With it the summary shows the FLOPs (and tensor sizes) of a full-depth forward pass of one second of
        audio, selector included; one short eval-mode pass, cheap even for a large backbone.
        """
        if self._example_input_array is not None:
            return self._example_input_array
        samples = self.sample_rate
        return torch.zeros(1, samples), torch.tensor([samples])

    @example_input_array.setter
    def example_input_array(self, example: Any) -> None:
        self._example_input_array = example

    def logits_at_budget(self, encoded: EncodedBatch, budget: int | float | Tensor):
        """``(logits, keep_mask, selector output)`` for one budget, reusing the encoded batch."""
        if self.exit_layers:
            if isinstance(budget, Tensor):
                budgets = resolve_budget(budget, self.num_layers, encoded.hidden.shape[0], encoded.hidden.device)
                if bool((budgets != budgets[0]).any()):
                    raise ValueError("early exit takes one budget per batch, not a per-sample budget tensor")
                k = int(budgets[0])
            else:
                k = budget_to_layers(budget, self.num_layers)
            if self.early_exit.config.policy == "confidence" and not self.training and k < self.num_layers:
                return (*self.early_exit.run_dynamic(self.backbone, encoded, k, self.compute_logits), None)
            exit_layer = self.early_exit.exit_layer_for(k)
            keep = torch.zeros(encoded.hidden.shape[0], self.num_layers, device=encoded.hidden.device)
            keep[:, :exit_layer] = 1.0
            hidden, _ = self.run_layers(encoded, keep)
            return self.compute_logits(self.head_for(exit_layer), hidden, encoded.frame_mask), keep, None
        keep, _, selection = self.decide(encoded, budget)
        hidden, _ = self.run_layers(encoded, keep)
        return self.compute_logits(self.head, hidden, encoded.frame_mask), keep, selection

    def logits_with_mask(self, encoded: EncodedBatch, keep: Tensor) -> Tensor:
        """Logits when every sample runs the layers of ``keep`` (controls and static search)."""
        hidden, _ = self.run_layers(encoded, keep)
        return self.compute_logits(self.head_for(), hidden, encoded.frame_mask)

    # ------------------------------------------------------------------ early exit
    def _exit_states(self, encoded: EncodedBatch) -> list[tuple[int, Tensor]]:
        keep = torch.ones(encoded.hidden.shape[0], self.num_layers, device=encoded.hidden.device)
        _, states = self.run_layers(encoded, keep, return_all=True)
        return [(k, self.backbone.finalize(states[k - 1])) for k in self.exit_layers]

    def exit_confidences(self, encoded: EncodedBatch) -> Tensor:
        """``[batch, exits]`` confidence of every exit head (all layers run)."""
        return torch.stack(
            [self.early_exit.confidence(self.compute_logits(self.head_for(k), h, encoded.frame_mask), encoded.frame_mask)
             for k, h in self._exit_states(encoded)], dim=1,
        )

    @torch.no_grad()
    def calibrate_exit_thresholds(self, dataloader: Iterable[Any], max_batches: int | None = None) -> dict[int, float]:
        """Confidence policy: per budget, the threshold whose mean exit layer on ``dataloader`` equals it."""
        confidences = []
        for batch in itertools.islice(dataloader, max_batches):
            batch = self.transfer_batch_to_device(batch, self.device, 0)
            confidences.append(self.exit_confidences(self.encode(batch.waveforms, batch.lengths)).cpu())
        return self.early_exit.calibrate(torch.cat(confidences))

    # ------------------------------------------------------------------ training
    def sample_train_budget(self) -> int:
        """One budget for this batch: full depth with ``full_depth_prob``, else uniform over the choices."""
        if torch.rand(()) < self.hparams.full_depth_prob:
            return self.num_layers
        choices = self.train_budget_choices
        return choices[int(torch.randint(len(choices), ()))]

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.selector is not None and self.trainer is not None:
            total = max(1, int(self.trainer.estimated_stepping_batches))
            self.selector.set_progress(min(1.0, self.global_step / total))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        if len(batch) == 0:
            return self._skip_empty_batch()
        encoded = self.encode(batch.waveforms, batch.lengths)
        losses: dict[str, Tensor] = {}
        if self.early_exit is not None:
            exit_losses = [
                self.task_loss(self.compute_logits(self.head_for(k), h, encoded.frame_mask), encoded.frame_mask, batch)
                for k, h in self._exit_states(encoded)
            ]
            losses["task"] = self.early_exit.loss(exit_losses)
            keep = torch.ones(len(batch), self.num_layers, device=self.device)
            budget = self.num_layers
        else:
            budget = self.sample_train_budget()
            logits, keep, selection = self.logits_at_budget(encoded, budget)
            losses["task"] = self.task_loss(logits, encoded.frame_mask, batch)
            if selection is not None:
                losses.update({f"selector_{k}": v for k, v in selection.losses.items()})
                if self.selector.counterfactual_candidates > 0 and budget < self.num_layers:
                    losses["selector_counterfactual"] = counterfactual_loss(self, encoded, batch, keep, logits,
                                                                            selection)
                for name, value in selection.stats.items():
                    self.log(f"train/selector_{name}", value.float().mean(), batch_size=len(batch))
            if self.hparams.distill_weight > 0 and budget < self.num_layers:
                with torch.no_grad():
                    teacher_input = encoded.detached()  # reuses the selector's prefix layers, if any
                    full = torch.ones_like(keep)
                    teacher = self.compute_logits(self.head, self.run_layers(teacher_input, full)[0], encoded.frame_mask)
                losses["distill"] = self.hparams.distill_weight * self.distillation_loss(logits, teacher, encoded.frame_mask)
        loss = sum(losses.values())
        self.check_finite_loss(loss, losses, batch)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            loss = loss + self._unused_parameter_anchor(keep)
        size = len(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        for name, value in losses.items():
            self.log(f"train/{name}_loss", value, batch_size=size)
        self.log("train/executed_layers", keep.detach().sum(1).float().mean(), batch_size=size)
        self.log("train/budget", float(budget), batch_size=size)
        # The encoded batch reaches callbacks' on_train_batch_end (SelectorStatistics keeps recent inputs).
        return {"loss": loss, "encoded": encoded}

    def check_finite_loss(self, loss: Tensor, losses: dict[str, Tensor], batch: Any) -> None:
        """Stop training with a clear error on a NaN/inf loss, before it can reach the weights.

        Raising here (before ``backward`` and the optimiser step) leaves the weights as they were, so no
        checkpoint with NaN weights is written; one NaN loss would otherwise turn every later loss and
        every saved checkpoint into NaN.

        Raises:
            FloatingPointError: naming the batch's item ids, the non-finite loss terms and a likely cause.
        """
        if bool(torch.isfinite(loss.detach()).all()):
            return
        terms = [name for name, value in losses.items() if not bool(torch.isfinite(value.detach()).all())]
        ids = list(getattr(batch, "ids", []))
        shown = ", ".join(map(str, ids[:16])) + (f", ... ({len(ids)} items)" if len(ids) > 16 else "")
        waveforms = getattr(batch, "waveforms", None)
        if waveforms is not None and not bool(torch.isfinite(waveforms).all()):
            cause = "the audio of this batch holds NaN/inf samples: check or remove these files"
        elif not all(bool(torch.isfinite(p).all()) for p in self.parameters()):
            cause = ("the weights are already non-finite (an earlier step diverged): lower the learning rate, "
                     "use precision 'bf16-mixed' or '32' instead of fp16, or enable gradient clipping")
        else:
            cause = ("likely causes: a learning rate too high (try a lower lr/head_lr or a longer warmup), fp16 "
                     "overflow (use precision 'bf16-mixed' or '32'), or a corrupt/silent file among these items")
        raise FloatingPointError(
            f"non-finite training loss ({float(loss.detach())}; term(s): {', '.join(terms) or 'total'}) at "
            f"step {self.global_step}, batch {shown}: {cause}. Training stopped before updating the weights."
        )

    def _skip_empty_batch(self) -> Tensor | None:
        """What training does with a batch whose examples all failed to load (``skip_bad_files``): nothing.

        ``None`` skips the step; under DDP every process must still take part in the gradient all-reduce, so
        the step is a zero loss on every trainable parameter instead (zero gradients).
        """
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return None
        return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0

    def _unused_parameter_anchor(self, keep: Tensor) -> Tensor:
        """0 x the parameters of layers no sample ran, so DDP's gradient all-reduce sees every parameter.

        Layers skipped by the whole batch (sparse training of non-differentiable selectors) would otherwise
        leave parameters without gradients, which DDP rejects without ``find_unused_parameters``.
        """
        unused = (keep.detach() <= 0.5).all(0).nonzero().flatten().tolist()
        params = [p for i in unused for p in self.backbone.layers[i].parameters() if p.requires_grad]
        if not params:
            return keep.new_zeros(())
        return sum(p.sum() for p in params) * 0.0

    # ------------------------------------------------------------------ validation
    def configure_callbacks(self) -> list[L.Callback]:
        """The selector-statistics refresh and a default budget sweep, unless the trainer has its own."""
        from ldrop.sweeps import BudgetSweep  # ldrop.sweeps imports the task package

        present = self.trainer.callbacks if self._trainer is not None else []
        callbacks: list[L.Callback] = []
        if not any(isinstance(c, SelectorStatistics) for c in present):
            callbacks.append(SelectorStatistics(self.hparams.statistics_batches))
        if not any(isinstance(c, BudgetSweep) for c in present):
            callbacks.append(BudgetSweep())
        return callbacks

    def on_validation_epoch_start(self) -> None:
        self.calibrate_on_validation_batches()
        # compute_groups off: WER and CER share state names, never their values.
        metrics = MetricCollection(self.configure_metrics(), compute_groups=False)
        self._val_metrics = {k: metrics.clone(prefix="val/", postfix=f"@{k}").to(self.device)
                             for k in self.val_budget_list}

    @torch.no_grad()
    def calibrate_on_validation_batches(self) -> None:
        """Calibrate threshold mode / confidence exit on the batches this validation pass is about to score.

        Their thresholds depend on the current weights, so each validation pass (the sanity check included)
        re-calibrates them first, on the same batches it then scores: ``val/<metric>@<k>`` is the method as
        ``ldrop test`` runs it (calibrated on validation data), at a mean of ``k`` layers on those batches.
        It costs one extra pass of the selector (threshold mode) or of the full model (confidence exit). Under
        DDP each process calibrates on its own validation shard.
        """
        if not self._needs_fitting(at_validation=True):
            return
        trainer = self.trainer
        loaders = trainer.val_dataloaders
        loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
        limits = trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches

        def batches():  # lazily, the batches the loop will validate (limit_val_batches, sanity steps)
            for loader, limit in zip(loaders, limits, strict=False):
                yield from itertools.islice(loader, None if math.isinf(limit) else int(limit))

        self.fit_on_batches(batches, self.val_budget_list, at_validation=True)

    def _metrics_on_device(self) -> dict[str, Metric]:
        return {name: metric.to(self.device) for name, metric in self.configure_metrics().items()}

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
            results = metrics.compute()  # {"val/<metric>@<k>": value}, synchronised across processes
            self.log_dict(results, sync_dist=False)
            values.append(results[f"val/{primary}@{k}"])
        # Mean over the validation budgets: what checkpointing monitors ("val/<metric>").
        self.log(f"val/{primary}", torch.stack(values).mean(), prog_bar=True)

    # ------------------------------------------------------------------ test: see ldrop.sweeps.BudgetSweep
    def on_predict_start(self) -> None:
        self.fit_on_validation_data()

    def on_test_start(self) -> None:
        if not any(type(c).__name__ == "BudgetSweep" for c in self.trainer.callbacks):
            log.warning("no BudgetSweep callback: ldrop test scores nothing without it")

    def test_step(self, batch: Any, batch_idx: int) -> EncodedBatch:
        """The encoded batch; the :class:`~ldrop.sweeps.BudgetSweep` callback scores it at each budget."""
        return self.encode(batch.waveforms, batch.lengths)

    @property
    def sample_rate(self) -> int:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return int(getattr(datamodule, "sample_rate", 16000))

    def method_label(self) -> str:
        """How this run is named in sweeps (unless the sweep's ``method_name`` says otherwise)."""
        if self.early_exit is not None:
            return "early_exit" if self.early_exit.config.policy == "budget" else "early_exit_confidence"
        if self.selector is None:
            return "full"
        name = type(self.selector).__name__.removesuffix("Selector")
        mode = getattr(self.selector, "mode", None)
        return f"{name}-{mode}" if mode == "threshold" else name

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        """AdamW with three groups: backbone (``lr``), selector (``selector_lr``) and every other trainable
        parameter (``head_lr``: the head(s) and any module a subclass adds), then the warm-up/decay schedule."""
        head_lr = self.hparams.head_lr or self.hparams.lr
        selector_lr = self.hparams.selector_lr or head_lr
        backbone = {id(p) for p in self.backbone.parameters()}
        selector = {id(p) for p in self.selector.parameters()} if self.selector is not None else set()
        trainable = [p for p in self.parameters() if p.requires_grad]
        groups = []
        for params, lr in (
            ([p for p in trainable if id(p) in backbone], self.hparams.lr),
            ([p for p in trainable if id(p) not in backbone and id(p) not in selector], head_lr),
            ([p for p in trainable if id(p) in selector], selector_lr),
        ):
            if params:
                groups.append({"params": params, "lr": lr})
        optimizer = torch.optim.AdamW(groups, weight_decay=self.hparams.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        warmup = self.hparams.warmup
        warmup_steps = int(round(warmup * total)) if isinstance(warmup, float) else int(warmup)
        # LambdaLR with a closed form rather than LinearLR + SequentialLR: one function covers the three
        # schedules exactly (chained LinearLR multiplies per step and drifts), and tri_stage has no built-in.
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda=lr_schedule(self.hparams.schedule, warmup_steps, total)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
