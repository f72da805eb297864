"""Audio that passes the setup check loads; audio that still fails when read is skipped like a bad file at setup.

Issue 16, item 1: an MP3 (without the length tag sox leaves out; named ``.mp3`` or renamed ``.wav``) passed
the check on libsndfile's estimated length and then failed at load with a wrong "truncated file?", killing
fit and predict even with ``skip_bad_files``.
"""

from __future__ import annotations

import json
import logging

import lightning as L
import pytest
import soundfile as sf
import torch

from ldrop.cli import main
from ldrop.data import AudioReadError, ManifestDataModule, SpeechCommandsDataModule, check_audio, read_audio
from ldrop.sweeps import BudgetSweep
from ldrop.tasks import BudgetSampling, ClassificationTask, OptimizerConfig
from ldrop.testing.fixtures import make_speech_commands_tree, truncate_file, write_audio, write_untagged_mp3
from tests.cli.test_cli import QUICKSTART, SMALL
from tests.helpers import quiet_trainer


# ------------------------------------------------------------------------ the check reads the real length
@pytest.mark.parametrize("name", ["speech.mp3", "speech_renamed.wav"])
def test_an_mp3_without_its_length_tag_passes_the_check_and_loads_whole(tmp_path, name):
    path = write_untagged_mp3(tmp_path / name, 24192)
    assert sf.info(str(path)).frames > 24192  # libsndfile's estimate runs past the audio
    info = check_audio(path)
    waveform = read_audio(path, target_sr=info.sample_rate)
    assert waveform.shape == (info.frames,)
    assert info.frames >= 24192  # nothing of what was encoded is cut (the encoder adds its delay)


@pytest.mark.parametrize(("name", "format", "subtype", "rate"), [
    ("tagged.mp3", "MP3", "MPEG_LAYER_III", 16000),
    ("vorbis.ogg", "OGG", "VORBIS", 16000),
    ("opus.opus", "OGG", "OPUS", 48000),
    ("lossless.flac", "FLAC", "PCM_16", 16000),
])
def test_intact_compressed_files_load_to_the_length_the_check_reports(tmp_path, name, format, subtype, rate):
    path = write_audio(tmp_path / name, 3 * rate, rate, format=format, subtype=subtype)
    info = check_audio(path)
    assert info.frames == 3 * rate
    assert read_audio(path, target_sr=rate).shape == (info.frames,)


@pytest.mark.parametrize("keep_fraction", [0.5, 0.9])
def test_a_truncated_mp3_is_still_an_error_naming_the_file(tmp_path, keep_fraction):
    path = truncate_file(write_audio(tmp_path / "cut.mp3", 48000, 16000, format="MP3", subtype="MPEG_LAYER_III"),
                         keep_fraction)
    with pytest.raises(AudioReadError, match=r"cut\.mp3: the file is truncated or corrupt: .* 48000 frames"):
        check_audio(path)


def test_a_speech_commands_tree_with_an_mp3_over_a_training_wav_loads_every_batch(tmp_path):
    tree = make_speech_commands_tree(tmp_path, words=["yes", "no"], clips_per_word=3, seed=0)
    victim = tree.splits["train"][0].path
    write_untagged_mp3(victim, 16000)  # what `sox s.wav real.mp3; cp real.mp3 <training wav>` leaves
    data = SpeechCommandsDataModule(str(tree.root), num_classes=35, batch_size=2)
    data.setup("fit")
    ids = [item for batch in data.train_dataloader() for item in batch.ids]
    assert sorted(ids) == sorted(data.dataset("train").ids) and len(ids) == len(tree.splits["train"])
    assert data.num_bad_files["train"] == 0


