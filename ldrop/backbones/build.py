"""Building a backbone by name: ``tiny:<family>``, ``random:<family>``, a hub id or a local folder."""

from __future__ import annotations

import os
import socket
from typing import Any
from urllib.parse import urlparse

from transformers import AutoConfig

from ldrop.backbones.adapter import (
    FAMILIES,
    SpeechBackbone,
    _is_local_reference,
    load_feature_extractor,
    resolve_checkpoint,
    tiny_config,
)


def _hub_reachable(endpoint: str, timeout: float = 5.0) -> bool:
    """Whether the hub's host answers at all (a machine offline fails at once, in its name lookup); behind a
    proxy (``HTTPS_PROXY``, ...) only a download can tell, so it is assumed to."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                                              "all_proxy")):
        return True
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname or "", url.port or (80 if url.scheme == "http" else 443)), timeout).close()
    except OSError:
        return False
    return True


def check_hub_id_readable(backbone: str) -> None:
    """``FileNotFoundError`` (one line) at once for a hub id that is neither in the local Hugging Face cache nor
    downloadable (offline: ``HF_HUB_OFFLINE``, or the hub cannot be reached), rather than a minute of retries."""
    from huggingface_hub import constants, try_to_load_from_cache

    if _is_local_reference(backbone):  # a folder: resolve_checkpoint checks it
        return
    try:
        if isinstance(try_to_load_from_cache(backbone, "config.json"), str):
            return
    except ValueError:  # not a valid hub id: from_pretrained says so
        return
    offline = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else (
        None if _hub_reachable(constants.ENDPOINT) else f"{constants.ENDPOINT} cannot be reached")
    if offline:
        raise FileNotFoundError(
            f"backbone {backbone!r}: no such local folder, and no such hub id in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}), the only place a hub id is read from offline ({offline}); give a folder "
            "written by save_pretrained / ldrop export, or download the model while online")


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
    check_hub_id_readable(backbone)
    if pretrained:
        return SpeechBackbone.from_pretrained(backbone, overrides=overrides, **options)
    backbone = resolve_checkpoint(backbone)
    config = AutoConfig.from_pretrained(backbone, **overrides)
    return SpeechBackbone.from_config(config, feature_extractor=load_feature_extractor(backbone), **options)
