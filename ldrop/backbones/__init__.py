"""Adapters over Hugging Face speech encoders (torch + transformers only)."""

from ldrop.backbones.adapter import (
    FAMILIES,
    LayerContext,
    SpeechBackbone,
    WavLMBackbone,
    adapter_class_for,
    backbone_problem,
    family_of,
    load_feature_extractor,
    register_family,
    resolve_checkpoint,
    tiny_config,
    zero_mean_unit_var,
)
from ldrop.backbones.build import load_backbone

__all__ = [
    "FAMILIES", "LayerContext", "SpeechBackbone", "WavLMBackbone", "adapter_class_for", "backbone_problem", "family_of",
    "load_backbone", "load_feature_extractor", "register_family", "resolve_checkpoint", "tiny_config",
    "zero_mean_unit_var",
]
