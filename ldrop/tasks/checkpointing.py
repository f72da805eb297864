"""Checkpoints and exports of a task: initialising from an earlier run, refusing NaN weights, recording the
input normalisation the weights were trained with, and ``ldrop export``'s folder."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ldrop._io import CheckpointError, atomic_torch_save, load_checkpoint_file

log = logging.getLogger(__name__)

#: Checkpoint key recording whether the weights were trained on normalised waveforms.
NORMALIZE_KEY = "ldrop_normalize_waveforms"

#: File written beside an exported backbone: the task head(s) and the selector state.
EXPORT_STATE_FILE = "ldrop_task_state.pt"


class CheckpointMixin:
    """The checkpoint side of :class:`~ldrop.tasks.LayerDropTask` (mixed into it; uses its backbone and hparams)."""

    def load_weights_from(self, checkpoint_path: str) -> None:
        """Initialise matching weights from an earlier run's Lightning checkpoint (or exported state)."""
        path = Path(checkpoint_path)
        state = load_checkpoint_file(path, what="init_from checkpoint")
        if not isinstance(state, Mapping):
            raise CheckpointError(f"init_from {checkpoint_path!r} holds no weights (a {type(state).__name__})")
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
        atomic_torch_save({"state_dict": {**backbone_state, **extra}, "hparams": dict(self.hparams),
                           "task_class": f"{type(self).__module__}.{type(self).__qualname__}"},
                          directory / EXPORT_STATE_FILE)
        return directory

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ldrop_task_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint[NORMALIZE_KEY] = bool(self.backbone.normalize_waveforms)
        self.check_finite_weights()

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``; weights that do not fit this model are a one-line
        :class:`~ldrop._io.CheckpointError` naming the options that differ (when the checkpoint's
        hyper-parameters are known), the tensors of another shape and the modules missing on either side,
        instead of PyTorch's list of every tensor."""
        saved_hparams, self._loading_hparams = getattr(self, "_loading_hparams", None), None
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as err:
            summary = state_dict_mismatch(self.state_dict(), state_dict, strict)
            if not summary:  # not a mismatch of names or shapes: PyTorch's own error
                raise
            options = hparams_difference(saved_hparams, dict(self.hparams)) if saved_hparams else ""
            raise CheckpointError(
                f"the checkpoint's weights do not fit this {type(self).__name__}"
                + (f": options that differ: {options}" if options else "")
                + f" ({summary}); use the configuration the checkpoint was trained with"
            ) from err

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Use the input normalisation the checkpoint's weights were trained with.

        Checkpoints written before ldrop read ``preprocessor_config.json`` were trained on raw waveforms.
        """
        # kept for load_state_dict, which comes next: a mismatch then names the options that differ
        self._loading_hparams = checkpoint.get(getattr(self, "CHECKPOINT_HYPER_PARAMS_KEY", ""))
        trained_with = bool(checkpoint.get(NORMALIZE_KEY, False))
        if trained_with != self.backbone.normalize_waveforms:
            log.warning("checkpoint was trained %s waveform normalisation: using that, not normalize_waveforms=%s",
                        "with" if trained_with else "without", self.hparams.get("normalize_waveforms"))
            self.backbone.normalize_waveforms = trained_with


def _modules(keys: set[str], depth: int = 2) -> str:
    """``"selector.net, head (+3 more)"``: the modules (first ``depth`` name parts) of parameter names."""
    modules = sorted({".".join(key.split(".")[:depth]) for key in keys})
    return ", ".join(modules[:4]) + (f" (+{len(modules) - 4} more)" if len(modules) > 4 else "")


def state_dict_mismatch(own: Mapping[str, Any], loaded: Mapping[str, Any], strict: bool = True) -> str:
    """One line on how ``loaded`` differs from a model's ``own`` state dict (``""`` when it fits).

    Tensors of another shape always count; names missing on either side only when ``strict``.
    """
    parts = []
    shapes = [k for k in own if k in loaded and hasattr(loaded[k], "shape") and tuple(own[k].shape) != tuple(loaded[k].shape)]
    if shapes:
        shown = ", ".join(f"{k} {list(loaded[k].shape)} in the checkpoint, {list(own[k].shape)} here" for k in shapes[:3])
        parts.append(f"{len(shapes)} tensor(s) of another shape: {shown}" + (", ..." if len(shapes) > 3 else ""))
    if strict:
        missing, unexpected = set(own) - set(loaded), set(loaded) - set(own)
        if missing:
            parts.append(f"not in the checkpoint: {_modules(missing)}")
        if unexpected:
            parts.append(f"not in this model: {_modules(unexpected)}")
    return "; ".join(parts)


def _differences(saved: Any, current: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, saved, current)`` where two (nested) hyper-parameter values differ."""
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        return [d for k in dict.fromkeys([*saved, *current])
                for d in _differences(saved.get(k), current.get(k), f"{key}.{k}" if key else str(k))]
    return [] if saved == current else [(key, saved, current)]


def _shown(value: Any) -> str:
    if isinstance(value, Mapping) and "class_path" in value:  # a selector spec: its class
        return str(value["class_path"]).rsplit(".", 1)[-1]
    if isinstance(value, list | tuple) and len(value) > 3:
        return f"{len(value)} items"
    return repr(value)


def hparams_difference(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """``"backbone ('tiny:hubert' in the checkpoint, 'tiny:wavlm' here), ..."``: the hyper-parameters that
    differ between a checkpoint and a model (only those that describe what the model is)."""
    # how it was built or trained, or how it is evaluated: never why weights do not fit
    ignored = ("_instantiator", "init_from", "pretrained", "freeze", "normalize_waveforms",
               "train_budgets", "full_depth_prob", "val_budgets", "predict_budget", "predict_chunk_seconds",
               "predict_chunk_overlap_seconds", "distill_weight", "distill_temperature", "lr", "head_lr",
               "selector_lr", "weight_decay", "warmup", "schedule", "statistics_batches", "label_smoothing")
    if "_class_path" not in saved or "_class_path" not in current:  # recorded by the CLI only
        ignored += ("_class_path",)
    differ = [d for d in _differences(dict(saved), dict(current)) if d[0].split(".")[0] not in ignored]
    return ", ".join(f"{key} ({_shown(old)} in the checkpoint, {_shown(new)} here)" for key, old, new in differ[:6]) + (
        f", +{len(differ) - 6} more" if len(differ) > 6 else "")
