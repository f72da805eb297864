"""Building a backbone by name: ``tiny:<family>``, ``random:<family>``, a hub id or a local folder."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig

from ldrop.backbones.adapter import (
    FAMILIES,
    SpeechBackbone,
    check_hub_id_readable,
    load_feature_extractor,
    resolve_checkpoint,
    tiny_config,
)


def load_backbone(
    backbone: str, pretrained: bool = True, overrides: dict[str, Any] | None = None,
    freeze_feature_encoder: bool = True, normalize_waveforms: bool | None = None, batch_independent: bool = False,
) -> SpeechBackbone:
    """A :class:`SpeechBackbone` from a hub id, a local directory, ``"tiny:<family>"`` or
    ``"random:<family>"``.

    ``tiny:`` (add ``-large`` for the pre-norm layout) is a tiny random model for tests; ``random:`` the
    family's base-size config, randomly initialised. ``pretrained=False`` randomly initialises the hub/local
    config (``overrides`` applied); with ``pretrained=True`` every weight must be in the checkpoint.
    ``normalize_waveforms=None`` follows the checkpoint's ``preprocessor_config.json`` (no normalisation for
    ``tiny:``/``random:``).
    """
    overrides = dict(overrides or {})
    options = dict(freeze_feature_encoder=freeze_feature_encoder, normalize_waveforms=normalize_waveforms,
                   batch_independent=batch_independent)
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
    local_only = check_hub_id_readable(backbone)
    backbone = resolve_checkpoint(backbone)
    config = AutoConfig.from_pretrained(backbone, local_files_only=local_only, **overrides)
    return SpeechBackbone.from_config(config, feature_extractor=load_feature_extractor(backbone, local_only), **options)
