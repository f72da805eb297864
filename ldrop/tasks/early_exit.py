"""Early exit, the baseline method and a :class:`~ldrop.tasks.depth.DepthPolicy`: a head after each exit layer,
its loss weights, exit rule and calibration. A task takes it as ``early_exit: EarlyExitConfig``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from ldrop.budgets import resolve_budget
from ldrop.engine.flops import counted_flops
from ldrop.selectors import calibrate_threshold
from ldrop.selectors.base import Float32UnderHalfCasts
from ldrop.tasks.config import check_choices
from ldrop.tasks.depth import Budget, DepthPolicy
from ldrop.tasks.gating import EncodedBatch
from ldrop.tasks.hooks import check_logits

if TYPE_CHECKING:
    from ldrop.selectors.base import CalibrationData
    from ldrop.tasks.base import LayerDropTask


@dataclass
class EarlyExitConfig:
    """How early exit is set up (``model.init_args.early_exit`` in YAML).

    Attributes:
        layers: 1-based exit layers (``None``: every layer); the last layer is always an exit.
        loss_weights: ``"uniform"`` or ``"linear"`` (exit ``k`` weighted ``k``) in the weighted mean of the exit losses.
        policy: ``"budget"``: budget ``k`` exits after the deepest exit layer ``<= k``; ``"confidence"``: each
            input exits at the first exit whose confidence passes a threshold calibrated on validation data so
            that the mean exit layer equals the budget.
        confidence: ``"max_prob"`` (mean maximum posterior) or ``"entropy"`` (negative mean entropy).
    """

    layers: list[int] | None = None
    loss_weights: Literal["uniform", "linear"] = "uniform"
    policy: Literal["budget", "confidence"] = "budget"
    confidence: Literal["max_prob", "entropy"] = "max_prob"

    def __post_init__(self) -> None:
        check_choices(self, "early_exit")


class EarlyExit(Float32UnderHalfCasts, DepthPolicy):
    """The exit heads (``heads[str(layer)]``), their loss weights, the exit rule and the calibrated thresholds.

    Args:
        config: the settings.
        num_layers: encoder layers ``N`` of the backbone.
        make_head: builds one task head (called once per exit layer).
    """

    float32_buffers = ("thresholds",)  # float32 in a bf16 model (rounded, a threshold lands on a score)

    def __init__(self, config: EarlyExitConfig, num_layers: int, make_head: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.config = config
        self.num_layers = int(num_layers)
        layers = sorted(set(config.layers)) if config.layers else list(range(1, num_layers + 1))
        if any(not 1 <= k <= num_layers for k in layers):
            raise ValueError(f"early_exit.layers are 1-based layer numbers in 1..{num_layers}, got {config.layers}")
        if layers[-1] != num_layers:
            layers.append(num_layers)  # the full model is always an exit
        self.layers = self.exit_layers = layers
        self.heads = nn.ModuleDict({str(k): make_head() for k in layers})
        #: Confidence threshold per budget (index ``k - 1``) for the confidence policy; NaN = not calibrated.
        self.register_buffer("thresholds", torch.full((num_layers,), float("nan")))
        self._head_cost: dict[int, float] = {}  # frames -> FLOPs of one head, measured when first needed

    def needs_calibration(self, at_validation: bool = False) -> bool:
        """The confidence policy calibrates its thresholds on validation data."""
        return self.config.policy == "confidence"

    def calibrated_for(self, budgets: Sequence[int]) -> bool:
        """Whether these budgets have thresholds (the full budget needs none)."""
        return not self.needs_calibration() or all(not math.isnan(float(self.thresholds[int(k) - 1]))
                                             for k in budgets if int(k) < self.num_layers)

    def head_for(self, exit_layer: int | None = None) -> nn.Module:
        return self.heads[str(exit_layer if exit_layer is not None else self.num_layers)]

    def exit_layer_for(self, budget: int) -> int:
        """The deepest exit layer within ``budget`` layers (at least the first exit)."""
        return max((k for k in self.layers if k <= budget), default=self.layers[0])

    def logits(self, task: LayerDropTask, encoded: EncodedBatch,
               budget: Budget) -> tuple[Tensor, Tensor, None]:
        """Per input, budget ``k``: the deepest exit within ``k`` (policy ``budget``, and in training), or the
        first exit confident enough for ``k`` (policy ``confidence``)."""
        device = encoded.hidden.device
        budgets = resolve_budget(budget, self.num_layers, encoded.hidden.shape[0], device).tolist()  # one host sync
        if self.config.policy == "confidence" and not task.training and min(budgets) < self.num_layers:
            return (*self.run_dynamic(task, encoded, budgets), None)
        exit_layers = [self.exit_layer_for(k) for k in budgets]
        exits = torch.tensor(exit_layers, device=device)
        keep = (torch.arange(self.num_layers, device=device) < exits[:, None]).float()
        hidden, _ = task.run_layers(encoded, keep)
        groups = sorted(set(exit_layers))  # each input read by its exit's head, in batch order
        if len(groups) == 1:
            return check_logits(task, task.compute_logits(self.head_for(groups[0]), hidden, encoded.frame_mask),
                                len(keep)), keep, None
        out = None
        for exit_layer in groups:
            rows = (exits == exit_layer).nonzero().squeeze(1)
            logits = check_logits(task, task.compute_logits(self.head_for(exit_layer), hidden[rows],
                                                            encoded.frame_mask[rows]), len(rows))
            out = logits.new_zeros((len(exits), *logits.shape[1:])) if out is None else out
            out[rows] = logits
        return out, keep, None

    def exit_logits(self, task: LayerDropTask, encoded: EncodedBatch) -> list[Tensor]:
        """The logits of every exit head, in the order of :attr:`layers` (all layers run)."""
        keep = torch.ones(encoded.hidden.shape[0], self.num_layers, device=encoded.hidden.device)
        _, states = task.run_layers(encoded, keep, return_all=True)
        return [check_logits(task, task.compute_logits(self.head_for(k), task.backbone.finalize(states[k - 1]),
                                                       encoded.frame_mask), len(keep))
                for k in self.layers]

    def training_losses(self, task: LayerDropTask, encoded: EncodedBatch,
                        batch: Any) -> tuple[dict[str, Tensor], Tensor, int]:
        """The weighted mean of every exit's task loss; every layer runs."""
        losses = [task.task_loss(logits, encoded.frame_mask, batch) for logits in self.exit_logits(task, encoded)]
        keep = torch.ones(encoded.hidden.shape[0], self.num_layers, device=encoded.hidden.device)
        return {"task": self.loss(losses)}, keep, self.num_layers

    def calibrate(self, task: LayerDropTask, data: CalibrationData, budgets: Sequence[int]) -> None:
        """Calibrate the thresholds of every budget on the confidences of every exit on ``data``."""
        self.set_thresholds(torch.cat([
            torch.stack([self.confidence(x, encoded.frame_mask) for x in self.exit_logits(task, encoded)], 1).cpu()
            for encoded in data.inputs()]))

    def head_flops(self, task: LayerDropTask, keep: Tensor, frame_lengths: Tensor, budget: Budget) -> Tensor | None:
        """Confidence policy below full depth, out of training: the head of every exit an input passed on its way
        to the one it exited at (:meth:`run_dynamic`; not where its budget's threshold is ``+inf``, which runs
        every layer and reads the last head only), each as the counter measures the head on its frames."""
        if self.config.policy != "confidence" or task.training:
            return None
        budgets = resolve_budget(budget, self.num_layers, keep.shape[0], keep.device)
        exits = torch.tensor(self.layers, device=keep.device)
        passed = (exits[None] <= keep.detach().sum(1, keepdim=True)).sum(1) - 1
        checked = (budgets < self.num_layers) & (self.thresholds.to(keep.device)[budgets - 1] < math.inf)  # NaN: N
        passed = torch.where(checked, passed.clamp(min=0), 0)
        frames = frame_lengths.long().tolist()  # one host sync
        for length in set(frames) - self._head_cost.keys():
            self._head_cost[length] = self._measure_head(task, length)
        return passed.double() * torch.tensor([self._head_cost[f] for f in frames], dtype=torch.float64,
                                              device=keep.device)

    def _measure_head(self, task: LayerDropTask, frames: int) -> float:
        """FLOPs of one head on one input of ``frames`` frames (heads share their architecture)."""
        head = self.head_for()
        weight = next(head.parameters(), torch.zeros(()))  # a head without parameters: float32 on the CPU
        hidden = torch.zeros(1, frames, int(task.backbone.config.hidden_size), device=weight.device, dtype=weight.dtype)
        mask = torch.ones(1, frames, dtype=torch.bool, device=weight.device)
        return counted_flops(lambda: task.compute_logits(head, hidden, mask))

    def label(self) -> str:
        return "early_exit" if self.config.policy == "budget" else "early_exit_confidence"

    def __str__(self) -> str:  # how messages name what is fitted
        return f"early exit (policy: {self.config.policy})"

    def loss(self, exit_losses: list[Tensor]) -> Tensor:
        """The weighted mean of the per-exit losses (in the order of :attr:`layers`)."""
        weights = [float(k) if self.config.loss_weights == "linear" else 1.0 for k in self.layers]
        return sum(w * x for w, x in zip(weights, exit_losses, strict=True)) / sum(weights)

    def confidence(self, logits: Tensor, frame_mask: Tensor) -> Tensor:
        """``[batch]`` confidence of each prediction (higher = surer), averaged over real frames."""
        log_probs = logits.float().log_softmax(-1)
        probs = log_probs.exp()  # max_prob: the largest; entropy: its negative, sum p log p
        per_position = probs.amax(-1) if self.config.confidence == "max_prob" else (probs * log_probs).sum(-1)
        if per_position.dim() == 1:
            return per_position
        weights = frame_mask.to(per_position.dtype)
        return (per_position * weights).sum(1) / weights.sum(1).clamp(min=1)

    def threshold_for(self, budget: int) -> float:
        """The calibrated confidence threshold of ``budget`` (a RuntimeError if never calibrated)."""
        threshold = float(self.thresholds[budget - 1])
        if math.isnan(threshold):
            raise RuntimeError(
                f"no confidence threshold calibrated for budget {budget}: run calibrate() on validation "
                "confidences (ldrop test does it on the validation data)"
            )
        return threshold

    def run_dynamic(self, task: LayerDropTask, encoded: EncodedBatch, budgets: list[int]) -> tuple[Tensor, Tensor]:
        """Confidence policy: ``(logits, keep_mask [batch, layers])``, each input stopping at the first exit
        passing its budget's threshold (budget ``N``: the last); layers run only for the inputs still active."""
        backbone, batch, device = task.backbone, encoded.hidden.shape[0], encoded.hidden.device
        limits = {k: self.threshold_for(k) if k < self.num_layers else math.inf for k in sorted(set(budgets))}
        thresholds = torch.tensor([limits[k] for k in budgets], device=device)
        hidden, frame_mask = encoded.hidden.clone(), encoded.frame_mask
        context = backbone.prepare_layers(frame_mask)
        active = torch.ones(batch, dtype=torch.bool, device=device)
        keep = torch.zeros(batch, self.num_layers, device=device)
        logits_out: Tensor | None = None
        for layer in range(self.num_layers):
            rows = active.nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            lengths = frame_mask[rows].sum(1)
            frames, shortest = torch.stack([lengths.max(), lengths.min()]).tolist()
            sub_mask = frame_mask[rows, :frames] if shortest < frames else None
            sub = backbone.run_layer(layer, hidden[rows, :frames], sub_mask, context)
            hidden[rows, :frames] = sub.to(hidden.dtype)
            keep[rows, layer] = 1.0
            exit_layer = layer + 1
            if exit_layer not in self.layers:
                continue
            if exit_layer < self.num_layers:  # inputs at full budget read only the last head
                rows = rows[thresholds[rows] < math.inf]
                if rows.numel() == 0:
                    continue
            states = backbone.finalize(hidden[rows]).masked_fill(~frame_mask[rows][..., None], 0.0)
            logits = check_logits(task, task.compute_logits(self.head_for(exit_layer), states, frame_mask[rows]),
                                  len(rows))
            if logits_out is None:
                logits_out = logits.new_zeros((batch, *logits.shape[1:]))
            # every input still active exits at the last layer
            done = (self.confidence(logits, frame_mask[rows]) >= thresholds[rows]) | (exit_layer == self.num_layers)
            logits_out[rows[done]] = logits[done]
            active[rows[done]] = False
        return logits_out, keep

    @torch.no_grad()
    def set_thresholds(self, confidences: Tensor, budgets: list[int] | range | None = None) -> dict[int, float]:
        """Per budget (default: every ``k`` in ``1..N``), the threshold whose mean exit layer on
        ``confidences`` (``[inputs, exits]``) equals it; returns budget -> mean exit layer achieved.

        An input runs layer ``l`` when no exit before ``l`` passed, so with ``score_l = -max(confidence of the
        exits before l)`` (``+inf`` up to the first exit) the layers run are those with ``score >= -threshold``,
        a count :func:`~ldrop.selectors.calibrate_threshold` calibrates.
        """
        conf = confidences.double()
        scores = torch.full((conf.shape[0], self.num_layers), math.inf, dtype=torch.float64)
        for i, (earlier, later) in enumerate(zip(self.layers[:-1], self.layers[1:], strict=True)):
            scores[:, earlier:later] = -conf[:, : i + 1].amax(1, keepdim=True)
        achieved = {}
        for k in budgets or range(1, self.num_layers + 1):
            threshold, achieved[int(k)] = calibrate_threshold(scores, float(k))
            self.thresholds[int(k) - 1] = -threshold
        return achieved
