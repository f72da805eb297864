"""Hard top-k layer masks and their straight-through Gumbel relaxation, shared by the trainable selectors.

Forward values are always the exact 0/1 top-k mask; in training the backward pass follows a relaxed
(soft) top-k of Gumbel-perturbed scores, ``keep_mask = hard + (soft - soft.detach())``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import LayerSelector

Relaxation = Literal["sigmoid", "softmax"]
#: How a trainable selector learns: through its chosen mask (straight-through), by comparing masks on the same
#: input (counterfactual), or both.
Objective = Literal["straight_through", "counterfactual", "both"]


def gumbel_like(scores: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """I.i.d. Gumbel(0, 1) noise with the shape, dtype and device of ``scores`` (``generator``: optional, on
    ``scores.device``, for reproducible noise)."""
    # The generator is passed only when given: torch.compile cannot trace ``generator=None`` with dynamic
    # shapes ("SymIntArrayRef expected to contain only concrete integers").
    seeded = {"generator": generator} if generator is not None else {}
    uniform = torch.rand(scores.shape, dtype=scores.dtype, device=scores.device, **seeded)
    tiny = torch.finfo(scores.dtype).tiny
    return -torch.log(-torch.log(uniform.clamp(min=tiny, max=1.0 - 1e-7)))


def hard_topk_mask(scores: Tensor, k: Tensor) -> Tensor:
    """Keep the ``k`` best-scoring layers of each sample.

    Ties are broken deterministically in favour of the lower layer index (stable sort).

    Args:
        scores: ``[batch, layers]`` scores, higher = more worth running.
        k: ``[batch]`` long, layers to keep per sample, each in ``0..layers``.

    Returns:
        ``[batch, layers]`` float mask of exact 0/1 values with ``k[b]`` ones in row ``b``; no gradient.
    """
    order = torch.sort(scores.detach(), dim=-1, descending=True, stable=True).indices
    positions = torch.arange(scores.shape[-1], device=scores.device)
    keep_sorted = (positions.unsqueeze(0) < k.unsqueeze(-1)).to(scores.dtype)
    return torch.zeros_like(scores, memory_format=torch.contiguous_format).scatter(-1, order, keep_sorted)


def relaxed_topk_mask(
    scores: Tensor, k: Tensor, temperature: float, method: Relaxation = "sigmoid"
) -> Tensor:
    """A differentiable top-k mask that tends to :func:`hard_topk_mask` as ``temperature -> 0``.

    ``"sigmoid"``: ``sigmoid((s - t_k) / temperature)`` with ``t_k`` halfway between the k-th and (k+1)-th
    score, so an entry is above 0.5 exactly when the hard mask keeps it; ``t_k`` is not detached, so raising
    one layer's score pushes the others down (the mask competes for a fixed budget).
    ``"softmax"``: ``k`` rounds of softmax, each round damping what earlier rounds picked (Xie & Ermon,
    2019, relaxed subset sampling); rows sum to exactly ``k``.

    Rows with ``k == layers`` are all ones (nothing to choose, no gradient); rows with ``k == 0`` are zeros.

    Args:
        scores: ``[batch, layers]`` scores (already perturbed when sampling).
        k: ``[batch]`` long, layers to keep per sample.
        temperature: relaxation temperature ``> 0``.
        method: ``"sigmoid"`` or ``"softmax"``.

    Returns:
        ``[batch, layers]`` soft mask in ``[0, 1]``, differentiable w.r.t. ``scores``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    num_layers = scores.shape[-1]
    full = (k >= num_layers).unsqueeze(-1)
    empty = (k <= 0).unsqueeze(-1)
    if method == "sigmoid":
        sorted_scores = torch.sort(scores, dim=-1, descending=True).values
        upper = sorted_scores.gather(-1, (k - 1).clamp(0, num_layers - 1).unsqueeze(-1))
        lower = sorted_scores.gather(-1, k.clamp(0, num_layers - 1).unsqueeze(-1))
        soft = torch.sigmoid((scores - 0.5 * (upper + lower)) / temperature)
    elif method == "softmax":
        keys = scores  # damped in log space after each round, then divided by the temperature
        tiny = torch.finfo(scores.dtype).tiny
        soft = torch.zeros_like(scores)
        for round_index in range(int(k.max().clamp(max=num_layers - 1)) if k.numel() else 0):
            pick = torch.softmax(keys / temperature, dim=-1)
            active = (round_index < k).to(scores.dtype).unsqueeze(-1)
            soft = soft + active * pick
            keys = keys + torch.log((1.0 - pick).clamp(min=tiny))
    else:
        raise ValueError(f"method must be 'sigmoid' or 'softmax', got {method!r}")
    return soft.masked_fill(full, 1.0).masked_fill(empty, 0.0)


