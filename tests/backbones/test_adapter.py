"""SpeechBackbone: the adapter reproduces the Hugging Face encoder and loads like it."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import BertConfig, WavLMConfig, WavLMModel

from ldrop.backbones import (
    SpeechBackbone,
    WavLMBackbone,
    family_of,
    load_backbone,
    register_family,
    tiny_config,
)
from tests.helpers import LAYOUTS, make_backbone, padded_batch


def test_full_pass_equals_hugging_face_last_hidden_state(backbone):
    waves, lengths = padded_batch([8000, 6000, 3200])
    attention = (torch.arange(waves.shape[1])[None, :] < lengths[:, None]).long()
    with torch.no_grad():
        reference = backbone.model(waves, attention_mask=attention).last_hidden_state
        hidden, frame_mask = backbone(waves, lengths)
    real = frame_mask[..., None]
    assert torch.allclose(hidden.masked_fill(~real, 0), reference.masked_fill(~real, 0), atol=1e-5)


def test_frame_mask_counts_cnn_output_frames(backbone):
    waves, lengths = padded_batch([16000, 8000, 400])
    features, frame_mask = backbone.extract_features(waves, lengths)
    assert frame_mask.sum(1).tolist() == [49, 24, 1]
    assert features.shape == (3, 49, backbone.feature_dim)
    assert backbone.receptive_field == 400


def test_shape_facts_come_from_the_config():
    backbone = make_backbone("hubert", num_layers=3, hidden_size=48, num_heads=4, conv_channels=24)
    assert (backbone.num_layers, backbone.hidden_size, backbone.feature_dim) == (3, 48, 24)


def test_model_layerdrop_is_switched_off():
    config = tiny_config("wav2vec2", layerdrop=0.3)
    backbone = SpeechBackbone.from_config(config)
    assert backbone.config.layerdrop == 0.0


def test_feature_encoder_is_frozen_by_default_and_can_be_trained():
    frozen = make_backbone("wavlm")
    assert not any(p.requires_grad for p in frozen.model.feature_extractor.parameters())
    trainable = SpeechBackbone.from_config(tiny_config("wavlm"), freeze_feature_encoder=False).train()
    waves, lengths = padded_batch([4000, 4000])
    features, _ = trainable.extract_features(waves, lengths)
    assert features.requires_grad


def test_too_short_waveform_names_the_receptive_field():
    backbone = make_backbone("wavlm")
    with pytest.raises(ValueError, match="400 samples"):
        backbone.extract_features(torch.zeros(1, 399))


def test_waveforms_must_be_two_dimensional():
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        make_backbone("wavlm").extract_features(torch.zeros(1, 1, 1600))


@pytest.mark.parametrize("layout", LAYOUTS[::2], ids=lambda lay: lay[0])
def test_save_pretrained_directory_round_trips_without_missing_keys(tmp_path, layout):
    family, stable = layout
    original = make_backbone(family, stable)
    original.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = SpeechBackbone.from_pretrained(tmp_path).eval()
    assert loaded.family == family
    waves, lengths = padded_batch([4000, 2400])
    with torch.no_grad():
        assert torch.equal(original(waves, lengths)[0], loaded(waves, lengths)[0])


def test_saved_weights_are_readable_by_others_as_the_umask_allows(tmp_path):
    """Hugging Face stages the weights through an owner-only temporary: a shared model folder was unreadable."""
    old = os.umask(0o022)
    try:
        make_backbone("wav2vec2").save_pretrained(tmp_path / "model")
        (tmp_path / "model" / "model.safetensors").chmod(0o600)  # an earlier save's, replaced below
        make_backbone("hubert").save_pretrained(tmp_path / "model")
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (tmp_path / "model").iterdir()}
    assert modes and set(modes.values()) == {oct(0o644)}, modes


def test_local_directory_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        SpeechBackbone.from_pretrained(tmp_path)


def test_checkpoint_missing_encoder_weights_is_rejected(tmp_path):
    import safetensors.torch

    make_backbone("hubert").save_pretrained(tmp_path)
    weights = safetensors.torch.load_file(tmp_path / "model.safetensors")
    dropped = {k: v for k, v in weights.items() if "layers.1." not in k}
    safetensors.torch.save_file(dropped, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lacks weights"):
        SpeechBackbone.from_pretrained(tmp_path)


def test_unsupported_model_type_is_named():
    with pytest.raises(ValueError, match="'bert'"):
        family_of(BertConfig())


def test_an_unregistered_family_names_the_folder_and_how_to_register_it(tmp_path):
    from transformers import UniSpeechSatConfig, UniSpeechSatModel

    config = UniSpeechSatConfig(**{k: v for k, v in tiny_config("hubert").to_dict().items() if k != "model_type"})
    UniSpeechSatModel(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unsupported backbone model_type 'unispeech-sat'") as raised:
        SpeechBackbone.from_pretrained(tmp_path)
    assert str(tmp_path) in str(raised.value) and "register_family" in str(raised.value)


def test_family_is_detected_from_config():
    assert family_of(WavLMConfig()) == "wavlm"
    assert family_of(tiny_config("data2vec")) == "data2vec"


def test_pretrained_with_overrides_still_rejects_missing_weights(tmp_path):
    import safetensors.torch

    make_backbone("wav2vec2").save_pretrained(tmp_path)
    weights = safetensors.torch.load_file(tmp_path / "model.safetensors")
    dropped = {k: v for k, v in weights.items() if "layers.1." not in k}
    safetensors.torch.save_file(dropped, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lacks weights"):
        load_backbone(str(tmp_path), overrides={"mask_time_prob": 0.0})


def test_pretrained_with_overrides_applies_them(tmp_path):
    make_backbone("hubert").save_pretrained(tmp_path)
    loaded = load_backbone(str(tmp_path), overrides={"hidden_dropout": 0.25})
    assert loaded.config.hidden_dropout == 0.25


@pytest.mark.parametrize("family", ["wavlm", "hubert"])
def test_loaders_return_the_adapter_registered_for_the_family(tmp_path, family):
    expected = WavLMBackbone if family == "wavlm" else SpeechBackbone
    built = SpeechBackbone.from_config(tiny_config(family))
    assert type(built) is expected
    built.save_pretrained(tmp_path)
    assert type(SpeechBackbone.from_pretrained(tmp_path)) is expected
    assert type(load_backbone(f"tiny:{family}")) is expected


def test_the_base_adapter_refuses_a_family_that_needs_its_own():
    with pytest.raises(TypeError, match="WavLMBackbone"):
        SpeechBackbone(WavLMModel(tiny_config("wavlm")))


def test_register_family_with_an_adapter_class():
    from ldrop.backbones import adapter_class_for
    from ldrop.backbones.adapter import FAMILIES

    class CustomHubert(SpeechBackbone):
        pass

    saved = FAMILIES["hubert"]
    try:
        register_family("hubert", *saved, adapter_class=CustomHubert)
        assert type(SpeechBackbone.from_config(tiny_config("hubert"))) is CustomHubert
        with pytest.raises(TypeError, match="SpeechBackbone subclass"):
            register_family("hubert", *saved, adapter_class=dict)  # type: ignore[arg-type]
    finally:
        register_family("hubert", *saved)
    assert adapter_class_for("hubert") is SpeechBackbone


def test_a_tiny_backbone_names_an_unknown_family_and_a_misspelt_override():
    from ldrop.backbones.adapter import tiny_config

    assert tiny_config("hubert", num_hidden_layers=2).num_hidden_layers == 2
    with pytest.raises(ValueError, match=r"unknown backbone family 'nope' in 'tiny:nope'; choose from \['data2vec'"):
        tiny_config("nope")
    with pytest.raises(ValueError, match=r"backbone overrides \['num_hiden_layers'\]: not options of WavLMConfig"):
        tiny_config("wavlm", num_hiden_layers=2)
