"""Real-checkpoint conventions: the feature-extractor config (waveform normalisation) and missing folders."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2FeatureExtractor

from ldrop.backbones import SpeechBackbone, load_backbone, tiny_config
from ldrop.tasks import BudgetSampling, ClassificationTask
from tests.helpers import offline_hub_cache, padded_batch

LENGTHS = [8000, 5600, 3300]


def _checkpoint(tmp_path, feature_extractor: Wav2Vec2FeatureExtractor | None):
    """A tiny ``save_pretrained`` folder, with ``preprocessor_config.json`` when one is given."""
    torch.manual_seed(0)
    folder = tmp_path / "ckpt"
    SpeechBackbone.from_config(tiny_config("wav2vec2")).model.save_pretrained(folder)
    if feature_extractor is not None:
        feature_extractor.save_pretrained(folder)
    return folder


def _batch():
    """Padded raw audio with an offset and scale far from zero mean / unit variance."""
    waves, lengths = padded_batch(LENGTHS, seed=3)
    waves = (0.3 * waves + 0.2) * (torch.arange(waves.shape[1])[None, :] < lengths[:, None])
    return waves, lengths


def test_normalisation_matches_the_hugging_face_feature_extractor_on_a_padded_batch(tmp_path):
    extractor = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    folder = _checkpoint(tmp_path, extractor)
    model = ClassificationTask(backbone=str(folder), num_classes=2, budgets=BudgetSampling(validation=[1.0])).eval()
    assert model.backbone.normalize_waveforms
    waves, lengths = _batch()
    expected = extractor([w[:n].numpy() for w, n in zip(waves, lengths, strict=True)], sampling_rate=16000,
                         padding=True, return_attention_mask=True, return_tensors="np")["input_values"]
    with torch.no_grad():
        encoded = model.encode(waves, lengths)  # the one data path of fit/val/test/predict
    np.testing.assert_allclose(encoded.waveforms.numpy(), expected, atol=1e-5)
    assert bool((encoded.waveforms[2, LENGTHS[2]:] == 0).all())  # padding stays zero
    # What an utterance gets does not depend on its batch-mates' lengths.
    alone = model.encode(waves[2:, : LENGTHS[2]], lengths[2:]).waveforms
    torch.testing.assert_close(alone[0], encoded.waveforms[2, : LENGTHS[2]], atol=1e-5, rtol=0)


def test_zero_mean_unit_var_keeps_constant_input_finite():
    from ldrop.backbones import zero_mean_unit_var

    out = zero_mean_unit_var(torch.ones(1, 800), torch.tensor([800]))
    assert bool(torch.isfinite(out).all()) and float(out.abs().max()) == 0.0


def test_checkpoint_without_normalisation_and_explicit_override(tmp_path):
    folder = _checkpoint(tmp_path, Wav2Vec2FeatureExtractor(do_normalize=False, return_attention_mask=True))
    waves, lengths = _batch()
    assert not load_backbone(str(folder)).normalize_waveforms
    forced = load_backbone(str(folder), normalize_waveforms=True)
    assert forced.normalize_waveforms
    assert abs(float(forced.prepare_waveforms(waves, lengths)[0].std()) - 1.0) < 0.01
    # Overrides and random init read the same config.
    assert not load_backbone(str(folder), pretrained=False).normalize_waveforms


def test_missing_preprocessor_config_keeps_raw_input_and_logs(tmp_path, caplog):
    folder = _checkpoint(tmp_path, None)
    with caplog.at_level(logging.WARNING, logger="ldrop.backbones.adapter"):
        backbone = load_backbone(str(folder))
    assert not backbone.normalize_waveforms
    assert "no preprocessor_config.json for backbone" in caplog.text and "(the folder has none)" in caplog.text
    assert "huggingface.co" not in caplog.text  # Hugging Face's message, cut at 200 characters, was about the hub
    waves, lengths = _batch()
    assert backbone.prepare_waveforms(waves, lengths) is waves


def test_tiny_backbones_do_not_normalise_unless_asked():
    waves, lengths = _batch()
    assert not load_backbone("tiny:wavlm").normalize_waveforms
    backbone = load_backbone("tiny:wavlm", normalize_waveforms=True)
    out = backbone.prepare_waveforms(waves, lengths)
    for row, n in enumerate(LENGTHS):
        assert abs(float(out[row, :n].mean())) < 1e-4 and abs(float(out[row, :n].std(unbiased=False)) - 1) < 1e-3


def test_checkpoint_without_attention_mask_is_reported(tmp_path, caplog):
    folder = _checkpoint(tmp_path, Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False))
    with caplog.at_level(logging.WARNING, logger="ldrop.backbones.adapter"):
        backbone = load_backbone(str(folder))
    assert "return_attention_mask=False" in caplog.text
    assert backbone.normalize_waveforms


@pytest.mark.parametrize("normalize", [True, False])
def test_export_writes_the_feature_extractor_config_in_use(tmp_path, normalize):
    model = ClassificationTask(backbone="tiny:wavlm", num_classes=2, normalize_waveforms=normalize)
    out = model.export_pretrained(tmp_path / "export")
    saved = Wav2Vec2FeatureExtractor.from_pretrained(out)
    assert saved.do_normalize is normalize and saved.return_attention_mask
    assert load_backbone(str(out)).normalize_waveforms is normalize


def test_export_keeps_the_loaded_checkpoints_config(tmp_path):
    folder = _checkpoint(tmp_path, Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False,
                                                            padding_value=0.0))
    model = ClassificationTask(backbone=str(folder), num_classes=2)
    out = model.export_pretrained(tmp_path / "export")
    saved = Wav2Vec2FeatureExtractor.from_pretrained(out)
    assert saved.do_normalize and not saved.return_attention_mask


@pytest.mark.parametrize("path", ["runs/missing/exported", "./missing-backbone", "~/ldrop-missing-backbone-dir"])
@pytest.mark.parametrize("pretrained", [True, False])
def test_missing_local_folder_is_a_clear_file_not_found(path, pretrained):
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        load_backbone(path, pretrained=pretrained, overrides=None if pretrained else {"layerdrop": 0.0})
    assert path in str(info.value)


def test_a_checkpoint_keeps_the_normalisation_it_was_trained_with(tmp_path, caplog):
    from tests.helpers import quiet_trainer, tiny_classification_data

    model = ClassificationTask(backbone="tiny:wavlm", num_classes=4, normalize_waveforms=True,
                               budgets=BudgetSampling(validation=[1.0]))
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=tiny_classification_data())
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    with caplog.at_level(logging.WARNING, logger="ldrop.tasks.base"):
        loaded = ClassificationTask.load_from_checkpoint(path, normalize_waveforms=False)
    assert loaded.backbone.normalize_waveforms and "trained with waveform normalisation" in caplog.text


@pytest.mark.parametrize("skip", [(), ("preprocessor_config.json",)], ids=["all-files", "no-preprocessor-config"])
def test_a_cached_hub_id_is_read_from_the_cache_alone_when_the_hub_cannot_be_reached(tmp_path, monkeypatch, caplog,
                                                                                    skip):
    """Hugging Face asked the hub for each file the cache lacks (processor_config.json, preprocessor_config.json),
    retrying for 23 s each, before using the cache."""
    torch.manual_seed(0)
    saved = SpeechBackbone.from_config(tiny_config("wavlm"), normalize_waveforms=True)
    requests = offline_hub_cache(monkeypatch, tmp_path, {"org/name": saved}, skip)
    with caplog.at_level(logging.WARNING, logger="ldrop.backbones.adapter"):
        loaded, random_init = SpeechBackbone.from_pretrained("org/name"), load_backbone("org/name", pretrained=False)
    assert requests == []
    assert loaded.normalize_waveforms == random_init.normalize_waveforms == (not skip)
    assert all(torch.equal(value, saved.model.state_dict()[key]) for key, value in loaded.model.state_dict().items())
    assert ("(none in the local Hugging Face cache, the only place read offline)" in caplog.text) == bool(skip)


@pytest.mark.parametrize("hub_offline", [True, False], ids=["HF_HUB_OFFLINE", "unreachable"])
def test_from_pretrained_names_a_hub_id_that_cannot_be_read_offline(tmp_path, monkeypatch, hub_offline):
    from huggingface_hub import constants

    requests = offline_hub_cache(monkeypatch, tmp_path, {})
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", hub_offline)
    with pytest.raises(FileNotFoundError, match="backbone 'org/absent': no such local folder, and no such hub id"):
        SpeechBackbone.from_pretrained("org/absent")
    assert requests == []