def straight_through_topk(
    scores: Tensor,
    k: Tensor,
    temperature: float,
    *,
    noise_scale: float = 1.0,
    method: Relaxation = "sigmoid",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample a hard top-k mask from clean ``scores`` plus ``noise_scale`` times Gumbel noise (0: none),
    with the backward pass of :func:`relaxed_topk_mask` (``k``, ``temperature`` and ``method`` as there).

    Returns:
        ``(keep_mask, soft_mask)``, both ``[batch, layers]``: ``keep_mask`` has exact 0/1 forward values and
        the gradient of ``soft_mask``.
    """
    perturbed = scores + noise_scale * gumbel_like(scores, generator) if noise_scale > 0 else scores
    hard = hard_topk_mask(perturbed, k)
    soft = relaxed_topk_mask(perturbed, k, temperature, method)
    # (soft - soft.detach()) is exactly 0 in the forward pass, so keep_mask is exactly 0/1
    return hard + (soft - soft.detach()), soft


def annealed_temperature(progress: float, start: float, end: float) -> float:
    """The temperature at training ``progress`` (clamped to ``[0, 1]``): geometric interpolation from
    ``start > 0`` (progress 0) to ``end > 0`` (progress 1).

    Geometric rather than linear so the late, low-temperature phase is not rushed: each equal step in
    progress divides the temperature by the same factor.
    """
    progress = min(max(float(progress), 0.0), 1.0)
    return float(math.exp((1.0 - progress) * math.log(start) + progress * math.log(end)))


def calibrate_threshold(scores: Tensor, target_mean_layers: float) -> tuple[float, float]:
    """Score threshold at which inputs run ``target_mean_layers`` layers on average.

    Each input runs the layers whose score is ``>= threshold``, and at least one layer (its best) when none
    passes. The threshold is placed halfway between two consecutive distinct scores, so the same layers pass
    on the calibration data with a margin on both sides. With distinct scores the achieved mean is within
    ``1 / (2 * inputs)`` of any target in ``1..layers``; tied scores can make steps coarser.

    Args:
        scores: ``[inputs, layers]`` eval-mode scores of the calibration inputs.
        target_mean_layers: the mean number of executed layers wanted.

    Returns:
        ``(threshold, achieved_mean_layers)``; the threshold is ``-inf`` when every layer must run.
    """
    if scores.dim() != 2 or scores.shape[0] < 1:
        raise ValueError(
            f"scores must have shape [inputs, layers] with inputs >= 1, got {list(scores.shape)}"
        )
    scores = scores.detach().double()
    num_inputs = scores.shape[0]
    flat_ascending = scores.flatten().sort().values
    row_max_ascending = scores.max(dim=-1).values.sort().values
    candidates = torch.unique(flat_ascending).flip(0)  # distinct scores, descending
    passing = flat_ascending.numel() - torch.searchsorted(flat_ascending, candidates, side="left")
    rows_without_pass = torch.searchsorted(row_max_ascending, candidates, side="left")
    mean_layers = (passing + rows_without_pass).double() / num_inputs
    best = int(torch.argmin((mean_layers - target_mean_layers).abs()))
    threshold = 0.5 * float(candidates[best] + candidates[best + 1]) if best + 1 < candidates.numel() else -math.inf
    return threshold, float(mean_layers[best])


def threshold_mask(scores: Tensor, thresholds: Tensor) -> Tensor:
    """``[batch, layers]`` 0/1 float mask, no gradient: the ``scores [batch, layers]`` that pass their sample's
    threshold (``thresholds [batch]``), and each row's best layer when none does."""
    passing = (scores.detach() >= thresholds.unsqueeze(-1)).to(scores.dtype)
    best = hard_topk_mask(scores, torch.ones_like(thresholds, dtype=torch.long))
    return torch.where(passing.sum(-1, keepdim=True) > 0, passing, best)


class TopKSelector(LayerSelector):
    """Base of the trainable selectors: scores per layer, hard top-k, straight-through Gumbel training.

    Subclasses compute ``[batch, layers]`` scores and call :meth:`select_topk`. In training the scores are
    perturbed with Gumbel noise and the backward pass follows a relaxed top-k whose temperature is annealed
    geometrically from ``tau_start`` to ``tau_end`` by :meth:`set_progress`; in eval mode the selection is the
    deterministic hard top-k of the clean scores.

    Objectives (``objective``):

    * ``"straight_through"``: the task loss of the chosen mask trains the scores through the relaxed mask.
      It only ever sees the mask it chose.
    * ``"counterfactual"``: the task also scores ``counterfactual_candidates`` other masks per input (one-layer
      swaps of the chosen one, without gradient, on the sparse path) and :meth:`counterfactual_loss` trains
      the scores to rank the masks of each input by their loss. The chosen mask gets no straight-through
      gradient, so training runs only the chosen layers (sparse) and costs less than full depth.
    * ``"both"``: the sum of the two.

    Args:
        num_layers: number of encoder layers ``N``.
        feature_dim: channels of the features the selector reads.
        tau_start: relaxation temperature at the start of training (not used by ``"counterfactual"``).
        tau_end: relaxation temperature at the end of training (not used by ``"counterfactual"``).
        noise_scale: Gumbel noise multiplier in training (exploration); 0 disables the noise.
        relaxation: ``"sigmoid"`` or ``"softmax"``, see :func:`relaxed_topk_mask` (not used by
            ``"counterfactual"``).
        objective: ``"straight_through"``, ``"counterfactual"`` or ``"both"``.
        counterfactual_candidates: alternative masks per input scored for the counterfactual objective.
        counterfactual_weight: weight of the counterfactual ranking loss.
    """

    def __init__(
        self,
        num_layers: int,
        feature_dim: int,
        *,
        tau_start: float = 1.0,
        tau_end: float = 0.1,
        noise_scale: float = 1.0,
        relaxation: Relaxation = "sigmoid",
        objective: Objective = "straight_through",
        counterfactual_candidates: int = 2,
        counterfactual_weight: float = 1.0,
    ) -> None:
        super().__init__(num_layers, feature_dim)
        if objective not in ("straight_through", "counterfactual", "both"):
            raise ValueError(f"objective must be 'straight_through', 'counterfactual' or 'both', got {objective!r}")
        if objective != "straight_through" and counterfactual_candidates < 1:
            raise ValueError(f"counterfactual_candidates must be >= 1, got {counterfactual_candidates}")
        if counterfactual_weight < 0:
            raise ValueError(f"counterfactual_weight must be >= 0, got {counterfactual_weight}")
        self.objective: Objective = objective
        self.counterfactual_candidates = int(counterfactual_candidates) if objective != "straight_through" else 0
        self.counterfactual_weight = float(counterfactual_weight)
        if tau_start <= 0 or tau_end <= 0:
            raise ValueError(f"tau_start and tau_end must be > 0, got {tau_start} and {tau_end}")
        if noise_scale < 0:
            raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
        if relaxation not in ("sigmoid", "softmax"):
            raise ValueError(f"relaxation must be 'sigmoid' or 'softmax', got {relaxation!r}")
        self.tau_start = float(tau_start)
        self.tau_end = float(tau_end)
        self.noise_scale = float(noise_scale)
        self.relaxation: Relaxation = relaxation
        self.progress = 0.0

    @property
    def temperature(self) -> float:
        """The relaxation temperature at the current training progress."""
        return annealed_temperature(self.progress, self.tau_start, self.tau_end)

    def set_progress(self, progress: float) -> None:
        """Set training progress in ``[0, 1]``; moves the temperature from ``tau_start`` to ``tau_end``."""
        self.progress = min(max(float(progress), 0.0), 1.0)

    def select_topk(self, scores: Tensor, budget: Tensor) -> tuple[Tensor, Tensor | None]:
        """Top-``budget`` mask of ``scores``: sampled and straight-through in training, hard in eval.

        Args:
            scores: ``[batch, layers]`` clean scores.
            budget: ``[batch]`` long, layers to keep per sample.

        Returns:
            ``(keep_mask, soft_mask)``: ``[batch, layers]`` each; ``soft_mask`` is ``None`` in eval mode.
        """
        if not self.training:
            return hard_topk_mask(scores, budget), None
        sampled_only = self.objective == "counterfactual"  # sampled, no straight-through gradient
        keep_mask, soft = straight_through_topk(scores.detach() if sampled_only else scores, budget, self.temperature,
                                                noise_scale=self.noise_scale, method=self.relaxation)
        return keep_mask, None if sampled_only else soft

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        """The keep mask carries gradients (dense training) unless the objective is counterfactual only."""
        return self.objective != "counterfactual"

    def counterfactual_loss(self, scores: Tensor, own: Tensor, candidates: Tensor, own_losses: Tensor,
                            candidate_losses: Tensor) -> Tensor:
        """Rank each input's masks by their task loss: a loss-weighted pairwise logistic loss (RankNet).

        A mask's score is the sum of its layers' scores, so for the chosen mask ``m`` and an alternative ``c``
        the score margin is ``sum((m - c) * s)``; it should be positive exactly when ``m``'s loss is lower.
        Each pair is weighted by its loss difference: pairs whose masks do equally well (the layers do not
        matter for this input) teach nothing, so nothing pushes the scores apart where the input does not
        matter, and where it does the target differs from input to input.

        Args:
            scores: ``[batch, layers]`` clean scores (with gradient).
            own: ``[batch, layers]`` 0/1 masks the selector chose.
            candidates: ``[candidates, batch, layers]`` alternative 0/1 masks with the same layer counts.
            own_losses: ``[batch]`` task loss of each input with its own mask (no gradient).
            candidate_losses: ``[candidates, batch]`` task loss of each input with each alternative.

        Returns:
            The weighted loss (a scalar), ``counterfactual_weight`` times the mean over pairs.
        """
        margin = ((own.unsqueeze(0) - candidates) * scores.unsqueeze(0)).sum(-1)  # [candidates, batch]
        gain = (candidate_losses - own_losses.unsqueeze(0)).detach().to(margin.dtype)  # > 0: own is better
        pair_loss = F.binary_cross_entropy_with_logits(margin, (gain > 0).to(margin.dtype), reduction="none")
        return self.counterfactual_weight * (gain.abs() * pair_loss).mean()
