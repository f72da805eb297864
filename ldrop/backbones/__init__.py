"""Adapters over Hugging Face speech encoders (torch + transformers only)."""

from ldrop.backbones.adapter import (
    FAMILIES,
    LayerContext,
    SpeechBackbone,
    family_of,
    load_feature_extractor,
    register_family,
    resolve_checkpoint,
    tiny_config,
    zero_mean_unit_var,
)

__all__ = [
    "FAMILIES",
    "LayerContext",
    "SpeechBackbone",
    "family_of",
    "load_feature_extractor",
    "register_family",
    "resolve_checkpoint",
    "tiny_config",
    "zero_mean_unit_var",
]
