"""LayerDropTask: the shared LightningModule behind every ldrop task (CTC, classification).

A task subclass only says what its head is, how logits are scored and decoded; training, validation at a
few budgets, the test-time budget sweep, prediction, early exit, self-distillation, optimisers and DDP
details live here once, in one ``common_step``-style path, so that the tasks cannot drift apart.
"""

from __future__ import annotations

import collections
import functools
import importlib
import itertools
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torchmetrics import Metric

from ldrop.backbones import SpeechBackbone, load_backbone
from ldrop.engine.flops import count_forward_flops
from ldrop.selectors import (
    InputConditionedSelector,
    LayerSelector,
    RandomSelector,
    StaticSelector,
    greedy_subset_search,
    mask_diversity,
    most_common_mask_for_all,
    shuffle_masks,
)
from ldrop.sweeps import add_sweep_to_tensorboard, markdown_table, write_sweep
from ldrop.tasks.budget import Target, budget_list, budget_to_layers, is_target, resolve_budget
from ldrop.tasks.gating import EncodedBatch, GatingMixin

log = logging.getLogger(__name__)

SelectorFactory = Callable[[int, int], LayerSelector]

#: Checkpoint key recording whether the weights were trained on normalised waveforms.
NORMALIZE_KEY = "ldrop_normalize_waveforms"

#: File written beside an exported backbone: the task head(s) and the selector state.
EXPORT_STATE_FILE = "ldrop_task_state.pt"


def selector_spec(selector: SelectorFactory | dict[str, Any] | None) -> dict[str, Any] | None:
    """A serialisable ``{"class_path", "init_args"}`` description of a selector factory.

    Accepts a selector class, a ``functools.partial`` of one (what a YAML ``class_path`` becomes) or a spec
    dict; it is what checkpoints store so that ``load_from_checkpoint`` rebuilds the same selector.
    """
    if selector is None or isinstance(selector, dict):
        return selector
    func, kwargs = selector, {}
    while isinstance(func, functools.partial):
        kwargs = {**func.keywords, **kwargs}
        classes = [a for a in func.args if isinstance(a, type)]
        func = classes[0] if classes else func.func
    if not isinstance(func, type):
        return None  # an arbitrary callable: nothing serialisable to record
    return {"class_path": f"{func.__module__}.{func.__qualname__}", "init_args": kwargs}


def build_selector(selector: SelectorFactory | dict[str, Any], num_layers: int, feature_dim: int) -> LayerSelector:
    """Instantiate a selector from a factory or a spec dict with ``(num_layers, feature_dim)``."""
    if isinstance(selector, dict):
        module_name, _, class_name = selector["class_path"].rpartition(".")
        if not module_name:
            module_name = "ldrop.selectors"
        cls = getattr(importlib.import_module(module_name), class_name)
        return cls(num_layers, feature_dim, **selector.get("init_args", {}))
    built = selector(num_layers, feature_dim)
    if not isinstance(built, LayerSelector):
        raise TypeError(f"selector must build a LayerSelector, got {type(built).__name__}")
    return built


