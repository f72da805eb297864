"""Adapters over Hugging Face speech encoders (torch + transformers only)."""

from ldrop.backbones.adapter import (
    FAMILIES,
    LayerContext,
    SpeechBackbone,
    family_of,
    register_family,
    tiny_config,
)

__all__ = ["FAMILIES", "LayerContext", "SpeechBackbone", "family_of", "register_family", "tiny_config"]
