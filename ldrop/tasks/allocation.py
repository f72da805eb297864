"""Depth allocation, a :class:`~ldrop.tasks.depth.DepthPolicy`: the input decides how many layers it runs, its
selector which ones. A depth head reads each input and predicts its task loss at every depth; at a mean budget
the layers go to the inputs whose predicted gain of one more layer is largest
(:mod:`ldrop.budgets.allocation`). A task takes it as ``allocation: AllocationConfig``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldrop.budgets import resolve_budget
from ldrop.budgets.allocation import allocate_depths, calibrate_gain_thresholds, depths_from_thresholds
from ldrop.selectors import LayerSelector, SelectorOutput
from ldrop.selectors.base import Float32UnderHalfCasts
from ldrop.tasks.config import check_choices
from ldrop.tasks.depth import Budget, SelectedLayers
from ldrop.tasks.gating import EncodedBatch
from ldrop.tasks.hooks import check_item_losses

if TYPE_CHECKING:
    from ldrop.selectors.base import CalibrationData
    from ldrop.tasks.base import LayerDropTask


@dataclass(frozen=True)
class AllocationConfig:
    """Depth allocation (``model.init_args.allocation`` in YAML).

    Attributes:
        mode: ``"batch"``: within each batch the budgets' sum of layers goes to the largest predicted gains
            (the mean depth is the budget exactly); ``"stream"``: each input on its own, by a gain threshold per
            budget calibrated on validation data (the mean depth matches the budget on data like it).
        weight: weight of the depth head's loss (its predicted losses against the observed ones).
        hidden_dim: width of the depth head.
        signal: what the depth head regresses for each input: ``"loss"``, its task loss at k-1, k and k+1
            layers; ``"gain"``, its loss drops between those depths (what the allocation reads, without who is
            hard); ``"error"``, the drops of its metric's error terms (tasks with ``item_errors``);
            ``"gain_all"``, its loss drops between every pair of consecutive depths (N passes a step).
    """

    mode: Literal["batch", "stream"] = "batch"
    weight: float = 1.0
    hidden_dim: int = 64
    signal: Literal["loss", "gain", "error", "gain_all"] = "loss"

    def __post_init__(self) -> None:
        check_choices(self, "allocation")
        if self.weight <= 0 or self.hidden_dim < 1:
            raise ValueError(f"allocation.weight must be > 0 and hidden_dim >= 1, got {self.weight}, {self.hidden_dim}")


class DepthHead(Float32UnderHalfCasts):
    """Predicts each input's task loss after ``1..N`` layers, non-increasing and convex in depth (so the greedy
    allocation is optimal for the prediction): masked mean and std pooling of the normalised, projected
    features, an MLP to ``N`` raw outputs, the loss at full depth and ``N - 1`` non-negative steps."""

    float32_buffers = ("thresholds",)  # float32 in a bf16 model (rounded, a threshold lands on a score)

    def __init__(self, feature_dim: int, num_layers: int, hidden_dim: int = 64) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.frame = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, hidden_dim), nn.GELU())
        self.out = nn.Sequential(nn.Linear(2 * hidden_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, num_layers))
        #: Stream mode: the calibrated gain threshold of budget ``k`` at index ``k - 1`` (NaN: not calibrated).
        self.register_buffer("thresholds", torch.full((num_layers,), float("nan")))

    def forward(self, features: Tensor, frame_mask: Tensor) -> Tensor:
        """``[batch, N]`` predicted loss after ``d`` layers at index ``d - 1``."""
        weight = frame_mask.unsqueeze(-1).to(features.dtype)
        hidden = self.frame(features.detach()) * weight
        count = weight.sum(1).clamp(min=1.0)
        mean = hidden.sum(1) / count
        std = ((((hidden - mean[:, None]) ** 2) * weight).sum(1) / count + 1e-5).sqrt()
        raw = self.out(torch.cat([mean, std], -1)).float()
        # the gain of layer d+1 is the sum of the steps from d on: non-negative, non-increasing in d
        gains = F.softplus(raw[:, :-1]).flip(1).cumsum(1).flip(1)
        tail = torch.cat([gains.flip(1).cumsum(1).flip(1), torch.zeros_like(raw[:, -1:])], 1)  # no len(): exportable
        return F.softplus(raw[:, -1:]) + tail

    @staticmethod
    def gains(losses: Tensor) -> Tensor:
        """``[batch, N - 1]`` predicted gain of each next layer from ``[batch, N]`` predicted losses."""
        return losses[:, :-1] - losses[:, 1:]

    def flops(self, frame_lengths: Tensor) -> Tensor:
        """``[batch]`` forward FLOPs (multiply-add = 2) at these feature frames."""
        linear = self.frame[1]
        h = linear.out_features
        return 2.0 * frame_lengths.double() * linear.in_features * h + 2.0 * (2 * h * h + h * self.num_layers)


def depth_signal_loss(predicted: Tensor, observed: dict[int, Tensor], signal: str = "loss") -> Tensor:
    """The depth head's loss: Huber between its ``[batch, N]`` predicted losses and each input's observed task
    loss at the depths run (``depth -> [batch]``; clipped at 10, so one diverged input cannot dominate), or with
    ``signal="gain"`` between the predicted and observed loss drops from each depth run to the next."""
    seen = {d: value.detach().float().clamp(max=10.0) for d, value in observed.items()}
    if signal == "gain" and any(d + 1 in seen for d in seen):
        return torch.stack([F.smooth_l1_loss(predicted[:, d - 1] - predicted[:, d], seen[d] - seen[d + 1])
                            for d in sorted(seen) if d + 1 in seen]).mean()
    return torch.stack([F.smooth_l1_loss(predicted[:, d - 1], value) for d, value in seen.items()]).mean()


class AllocatedLayers(SelectedLayers):
    """A selector picks the layers, a :class:`DepthHead` (registered on the task) how many: training is the
    selector's at a sampled ``k`` (:class:`SelectedLayers`) plus the depth signal; evaluation allocates the
    budget's layers across inputs (``config.mode``) and runs each input's selector mask at its depth."""

    def __init__(self, selector: LayerSelector, head: nn.Module, depth_head: DepthHead,
                 config: AllocationConfig) -> None:
        if selector.needs_calibration:
            raise ValueError(f"allocation: {type(selector).__name__} must pick layers without validation data "
                             "(top-k mode, fallback: false): the allocation decides each input's depth")
        super().__init__(selector, head)
        self.depth_head, self.config = depth_head, config
        self.min_layers = max(1, selector.prefix_layers)

    def depths(self, encoded: EncodedBatch, budget: Tensor) -> Tensor:
        """``[batch]`` layers each input runs for ``[batch]`` budgets (their mean is the mean budget)."""
        gains = self.depth_head.gains(self.depth_head(encoded.features, encoded.frame_mask))
        if self.config.mode == "batch":
            return allocate_depths(gains, budget, self.min_layers)
        thresholds = self.depth_head.thresholds[budget - 1]
        if bool(thresholds.isnan().any()):
            missing = sorted({int(k) for k in budget[thresholds.isnan()]})
            raise RuntimeError(f"allocation (mode: stream) has no gain threshold for budgets {missing}: calibrate "
                               "it on validation data first (ldrop test and predict do it)")
        return depths_from_thresholds(gains, thresholds, self.min_layers).clamp(max=self.selector.num_layers)

    def logits(self, task: LayerDropTask, encoded: EncodedBatch,
               budget: Budget) -> tuple[Tensor, Tensor, SelectorOutput | None]:
        if not task.training:  # training is the selector's, at the sampled k
            n, batch = task.num_layers, encoded.frame_mask.shape[0]
            budget = self.depths(encoded, resolve_budget(budget, n, batch, encoded.frame_mask.device))
        return super().logits(task, encoded, budget)

    def training_losses(self, task: LayerDropTask, encoded: EncodedBatch,
                        batch: Any) -> tuple[dict[str, Tensor], Tensor, int]:
        """The selector's losses at the sampled ``k``, plus the depth signal: the selector's masks at ``k - 1``
        and ``k + 1`` (``signal: gain`` or ``error``: and ``k``; ``gain_all``: every depth) also run (no gradient,
        sparse path), and the depth head regresses each input's observed task loss at the three depths, or its
        drops of loss or errors between them."""
        signal = self.config.signal
        if signal == "error" and not task.has_item_errors:
            raise ValueError(f"allocation.signal: error needs a task with per-item errors; {type(task).__name__} has "
                             "none (use signal: loss or gain)")

        def measure(logits: Tensor) -> Tensor:
            if signal == "error":
                return task.item_errors(logits, encoded.frame_mask, batch)[0].float()
            return check_item_losses(task, task.item_losses(logits, encoded.frame_mask, batch), len(logits))

        losses, keep, k, logits = self.losses_at(task, encoded, batch, task.sample_train_budget())
        observed = {k: measure(logits.detach())} if signal == "loss" else {}
        self.selector.eval()  # its clean masks, as evaluation runs them (no noise, no statistics update)
        try:
            with torch.no_grad():
                # drops compare depths: every one from the clean masks (k's own mask was drawn with noise)
                depths = {"loss": (k - 1, k + 1), "gain_all": range(1, task.num_layers + 1)}.get(signal, (k - 1, k, k + 1))
                for depth in depths:
                    if self.min_layers <= depth <= task.num_layers:
                        observed[depth] = measure(task.logits_with_mask(encoded, task.decide(encoded, depth)[0]))
        finally:
            self.selector.train()
        losses["depth"] = self.config.weight * depth_signal_loss(
            self.depth_head(encoded.features, encoded.frame_mask), observed, "loss" if signal == "loss" else "gain")
        return losses, keep, k

    def needs_calibration(self, at_validation: bool = False) -> bool:
        return self.config.mode == "stream"

    def calibrated_for(self, budgets: Sequence[int]) -> bool:
        return not self.needs_calibration() or all(
            not bool(self.depth_head.thresholds[int(k) - 1].isnan()) for k in budgets)

    def calibrate(self, task: LayerDropTask, data: CalibrationData, budgets: Sequence[int]) -> None:
        """Stream mode: each budget's gain threshold on the validation inputs' predicted gains."""
        gains = torch.cat([self.depth_head.gains(self.depth_head(e.features, e.frame_mask)).cpu()
                           for e in data.inputs()])
        for k, threshold in calibrate_gain_thresholds(gains, budgets, self.min_layers).items():
            self.depth_head.thresholds[k - 1] = threshold

    def flops(self, frame_lengths: Tensor) -> Tensor:
        return self.depth_head.flops(frame_lengths)

    def label(self) -> str:
        return f"{super().label()}-allocate"

    def __str__(self) -> str:
        return f"depth allocation (mode: {self.config.mode})"
