"""The selector interface: input features + budget -> which encoder layers each sample runs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn


@dataclass
class SelectorOutput:
    """What a selector returns for one batch.

    Attributes:
        keep_mask: ``[batch, layers]`` float tensor. Its forward values are exactly 0.0 or 1.0; for a
            trainable selector in training mode it carries a gradient to the scores (straight-through).
        scores: ``[batch, layers]`` per-layer scores (higher = more worth running), or ``None`` for
            selectors that have none.
        losses: auxiliary losses, already weighted, that the task module adds to its task loss.
        stats: detached scalars for logging (e.g. temperature), never added to the loss.
    """

    keep_mask: Tensor
    scores: Tensor | None = None
    losses: dict[str, Tensor] = field(default_factory=dict)
    stats: dict[str, Tensor] = field(default_factory=dict)


class SelectorInputs(Protocol):
    """One batch as a selector reads it (the task's encoded batch has these attributes)."""

    features: Tensor  #: ``[batch, frames, feature_dim]`` CNN features (or the output of the prefix layers).
    frame_mask: Tensor  #: ``[batch, frames]`` bool, True on real frames.
    waveforms: Tensor  #: ``[batch, samples]`` the model's input waveforms.
    lengths: Tensor  #: ``[batch]`` real samples per waveform.


class CalibrationData(Protocol):
    """What a selector may fit itself on: validation batches and the task's metric (the task provides it).

    Attributes:
        higher_is_better: whether a larger :meth:`metric_with_layers` is better.
    """

    higher_is_better: bool

    def inputs(self) -> Iterator[SelectorInputs]:
        """The selector's inputs of each fitting batch (eval mode, no gradient)."""

    def metric_with_layers(self, layers: Sequence[int]) -> float:
        """The task's primary metric on the fitting batches when every input runs only ``layers``."""

    def metric_with_masks(self, choose: Callable[[SelectorInputs], Tensor]) -> float:
        """The task's primary metric on the fitting batches when each batch runs the masks ``choose`` returns.

        ``choose`` gets one batch's selector inputs and returns its ``[batch, layers]`` 0/1 keep mask (for
        example the selector's own eval-mode choice); ``metric_with_layers`` is this with one fixed mask.
        """


class Float32UnderHalfCasts(nn.Module):
    """A module whose parameters and buffers (or, with :attr:`float32_buffers`, those own buffers) are float32 in a
    half-precision model: a cast of the whole model to a half dtype (``model.to(torch.bfloat16)``, bf16-true,
    ``.half()``) makes them float32 (those already float32 keep their values; one built under a half default
    dtype, as in Lightning's ``trainer.init_module()`` at bf16-true, becomes float32 at the cast the trainer
    makes); device moves and casts to float64 apply as usual. For a selector whose scores a half dtype would
    round, and for calibrated thresholds, which sit between two scores that bf16 rounding would land them on.
    ``load_state_dict(..., assign=True)`` of half tensors takes them as they are."""

    #: The names of the own buffers kept float32; ``None``: every parameter and buffer, its children's included.
    float32_buffers: tuple[str, ...] | None = None

    def _apply(self, fn, recurse: bool = True):
        kept = None if self.float32_buffers is None else {
            id(self._buffers[name]) for name in self.float32_buffers if self._buffers.get(name) is not None}

        def float32_kept(tensor: Tensor) -> Tensor:
            converted = fn(tensor)
            if ((kept is None or id(tensor) in kept) and tensor.is_floating_point()
                    and converted.dtype in (torch.bfloat16, torch.float16)):
                return tensor.to(converted.device, torch.float32)  # the device moves, float32 values stay
            return converted

        return super()._apply(float32_kept, recurse)


class LayerSelector(nn.Module, ABC):
    """Chooses, per input, which of the backbone's encoder layers run under a layer budget.

    Subclasses are built as ``Selector(num_layers, feature_dim, **options)``: the task module supplies the
    first two from its backbone, so a config only names the options.

    Args:
        num_layers: number of encoder layers ``N`` of the backbone.
        feature_dim: channels ``C`` of the features the selector reads (the CNN feature encoder's output).
    """

    #: Whether ``keep_mask`` carries gradients in training (then the engine runs its differentiable path).
    differentiable: bool = False
    #: Whether the selector keeps running statistics that :meth:`update_statistics` should refresh after
    #: training (over some training batches, after :meth:`reset_statistics`).
    tracks_statistics: bool = False
    #: Whether the selector reads the waveforms (with a front end of its own), so that what keeps its inputs
    #: (:class:`~ldrop.tasks.statistics.SelectorStatistics`, the ONNX export) keeps them; else only the features.
    reads_waveforms: bool = False
    #: Whether the masks depend on the input, so the sweep's controls (the same masks shuffled across the
    #: batch, the most common mask for all) say something; False for random and fixed subsets.
    input_dependent: bool = True
    #: Whether evaluation draws random masks, so a sweep repeats it with :meth:`reseed` (``repeats``).
    random_at_eval: bool = False
    #: Whether :meth:`calibrate` depends on the current weights and so runs again before every validation pass
    #: during training (cheap fits such as threshold calibration); otherwise only before test and predict.
    calibrates_at_validation: bool = True
    #: Alternative masks per input the task scores in training for :meth:`counterfactual_loss` (0: none).
    counterfactual_candidates: int = 0
    #: ``j``: the selector reads the output of encoder layers ``0..j-1`` (its ``features``, ``[batch, frames,
    #: hidden_size]``), so those layers run for every input, once per batch, and every mask keeps them; 0:
    #: it reads the CNN features (or the waveform).
    prefix_layers: int = 0

    def __init__(self, num_layers: int, feature_dim: int) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {feature_dim}")
        self.num_layers = int(num_layers)
        self.feature_dim = int(feature_dim)

    @abstractmethod
    def forward(
        self,
        features: Tensor,
        frame_mask: Tensor,
        budget: Tensor,
        *,
        waveforms: Tensor | None = None,
        lengths: Tensor | None = None,
    ) -> SelectorOutput:
        """Select layers.

        Args:
            features: ``[batch, frames, feature_dim]`` CNN feature-encoder output.
            frame_mask: ``[batch, frames]`` bool, True on real (non-padding) frames.
            budget: ``[batch]`` long, layers each sample may run, each in ``1..num_layers``.
            waveforms: optional ``[batch, samples]`` raw audio, for selectors that read it (e.g. a
                filterbank front end); the task may always pass it, the other selectors ignore it.
            lengths: optional ``[batch]`` real samples per waveform.

        Returns:
            A :class:`SelectorOutput` whose ``keep_mask`` is ``[batch, num_layers]``.
        """

    def check_budget(self, budget: Tensor, batch_size: int) -> Tensor:
        """``budget`` (``[batch_size]`` integers in ``1..num_layers``) as a long tensor; a ValueError naming
        ``budget`` when its shape, dtype or values are invalid."""
        if not isinstance(budget, Tensor):
            raise ValueError(f"budget must be a tensor of shape [{batch_size}], got {type(budget).__name__}")
        if budget.dtype.is_floating_point or budget.dtype.is_complex or budget.dtype == torch.bool:
            raise ValueError(f"budget must be an integer tensor, got dtype {budget.dtype}")
        if budget.shape != (batch_size,):
            raise ValueError(f"budget must have shape [{batch_size}] (one per sample), got {list(budget.shape)}")
        budget = budget.long()
        # not while exporting (a check on values is a data-dependent branch; the ONNX runtime checks budgets)
        if budget.numel() and not torch.compiler.is_exporting():
            low, high = torch.stack([budget.min(), budget.max()]).tolist()  # one host sync
            if low < 1 or high > self.num_layers:
                raise ValueError(f"budget values must be in 1..{self.num_layers} (num_layers), "
                                 f"got min {low}, max {high}")
        return budget

    @property
    def needs_calibration(self) -> bool:
        """Whether :meth:`calibrate` must run on validation data before the selector can evaluate.

        The task runs it for any selector that says so: before ``test`` and ``predict`` (on the datamodule's
        validation split) and, when :attr:`calibrates_at_validation`, before each validation pass on its batches.
        """
        return False

    def schedule_mask(self, budget: int) -> Tensor | None:
        """``[layers]`` 0/1: the mask this selector would give every input at ``budget`` without reading it
        (e.g. a learned prior's top ``budget``), or ``None`` when it has no such schedule. The sweep's
        per-input oracle takes it as a candidate."""
        return None

    @property
    def calibrated(self) -> bool:
        """Whether what :meth:`calibrate` learns is in place for the current weights (True when nothing needs it)."""
        return True

    def calibrated_for(self, budgets: Sequence[int]) -> bool:
        """Whether what :meth:`calibrate` learns is in place for these budgets (default: :attr:`calibrated`).

        Without validation data (``Trainer.test(model, dataloaders=...)``) the task evaluates a selector that
        is fitted for the budgets it needs as it is, instead of failing.
        """
        return self.calibrated

    @property
    def calibration_is_optional(self) -> bool:
        """Whether the selector evaluates without :meth:`calibrate` (the fit only refines it, e.g. a fallback):
        without validation data the task then runs it unfitted with a warning instead of failing."""
        return False

    def calibrate(self, data: CalibrationData, budgets: Sequence[int]) -> None:
        """Fit what the selector learns from validation data (thresholds, subsets) for these budgets.

        Args:
            data: validation batches and the task's metric, see :class:`CalibrationData`.
            budgets: the layer budgets (each in ``1..num_layers``) that will be evaluated.
        """

    def report(self) -> dict[int, dict]:
        """What :meth:`calibrate` decided per budget ``k``, for logs and the sweep's rows (e.g. the input-conditioned
        selector's fallback, ``{k: {"uses_input": ..., ...}}``); ``{}`` when there is nothing to report."""
        return {}

    def counterfactual_loss(self, scores: Tensor, own: Tensor, candidates: Tensor, own_losses: Tensor,
                            candidate_losses: Tensor) -> Tensor:
        """A loss that compares the chosen masks with alternatives on the same inputs (training only).

        The task calls it when :attr:`counterfactual_candidates` is above 0, with the per-input task losses
        of the chosen masks ``own [batch, layers]`` and of ``candidates [candidates, batch, layers]``
        (see :meth:`ldrop.selectors.TopKSelector.counterfactual_loss`).
        """
        raise NotImplementedError(f"{type(self).__name__} has no counterfactual objective")

    def reseed(self, *draw: int) -> None:
        """Restart the random draws of evaluation (no-op unless :attr:`random_at_eval`): for ``draw`` (a sweep's
        repeat and batch) of the selector's own seed, or without ``draw`` from that seed as built."""

    def reset_statistics(self) -> None:
        """Forget running statistics (no-op unless :attr:`tracks_statistics`)."""

    def update_statistics(
        self,
        features: Tensor,
        frame_mask: Tensor,
        *,
        waveforms: Tensor | None = None,
        lengths: Tensor | None = None,
    ) -> None:
        """Fold one batch into the running statistics (no-op unless :attr:`tracks_statistics`)."""

    def set_progress(self, progress: float) -> None:
        """Training progress in ``[0, 1]`` (for annealed schedules); called by the task each step."""

    def flops(self, frame_lengths: Tensor) -> Tensor:
        """Forward FLOPs of the selector per sample, ``[batch]`` float, for compute accounting."""
        return torch.zeros(frame_lengths.shape[0], dtype=torch.float64, device=frame_lengths.device)
