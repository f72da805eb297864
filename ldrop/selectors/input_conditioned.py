"""The paper's selector: a small network reads the input features and picks which layers each input runs."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldrop._progress import Phase

from .base import FittingData, SelectorInputs, SelectorOutput
from .static import evenly_spaced_layers, greedy_subset_search
from .topk import Objective, Relaxation, TopKSelector, calibrate_threshold, hard_topk_mask, threshold_mask

#: Waveform samples per CNN feature-encoder frame of wav2vec2 / HuBERT / WavLM (20 ms at 16 kHz).
CNN_FRAME_STRIDE = 320
#: The fallback's candidates include this many of the selector's own most common masks per budget.
FALLBACK_COMMON_MASKS = 3


class LogMelFrontend(nn.Module):
    """80-dim (by default) log-mel filterbank of a padded batch of waveforms, 25 ms windows every 10 ms.

    Args:
        sample_rate: waveform sample rate in Hz.
        num_mels: mel bands.
    """

    def __init__(self, sample_rate: int = 16000, num_mels: int = 80) -> None:
        super().__init__()
        import torchaudio  # only this input mode needs it

        self.sample_rate = int(sample_rate)
        self.num_mels = int(num_mels)
        self.window_length = round(0.025 * sample_rate)
        self.hop_length = round(0.010 * sample_rate)
        self.num_fft = 2 ** math.ceil(math.log2(self.window_length))
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=self.num_fft,
            win_length=self.window_length,
            hop_length=self.hop_length,
            n_mels=num_mels,
        )

    def _apply(self, fn, recurse: bool = True):
        # The filterbank stays float32 whatever the model's dtype (``model.to(torch.bfloat16)``, bf16-true):
        # a bf16 power spectrum loses the small values the log needs. forward returns the input's dtype.
        super()._apply(fn, recurse)
        self.melspec.float()
        return self

    def num_frames(self, num_samples: Tensor) -> Tensor:
        """Frames produced for ``num_samples`` samples (centred windows), same shape as the input."""
        return torch.div(num_samples, self.hop_length, rounding_mode="floor") + 1

    def forward(self, waveforms: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Compute log-mel features.

        Args:
            waveforms: ``[batch, samples]`` float, zero-padded.
            lengths: ``[batch]`` real samples per waveform, or ``None`` when none is padded.

        Returns:
            ``(features, frame_mask)``: ``[batch, frames, num_mels]`` in the dtype of ``waveforms`` (computed in
            float32) and ``[batch, frames]`` bool.
        """
        if waveforms.dim() != 2:
            raise ValueError(f"waveforms must have shape [batch, samples], got {list(waveforms.shape)}")
        with torch.autocast(waveforms.device.type, enabled=False):  # float32 even under bf16-mixed (see _apply)
            features = torch.log(self.melspec(waveforms.float()) + 1e-6).transpose(1, 2).to(waveforms.dtype)
        if lengths is None:
            lengths = torch.full((waveforms.shape[0],), waveforms.shape[1], device=waveforms.device)
        frames = self.num_frames(lengths.to(waveforms.device)).clamp(max=features.shape[1])
        frame_mask = torch.arange(features.shape[1], device=waveforms.device) < frames.unsqueeze(-1)
        return features, frame_mask

    def flops(self, num_frames: Tensor) -> Tensor:
        """Matmul FLOPs (the mel projection; the FFT is not a matmul) for ``[batch]`` frame counts."""
        return 2.0 * num_frames.double() * (self.num_fft // 2 + 1) * self.num_mels


class InputConditionedSelector(TopKSelector):
    """Reads the input features and scores every encoder layer; each input runs its best layers.

    Architecture (``h = hidden_dim``): per-frame LayerNorm, linear ``C -> h``, GELU; one depthwise-separable
    Conv1d over time (kernel ``kernel_size``, stride 2, halving the frames), GELU; masked mean and std
    pooling over the real frames; MLP ``2h -> h``, (+ budget embedding), GELU, ``h -> N``. The output is
    the input head's raw score ``z(x) [batch, layers]``.

    Scores (``score_mode``):

    * ``"prior+standardized"`` (default): ``prior[k, l] + alpha_l * (z_l(x) - mean_l) / std_l``. The learned
      prior (one row per budget with ``budget_conditioning``, else one row) keeps a strong default schedule;
      the input term is standardised per layer over the batch in training (running statistics in eval, like
      BatchNorm without affine), so it always has unit spread across inputs and cannot shrink to nothing.
      That is what prevents the collapse to one fixed mask seen with raw scores and the task loss alone.
    * ``"standardized"``: the input term only (no prior): diverse masks, but forces roughly balanced use.
    * ``"raw"``: ``z(x)`` as is; the baseline that collapses to a learned fixed schedule, for ablations.

    ``alpha`` has one entry per layer, learned by default (``learn_alpha``) and bounded below by ``min_alpha``
    so the input term keeps a floor relative to the prior and the fixed-scale Gumbel noise. Per layer, because
    the input matters more for some layers than others: the model turns the input term up where the best
    choice depends on the input and down to near the floor where it does not (its learned values are a
    diagnostic of exactly that). With ``budget_conditioning`` the standardisation
    statistics are kept per budget (all budget rows are computed for every input in training, so each row's
    batch statistics use the whole batch, whatever mix of budgets the batch has).

    The running statistics are an exponential average over recent training steps, so they lag behind the
    weights; the lag matters when the raw input spread is small next to how fast the weights move (short or
    high-learning-rate training). After training, refresh them with :meth:`reset_statistics` and
    :meth:`update_statistics` over some training batches (as ``torch.optim.swa_utils.update_bn`` does).

    What it reads (``input``): the CNN features (``"cnn"``), its own log-mel filterbank (``"fbank"``), or the
    output of the first ``j = read_layers`` encoder layers (``"layers"``, ``[batch, frames, hidden_size]``).
    With ``"layers"`` those ``j`` layers run for every input, once per batch (the task computes them in
    ``encode`` and the later layers continue from them), and they count in the budget, the FLOPs and the
    time: budget ``k`` runs layers ``0..j-1`` and the ``k - j`` best-scoring of layers ``j..N-1``; a budget
    ``k < j`` still runs the ``j`` prefix layers (the mask is the prefix alone). The selector reads them
    detached, so its losses never train the backbone through them; the scores it gives the prefix layers
    are not used.

    Selection (``mode``): ``"topk"`` runs exactly ``k`` layers; ``"threshold"`` runs the layers whose score
    passes a per-budget threshold (at least one), so easy inputs can use fewer layers and hard ones more, with
    the mean equal to ``k`` over the calibration data: call :meth:`calibrate` after training. Both modes train
    with top-k.

    Args:
        num_layers: number of encoder layers ``N``.
        feature_dim: channels ``C`` of what it reads: the CNN features, or the encoder's hidden size with
            ``input="layers"`` (the task passes the right one); ignored with ``input="fbank"``.
        input: ``"cnn"`` reads the CNN feature-encoder output; ``"fbank"`` computes a log-mel filterbank
            of the waveform itself (the task then passes ``waveforms`` and ``lengths`` to :meth:`forward`);
            ``"layers"`` reads the output of the first ``read_layers`` encoder layers (see above).
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
            ``1 / stats_momentum`` training batches).
        diversity_weight: weight of an auxiliary loss that rewards different inputs getting different relaxed
            masks (``0.25 - batch variance`` of the soft mask, averaged over layers); 0 (default) disables it.
        mode: ``"topk"`` or ``"threshold"``.
        tau_start: relaxation temperature at the start of training.
        tau_end: relaxation temperature at the end of training.
        noise_scale: Gumbel noise multiplier in training.
        relaxation: ``"sigmoid"`` or ``"softmax"`` relaxed top-k.
        objective: ``"straight_through"``, ``"counterfactual"`` or ``"both"`` (see
            :class:`~ldrop.selectors.TopKSelector`).
        counterfactual_candidates: alternative masks per input scored for the counterfactual objective.
        counterfactual_weight: weight of the counterfactual ranking loss.
        sample_rate: waveform sample rate for ``input="fbank"``.
        fallback: top-k mode: before test and predict, check per budget on validation data whether reading the
            input pays, and where it does not, give every input the best input-blind mask (see :meth:`fit`).
            Threshold mode ignores it.
        fallback_margin: how much (in the task's primary metric on validation data) the selector's own masks
            must beat the best input-blind mask by to be kept; ``>= 0``. Ties fall back.
        fallback_search: also consider, per budget, the best fixed subset of a greedy search on validation data
            (as ``StaticSelector(search=True)``: about ``N^2 / 2`` more validation passes in all).
    """

    def __init__(
        self,
        num_layers: int,
        feature_dim: int = 512,
        *,
        input: Literal["cnn", "fbank", "layers"] = "cnn",
        read_layers: int = 1,
        hidden_dim: int = 128,
        kernel_size: int = 5,
        pool_std: bool = True,
        budget_conditioning: bool = True,
        score_mode: Literal["prior+standardized", "standardized", "raw"] = "prior+standardized",
        alpha: float = 1.0,
        learn_alpha: bool = True,
        min_alpha: float = 0.1,
        stats_momentum: float = 0.1,
        diversity_weight: float = 0.0,
        mode: Literal["topk", "threshold"] = "topk",
        tau_start: float = 1.0,
        tau_end: float = 0.1,
        noise_scale: float = 1.0,
        relaxation: Relaxation = "sigmoid",
        objective: Objective = "straight_through",
        counterfactual_candidates: int = 2,
        counterfactual_weight: float = 1.0,
        sample_rate: int = 16000,
        fallback: bool = True,
        fallback_margin: float = 0.0,
        fallback_search: bool = False,
    ) -> None:
        if input not in ("cnn", "fbank", "layers"):
            raise ValueError(f"input must be 'cnn', 'fbank' or 'layers', got {input!r}")
        read_layers = int(read_layers)
        if input == "layers" and not 1 <= read_layers < num_layers:
            raise ValueError(f"read_layers must be in 1..{num_layers - 1} (layers left to select), got {read_layers}")
        frontend = LogMelFrontend(sample_rate) if input == "fbank" else None
        if frontend is not None:
            feature_dim = frontend.num_mels
        super().__init__(
            num_layers,
            feature_dim,
            tau_start=tau_start,
            tau_end=tau_end,
            noise_scale=noise_scale,
            relaxation=relaxation,
            objective=objective,
            counterfactual_candidates=counterfactual_candidates,
            counterfactual_weight=counterfactual_weight,
        )
        if score_mode not in ("prior+standardized", "standardized", "raw"):
            raise ValueError(
                f"score_mode must be 'prior+standardized', 'standardized' or 'raw', got {score_mode!r}"
            )
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
        if not (math.isfinite(fallback_margin) and fallback_margin >= 0):
            raise ValueError(f"fallback_margin must be a finite number >= 0, got {fallback_margin}")

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
        self.fallback = bool(fallback)
        self.fallback_margin = float(fallback_margin)
        self.fallback_search = bool(fallback_search)
        self.tracks_statistics = score_mode != "raw"
        # small: the standardised term must keep unit spread even when the raw spread is tiny
        self.stats_eps = 1e-8

        self.frontend = frontend
        self.frame_norm = nn.LayerNorm(self.feature_dim)
        self.frame_proj = nn.Linear(self.feature_dim, hidden_dim)
        self.temporal_conv = nn.Conv1d(
            hidden_dim,
            hidden_dim,
            kernel_size,
            stride=self.stride,
            padding=kernel_size // 2,
            groups=hidden_dim,
        )
        self.channel_mix = nn.Conv1d(hidden_dim, hidden_dim, 1)
        self.pooled_proj = nn.Linear(hidden_dim * (2 if pool_std else 1), hidden_dim)
        self.budget_embedding = nn.Embedding(num_layers, hidden_dim) if budget_conditioning else None
        self.score_head = nn.Linear(hidden_dim, num_layers)
        if self.budget_embedding is not None:
            nn.init.normal_(self.budget_embedding.weight, std=0.02)

        num_rows = num_layers if budget_conditioning else 1
        self.prior = (
            nn.Parameter(torch.zeros(num_rows, num_layers)) if score_mode == "prior+standardized" else None
        )
        # alpha = min_alpha + (alpha_init - min_alpha) * exp(log_alpha_gain), per layer; gain 0 at init.
        self.alpha_init = float(alpha)
        if learn_alpha:
            self.log_alpha_gain = nn.Parameter(torch.zeros(num_layers))
        else:
            self.register_buffer("log_alpha_gain", torch.zeros(num_layers))
        self.register_buffer("running_mean", torch.zeros(num_rows, num_layers))
        self.register_buffer("running_var", torch.ones(num_rows, num_layers))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))
        #: Threshold per budget (index ``k - 1``) for ``mode="threshold"``; NaN = not calibrated.
        self.register_buffer("thresholds", torch.full((num_layers,), math.nan))
        #: The fallback's decisions per budget (row ``k - 1``), set by :meth:`fit`: whether eval reads the
        #: input, the input-blind mask used where it does not, and the validation metrics ``(input, blind)``
        #: they were decided on (NaN = not decided: the input is read).
        self.register_buffer("uses_input", torch.ones(num_layers, dtype=torch.bool))
        self.register_buffer("blind_masks", torch.zeros(num_layers, num_layers, dtype=torch.bool))
        self.register_buffer("fallback_metrics", torch.full((num_layers, 2), math.nan))

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
        if self.budget_embedding is None:
            z = self.score_head(F.gelu(hidden))
            return z if rows is not None else z.unsqueeze(1)
        if rows is not None:
            return self.score_head(F.gelu(hidden + self.budget_embedding(rows)))
        return self.score_head(F.gelu(hidden.unsqueeze(1) + self.budget_embedding.weight))

    def standardized_scores(self, hidden: Tensor, rows: Tensor) -> Tensor:
        """Standardised input term ``(z - mean) / std`` per layer, ``[batch, layers]``.

        Training with a batch of >= 2 uses (and tracks) batch statistics, otherwise running statistics.
        """
        if self.training and hidden.shape[0] >= 2:
            z_all = self.raw_scores(hidden, None)  # [batch, rows, layers]
            mean = z_all.mean(0)
            var = z_all.var(0, unbiased=False)
            # cumulative average over the first 1 / momentum batches, then exponential: the running
            # statistics are usable after a few batches instead of starting biased towards (0, 1)
            self._track_statistics(z_all, max(self.stats_momentum, 1.0 / (int(self.num_batches_tracked) + 1)))
            batch_index = torch.arange(hidden.shape[0], device=hidden.device)
            z = z_all[batch_index, rows]
            return (z - mean[rows]) / (var[rows] + self.stats_eps).sqrt()
        z = self.raw_scores(hidden, rows)
        return (z - self.running_mean[rows]) / (self.running_var[rows] + self.stats_eps).sqrt()

    @torch.no_grad()
    def _track_statistics(self, z_all: Tensor, momentum: float) -> None:
        """Fold the batch statistics of ``z_all [batch, rows, layers]`` into the running statistics."""
        # in the buffers' dtype: under autocast (bf16-mixed) the scores are bf16, the buffers float32
        z_all = z_all.to(self.running_mean.dtype)
        self.running_mean.lerp_(z_all.mean(0), momentum)
        self.running_var.lerp_(z_all.var(0, unbiased=True), momentum)
        self.num_batches_tracked += 1

    def reset_statistics(self) -> None:
        """Forget the running statistics (mean 0, variance 1, no batches tracked)."""
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    @torch.no_grad()
    def update_statistics(
        self,
        features: Tensor,
        frame_mask: Tensor,
        *,
        waveforms: Tensor | None = None,
        lengths: Tensor | None = None,
    ) -> None:
        """Fold one batch into the running statistics as an equal-weight cumulative average.

        The running statistics of training lag behind the weights (an exponential average over recent
        steps); after training, :meth:`reset_statistics` and then this over some training batches gives
        statistics of the final weights (like ``torch.optim.swa_utils.update_bn`` / precise BatchNorm).
        Mode-independent, no gradient, no selection; batches of fewer than 2 inputs are skipped. Arguments
        as in :meth:`forward` (no budget: every budget row is updated).
        """
        features, frame_mask = self._read_input(features, frame_mask, waveforms, lengths)
        if features.shape[0] < 2:
            return
        z_all = self.raw_scores(self.encode(features, frame_mask), None)
        self._track_statistics(z_all, 1.0 / (int(self.num_batches_tracked) + 1))

    def score(
        self,
        features: Tensor,
        frame_mask: Tensor,
        budget: Tensor,
        *,
        waveforms: Tensor | None = None,
        lengths: Tensor | None = None,
    ) -> Tensor:
        """The clean (noise-free) layer scores, without selecting; what :meth:`calibrate` needs.

        Call it in eval mode on validation inputs at each budget (threshold mode cannot run
        :meth:`forward` before calibration). Arguments as in :meth:`forward`.

        Returns:
            ``[batch, layers]`` scores.
        """
        return self._scores(features, frame_mask, budget, waveforms, lengths)[0]

    def _read_input(
        self, features: Tensor, frame_mask: Tensor, waveforms: Tensor | None, lengths: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """The features this selector reads (its own filterbank with ``input="fbank"``), validated.

        With ``input="layers"`` ``features`` is the output of the first ``read_layers`` encoder layers.
        """
        if self.frontend is not None:
            if waveforms is None:
                raise ValueError("waveforms must be given when input='fbank' (the task passes them)")
            features, frame_mask = self.frontend(waveforms, lengths)
        if features.dim() != 3 or features.shape[-1] != self.feature_dim:
            what = f"the output of encoder layers 0..{self.prefix_layers - 1}" if self.prefix_layers else "features"
            raise ValueError(
                f"features ({what}) must have shape [batch, frames, {self.feature_dim}], got {list(features.shape)}"
            )
        if frame_mask.shape != features.shape[:2]:
            raise ValueError(
                f"frame_mask must have shape {list(features.shape[:2])}, got {list(frame_mask.shape)}"
            )
        return features, frame_mask

    def _scores(
        self,
        features: Tensor,
        frame_mask: Tensor,
        budget: Tensor,
        waveforms: Tensor | None,
        lengths: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        features, frame_mask = self._read_input(features, frame_mask, waveforms, lengths)
        budget = self.check_budget(budget, features.shape[0]).to(features.device)
        rows = budget - 1 if self.budget_conditioning else torch.zeros_like(budget)

        hidden = self.encode(features, frame_mask)
        if self.score_mode == "raw":
            scores = self.raw_scores(hidden, rows)
        else:
            scores = self.alpha * self.standardized_scores(hidden, rows)
            if self.prior is not None:
                scores = scores + self.prior[rows]

        return scores, budget

    def forward(
        self,
        features: Tensor,
        frame_mask: Tensor,
        budget: Tensor,
        *,
        waveforms: Tensor | None = None,
        lengths: Tensor | None = None,
    ) -> SelectorOutput:
        """Select layers per input.

        Args:
            features: ``[batch, frames, feature_dim]`` CNN feature-encoder output, or with
                ``input="layers"`` the output of the first ``read_layers`` encoder layers (unused with fbank).
            frame_mask: ``[batch, frames]`` bool, True on real frames (unused with fbank input).
            budget: ``[batch]`` long, layers per sample in ``1..num_layers`` (the mean with threshold mode).
            waveforms: ``[batch, samples]`` raw audio; required with ``input="fbank"``, passed by the task.
            lengths: ``[batch]`` real samples per waveform, or ``None`` when none is padded.

        Returns:
            :class:`SelectorOutput` with ``keep_mask [batch, layers]``, the clean (noise-free) ``scores``,
            the weighted diversity loss when enabled, and stats (temperature, mean and max alpha, prior spread).
        """
        scores, budget = self._scores(features, frame_mask, budget, waveforms, lengths)
        alpha = self.alpha.detach()
        stats = {
            "temperature": torch.tensor(self.temperature),
            "alpha_mean": alpha.mean(),
            "alpha_max": alpha.max(),
        }
        if self.prior is not None:
            stats["prior_spread"] = self.prior.detach().std(-1, unbiased=False).mean()
        losses: dict[str, Tensor] = {}
        # the prefix layers (input="layers") always run: choose the others, k - j of them
        j = self.prefix_layers
        if self.mode == "threshold" and not self.training:
            keep_mask = threshold_mask(scores[:, j:], self.thresholds_for(budget))
            soft = None
        else:
            keep_mask, soft = self.select_topk(scores[:, j:], (budget - j).clamp(min=0))
        keep_mask = self._with_prefix(keep_mask)
        if self.training:
            self.forget_fallback()  # the decisions were about the weights training is now changing
        elif self.mode == "topk":
            rows = budget - 1
            keep_mask = torch.where(self.uses_input[rows, None], keep_mask, self.blind_masks[rows].to(keep_mask))
        if soft is not None and self.diversity_weight > 0:
            losses["diversity"] = self.diversity_weight * (0.25 - soft.var(0, unbiased=False).mean())
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
    def fitted(self) -> bool:
        """Threshold mode: every budget below ``N`` calibrated; top-k with ``fallback``: decisions taken."""
        if self.mode == "threshold":
            return all(self.is_calibrated(k) for k in range(1, self.num_layers))
        return not self.fallback or bool(self.fallback_report())

    def fitted_for(self, budgets: Sequence[int]) -> bool:
        """Threshold mode: these budgets calibrated; top-k with ``fallback``: their decisions taken (budgets
        with nothing to decide, ``k = N`` and ``k <= j``, always count as fitted)."""
        budgets = [int(k) for k in budgets if int(k) < self.num_layers]
        if self.mode == "threshold":
            return all(self.is_calibrated(k) for k in budgets)
        decided = self.fallback_report()
        return not self.fallback or all(k in decided for k in budgets if k > self.prefix_layers)

    @property
    def fit_is_optional(self) -> bool:
        """Top-k mode: the fit only decides the fallback; undecided budgets read the input (``fallback: false``)."""
        return self.mode == "topk"

    @property
    def needs_fitting(self) -> bool:
        """Threshold mode needs its thresholds calibrated on validation data; top-k mode fits its fallback."""
        return self.mode == "threshold" or self.fallback

    @property
    def fits_at_validation(self) -> bool:
        """Threshold calibration is cheap and refits before each validation pass; the fallback costs a few
        validation passes per budget, so it is fitted only before test and predict (``val/<metric>@k`` in
        training is the selector's own masks)."""
        return self.mode == "threshold"

    @torch.no_grad()
    def fit(self, data: FittingData, budgets: Sequence[int]) -> None:
        """Threshold mode: calibrate each budget's threshold on the eval-mode scores of ``data``'s inputs.

        Top-k mode with ``fallback``: per budget ``k < N``, score the selector's own eval-mode masks on ``data``
        and a few input-blind masks at ``k`` (the top ``k`` of the learned prior, the selector's own most common
        masks, the first ``k`` layers, ``k`` evenly spaced layers, with ``fallback_search`` the greedy search's
        subset); unless the own masks beat the best blind one by more than ``fallback_margin``, evaluation gives
        every input that blind mask at ``k``. The decisions are logged and kept in buffers
        (:meth:`fallback_report`); training clears them.
        """
        if self.mode == "topk":
            if self.fallback:
                self._fit_fallback(data, [int(k) for k in budgets])
            return
        scores: dict[int, list[Tensor]] = {int(k): [] for k in budgets}
        for batch in data.inputs():
            for k in scores:
                budget = torch.full((batch.features.shape[0],), k, dtype=torch.long, device=batch.features.device)
                out = self.score(batch.features, batch.frame_mask, budget, waveforms=batch.waveforms,
                                 lengths=batch.lengths)
                scores[k].append(out.float().cpu())
        self.calibrate({k: torch.cat(v) for k, v in scores.items()})

    def _own_masks(self, batch: SelectorInputs, k: int) -> Tensor:
        """The selector's own eval-mode top-``k`` masks of one batch, ``[batch, layers]`` (no fallback)."""
        budget = torch.full((batch.features.shape[0],), k, dtype=torch.long, device=batch.features.device)
        scores = self.score(batch.features, batch.frame_mask, budget, waveforms=batch.waveforms,
                            lengths=batch.lengths)
        j = self.prefix_layers  # as forward in eval: the prefix layers, then the best k - j of the others
        return self._with_prefix(hard_topk_mask(scores[:, j:], (budget - j).clamp(min=0)))

    def _with_prefix(self, keep: Tensor) -> Tensor:
        """``[batch, layers - j]`` masks of the layers after the prefix -> ``[batch, layers]`` with the prefix on."""
        j = self.prefix_layers
        return torch.cat([keep.new_ones(keep.shape[0], j), keep], dim=1) if j else keep

    def _fit_fallback(self, data: FittingData, budgets: list[int]) -> None:
        """Decide per budget between the selector's own masks and the best input-blind mask (see :meth:`fit`)."""
        was_training = self.training
        self.eval()  # the scores evaluation will use: running statistics, no noise
        try:
            sign = 1.0 if data.higher_is_better else -1.0
            # the full budget runs every layer for every input, and budgets up to the prefix run just the
            # prefix (input="layers"): nothing to decide
            j = self.prefix_layers
            budgets = sorted({k for k in budgets if j < k < self.num_layers})
            if not budgets:
                return
            searched = (greedy_subset_search(data.metric_with_layers, self.num_layers, budgets,
                                             data.higher_is_better) if self.fallback_search else {})
            with Phase("input-conditioned fallback: its own masks against input-blind ones on validation data",
                       total=len(budgets), unit="budget") as phase:
                for k in budgets:
                    counts: Counter[tuple[int, ...]] = Counter()

                    def own(batch: SelectorInputs, k: int = k, counts: Counter = counts) -> Tensor:
                        masks = self._own_masks(batch, k)
                        counts.update(tuple(row.nonzero().flatten().tolist()) for row in masks.bool().cpu())
                        return masks

                    own_metric = data.metric_with_masks(own)
                    candidates = [tuple(range(k)), tuple(evenly_spaced_layers(self.num_layers, k))]
                    if k in searched:
                        candidates.insert(0, tuple(searched[k]))
                    schedule = self.schedule_mask(k)
                    if schedule is not None:
                        candidates.insert(0, tuple(schedule.nonzero().flatten().tolist()))
                    candidates += [mask for mask, _ in counts.most_common(FALLBACK_COMMON_MASKS)]
                    # the engine continues from the prefix only for masks that keep it
                    candidates = [c for c in candidates if set(range(j)) <= set(c)]
                    blind_layers, blind_metric = None, -math.inf
                    for layers in dict.fromkeys(candidates):  # distinct, in order: ties go to the earlier one
                        value = float(data.metric_with_layers(list(layers)))
                        if blind_layers is None or sign * value > sign * blind_metric:
                            blind_layers, blind_metric = layers, value
                    uses_input = sign * (own_metric - blind_metric) > self.fallback_margin
                    self.uses_input[k - 1] = uses_input
                    self.blind_masks[k - 1] = False
                    self.blind_masks[k - 1, list(blind_layers)] = True
                    self.fallback_metrics[k - 1] = torch.tensor([own_metric, blind_metric])
                    phase.step(f"k={k}: {'input' if uses_input else 'blind'} ({own_metric:.4g} vs {blind_metric:.4g})")
                phase.done("; ".join(
                    f"k={k}: {'input' if r['uses_input'] else 'blind ' + str(r['blind_layers'])} "
                    f"({r['input']:.4g} vs {r['blind']:.4g})" for k, r in self.fallback_report().items()))
        finally:
            self.train(was_training)

    def fallback_report(self) -> dict[int, dict]:
        """The fallback's decision per decided budget ``k``.

        Returns:
            ``{k: {"input": metric of the selector's own masks, "blind": metric of the best input-blind mask,
            "uses_input": whether evaluation reads the input, "blind_layers": that mask's layers}}`` (metrics
            on the validation data of the last :meth:`fit`); empty before it or after training.
        """
        report = {}
        for row in range(self.num_layers):
            own_metric, blind_metric = self.fallback_metrics[row].tolist()
            if math.isnan(own_metric):
                continue
            report[row + 1] = {
                "input": own_metric,
                "blind": blind_metric,
                "uses_input": bool(self.uses_input[row]),
                "blind_layers": self.blind_masks[row].nonzero().flatten().tolist(),
            }
        return report

    def forget_fallback(self) -> None:
        """Drop the fallback's decisions: every budget reads the input again (until the next :meth:`fit`)."""
        self.uses_input.fill_(True)
        self.fallback_metrics.fill_(math.nan)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # checkpoints from before the fallback have no decisions: load them as undecided
        undecided = {"uses_input": torch.ones_like(self.uses_input), "blind_masks": torch.zeros_like(self.blind_masks),
                     "fallback_metrics": torch.full_like(self.fallback_metrics, math.nan)}
        for name, value in undecided.items():
            state_dict.setdefault(prefix + name, value)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def thresholds_for(self, budget: Tensor) -> Tensor:
        """Calibrated threshold per sample, ``[batch]``; raises if a budget was never calibrated.

        The full budget needs no calibration: a mean of ``N`` layers out of ``N`` means every input runs every
        layer (threshold ``-inf``).
        """
        thresholds = self.thresholds[budget - 1]
        thresholds = torch.where(budget == self.num_layers, -math.inf, thresholds)
        missing = torch.isnan(thresholds)
        if bool(missing.any()):
            budgets = sorted({int(k) for k in budget[missing]})
            raise RuntimeError(
                f"threshold mode: budgets {budgets} are not calibrated; call calibrate() with eval-mode "
                "scores of validation inputs at those budgets after training"
            )
        return thresholds

    def is_calibrated(self, budget: int) -> bool:
        """Whether threshold mode has a threshold for ``budget``."""
        if not 1 <= budget <= self.num_layers:
            raise ValueError(f"budget must be in 1..{self.num_layers}, got {budget}")
        return not bool(torch.isnan(self.thresholds[budget - 1]))

    @torch.no_grad()
    def calibrate(self, scores_by_budget: dict[int, Tensor]) -> dict[int, float]:
        """Set the threshold of each given budget so inputs run ``k`` layers on average.

        Args:
            scores_by_budget: budget ``k`` -> ``[inputs, layers]`` eval-mode scores of validation inputs
                at budget ``k``, from :meth:`score` (or :attr:`SelectorOutput.scores` of a top-k run).

        Returns:
            budget -> mean executed layers achieved on the calibration data (within 0.5 of ``k``, counting
            the at-least-one-layer rule). With ``input="layers"`` the ``j`` prefix layers always run and the
            threshold chooses a mean of ``k - j`` (at least one) among the others.
        """
        j = self.prefix_layers
        achieved = {}
        for budget, scores in scores_by_budget.items():
            if not 1 <= int(budget) <= self.num_layers:
                raise ValueError(f"scores_by_budget: budget must be in 1..{self.num_layers}, got {budget}")
            if scores.dim() != 2 or scores.shape[1] != self.num_layers:
                raise ValueError(
                    f"scores_by_budget[{budget}] must have shape [inputs, {self.num_layers}], got {list(scores.shape)}"
                )
            threshold, achieved_rest = calibrate_threshold(scores[:, j:], float(budget) - j)
            achieved[int(budget)] = achieved_rest + j
            self.thresholds[int(budget) - 1] = threshold
        return achieved

    def flops(self, frame_lengths: Tensor) -> Tensor:
        """Eval-mode forward FLOPs per sample (matmuls and convs, multiply-add = 2 FLOPs).

        Args:
            frame_lengths: ``[batch]`` CNN feature-encoder frames per sample. With ``input="fbank"`` they
                are converted to filterbank frames through the 320-sample CNN frame stride. With
                ``input="layers"`` the encoder's frames are these frames; the prefix layers themselves are
                backbone cost (counted by the keep mask, which holds them), not selector cost.

        Returns:
            ``[batch]`` float64 FLOPs.
        """
        frames = frame_lengths.double()
        total = torch.zeros_like(frames)
        if self.frontend is not None:
            samples = (frame_lengths.long() - 1).clamp(min=0) * CNN_FRAME_STRIDE + 400
            frames = self.frontend.num_frames(samples).double()
            total = total + self.frontend.flops(frames)
        h = self.hidden_dim
        pad = self.kernel_size // 2
        conv_frames = torch.div(frames + 2 * pad - self.kernel_size, self.stride, rounding_mode="floor") + 1
        total = total + 2 * frames * self.feature_dim * h  # frame_proj
        total = total + 2 * conv_frames * h * self.kernel_size  # depthwise temporal_conv
        total = total + 2 * conv_frames * h * h  # channel_mix
        total = total + 2 * self.pooled_proj.in_features * h  # pooled_proj
        return total + 2 * h * self.num_layers  # score_head