class LayerDropTask(GatingMixin, L.LightningModule, ABC):
    """A speech foundation model whose encoder depth adapts to the input and to a budget.

    Subclasses implement the small hooks :meth:`configure_head`, :meth:`compute_logits`,
    :meth:`task_loss`, :meth:`configure_metrics`, :meth:`update_metrics` and :meth:`decode`.

    Args:
        backbone: Hugging Face hub id (``"microsoft/wavlm-base-plus"``), a local ``save_pretrained``
            directory, or ``"tiny:<family>"`` for a tiny random model (tests, quickstart).
        selector: builds the layer selector from ``(num_layers, feature_dim)``; in YAML a ``class_path``
            with ``init_args``. ``None`` with ``early_exit=False`` is the full model (no dropping).
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
        early_exit: the early-exit baseline: a head after each exit layer, trained with the weighted sum of
            exit losses; budget ``k`` exits after layer ``k`` (the last exit layer ``<= k``).
        exit_layers: 1-based exit layers (default: every layer).
        exit_loss_weights: ``"uniform"`` or ``"linear"`` (exit ``k`` weighted ``k``).
        exit_policy: ``"budget"`` (fixed exit per budget) or ``"confidence"`` (each input exits at the first
            exit whose confidence passes a threshold calibrated on validation data so that the mean exit
            layer equals the budget).
        exit_confidence: ``"max_prob"`` (mean maximum posterior) or ``"entropy"`` (negative mean entropy).
        train_budgets: budgets sampled (uniformly, once per batch) in training; ints are layers, floats
            fractions; ``None``: every ``k`` in ``1..N``. One trained model serves every budget.
        full_depth_prob: extra probability of training a batch at full depth.
        val_budgets: budgets evaluated at validation (metric logged as ``val/<metric>@<k>``).
        test_budgets: budgets of the test-time sweep (``None``: every ``k`` in ``1..N``).
        predict_budget: budget used by ``predict``: layers, a fraction, or a target such as ``{rtf: 0.1}``,
            ``{ms: 80, profile: profile.json}`` or ``{gflops_per_second: 2}`` (see :mod:`ldrop.runtime`).
        predict_chunk_seconds: ``predict`` splits inputs longer than this into chunks of this length (each
            chunk runs the selector and the budget on its own) and merges them: classification averages the
            chunk logits weighted by chunk length, CTC joins the chunk logits frame by frame. Bounds memory
            on long recordings (WavLM's position bias grows with frames squared). ``None``: no chunking.
        predict_chunk_overlap_seconds: audio shared by consecutive chunks; for CTC each chunk's frames
            in the first/last half of the overlap are dropped (the neighbour's, with more context, are
            kept). At least the CNN's receptive field minus one frame hop is always shared.
        sweep_repeats: repeats of a random-subset sweep (different seeds; mean and spread reported).
        sweep_controls: also score "same masks shuffled across the batch" and "most common mask for every
            input" for selectors with scores (needs a batch size above 1).
        static_search: for a :class:`StaticSelector`: search the best fixed subset per budget greedily on
            the validation data before testing.
        distill_weight: weight of self-distillation from the full-depth pass (KL, teacher without gradient).
        distill_temperature: softmax temperature of that KL.
        lr: learning rate of the backbone.
        head_lr: learning rate of the head(s) (default ``lr``).
        selector_lr: learning rate of the selector (default ``head_lr``).
        weight_decay: AdamW weight decay.
        warmup: warm-up steps (int) or fraction of all training steps (float).
        schedule: after warm-up: ``"linear"`` decay to 0, ``"tri_stage"`` (hold, then exponential decay to
            5%), or ``"constant"``.
        method_name: label of this run in sweeps and ``ldrop compare`` (default: derived from the method).
        statistics_batches: for selectors that standardise scores with running statistics: before each
            validation during fit, the statistics are re-estimated on this many recent training batches,
            so that the checkpoint's statistics match its weights (running averages lag behind them).
    """

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
        early_exit: bool = False,
        exit_layers: list[int] | None = None,
        exit_loss_weights: Literal["uniform", "linear"] = "uniform",
        exit_policy: Literal["budget", "confidence"] = "budget",
        exit_confidence: Literal["max_prob", "entropy"] = "max_prob",
        train_budgets: list[int | float] | None = None,
        full_depth_prob: float = 0.1,
        val_budgets: list[int | float] | None = [0.25, 0.5, 1.0],  # noqa: B006 (read-only default)
        test_budgets: list[int | float] | None = None,
        predict_budget: int | float | dict[str, Any] = 1.0,
        predict_chunk_seconds: float | None = 30.0,
        predict_chunk_overlap_seconds: float = 2.0,
        sweep_repeats: int = 1,
        sweep_controls: bool = False,
        static_search: bool = False,
        distill_weight: float = 0.0,
        distill_temperature: float = 1.0,
        lr: float = 5e-5,
        head_lr: float | None = 1e-3,
        selector_lr: float | None = None,
        weight_decay: float = 0.01,
        warmup: int | float = 0.1,
        schedule: Literal["linear", "tri_stage", "constant"] = "linear",
        method_name: str | None = None,
        statistics_batches: int = 16,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["selector"])
        self.hparams["selector"] = selector_spec(selector)
        if early_exit and selector is not None:
            raise ValueError("early_exit=True is a method of its own: leave selector unset (None)")
        if not 0.0 <= full_depth_prob <= 1.0:
            raise ValueError(f"full_depth_prob must be in [0, 1], got {full_depth_prob}")
        if sweep_repeats < 1:
            raise ValueError(f"sweep_repeats must be >= 1, got {sweep_repeats}")
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
            backbone_module, build_selector(selector, num_layers, feature_dim) if selector is not None else None
        )
        self.exit_layers = self._resolve_exit_layers(exit_layers) if early_exit else []
        self.train_budget_choices = budget_list(train_budgets, num_layers)
        self.val_budget_list = budget_list(val_budgets, num_layers)
        self.test_budget_list = budget_list(test_budgets, num_layers)
        if is_target(predict_budget):  # validate early
            Target.parse(predict_budget)
        else:
            budget_to_layers(predict_budget, num_layers)
        self.configure_metrics_and_heads()
        if early_exit:
            self.register_buffer("exit_thresholds", torch.full((num_layers,), float("nan")))
        if init_from:
            self.load_weights_from(init_from)
        self._sweep: dict[str, Any] | None = None
        # Recent training inputs of the selector, to refresh its standardisation statistics (see below).
        self._recent_inputs: collections.deque = collections.deque(maxlen=statistics_batches)

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

    @abstractmethod
    def decode(self, logits: Tensor, frame_mask: Tensor) -> list[Any]:
        """Per-sample outputs (transcripts or label names) from logits."""

    def confidence(self, logits: Tensor, frame_mask: Tensor) -> Tensor:
        """``[batch]`` confidence of each prediction (higher = surer), for dynamic early exit."""
        log_probs = logits.float().log_softmax(-1)
        if self.hparams.exit_confidence == "max_prob":
            per_position = log_probs.exp().amax(-1)
        else:
            per_position = (log_probs.exp() * log_probs).sum(-1)  # negative entropy
        if per_position.dim() == 1:
            return per_position
        weights = frame_mask.to(per_position.dtype)
        return (per_position * weights).sum(1) / weights.sum(1).clamp(min=1)

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

    def _resolve_exit_layers(self, exit_layers: list[int] | None) -> list[int]:
        n = self.num_layers
        layers = sorted(set(exit_layers)) if exit_layers else list(range(1, n + 1))
        if any(not 1 <= k <= n for k in layers):
            raise ValueError(f"exit_layers are 1-based layer numbers in 1..{n}, got {exit_layers}")
        if layers[-1] != n:
            layers.append(n)  # the full model is always an exit
        return layers

    def configure_metrics_and_heads(self) -> None:
        if self.exit_layers:
            self.exit_heads = nn.ModuleDict({str(k): self.configure_head() for k in self.exit_layers})
        else:
            self.head = self.configure_head()

    def head_for(self, exit_layer: int | None = None) -> nn.Module:
        """The head reading the output of ``exit_layer`` (early exit), or the single task head."""
        if not self.exit_layers:
            return self.head
        return self.exit_heads[str(exit_layer if exit_layer is not None else self.num_layers)]

    def exit_layer_for(self, budget: int) -> int:
        """The deepest exit layer within ``budget`` layers (at least the first exit)."""
        eligible = [k for k in self.exit_layers if k <= budget]
        return eligible[-1] if eligible else self.exit_layers[0]

    def load_weights_from(self, checkpoint_path: str) -> None:
        """Initialise matching weights from an earlier run's Lightning checkpoint (or exported state)."""
        path = Path(checkpoint_path)
        if not path.is_file():
            raise FileNotFoundError(f"init_from checkpoint {checkpoint_path!r} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=False)
        state = state.get("state_dict", state)
        own = self.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        skipped = sorted(set(state) - set(usable))
        missing = sorted(set(own) - set(usable))
        self.load_state_dict(usable, strict=False)
        log.info("init_from %s: loaded %d tensors, kept %d fresh, ignored %d", path, len(usable), len(missing),
                 len(skipped))
        if not any(k.startswith("backbone.") for k in usable):
            raise ValueError(f"init_from {checkpoint_path!r} holds no backbone weights matching this model")

    def check_finite_weights(self) -> None:
        """Refuse to save NaN/inf parameters (a diverged run) as a checkpoint or an export.

        Buffers are not checked: uncalibrated thresholds are NaN by design.

        Raises:
            FloatingPointError: naming the first non-finite parameters.
        """
        bad = [name for name, p in self.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
        if bad:
            raise FloatingPointError(
                f"refusing to save non-finite weights ({len(bad)} tensors, e.g. {bad[:4]}): training diverged; "
                "lower the learning rate or use precision 'bf16-mixed'/'32', and resume from an earlier checkpoint"
            )

    def export_pretrained(self, directory: str | Path) -> Path:
        """Write the (fine-tuned) backbone as a ``save_pretrained`` directory, heads and selector beside it.

        The directory works as ``model.backbone`` of a later run; the head/selector state is in
        ``ldrop_task_state.pt`` and is picked up by ``init_from`` of that file. The input preprocessing in
        use is written as ``preprocessor_config.json`` (see :meth:`SpeechBackbone.input_processor`), so the
        folder loads back with the same waveform normalisation.
        """
        directory = Path(directory)
        self.check_finite_weights()
        self.backbone.save_pretrained(directory)
        extra = {f"{k}": v for k, v in self.state_dict().items() if not k.startswith("backbone.")}
        backbone_state = {f"backbone.{k}": v for k, v in self.backbone.state_dict().items()}
        tmp = directory / f".{EXPORT_STATE_FILE}.tmp"
        torch.save({"state_dict": {**backbone_state, **extra}, "hparams": dict(self.hparams),
                    "task_class": f"{type(self).__module__}.{type(self).__qualname__}"}, tmp)
        tmp.replace(directory / EXPORT_STATE_FILE)
        return directory

    # ------------------------------------------------------------------ forward
    def forward(self, waveforms: Tensor, lengths: Tensor | None = None, budget: int | float | Tensor | None = None):
        """Logits under a budget (the selector or the early-exit rule decides which layers run).

        Returns:
            ``(logits, keep_mask [batch, layers])``.
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
            if self.hparams.exit_policy == "confidence" and not self.training and k < self.num_layers:
                return (*self.dynamic_exit(encoded, k), None)
            exit_layer = self.exit_layer_for(k)
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
            [self.confidence(self.compute_logits(self.head_for(k), h, encoded.frame_mask), encoded.frame_mask)
             for k, h in self._exit_states(encoded)], dim=1,
        )

    def dynamic_exit(self, encoded: EncodedBatch, budget: int) -> tuple[Tensor, Tensor]:
        """Confidence-based early exit: each input stops at the first exit passing the budget's threshold.

        Returns ``(logits, keep_mask)``; layers run only for the inputs still active.
        """
        threshold = float(self.exit_thresholds[budget - 1])
        if math.isnan(threshold):
            raise RuntimeError(
                f"no confidence threshold calibrated for budget {budget}: run calibrate_exit_thresholds() "
                "(ldrop test does it on the validation data)"
            )
        batch = encoded.hidden.shape[0]
        device = encoded.hidden.device
        hidden = encoded.hidden.clone()
        frame_mask = encoded.frame_mask
        context = self.backbone.prepare_layers(frame_mask)
        active = torch.ones(batch, dtype=torch.bool, device=device)
        keep = torch.zeros(batch, self.num_layers, device=device)
        logits_out: Tensor | None = None
        for layer in range(self.num_layers):
            rows = active.nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            frames = int(frame_mask[rows].sum(1).max())
            sub = self.backbone.run_layer(layer, hidden[rows, :frames], frame_mask[rows, :frames], context)
            hidden[rows, :frames] = sub.to(hidden.dtype)
            keep[rows, layer] = 1.0
            exit_layer = layer + 1
            if exit_layer not in self.exit_layers:
                continue
            states = self.backbone.finalize(hidden[rows]).masked_fill(~frame_mask[rows][..., None], 0.0)
            logits = self.compute_logits(self.head_for(exit_layer), states, frame_mask[rows])
            if logits_out is None:
                logits_out = logits.new_zeros((batch, *logits.shape[1:]))
            done = self.confidence(logits, frame_mask[rows]) >= threshold
            if exit_layer == self.num_layers:
                done = torch.ones_like(done)
            logits_out[rows[done]] = logits[done]
            active[rows[done]] = False
        return logits_out, keep

    @torch.no_grad()
    def calibrate_exit_thresholds(self, dataloader, max_batches: int | None = None) -> dict[int, float]:
        """Per budget, the confidence threshold whose mean exit layer on ``dataloader`` equals the budget."""
        confidences = []
        for i, batch in enumerate(dataloader):
            if max_batches is not None and i >= max_batches:
                break
            batch = self.transfer_batch_to_device(batch, self.device, 0)
            confidences.append(self.exit_confidences(self.encode(batch.waveforms, batch.lengths)).cpu())
        conf = torch.cat(confidences)
        exits = torch.tensor(self.exit_layers, dtype=torch.float64)
        candidates = torch.cat([conf.flatten().unique(), torch.tensor([float("inf")])]).tolist()

        def mean_exit(threshold: float) -> float:
            # The first exit whose confidence passes; the last exit when none of the earlier ones does.
            passed = torch.cat([conf[:, :-1] >= threshold, torch.ones(len(conf), 1, dtype=torch.bool)], dim=1)
            return float(exits[passed.float().argmax(1)].mean())

        thresholds = {}
        for k in range(1, self.num_layers + 1):
            # mean_exit grows with the threshold: bisect for the first candidate reaching k, then take the
            # closer of it and its predecessor.
            lo, hi = 0, len(candidates) - 1
            while lo < hi:
                mid = (lo + hi) // 2
                if mean_exit(candidates[mid]) >= k:
                    hi = mid
                else:
                    lo = mid + 1
            options = [candidates[i] for i in (lo - 1, lo) if 0 <= i < len(candidates)]
            best = min(options, key=lambda t: abs(mean_exit(t) - k))
            thresholds[k] = best
            self.exit_thresholds[k - 1] = best
        return thresholds

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

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        encoded = self.encode(batch.waveforms, batch.lengths)
        if self.selector is not None and self.selector.tracks_statistics:
            self._recent_inputs.append(
                (encoded.features.detach(), encoded.frame_mask, batch.waveforms.detach(), batch.lengths)
            )
        losses: dict[str, Tensor] = {}
        if self.exit_layers:
            weights = [float(k) if self.hparams.exit_loss_weights == "linear" else 1.0 for k in self.exit_layers]
            exit_losses = [
                self.task_loss(self.compute_logits(self.head_for(k), h, encoded.frame_mask), encoded.frame_mask, batch)
                for k, h in self._exit_states(encoded)
            ]
            losses["task"] = sum(w * x for w, x in zip(weights, exit_losses, strict=True)) / sum(weights)
            keep = torch.ones(len(batch), self.num_layers, device=self.device)
            budget = self.num_layers
        else:
            budget = self.sample_train_budget()
            logits, keep, selection = self.logits_at_budget(encoded, budget)
            losses["task"] = self.task_loss(logits, encoded.frame_mask, batch)
            if selection is not None:
                losses.update({f"selector_{k}": v for k, v in selection.losses.items()})
                for name, value in selection.stats.items():
                    self.log(f"train/selector_{name}", value.float().mean(), batch_size=len(batch))
            if self.hparams.distill_weight > 0 and budget < self.num_layers:
                with torch.no_grad():
                    teacher_input = EncodedBatch(encoded.waveforms, encoded.lengths, encoded.features,
                                                 encoded.frame_mask, encoded.hidden.detach())
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
        return loss

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
    @torch.no_grad()
    def refresh_selector_statistics(self) -> None:
        """Re-estimate the selector's standardisation statistics on the recent training inputs."""
        if self.selector is None or not self.selector.tracks_statistics or not self._recent_inputs:
            return
        self.selector.reset_statistics()
        for features, frame_mask, waveforms, lengths in self._recent_inputs:
            self.selector.update_statistics(features, frame_mask, waveforms=waveforms, lengths=lengths)

    def on_validation_epoch_start(self) -> None:
        if self.trainer.state.fn == "fit":
            self.refresh_selector_statistics()
        self.calibrate_on_validation_batches()
        self._val_metrics = {k: self._metrics_on_device() for k in self.val_budget_list}

    @torch.no_grad()
    def calibrate_on_validation_batches(self) -> None:
        """Calibrate threshold mode / confidence exit on the batches this validation pass is about to score.

        Their thresholds depend on the current weights, so each validation pass (the sanity check included)
        re-calibrates them first, on the same batches it then scores: ``val/<metric>@<k>`` is the method as
        ``ldrop test`` runs it (calibrated on validation data), at a mean of ``k`` layers on those batches.
        It costs one extra pass of the selector (threshold mode) or of the full model (confidence exit). Under
        DDP each process calibrates on its own validation shard.
        """
        threshold = isinstance(self.selector, InputConditionedSelector) and self.selector.mode == "threshold"
        confidence = bool(self.exit_layers) and self.hparams.exit_policy == "confidence"
        if not (threshold or confidence):
            return
        trainer = self.trainer
        loaders = trainer.val_dataloaders
        loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
        limits = trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches

        def batches():  # lazily, the batches the loop will validate (limit_val_batches, sanity steps)
            for loader, limit in zip(loaders, limits, strict=False):
                yield from itertools.islice(loader, None if math.isinf(limit) else int(limit))

        if threshold:
            self.calibrate_thresholds(batches(), budgets=self.val_budget_list)
        if confidence:
            self.calibrate_exit_thresholds(batches())

    def on_train_end(self) -> None:
        self.refresh_selector_statistics()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ldrop_task_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint[NORMALIZE_KEY] = bool(self.backbone.normalize_waveforms)
        self.check_finite_weights()
        # A checkpoint saved without a validation pass still gets statistics that match its weights.
        if self.selector is not None and self.selector.tracks_statistics and self._recent_inputs:
            self.refresh_selector_statistics()
            for name, buffer in self.selector.named_buffers():
                checkpoint["state_dict"][f"selector.{name}"] = buffer.detach().clone()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Use the input normalisation the checkpoint's weights were trained with.

        Checkpoints written before ldrop read ``preprocessor_config.json`` were trained on raw waveforms.
        """
        trained_with = bool(checkpoint.get(NORMALIZE_KEY, False))
        if trained_with != self.backbone.normalize_waveforms:
            log.warning("checkpoint was trained %s waveform normalisation: using that, not normalize_waveforms=%s",
                        "with" if trained_with else "without", self.hparams.get("normalize_waveforms"))
            self.backbone.normalize_waveforms = trained_with

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
            for name, metric in metrics.items():
                value = metric.compute()
                self.log(f"val/{name}@{k}", value, sync_dist=False)
                if name == primary:
                    values.append(value)
        # Mean over the validation budgets: what checkpointing monitors ("val/<metric>").
        self.log(f"val/{primary}", torch.stack(values).mean(), prog_bar=True)

    # ------------------------------------------------------------------ test: the budget sweep
    def on_test_start(self) -> None:
        self.prepare_for_evaluation()

    def on_predict_start(self) -> None:
        self.prepare_for_evaluation()

    def prepare_for_evaluation(self) -> None:
        """Calibrate thresholds / search static subsets on the validation data when the method needs it.

        Threshold-mode selectors, confidence-based early exit and ``static_search`` are fitted to the
        validation split of the trainer's datamodule before testing or predicting.
        """
        datamodule = getattr(self.trainer, "datamodule", None)
        needs_val = (
            (isinstance(self.selector, InputConditionedSelector) and self.selector.mode == "threshold")
            or (self.exit_layers and self.hparams.exit_policy == "confidence")
            or (isinstance(self.selector, StaticSelector) and self.hparams.static_search)
        )
        if not needs_val:
            return
        if datamodule is None:
            raise RuntimeError("calibration/search needs a datamodule with validation data")
        datamodule.setup("validate")
        loader = datamodule.val_dataloader()
        if isinstance(self.selector, InputConditionedSelector) and self.selector.mode == "threshold":
            self.calibrate_thresholds(loader)
        if self.exit_layers and self.hparams.exit_policy == "confidence":
            self.calibrate_exit_thresholds(loader)
        if isinstance(self.selector, StaticSelector) and self.hparams.static_search:
            self.search_static_subsets(loader, self.test_budget_list)

    @torch.no_grad()
    def calibrate_thresholds(
        self, dataloader, max_batches: int | None = None, budgets: Sequence[int] | None = None
    ) -> dict[int, float]:
        """Threshold mode: per budget (default: every ``k`` in ``1..N``), the score threshold giving that mean
        number of layers on the data."""
        scores: dict[int, list[Tensor]] = {k: [] for k in (budgets or range(1, self.num_layers + 1))}
        for i, batch in enumerate(dataloader):
            if max_batches is not None and i >= max_batches:
                break
            batch = self.transfer_batch_to_device(batch, self.device, 0)
            waveforms = self.prepare_waveforms(batch.waveforms, batch.lengths)
            features, frame_mask = self.backbone.extract_features(waveforms, batch.lengths)
            for k in scores:
                budget = torch.full((len(batch),), k, dtype=torch.long, device=self.device)
                out = self.selector.score(features, frame_mask, budget, waveforms=waveforms,
                                          lengths=batch.lengths)
                scores[k].append((out.scores if hasattr(out, "scores") else out).float().cpu())
        return self.selector.calibrate({k: torch.cat(v) for k, v in scores.items()})

    @torch.no_grad()
    def search_static_subsets(self, dataloader, budgets: Sequence[int], max_batches: int | None = None):
        """Greedy backward elimination of the best fixed subset per budget on ``dataloader``."""
        batches = []
        for i, batch in enumerate(dataloader):
            if max_batches is not None and i >= max_batches:
                break
            batch = self.transfer_batch_to_device(batch, self.device, 0)
            batches.append((batch, self.encode(batch.waveforms, batch.lengths)))

        def evaluate(layers: list[int]) -> float:
            metrics = self._metrics_on_device()
            for batch, encoded in batches:
                keep = torch.zeros(len(batch), self.num_layers, device=self.device)
                keep[:, layers] = 1.0
                self.update_metrics(metrics, self.logits_with_mask(encoded, keep), encoded.frame_mask, batch)
            return float(metrics[self.metric_names[0]].compute())

        subsets = greedy_subset_search(evaluate, self.num_layers, budgets, higher_is_better=self.higher_is_better)
        self.selector.set_subsets(subsets)
        return subsets

    def on_test_epoch_start(self) -> None:
        repeats = self.hparams.sweep_repeats if isinstance(self.selector, RandomSelector) else 1
        self._sweep = {
            "repeats": repeats,
            "metrics": {(k, r): self._metrics_on_device() for k in self.test_budget_list for r in range(repeats)},
            "controls": {(k, c): self._metrics_on_device() for k in self.test_budget_list
                         for c in ("shuffled", "most_common")} if self._controls_enabled() else {},
            "masks": {k: [] for k in self.test_budget_list},
            "flops": {k: 0.0 for k in self.test_budget_list},
            "seconds_audio": 0.0,
            "utterances": 0,
            "time_fixed": 0.0,
            "time": {k: 0.0 for k in self.test_budget_list},
        }

    def _controls_enabled(self) -> bool:
        return bool(self.hparams.sweep_controls) and self.selector is not None and not isinstance(
            self.selector, (RandomSelector, StaticSelector)
        )

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        sweep = self._sweep
        self._sync()
        start = time.perf_counter()
        encoded = self.encode(batch.waveforms, batch.lengths)
        self._sync()
        sweep["time_fixed"] += time.perf_counter() - start
        sweep["utterances"] += len(batch)
        sweep["seconds_audio"] += float(batch.lengths.sum()) / self.sample_rate
        selector_flops = self.selector.flops(encoded.frame_mask.sum(1)) if self.selector is not None else None
        for k in self.test_budget_list:
            for r in range(sweep["repeats"]):
                if isinstance(self.selector, RandomSelector):
                    self.selector.reseed(1000 * r + batch_idx)
                self._sync()
                start = time.perf_counter()
                logits, keep, _ = self.logits_at_budget(encoded, k)
                self._sync()
                if r == 0:
                    sweep["time"][k] += time.perf_counter() - start
                    hard = (keep.detach() > 0.5).float()
                    sweep["masks"][k].append(hard.cpu())
                    flops = count_forward_flops(self.backbone.config, encoded.lengths, hard, selector_flops)
                    sweep["flops"][k] += float(flops.total.sum())
                self.update_metrics(sweep["metrics"][(k, r)], logits, encoded.frame_mask, batch)
            if self._controls_enabled():
                hard = sweep["masks"][k][-1].to(self.device)
                gen = torch.Generator().manual_seed(batch_idx)
                controls = {"shuffled": shuffle_masks(hard.cpu(), gen).to(self.device),
                            "most_common": most_common_mask_for_all(hard.cpu()).to(self.device)}
                for name, mask in controls.items():
                    logits = self.logits_with_mask(encoded, mask)
                    self.update_metrics(sweep["controls"][(k, name)], logits, encoded.frame_mask, batch)

    @property
    def sample_rate(self) -> int:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return int(getattr(datamodule, "sample_rate", 16000))

    def method_label(self) -> str:
        """How this run is named in sweeps: ``method_name`` or one derived from the selector."""
        if self.hparams.method_name:
            return self.hparams.method_name
        if self.exit_layers:
            return "early_exit" if self.hparams.exit_policy == "budget" else "early_exit_confidence"
        if self.selector is None:
            return "full"
        name = type(self.selector).__name__.removesuffix("Selector")
        mode = getattr(self.selector, "mode", None)
        return f"{name}-{mode}" if mode == "threshold" else name

    def sweep_rows(self) -> tuple[list[dict[str, Any]], list[list[float]]]:
        """The sweep's rows (one per budget) and the layer-usage matrix ``[budgets][layers]``."""
        sweep = self._sweep
        n = self.num_layers
        utterances = max(1, sweep["utterances"])
        datamodule = getattr(self.trainer, "datamodule", None)
        rows, usage = [], []
        for k in self.test_budget_list:
            masks = torch.cat(sweep["masks"][k]) if sweep["masks"][k] else torch.zeros(0, n)
            row: dict[str, Any] = {
                "method": self.method_label(),
                "backbone": self.hparams.backbone,
                "dataset": type(datamodule).__name__.removesuffix("DataModule") if datamodule else "",
                "budget_layers": k,
                "budget_fraction": round(k / n, 4),
                "executed_layers": float(masks.sum(1).mean()) if len(masks) else 0.0,
                "gflops_per_utterance": sweep["flops"][k] / 1e9 / utterances,
                "gflops_per_second": sweep["flops"][k] / 1e9 / max(sweep["seconds_audio"], 1e-9),
                "ms_per_utterance": 1000.0 * (sweep["time_fixed"] + sweep["time"][k]) / utterances,
                "utterances": sweep["utterances"],
            }
            if self.selector is not None and len(masks):
                diversity = mask_diversity(masks)
                row.update(
                    distinct_masks=int(diversity["num_distinct"]),
                    mean_hamming=float(diversity["mean_pairwise_hamming"]),
                    top_mask_share=float(diversity["most_common_share"]),
                )
            for name in self.metric_names:
                values = torch.stack([sweep["metrics"][(k, r)][name].compute().float().cpu()
                                      for r in range(sweep["repeats"])])
                row[name] = float(values.mean())
                if sweep["repeats"] > 1:
                    row[f"{name}_std"] = float(values.std(unbiased=True))
            for (kk, control), metrics in sweep["controls"].items():
                if kk == k:
                    row[f"{self.metric_names[0]}_{control}"] = float(metrics[self.metric_names[0]].compute())
            rows.append(row)
            usage.append(masks.mean(0).tolist() if len(masks) else [0.0] * n)
        return rows, usage

    def on_test_epoch_end(self) -> None:
        rows, usage = self.sweep_rows()
        for row in rows:
            k = row["budget_layers"]
            for name in (*self.metric_names, "executed_layers", "gflops_per_utterance", "ms_per_utterance"):
                if name in row:
                    self.log(f"test/{name}@{k}", float(row[name]), sync_dist=False)
        self.sweep_results = rows
        if self.trainer.is_global_zero:
            directory = Path(self.trainer.log_dir or self.trainer.default_root_dir)
            paths = write_sweep(rows, directory, usage)
            columns = ["budget_layers", "executed_layers", *self.metric_names, "gflops_per_utterance",
                       "ms_per_utterance", "distinct_masks"]
            table = markdown_table(rows, [c for c in columns if c in rows[0]])
            self.print_sweep_table(rows, columns)
            log.info("budget sweep written to %s\n%s", paths["csv"].parent, table)
            for logger in self.loggers:
                if isinstance(logger, TensorBoardLogger):  # the plots and the table beside the curves
                    add_sweep_to_tensorboard(logger.experiment, rows, usage, table, step=self.global_step)

    #: Short terminal headers of the sweep columns.
    SWEEP_HEADERS = {
        "budget_layers": "k",
        "executed_layers": "layers run",
        "gflops_per_utterance": "GFLOPs/utt",
        "ms_per_utterance": "ms/utt",
        "distinct_masks": "masks",
    }

    def print_sweep_table(self, rows: list[dict[str, Any]], columns: list[str]) -> None:
        """Print the sweep to the terminal (rich table)."""
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"budget sweep: {self.method_label()}")
        cols = [c for c in columns if c in rows[0]]
        cols += [c for c in rows[0] if c.endswith(("_std", "_shuffled", "_most_common"))]
        for c in cols:
            table.add_column(self.SWEEP_HEADERS.get(c, c), justify="right", no_wrap=True)
        for row in rows:
            table.add_row(*[f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in cols])
        Console(width=max(100, 14 * len(cols))).print(table)

    # ------------------------------------------------------------------ predict
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """Per input: id, output (transcript or label), executed layers and GFLOPs.

        Inputs longer than ``predict_chunk_seconds`` are predicted in chunks (:meth:`predict_long`); their
        record also lists the chunks (``start_s``, ``end_s``, ``executed_layers``), ``executed_layers`` is the
        union over chunks and ``gflops`` the sum.
        """
        long_rows = [i for i, n in enumerate(batch.lengths.tolist()) if len(self.chunk_spans(n)) > 1]
        if not long_rows:
            return self._predict_batch(batch.waveforms, batch.lengths, list(batch.ids))
        records: list[dict[str, Any] | None] = [None] * len(batch)
        short_rows = [i for i in range(len(batch)) if i not in long_rows]
        if short_rows:
            rows = torch.tensor(short_rows, device=batch.lengths.device)
            lengths = batch.lengths[rows]
            waveforms = batch.waveforms[rows, : int(lengths.max())]
            for i, record in zip(short_rows, self._predict_batch(waveforms, lengths, [batch.ids[i] for i in short_rows]),
                                 strict=True):
                records[i] = record
        for i in long_rows:
            records[i] = self.predict_long(batch.waveforms[i, : int(batch.lengths[i])], batch.ids[i],
                                           chunks_per_pass=len(batch))
        return records  # type: ignore[return-value]

    def predict_budget_for(self, encoded: EncodedBatch) -> int | float | Tensor:
        """``predict_budget`` for an encoded batch; a target (``{rtf: 0.1}``, ...) becomes a per-input budget."""
        budget = self.hparams.predict_budget
        if is_target(budget):  # a latency / real-time / FLOPs target: the controller picks k per input
            from ldrop.runtime.controller import target_budget

            return target_budget(self, encoded.lengths, budget)
        return budget

    def _predict_batch(self, waveforms: Tensor, lengths: Tensor, ids: list[Any]) -> list[dict[str, Any]]:
        encoded = self.encode(waveforms, lengths)
        logits, keep, _ = self.logits_at_budget(encoded, self.predict_budget_for(encoded))
        hard = (keep.detach() > 0.5).float()
        selector_flops = self.selector.flops(encoded.frame_mask.sum(1)) if self.selector is not None else None
        flops = count_forward_flops(self.backbone.config, encoded.lengths, hard, selector_flops).total
        outputs = self.decode(logits, encoded.frame_mask)
        return [
            {
                "id": item_id,
                "output": output,
                "executed_layers": hard[i].nonzero().flatten().tolist(),
                "gflops": float(flops[i]) / 1e9,
            }
            for i, (item_id, output) in enumerate(zip(ids, outputs, strict=True))
        ]

    @property
    def frame_hop(self) -> int:
        """Samples between consecutive encoder frames (320 at the usual 16 kHz configuration)."""
        return math.prod(int(s) for s in self.backbone.config.conv_stride)

    def chunk_spans(self, num_samples: int) -> list[tuple[int, int]]:
        """``(start, end)`` sample spans predict splits an input of ``num_samples`` into (one span if short).

        Chunks are ``predict_chunk_seconds`` long and start every ``chunk - overlap`` samples, rounded down
        to whole frame hops so that chunk frames line up with the frames of the whole input; the last chunk
        is moved back to end at the input's end (it is never a short leftover). Consecutive chunks share at
        least ``receptive_field - frame_hop`` samples, so every frame of the whole input is in some chunk.
        """
        seconds = self.hparams.predict_chunk_seconds
        if seconds is None:
            return [(0, num_samples)]
        rate = self.sample_rate
        chunk = int(round(seconds * rate))
        if num_samples <= chunk:
            return [(0, num_samples)]
        hop, field_ = self.frame_hop, self.backbone.receptive_field
        if chunk < field_:
            raise ValueError(f"predict_chunk_seconds={seconds} is shorter than the CNN's receptive field "
                             f"({field_} samples at {rate} Hz)")
        overlap = max(int(round(self.hparams.predict_chunk_overlap_seconds * rate)), field_ - hop)
        step = max(hop, (chunk - overlap) // hop * hop)
        last = (num_samples - chunk) // hop * hop
        starts = [start for start in range(0, num_samples - chunk, step) if start < last]
        return [(start, start + chunk) for start in starts] + [(last, num_samples)]

    def chunk_frames_kept(self, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Per chunk, the ``[first, last)`` of its own frames kept when joining frame-level outputs.

        Each overlap between neighbours is split in the middle (as Hugging Face's ASR pipeline drops its
        ``stride_length_s`` on each side), so the kept frames tile the whole input's frames exactly once.
        """
        hop = self.frame_hop
        offsets = [start // hop for start, _ in spans]
        counts = self.backbone.frame_lengths(torch.tensor([end - start for start, end in spans])).tolist()
        cuts = [0]
        for i in range(1, len(spans)):
            cuts.append((offsets[i] + offsets[i - 1] + counts[i - 1]) // 2)
        cuts.append(offsets[-1] + counts[-1])
        return [(cuts[i] - offsets[i], cuts[i + 1] - offsets[i]) for i in range(len(spans))]

    def merge_chunk_logits(self, logits: list[Tensor], spans: list[tuple[int, int]]) -> Tensor:
        """One input's logits from its chunks' (``[classes]`` or ``[frames, vocab]`` each, real frames only).

        Utterance-level logits are averaged, weighted by chunk length in samples; frame-level logits are
        joined, each chunk contributing the frames of :meth:`chunk_frames_kept`. Returns ``[1, ...]``.
        """
        if logits[0].dim() == 1:
            weights = torch.tensor([float(end - start) for start, end in spans], device=logits[0].device)
            stacked = torch.stack([x.float() for x in logits])
            return ((stacked * weights[:, None]).sum(0) / weights.sum())[None].to(logits[0].dtype)
        kept = self.chunk_frames_kept(spans)
        return torch.cat([x[first:last] for x, (first, last) in zip(logits, kept, strict=True)])[None]

    def predict_long(self, waveform: Tensor, item_id: Any, chunks_per_pass: int = 1) -> dict[str, Any]:
        """Predict one long input in chunks, each through the same selector/budget path as a short input.

        Args:
            waveform: ``[samples]`` the input's real samples.
            item_id: its id.
            chunks_per_pass: chunks run together in one forward pass (bounds memory: about this many
                chunk-length inputs at a time).
        """
        spans = self.chunk_spans(int(waveform.shape[0]))
        chunk_logits: list[Tensor] = []
        chunks: list[dict[str, Any]] = []
        total_flops = 0.0
        rate = self.sample_rate
        for first in range(0, len(spans), max(1, chunks_per_pass)):
            group = spans[first : first + max(1, chunks_per_pass)]
            lengths = torch.tensor([end - start for start, end in group], device=waveform.device)
            waves = waveform.new_zeros(len(group), int(lengths.max()))
            for row, (start, end) in enumerate(group):
                waves[row, : end - start] = waveform[start:end]
            encoded = self.encode(waves, lengths)
            logits, keep, _ = self.logits_at_budget(encoded, self.predict_budget_for(encoded))
            hard = (keep.detach() > 0.5).float()
            selector_flops = self.selector.flops(encoded.frame_mask.sum(1)) if self.selector is not None else None
            flops = count_forward_flops(self.backbone.config, encoded.lengths, hard, selector_flops).total
            total_flops += float(flops.sum())
            frames = encoded.frame_mask.sum(1).tolist()
            for row, (start, end) in enumerate(group):
                chunk_logits.append(logits[row] if logits.dim() == 2 else logits[row, : frames[row]])
                chunks.append({"start_s": start / rate, "end_s": end / rate,
                               "executed_layers": hard[row].nonzero().flatten().tolist()})
        merged = self.merge_chunk_logits(chunk_logits, spans)
        frame_mask = torch.ones(merged.shape[:2] if merged.dim() == 3 else (1, 1), dtype=torch.bool,
                                device=merged.device)
        layers = sorted({layer for chunk in chunks for layer in chunk["executed_layers"]})
        return {
            "id": item_id,
            "output": self.decode(merged, frame_mask)[0],
            "executed_layers": layers,
            "gflops": total_flops / 1e9,
            "chunks": chunks,
        }

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        head_lr = self.hparams.head_lr or self.hparams.lr
        selector_lr = self.hparams.selector_lr or head_lr
        groups = []
        for params, lr in (
            ([p for p in self.backbone.parameters() if p.requires_grad], self.hparams.lr),
            ([p for n, p in self.named_parameters() if n.startswith(("head.", "exit_heads.")) and p.requires_grad],
             head_lr),
            ([p for p in self.selector.parameters() if p.requires_grad] if self.selector is not None else [],
             selector_lr),
        ):
            if params:
                groups.append({"params": params, "lr": lr})
        optimizer = torch.optim.AdamW(groups, weight_decay=self.hparams.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        warmup = self.hparams.warmup
        warmup_steps = int(round(warmup * total)) if isinstance(warmup, float) else int(warmup)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda=lr_schedule(self.hparams.schedule, warmup_steps, total)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def lr_schedule(kind: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate at a step: linear warm-up, then the named decay.

    ``tri_stage`` follows the wav2vec 2.0 fine-tuning recipe: warm-up, hold until 50% of training, then
    exponential decay to 5% of the peak.
    """
    if kind not in ("linear", "tri_stage", "constant"):
        raise ValueError(f"schedule must be 'linear', 'tri_stage' or 'constant', got {kind!r}")
    warmup_steps = max(0, min(warmup_steps, total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if kind == "constant":
            return 1.0
        if kind == "linear":
            return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
        hold_end = max(warmup_steps, total_steps // 2)
        if step < hold_end:
            return 1.0
        progress = min(1.0, (step - hold_end) / max(1, total_steps - hold_end))
        return math.exp(math.log(0.05) * progress)

    return factor
