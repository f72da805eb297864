"""The paper's selector: a small network reads the input features and picks which layers each input runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldrop.backbones.geometry import conv_output_length

from .base import CalibrationData, Float32UnderHalfCasts, SelectorOutput
from .calibration import ThresholdCalibration
from .fallback import InputBlindFallback
from .filterbank import LogMelFrontend
from .topk import Objective, Relaxation, TopKSelector, threshold_mask


class InputConditionedSelector(Float32UnderHalfCasts, TopKSelector):
    """Reads the input features and scores every encoder layer; each input runs its best layers.

    Architecture (``h = hidden_dim``): per-frame LayerNorm, linear ``C -> h``, GELU; one depthwise-separable
    Conv1d over time (kernel ``kernel_size``, stride 2), GELU; masked mean and std pooling over the real
    frames; MLP ``2h -> h``, (+ budget embedding), GELU, ``h -> N``: the raw score ``z(x) [batch, layers]``.

    Scores (``score_mode``): ``"prior+standardized"`` (default) is ``prior[k, l] + alpha_l * (z_l(x) - mean_l)
    / std_l``: a learned prior (one row per budget with ``budget_conditioning``) plus the input term
    standardised per layer over the batch in training (running statistics in eval, like BatchNorm without
    affine), so it keeps unit spread across inputs and cannot shrink to one fixed mask. ``alpha`` is learned
    per layer above ``min_alpha``. ``"standardized"`` drops the prior; ``"raw"`` is ``z(x)`` as is (the
    ablation that collapses to a fixed schedule). The running statistics lag behind the weights; refresh them
    after training with :meth:`reset_statistics` and :meth:`update_statistics` over training batches. Weights
    and statistics stay float32 in a bf16 model (:class:`~ldrop.selectors.base.Float32UnderHalfCasts`).

    With ``input="layers"`` the first ``j = read_layers`` encoder layers run for every input (the task
    computes them once per batch; they count in the budget, FLOPs and time): budget ``k`` runs layers
    ``0..j-1`` and the ``k - j`` best-scoring others (the prefix alone for ``k <= j``). The selector reads
    them detached.

    Selection (``mode``): ``"topk"`` runs exactly ``k`` layers; ``"threshold"`` the layers whose score passes a
    per-budget threshold (at least one), with a mean of ``k`` over the calibration data (:attr:`calibration`).
    Both train with top-k. In top-k mode :attr:`fallback` decides before test and predict whether reading
    the input pays at each budget.

    Args:
        num_layers: number of encoder layers ``N``.
        feature_dim: channels ``C`` of what it reads: the CNN features, or the encoder's hidden size with
            ``input="layers"`` (the task passes the right one); ignored with ``input="fbank"``.
        input: ``"cnn"`` the CNN feature-encoder output; ``"fbank"`` a log-mel filterbank of the waveform
            (:class:`LogMelFrontend`); ``"layers"`` the output of the first ``read_layers`` encoder layers.
        read_layers: ``j`` in ``1..N-1``, the encoder layers read with ``input="layers"`` (default 1); ignored
            with the other inputs (so a config that sets it can switch ``input`` on the command line).
        hidden_dim: width ``h`` of the network.
        kernel_size: odd temporal kernel of the depthwise convolution.
        pool_std: pool the std over frames as well as the mean.
        budget_conditioning: embed the budget and add it before the last layer; per-budget prior.
        score_mode: ``"prior+standardized"``, ``"standardized"`` or ``"raw"``.
        alpha: initial (or fixed) scale of the standardised input term, ``> 0``, the same for every layer.
        learn_alpha: learn one ``alpha`` per layer (kept above ``min_alpha``).
        min_alpha: lower bound of a learned ``alpha``, ``>= 0`` and ``< alpha``.
        stats_momentum: momentum of the running statistics (a cumulative average over the first
            ``1 / stats_momentum`` training batches); a task re-estimates them instead (``statistics_batches``).
        diversity_weight: weight of an auxiliary loss that rewards different inputs getting different relaxed
            masks (``0.25 - batch variance`` of the soft mask, averaged over layers); 0 (default) disables it.
        mode: ``"topk"`` or ``"threshold"``.
        tau_start, tau_end, noise_scale, relaxation, objective, counterfactual_candidates, counterfactual_weight:
            training of the top-k, see :class:`~ldrop.selectors.TopKSelector`.
        sample_rate: waveform sample rate for ``input="fbank"``.
        fallback: top-k mode: before test and predict, give every input the best input-blind mask at the
            budgets where reading the input does not pay on validation data (:class:`InputBlindFallback`).
        fallback_margin: how much (in the task's primary metric on validation data) the selector's own masks
            must beat the best input-blind mask by to be kept; ``>= 0`` (:class:`InputBlindFallback`).
        fallback_search: the fallback also considers the best fixed subset of a greedy search on validation
            data (about ``N^2 / 2`` more validation passes in all).
    """

    def __init__(
        self,
        num_layers: int,
        feature_dim: int = 512,
        *,
        input: Literal["cnn", "fbank", "layers"] = "cnn",
        read_layers: int = 1,
        hidden_dim: int = 128, kernel_size: int = 5, pool_std: bool = True, budget_conditioning: bool = True,
        score_mode: Literal["prior+standardized", "standardized", "raw"] = "prior+standardized",
        alpha: float = 1.0, learn_alpha: bool = True, min_alpha: float = 0.1,
        stats_momentum: float = 0.1, diversity_weight: float = 0.0,
        mode: Literal["topk", "threshold"] = "topk",
        tau_start: float = 1.0, tau_end: float = 0.1, noise_scale: float = 1.0, relaxation: Relaxation = "sigmoid",
        objective: Objective = "straight_through", counterfactual_candidates: int = 2,
        counterfactual_weight: float = 1.0,
        sample_rate: int = 16000,
        fallback: bool = True, fallback_margin: float = 0.0, fallback_search: bool = False,
    ) -> None:
        if input not in ("cnn", "fbank", "layers"):
            raise ValueError(f"input must be 'cnn', 'fbank' or 'layers', got {input!r}")
        read_layers = int(read_layers)
        if input == "layers" and not 1 <= read_layers < num_layers:
            raise ValueError(f"read_layers must be in 1..{num_layers - 1} (layers left to select), got {read_layers}")
        frontend = LogMelFrontend(sample_rate) if input == "fbank" else None
        if frontend is not None:
            feature_dim = frontend.num_mels
        super().__init__(num_layers, feature_dim, tau_start=tau_start, tau_end=tau_end, noise_scale=noise_scale,
                         relaxation=relaxation, objective=objective, counterfactual_weight=counterfactual_weight,
                         counterfactual_candidates=counterfactual_candidates)
        if score_mode not in ("prior+standardized", "standardized", "raw"):
            raise ValueError(f"score_mode must be 'prior+standardized', 'standardized' or 'raw', got {score_mode!r}")
        if mode not in ("topk", "threshold"):
            raise ValueError(f"mode must be 'topk' or 'threshold', got {mode!r}")
        if hidden_dim < 1:
            raise ValueError(f"hidden_dim must be >= 1, got {hidden_dim}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if learn_alpha and not 0 <= min_alpha < alpha:
            raise ValueError(f"min_alpha must be in [0, alpha) = [0, {alpha}), got {min_alpha}")
        if not 0 < stats_momentum <= 1:
            raise ValueError(f"stats_momentum must be in (0, 1], got {stats_momentum}")
        if diversity_weight < 0:
            raise ValueError(f"diversity_weight must be >= 0, got {diversity_weight}")

        self.input = input
        #: ``j``, the encoder layers read (and always run) with ``input="layers"``; 0 otherwise.
        self.prefix_layers = read_layers if input == "layers" else 0
        self.hidden_dim = int(hidden_dim)
        self.kernel_size = int(kernel_size)
        self.stride = 2
        self.pool_std = bool(pool_std)
        self.budget_conditioning = bool(budget_conditioning)
        self.score_mode = score_mode
        self.learn_alpha = bool(learn_alpha)
        self.min_alpha = float(min_alpha) if learn_alpha else float(alpha)
        self.stats_momentum = float(stats_momentum)
        self.diversity_weight = float(diversity_weight)
        self.mode = mode
        self.use_fallback = bool(fallback)
        self.tracks_statistics = score_mode != "raw"
        self.reads_waveforms = frontend is not None
        # small: the standardised term must keep unit spread even when the raw spread is tiny
        self.stats_eps = 1e-8

        self.frontend = frontend
        self.frame_norm = nn.LayerNorm(self.feature_dim)
        self.frame_proj = nn.Linear(self.feature_dim, hidden_dim)
        self.temporal_conv = nn.Conv1d(hidden_dim, hidden_dim, kernel_size, stride=self.stride,
                                       padding=kernel_size // 2, groups=hidden_dim)
        self.channel_mix = nn.Conv1d(hidden_dim, hidden_dim, 1)
        self.pooled_proj = nn.Linear(hidden_dim * (2 if pool_std else 1), hidden_dim)
        self.budget_embedding = nn.Embedding(num_layers, hidden_dim) if budget_conditioning else None
        self.score_head = nn.Linear(hidden_dim, num_layers)
        if self.budget_embedding is not None:
            nn.init.normal_(self.budget_embedding.weight, std=0.02)

        num_rows = num_layers if budget_conditioning else 1
        self.prior = nn.Parameter(torch.zeros(num_rows, num_layers)) if score_mode == "prior+standardized" else None
        # alpha = min_alpha + (alpha_init - min_alpha) * exp(log_alpha_gain), per layer; gain 0 at init.
        self.alpha_init = float(alpha)
        if learn_alpha:
            self.log_alpha_gain = nn.Parameter(torch.zeros(num_layers))
        else:
            self.register_buffer("log_alpha_gain", torch.zeros(num_layers))
        self.register_buffer("running_mean", torch.zeros(num_rows, num_layers))
        self.register_buffer("running_var", torch.ones(num_rows, num_layers))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))
        # both components whatever the mode, so a checkpoint loads with either mode set on the command line
        self.calibration = ThresholdCalibration(num_layers, self.prefix_layers)
        self.fallback = InputBlindFallback(num_layers, margin=fallback_margin, search=fallback_search)

    @property
    def alpha(self) -> Tensor:
        """Current scale of the standardised input term per layer, ``[layers]``."""
        return self.min_alpha + (self.alpha_init - self.min_alpha) * self.log_alpha_gain.exp()

    def encode(self, features: Tensor, frame_mask: Tensor) -> Tensor:
        """Pool the input into one vector per sample.

        Args:
            features: ``[batch, frames, feature_dim]``.
            frame_mask: ``[batch, frames]`` bool, True on real frames.

        Returns:
            ``[batch, hidden_dim]`` hidden vector before the budget embedding.
        """
        frame_weight = frame_mask.unsqueeze(-1).to(features.dtype)
        hidden = F.gelu(self.frame_proj(self.frame_norm(features))) * frame_weight
        # zeroed padding makes the conv see the same zeros a shorter, unpadded input would see
        hidden = F.gelu(self.channel_mix(self.temporal_conv(hidden.transpose(1, 2)))).transpose(1, 2)
        frame_weight = frame_weight[:, :: self.stride]
        count = frame_weight.sum(1).clamp(min=1.0)
        mean = (hidden * frame_weight).sum(1) / count
        pooled = mean
        if self.pool_std:
            var = (((hidden - mean.unsqueeze(1)) ** 2) * frame_weight).sum(1) / count
            pooled = torch.cat([mean, (var + 1e-5).sqrt()], dim=-1)
        return self.pooled_proj(pooled)

    def raw_scores(self, hidden: Tensor, rows: Tensor | None) -> Tensor:
        """Input head output ``z`` for the given budget rows.

        Args:
            hidden: ``[batch, hidden_dim]`` from :meth:`encode`.
            rows: ``[batch]`` budget row per sample (``budget - 1``), or ``None`` for every row.

        Returns:
            ``[batch, layers]`` when ``rows`` is given, else ``[batch, rows, layers]``.
        """
        if rows is None:
            hidden = hidden.unsqueeze(1)
        if self.budget_embedding is not None:
            hidden = hidden + (self.budget_embedding.weight if rows is None else self.budget_embedding(rows))
        return self.score_head(F.gelu(hidden))

    def standardized_scores(self, hidden: Tensor, rows: Tensor) -> Tensor:
        """Standardised input term ``(z - mean) / std`` per layer, ``[batch, layers]``.

        Training tracks the statistics; a batch of >= 2 uses its own, otherwise the running statistics.
        """
        if self.training:
            z_all = self.raw_scores(hidden, None)  # [batch, rows, layers]
            self._track_statistics(z_all, cumulative=False)
            z = z_all[torch.arange(hidden.shape[0], device=hidden.device), rows]
            mean, var = (z_all.mean(0), z_all.var(0, unbiased=False)) if hidden.shape[0] >= 2 else (
                self.running_mean, self.running_var)
        else:
            z, mean, var = self.raw_scores(hidden, rows), self.running_mean, self.running_var
        return (z - mean[rows]) / (var[rows] + self.stats_eps).sqrt()

    @torch.no_grad()
    def _track_statistics(self, z_all: Tensor, cumulative: bool) -> None:
        """Fold the batch statistics of ``z_all [batch, rows, layers]`` into the running statistics: an
        equal-weight average over every batch with ``cumulative``, else over the first ``1 / stats_momentum``
        batches and exponential after them (usable after a few batches, not biased towards (0, 1)). A batch of
        one input moves the variance by its deviations from the mean before and after it (Welford's step)."""
        # in the buffers' dtype: under autocast (bf16-mixed) the scores are bf16, the buffers float32
        z_all, seen = z_all.to(self.running_mean.dtype), int(self.num_batches_tracked)

        def weight(n: int) -> float:
            return 1.0 / n if cumulative else max(self.stats_momentum, 1.0 / n)

        if z_all.shape[0] >= 2:
            self.running_mean.lerp_(z_all.mean(0), weight(seen + 1))
            self.running_var.lerp_(z_all.var(0, unbiased=True), weight(seen + 1))
        else:
            before = self.running_mean.clone()
            self.running_mean.lerp_(z_all[0], weight(seen + 1))
            if seen:  # the first input sets the mean only
                self.running_var.lerp_((z_all[0] - before) * (z_all[0] - self.running_mean), weight(seen))
        self.num_batches_tracked += 1

    def reset_statistics(self) -> None:
        """Forget the running statistics (mean 0, variance 1, no batches tracked)."""
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    @torch.no_grad()
    def update_statistics(self, features: Tensor, frame_mask: Tensor, *, waveforms: Tensor | None = None,
                          lengths: Tensor | None = None) -> None:
        """Fold one batch into the running statistics as an equal-weight cumulative average (after
        :meth:`reset_statistics`, as ``torch.optim.swa_utils.update_bn``): every budget row, no selection.
        Arguments as in :meth:`forward`."""
        with self._own_precision(features if waveforms is None else waveforms):
            features, frame_mask = self._read_input(features, frame_mask, waveforms, lengths)
            hidden = self.encode(features.to(self.running_mean.dtype), frame_mask)
            self._track_statistics(self.raw_scores(hidden, None), cumulative=True)

    @staticmethod
    def _own_precision(input: Tensor) -> torch.autocast:
        """No autocast for the selector (bf16-mixed, 16-mixed): standardising subtracts a running mean that can
        be tens of times the spread of the raw scores, so a score rounded to bf16 before it loses most of its
        precision (measured: 1-5% of inputs got another mask than at float32); the selector is small."""
        return torch.autocast(input.device.type, enabled=False)

    def _read_input(
        self, features: Tensor, frame_mask: Tensor, waveforms: Tensor | None, lengths: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """The features this selector reads (its own filterbank with ``input="fbank"``), validated; the caller
        casts them to its own dtype.

        With ``input="layers"`` ``features`` is the output of the first ``read_layers`` encoder layers.
        """
        if self.frontend is not None:
            if waveforms is None:
                raise ValueError("waveforms must be given when input='fbank' (the task passes them)")
            # in its own dtype (float32 in a bf16 model): its log-mel features are not rounded to the input's
            features, frame_mask = self.frontend(waveforms.to(self.running_mean.dtype), lengths)
        if features.dim() != 3 or features.shape[-1] != self.feature_dim:
            what = f"the output of encoder layers 0..{self.prefix_layers - 1}" if self.prefix_layers else "features"
            raise ValueError(
                f"features ({what}) must have shape [batch, frames, {self.feature_dim}], got {list(features.shape)}"
            )
        if frame_mask.shape != features.shape[:2]:
            raise ValueError(f"frame_mask must have shape {list(features.shape[:2])}, got {list(frame_mask.shape)}")
        return features, frame_mask

    def score(self, features: Tensor, frame_mask: Tensor, budget: Tensor, *, waveforms: Tensor | None = None,
              lengths: Tensor | None = None) -> Tensor:
        """The clean (noise-free) ``[batch, layers]`` scores, without selecting (what threshold calibration
        reads: threshold mode cannot run :meth:`forward` before it). Arguments as in :meth:`forward`."""
        return self._scores(features, frame_mask, budget, waveforms, lengths)[0]

    def _scores(self, features, frame_mask, budget, waveforms, lengths) -> tuple[Tensor, Tensor]:
        """``(scores, checked budget)``: the budget checked once (one host sync) for :meth:`forward`."""
        with self._own_precision(features if waveforms is None else waveforms):
            features, frame_mask = self._read_input(features, frame_mask, waveforms, lengths)
            budget = self.check_budget(budget, features.shape[0]).to(features.device)
            rows = budget - 1 if self.budget_conditioning else torch.zeros_like(budget)
            hidden = self.encode(features.to(self.running_mean.dtype), frame_mask)
            if self.score_mode == "raw":
                return self.raw_scores(hidden, rows), budget
            scores = self.alpha * self.standardized_scores(hidden, rows)
            return (scores + self.prior[rows] if self.prior is not None else scores), budget

    def forward(self, features: Tensor, frame_mask: Tensor, budget: Tensor, *, waveforms: Tensor | None = None,
                lengths: Tensor | None = None) -> SelectorOutput:
        """Select layers per input (see :meth:`LayerSelector.forward`; ``waveforms`` are required with
        ``input="fbank"``, ``features`` unused then). The output's stats: temperature, mean and max alpha,
        prior spread; its losses: the weighted diversity loss when enabled."""
        scores, budget = self._scores(features, frame_mask, budget, waveforms, lengths)
        alpha = self.alpha.detach()
        stats = {"temperature": torch.tensor(self.temperature), "alpha_mean": alpha.mean(), "alpha_max": alpha.max()}
        if self.prior is not None:
            stats["prior_spread"] = self.prior.detach().std(-1, unbiased=False).mean()
        # the prefix layers (input="layers") always run: choose the others, k - j of them
        j = self.prefix_layers
        if self.mode == "threshold" and not self.training:
            keep_mask, soft = threshold_mask(scores[:, j:], self.calibration.thresholds_for(budget)), None
        else:
            keep_mask, soft = self.select_topk(scores[:, j:], (budget - j).clamp(min=0))
        if j:
            keep_mask = torch.cat([keep_mask.new_ones(keep_mask.shape[0], j), keep_mask], dim=1)
        if self.training:
            self.fallback.forget()  # the decisions were about the weights training is now changing
        elif self.mode == "topk":
            keep_mask = self.fallback.apply(keep_mask, budget)
        diverse = soft is not None and self.diversity_weight > 0
        losses = {"diversity": self.diversity_weight * (0.25 - soft.var(0, unbiased=False).mean())} if diverse else {}
        return SelectorOutput(keep_mask=keep_mask, scores=scores, losses=losses, stats=stats)

    @torch.no_grad()
    def schedule_mask(self, budget: int) -> Tensor | None:
        """The learned prior's choice at ``budget`` (its built-in input-blind schedule): the prefix layers and the
        top ``budget - j`` prior scores of the others; ``None`` without a prior (``score_mode`` without it)."""
        if self.prior is None:
            return None
        j = self.prefix_layers
        row = self.prior[budget - 1 if self.budget_conditioning else 0]
        mask = torch.zeros(self.num_layers, device=row.device)
        mask[:j] = 1.0
        mask[(row[j:].topk(max(budget - j, 0)).indices + j)] = 1.0
        return mask

    @property
    def calibrated(self) -> bool:
        """Threshold mode: every budget below ``N`` calibrated; top-k with ``fallback``: decisions taken."""
        if self.mode == "threshold":
            return all(self.calibration.is_calibrated(k) for k in range(1, self.num_layers))
        return not self.use_fallback or bool(self.fallback.report())

    def calibrated_for(self, budgets: Sequence[int]) -> bool:
        """Threshold mode: these budgets calibrated; top-k with ``fallback``: their decisions taken (budgets
        with nothing to decide, ``k = N`` and ``k <= j``, always count as fitted)."""
        budgets = [int(k) for k in budgets if int(k) < self.num_layers]
        if self.mode == "threshold":
            return all(self.calibration.is_calibrated(k) for k in budgets)
        return not self.use_fallback or self.fallback.decided_for(budgets, self.prefix_layers)

    @property
    def calibration_is_optional(self) -> bool:
        """Top-k mode: the fit only decides the fallback; undecided budgets read the input (``fallback: false``)."""
        return self.mode == "topk"

    @property
    def needs_calibration(self) -> bool:
        """Threshold mode needs its thresholds calibrated on validation data; top-k mode fits its fallback."""
        return self.mode == "threshold" or self.use_fallback

    @property
    def calibrates_at_validation(self) -> bool:
        """Threshold calibration is cheap and refits before each validation pass; the fallback costs a few
        validation passes per budget, so it is fitted only before test and predict (``val/<metric>@k`` in
        training is the selector's own masks)."""
        return self.mode == "threshold"

    def calibrate(self, data: CalibrationData, budgets: Sequence[int]) -> None:
        """Threshold mode: calibrate each budget's threshold on the eval-mode scores of ``data``'s inputs
        (:class:`~ldrop.selectors.calibration.ThresholdCalibration`). Top-k mode with ``fallback``: decide per
        budget whether evaluation reads the input (:class:`~ldrop.selectors.fallback.InputBlindFallback`)."""
        if self.mode == "threshold":
            self.calibration.calibrate(self, data, budgets)
        elif self.use_fallback:
            self.fallback.calibrate(self, data, budgets)

    def report(self) -> dict[int, dict]:
        """The fallback's decision per decided budget (see :meth:`InputBlindFallback.report`)."""
        return self.fallback.report()

    def flops(self, frame_lengths: Tensor) -> Tensor:
        """Eval-mode forward FLOPs per sample (matmuls and convs, multiply-add = 2 FLOPs).

        Args:
            frame_lengths: ``[batch]`` CNN feature-encoder frames per sample. With ``input="fbank"`` they
                are converted to filterbank frames through the backbone's CNN geometry. With
                ``input="layers"`` the encoder's frames are these frames; the prefix layers themselves are
                backbone cost (counted by the keep mask, which holds them), not selector cost.

        Returns:
            ``[batch]`` float64 FLOPs.
        """
        total, frames = self.frontend.flops(frame_lengths) if self.frontend is not None else (0.0, frame_lengths.double())
        h = self.hidden_dim
        conv_frames = conv_output_length(frames, self.kernel_size, self.stride, self.kernel_size // 2)
        total = total + 2 * frames * self.feature_dim * h  # frame_proj
        total = total + 2 * conv_frames * h * self.kernel_size  # depthwise temporal_conv
        total = total + 2 * conv_frames * h * h  # channel_mix
        total = total + 2 * self.pooled_proj.in_features * h  # pooled_proj
        return total + 2 * h * self.num_layers  # score_head
