"""GatingMixin: backbone adapter + selector + gated engine behind one ``forward(waveforms, lengths, budget)``."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ldrop._lightning import attached_trainer
from ldrop.backbones import SpeechBackbone
from ldrop.backbones.adapter import LayerContext
from ldrop.budgets import Budget, resolve_budget
from ldrop.engine import run_gated_layers, run_prefix_layers
from ldrop.selectors import LayerSelector, SelectorOutput


def sample_rate_problem(model: Any, rate: Any, data_option: str = "the datamodule's sample_rate",
                        backbone_option: str = "the task's backbone",
                        selector_option: str = "the selector's sample_rate") -> str | None:
    """Why ``model`` cannot take audio at ``rate`` Hz, the data's (its backbone takes another rate: its
    ``preprocessor_config.json``, 16 kHz for one built from a config; or its selector's log-mel features are for
    another), naming the options to change; ``None`` when it can (or ``rate`` is not a number)."""
    if not isinstance(rate, int):
        return None
    backbone = getattr(model, "backbone", None)
    processor = getattr(backbone, "input_processor", None)
    expected = getattr(processor(), "sampling_rate", None) if callable(processor) else None
    if isinstance(expected, int) and expected != rate:
        hparams = getattr(model, "hparams", None)
        name = hparams.get("backbone") if hasattr(hparams, "get") else None
        source = ("its preprocessor_config.json" if getattr(backbone, "feature_extractor", None) is not None
                  else "the default of a backbone without preprocessor_config.json")
        return (f"{data_option} {rate}: the backbone{f' {name!r}' if name else ''} takes {expected} Hz audio "
                f"({source}); set {data_option} {expected} (audio files at other rates are resampled to it), or "
                f"give {backbone_option} a checkpoint made for {rate} Hz audio")
    features = getattr(getattr(getattr(model, "selector", None), "frontend", None), "sample_rate", None)
    if isinstance(features, int) and features != rate:
        return (f"{data_option} {rate}: the selector's log-mel features are computed for {features} Hz audio; set "
                f"{selector_option} {rate}")
    return None


def check_data_sample_rate(model: Any) -> None:
    """A one-line ``ValueError`` (:func:`sample_rate_problem`) when the datamodule of the trainer ``model`` is
    attached to gives audio at another rate than it takes; a rate found fine is not checked again. The task's
    ``setup`` checks first, and its ``encode`` again, for a subclass whose ``setup`` skips ``super().setup``."""
    rate = getattr(getattr(attached_trainer(model), "datamodule", None), "sample_rate", None)
    if rate is None or model.__dict__.get("_fine_data_rate") == rate:
        return
    if problem := sample_rate_problem(model, rate):
        raise ValueError(problem)
    model.__dict__["_fine_data_rate"] = rate


@dataclass
class EncodedBatch:
    """The budget-independent part of a forward pass, computed once and reused across budgets.

    Attributes:
        waveforms: ``[batch, samples]``, the model's input (normalised when the backbone normalises).
        lengths: ``[batch]`` valid samples.
        features: ``[batch, frames, feature_dim]``, what the selector reads: the CNN features, or with a
            selector that reads the first ``j`` encoder layers (``prefix_layers = j``) their output,
            detached (the selector's losses never train the backbone through it).
        frame_mask: ``[batch, frames]`` bool, True on real frames.
        hidden: ``[batch, frames, hidden]`` input of encoder layer 0.
        prefix: ``[batch, frames, hidden]`` output of encoder layers ``0..prefix_layers-1`` (before the final
            norm, with gradient in training), from which the layers continue when a mask keeps them; ``None``
            without a prefix.
        prefix_layers: ``j``, the layers in ``prefix`` (0: none).
        context: the layer context the prefix ran with (WavLM's position bias), shared by the later layers.
    """

    waveforms: Tensor
    lengths: Tensor
    features: Tensor
    frame_mask: Tensor
    hidden: Tensor
    prefix: Tensor | None = None
    prefix_layers: int = 0
    context: LayerContext | None = None

    def detached(self) -> EncodedBatch:
        """The same batch with ``hidden`` and ``prefix`` detached (a teacher pass without gradient)."""
        prefix = self.prefix.detach() if self.prefix is not None else None
        return dataclasses.replace(self, hidden=self.hidden.detach(), prefix=prefix)


class GatingMixin:
    """Input-conditioned layer dropping for an ``nn.Module`` (ldrop's tasks), the same path in fit, validate,
    test and predict; the budget is an argument, not a mode:

    waveform -> CNN features -> selector -> keep mask -> frontend -> gated layers -> hidden states.

    The host sets ``self.backbone`` and ``self.selector`` (``None``: full depth) with :meth:`configure_gating`.
    """

    backbone: SpeechBackbone
    selector: LayerSelector | None

    def configure_gating(self, backbone: SpeechBackbone, selector: LayerSelector | None) -> None:
        """Attach the backbone and the selector (call from ``__init__``, after ``nn.Module.__init__``)."""
        self.backbone = backbone
        self.selector = selector
        # Opt-in by signature: the selector gets ``waveforms=`` and ``lengths=`` if its ``forward`` names them.
        names = inspect.signature(selector.forward).parameters if selector is not None else {}
        self._selector_inputs = tuple(name for name in ("waveforms", "lengths") if name in names)

    @property
    def num_layers(self) -> int:
        """``N``, the encoder layers of the backbone."""
        return self.backbone.num_layers

    @property
    def prefix_layers(self) -> int:
        """``j``: the first encoder layers every input runs because the selector reads their output (0: none)."""
        return self.selector.prefix_layers if self.selector is not None else 0

    def encode(self, waveforms: Tensor, lengths: Tensor | None = None, run_prefix: bool = True) -> EncodedBatch:
        """The budget-independent part of ``waveforms`` (``[batch, samples]`` zero-padded with ``lengths``, or
        ``[samples]``), where every step enters the model (input normalisation included): CNN features, the
        input of layer 0 and, when the selector reads them, the first :attr:`prefix_layers` layers' output
        (``run_prefix=False``: not run, for cost models that time them as layers); refuses a trainer's data
        at another sample rate (:func:`check_data_sample_rate`)."""
        check_data_sample_rate(self)
        if waveforms.dim() == 1:  # one utterance, as AdaptiveModel takes it
            waveforms = waveforms[None]
            lengths = None if lengths is None else torch.as_tensor(lengths, device=waveforms.device).reshape(1)
        if waveforms.dim() != 2:
            raise ValueError(f"waveforms must be [samples] or [batch, samples], got shape {tuple(waveforms.shape)}")
        if lengths is None:
            lengths = torch.full((waveforms.shape[0],), waveforms.shape[1], dtype=torch.long, device=waveforms.device)
        waveforms = self.backbone.prepare_waveforms(waveforms, lengths)
        features, frame_mask = self.backbone.extract_features(waveforms, lengths)
        hidden = self.backbone.frontend(features, frame_mask)
        j = self.prefix_layers if run_prefix else 0
        if not j:
            return EncodedBatch(waveforms, lengths, features, frame_mask, hidden)
        context = self.backbone.prepare_layers(frame_mask)
        prefix = run_prefix_layers(self.backbone, hidden, frame_mask, j, context)
        # detached: the selector's losses must not train the backbone through what it reads
        return EncodedBatch(waveforms, lengths, prefix.detach(), frame_mask, hidden, prefix, j, context)

    def decide(self, encoded: EncodedBatch, budget: Budget | None = None) -> tuple[Tensor, Tensor, SelectorOutput | None]:
        """Budget (``None``: every layer) -> ``(keep_mask [batch, layers], budget [batch], selector output or
        None)``; an invalid budget (``<= 0``, ``> N``, wrong shape) is a ValueError."""
        batch, device = encoded.features.shape[0], encoded.features.device
        budget_t = resolve_budget(self.num_layers if budget is None else budget, self.num_layers, batch, device)
        if self.selector is None:
            return torch.ones(batch, self.num_layers, device=device), budget_t, None
        extra = {name: getattr(encoded, name) for name in self._selector_inputs}
        selection = self.selector(encoded.features, encoded.frame_mask, budget_t, **extra)
        return selection.keep_mask, budget_t, selection

    def run_layers(self, encoded: EncodedBatch, keep_mask: Tensor,
                   return_all: bool = False) -> tuple[Tensor, list[Tensor] | None]:
        """Run the gated encoder layers: ``(hidden [batch, frames, hidden], per-layer states or None)``.

        When the batch has a prefix (the first ``j`` layers, run in :meth:`encode`) and every row of
        ``keep_mask`` keeps it, the layers continue from layer ``j`` instead of running it again; any other
        mask (the sweep's controls and oracles, a static search) runs from layer 0.
        """
        # dense (differentiable) only when a trainable selector is being trained
        dense = torch.is_grad_enabled() and self.selector is not None and self.selector.differentiable
        j = encoded.prefix_layers
        start = j if (encoded.prefix is not None and not return_all
                      and bool((keep_mask[:, :j].detach() > 0.5).all())) else 0
        result = run_gated_layers(self.backbone, encoded.prefix if start else encoded.hidden, encoded.frame_mask,
                                  keep_mask, mode="dense" if dense else "sparse", return_all=return_all, start_layer=start,
                                  context=encoded.context)
        return (result[0], result[1]) if return_all else (result, None)
