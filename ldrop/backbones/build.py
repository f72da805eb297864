"""Building a backbone by name: ``tiny:<family>``, ``random:<family>``, a hub id or a local folder."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig

from ldrop.backbones.adapter import (
    FAMILIES,
    SpeechBackbone,
    load_feature_extractor,
    resolve_checkpoint,
    tiny_config,
)


def load_backbone(
    backbone: str, pretrained: bool = True, overrides: dict[str, Any] | None = None,
    freeze_feature_encoder: bool = True, normalize_waveforms: bool | None = None,
) -> SpeechBackbone:
    """A :class:`SpeechBackbone` from a hub id, a local directory, ``"tiny:<family>"`` or ``"random:<family>"``.

    ``"tiny:<family>"`` (``wavlm``, ``hubert``, ``wav2vec2``, ``data2vec``; add ``-large`` for the pre-norm
    layout) builds a tiny randomly initialised model for tests and the quickstart; ``"random:<family>"`` the
    family's default (base-size) Hugging Face config, randomly initialised (benchmarks). ``pretrained=False``
    builds a randomly initialised model from the hub/local config (``overrides`` applied to it); with
    ``pretrained=True`` the overrides change the config and every weight must still be in the checkpoint.

    ``normalize_waveforms=None`` follows a hub/local checkpoint's ``preprocessor_config.json``
    (``do_normalize``) and means "no normalisation" for ``tiny:``/``random:``; ``True``/``False`` force it.

    Raises:
        FileNotFoundError: a local path that does not exist or holds no ``config.json``.
        ValueError: an unknown family, or (``pretrained=True``) weights missing from the checkpoint.
    """
    overrides = dict(overrides or {})
    options = dict(freeze_feature_encoder=freeze_feature_encoder, normalize_waveforms=normalize_waveforms)
    if backbone.startswith("random:"):
        family = backbone.split(":", 1)[1]
        if family not in FAMILIES:
            raise ValueError(f"unknown backbone family {family!r} in {backbone!r}; choose from {sorted(FAMILIES)}")
        return SpeechBackbone.from_config(FAMILIES[family][0](**overrides), **options)
    if backbone.startswith("tiny:"):
        family, _, size = backbone.split(":", 1)[1].partition("-")
        config = tiny_config(family, stable_layer_norm=(size == "large"), **overrides)  # type: ignore[arg-type]
        return SpeechBackbone.from_config(config, **options)
    if pretrained:
        return SpeechBackbone.from_pretrained(backbone, overrides=overrides, **options)
    backbone = resolve_checkpoint(backbone)
    config = AutoConfig.from_pretrained(backbone, **overrides)
    return SpeechBackbone.from_config(config, feature_extractor=load_feature_extractor(backbone), **options)
