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


def offline_hub_cache(monkeypatch, root, repos: dict[str, SpeechBackbone], skip=()) -> list[str]:
    """A local Hugging Face cache at ``root`` holding ``{hub id: backbone}`` (``save_pretrained``, less the files
    named in ``skip``), with the hub unreachable and ``HF_HUB_OFFLINE`` unset: returns the list of the URLs that
    requests for a model's files asked for (each one fails at once, where Hugging Face retries for half a minute)."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    import ldrop.backbones.adapter as adapter

    for repo_id, backbone in repos.items():
        repo, commit = root / f"models--{repo_id.replace('/', '--')}", "a" * 40
        backbone.save_pretrained(repo / "snapshots" / commit)
        for name in skip:
            (repo / "snapshots" / commit / name).unlink()
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
    requests: list[str] = []

    def refuse(request):
        if request.url.path == "/api/agent-harnesses":  # huggingface_hub's own user-agent lookup: once, no retries
            return httpx2.Response(404)
        requests.append(str(request.url))
        raise RuntimeError(f"the test asked the hub for {request.url}")

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(adapter, "_hub_reachable", lambda endpoint: False, raising=False)
    monkeypatch.setattr(_http, "_GLOBAL_CLIENT", None)  # huggingface_hub's shared client, made by this factory
    monkeypatch.setattr(_http, "_GLOBAL_CLIENT_FACTORY", lambda: httpx2.Client(transport=httpx2.MockTransport(refuse)))
    return requests
