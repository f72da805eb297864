"""Checkpoints and exports of a task: initialising from an earlier run, refusing NaN weights, recording the
input normalisation the weights were trained with, and ``ldrop export``'s folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ldrop._io import atomic_torch_save

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
        atomic_torch_save({"state_dict": {**backbone_state, **extra}, "hparams": dict(self.hparams),
                           "task_class": f"{type(self).__module__}.{type(self).__qualname__}"},
                          directory / EXPORT_STATE_FILE)
        return directory

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ldrop_task_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint[NORMALIZE_KEY] = bool(self.backbone.normalize_waveforms)
        self.check_finite_weights()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Use the input normalisation the checkpoint's weights were trained with.

        Checkpoints written before ldrop read ``preprocessor_config.json`` were trained on raw waveforms.
        """
        trained_with = bool(checkpoint.get(NORMALIZE_KEY, False))
        if trained_with != self.backbone.normalize_waveforms:
            log.warning("checkpoint was trained %s waveform normalisation: using that, not normalize_waveforms=%s",
                        "with" if trained_with else "without", self.hparams.get("normalize_waveforms"))
            self.backbone.normalize_waveforms = trained_with