def test_ldrop_predict_writes_a_record_for_an_mp3_input(tmp_path):
    good = write_audio(tmp_path / "good.wav", 8000)
    mp3 = write_untagged_mp3(tmp_path / "real.mp3", 16000)
    out = tmp_path / "predictions.jsonl"
    main(["predict", "--config", QUICKSTART, *SMALL, "--trainer.logger", "false",
          "--trainer.default_root_dir", str(tmp_path), "--inputs", f"[{good}, {mp3}]",
          "--predictions.output", str(out)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted([str(good), str(mp3)])


# ------------------------------------------------------ a failure at load time is skipped and counted
def _corpus(tmp_path, names=("a1", "a2", "b1", "b2", "b3"), **kwargs) -> ManifestDataModule:
    rows = ["path,label"]
    for i, name in enumerate(names):
        write_audio(tmp_path / f"{name}.wav", 6000, seed=i)
        rows.append(f"{name}.wav,{name[0]}")
    for split in ("train", "val", "test"):
        (tmp_path / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return ManifestDataModule(train_manifest=str(tmp_path / "train.csv"), val_manifest=str(tmp_path / "val.csv"),
                              test_manifest=str(tmp_path / "test.csv"), **kwargs)


def _model(data: ManifestDataModule) -> ClassificationTask:
    torch.manual_seed(0)
    return ClassificationTask(labels=data.class_names, backbone="tiny:wavlm",
                              budgets=BudgetSampling(validation=[2, 4]), optimization=OptimizerConfig(warmup=0))


def _cut_after_setup(data: ManifestDataModule, tmp_path, stage: str, name: str = "b2.wav") -> None:
    """Set the DataModule up (the file passes the check), then cut the file as a failing disk or copy would."""
    data.setup(stage)
    truncate_file(tmp_path / name, keep_fraction=0.5)


class _Steps(L.Callback):
    """Counts the training batches that reach the model (and how many were empty) and the validation passes."""

    def __init__(self) -> None:
        self.batches, self.empty, self.validations = 0, 0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches += 1
        self.empty += len(batch) == 0

    def on_validation_epoch_end(self, trainer, pl_module):
        self.validations += 1


@pytest.mark.parametrize("num_workers", [0, 1])
def test_fit_skips_and_counts_a_file_that_fails_when_read(tmp_path, caplog, num_workers):
    L.seed_everything(0)
    data = _corpus(tmp_path, skip_bad_files=True, batch_size=1, num_workers=num_workers)
    _cut_after_setup(data, tmp_path, "fit")
    steps = _Steps()
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[steps])
    with caplog.at_level(logging.WARNING, logger="ldrop.data"):
        trainer.fit(_model(data), data)
    # The bad file's batch (batch_size 1) comes empty and is skipped; the epochs keep their length, so the
    # validation after each epoch still runs.
    assert (steps.batches, steps.empty, steps.validations) == (2 * 5, 2, 2)
    assert data.num_bad_files == {"train": 1, "val": 1}  # each item counted once, not once per epoch
    assert caplog.text.count("b2.wav: the file ends at frame") == 2  # logged once per split


def test_test_and_predict_skip_a_file_that_fails_when_read_and_keep_every_other(tmp_path):
    L.seed_everything(0)
    data = _corpus(tmp_path, skip_bad_files=True, batch_size=2)
    model = _model(data)
    _cut_after_setup(data, tmp_path, "test")
    sweep = BudgetSweep(budgets=[4], headroom=False)
    quiet_trainer(tmp_path, callbacks=[sweep]).test(model, data)
    assert sweep.rows[0]["utterances"] == 4 and data.num_bad_files["test"] == 1

    data.predict_on_files(sorted(str(p) for p in tmp_path.glob("*.wav")))
    data.setup("predict")
    truncate_file(tmp_path / "a1.wav", keep_fraction=0.5)
    records = [r for batch in quiet_trainer(tmp_path).predict(model, data) for r in batch]
    assert sorted(r["id"].rsplit("/", 1)[1] for r in records) == ["a2.wav", "b1.wav", "b3.wav"]
    assert data.num_bad_files["predict"] == 2  # b2 at the check, a1 when read


def test_without_skip_bad_files_a_file_that_fails_when_read_is_an_error_naming_it(tmp_path):
    data = _corpus(tmp_path, batch_size=2)
    _cut_after_setup(data, tmp_path, "fit")
    with pytest.raises(AudioReadError, match=r"b2\.wav: the file ends at frame"):
        list(data.train_dataloader())
