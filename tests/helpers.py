"""Test helpers: tiny backbones of every family and padded waveform batches."""

from __future__ import annotations

import torch

from ldrop.backbones import SpeechBackbone, tiny_config

#: (family, stable_layer_norm) pairs: every supported family and norm layout.
LAYOUTS = [
    ("wavlm", False),
    ("wavlm", True),
    ("hubert", False),
    ("hubert", True),
    ("wav2vec2", False),
    ("wav2vec2", True),
    ("data2vec", False),
]


def layout_id(layout: tuple[str, bool]) -> str:
    family, stable = layout
    return f"{family}-{'large' if stable else 'base'}"


def make_backbone(family: str = "wavlm", stable: bool = False, seed: int = 0, **kwargs) -> SpeechBackbone:
    """A tiny randomly initialised backbone in eval mode."""
    torch.manual_seed(seed)
    return SpeechBackbone.from_config(tiny_config(family, stable_layer_norm=stable, **kwargs)).eval()


def padded_batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random waveforms zero-padded to the longest: ``([batch, samples], [batch])``."""
    gen = torch.Generator().manual_seed(seed)
    lengths_t = torch.tensor(lengths)
    waves = torch.randn(len(lengths), max(lengths), generator=gen)
    waves[torch.arange(max(lengths))[None, :] >= lengths_t[:, None]] = 0.0
    return waves, lengths_t


def tiny_classification_data(**overrides):
    """A small generated keyword-style set (seeded) that trains in seconds."""
    from ldrop.data import SyntheticClassificationDataModule

    kwargs = dict(num_classes=4, num_train=32, num_val=16, num_test=16, batch_size=8,
                  duration_range=(0.3, 0.5), seed=0)
    kwargs.update(overrides)
    return SyntheticClassificationDataModule(**kwargs)


def tiny_ctc_data(**overrides):
    """A small generated letter-sequence transcription set (seeded)."""
    from ldrop.data import SyntheticCTCDataModule

    kwargs = dict(num_train=32, num_val=16, num_test=16, batch_size=8, seed=0)
    kwargs.update(overrides)
    return SyntheticCTCDataModule(**kwargs)


def quiet_trainer(tmp_path, **overrides):
    """A CPU Trainer without logging, checkpoints or progress bars."""
    import lightning as L

    kwargs = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    kwargs.update(overrides)
    return L.Trainer(**kwargs)
