"""ManifestDataModule: CSV/TSV/JSONL manifests, relative paths, segments, class lists, errors."""

from __future__ import annotations

import json

import pytest
import soundfile as sf
import torch

from ldrop.data import DatasetLayoutError, ManifestDataModule, read_audio
from ldrop.testing.fixtures import make_manifest_corpus, write_audio


def manifests(tree, fmt="csv") -> dict[str, str]:
    return {f"{s}_manifest": str(tree.root / f"{s}.{fmt}") for s in ("train", "val", "test")}


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_each_split_lists_its_manifest_rows(tmp_path, fmt):
    tree = make_manifest_corpus(tmp_path, format=fmt)
    dm = ManifestDataModule(**manifests(tree, fmt))
    dm.setup()
    for split in ("train", "val", "test"):
        assert dm.dataset(split).ids == [c.id for c in tree.splits[split]]


def test_class_list_is_the_sorted_training_labels(tmp_path):
    tree = make_manifest_corpus(tmp_path, labels=("dog", "cat", "bird"))
    dm = ManifestDataModule(**manifests(tree))
    dm.setup("fit")
    assert dm.class_names == ["bird", "cat", "dog"] and dm.num_classes == 3
    dataset = dm.dataset("train")
    assert [dm.class_names[t] for t in dataset.targets] == [c.target for c in tree.splits["train"]]


def test_explicit_class_names_fix_the_class_ids(tmp_path):
    tree = make_manifest_corpus(tmp_path, labels=("dog", "cat"))
    dm = ManifestDataModule(**manifests(tree), class_names=["dog", "cat", "cow"])
    assert dm.num_classes == 3
    assert [dm.class_names[t] for t in dm.dataset("val").targets] == [c.target for c in tree.splits["val"]]


def test_integer_labels_are_ordered_numerically(tmp_path):
    tree = make_manifest_corpus(tmp_path, labels=("10", "2", "1"))
    assert ManifestDataModule(**manifests(tree)).class_names == ["1", "2", "10"]


def test_label_outside_explicit_class_names_is_an_error_naming_the_row(tmp_path):
    tree = make_manifest_corpus(tmp_path, labels=("dog", "cat"))
    dm = ManifestDataModule(**manifests(tree), class_names=["dog"])
    with pytest.raises(ValueError, match=r"train\.csv:3: label 'cat' is not in the class list"):
        dm.setup("fit")


def test_validation_label_unseen_in_training_is_an_error(tmp_path):
    tree = make_manifest_corpus(tmp_path, labels=("dog", "cat"))
    (tmp_path / "val.csv").write_text("path,label\naudio/val/000.wav,cow\n")
    with pytest.raises(ValueError, match="label 'cow' is not in the class list"):
        ManifestDataModule(**manifests(tree)).setup("fit")


def test_relative_audio_paths_resolve_against_the_manifest_folder(tmp_path):
    tree = make_manifest_corpus(tmp_path / "corpus")
    dm = ManifestDataModule(train_manifest="corpus/train.csv", root=str(tmp_path))
    dataset = dm.dataset("train")
    assert [it.path for it in dataset.items] == [str(c.path) for c in tree.splits["train"]]


def test_offset_and_duration_select_a_segment_of_the_file(tmp_path):
    tree = make_manifest_corpus(tmp_path)
    dataset = ManifestDataModule(**manifests(tree)).dataset("train")
    index = next(i for i, c in enumerate(tree.splits["train"]) if c.start > 0)
    clip = tree.splits["train"][index]
    data, _ = sf.read(clip.path, dtype="float32")
    expected = torch.from_numpy(data[clip.start : clip.start + clip.num_frames])
    torch.testing.assert_close(dataset[index].waveform, expected)


def test_every_file_is_read_as_mono_at_the_target_rate(tmp_path):
    tree = make_manifest_corpus(tmp_path)
    dataset = ManifestDataModule(**manifests(tree)).dataset("train")
    for index, clip in enumerate(tree.splits["train"]):
        expected = read_audio(clip.path, clip.start, clip.start + clip.num_frames, target_sr=16000)
        assert dataset.lengths[index] == expected.shape[0]
        torch.testing.assert_close(dataset[index].waveform, expected)


def test_ctc_manifests_yield_transcripts(tmp_path):
    tree = make_manifest_corpus(tmp_path, task="ctc", format="jsonl")
    dm = ManifestDataModule(**manifests(tree, "jsonl"), task="ctc")
    assert dm.task == "ctc"
    assert dm.transcripts("train") == [c.target for c in tree.splits["train"]]
    batch = next(iter(dm.dataloader("val")))
    assert all(isinstance(t, str) for t in batch.targets)


def test_an_id_field_overrides_the_default_id(tmp_path):
    write_audio(tmp_path / "a.wav", 800)
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "a.wav", "label": "x", "id": "utt-1"}) + "\n")
    assert ManifestDataModule(train_manifest=str(tmp_path / "m.jsonl")).dataset("train").ids == ["utt-1"]


def test_without_a_validation_manifest_validation_is_skipped(tmp_path):
    tree = make_manifest_corpus(tmp_path)
    dm = ManifestDataModule(train_manifest=str(tree.root / "train.csv"))
    dm.setup("fit")
    assert "val" not in dm.datasets
    assert dm.val_dataloader() == []


def test_predict_split_defaults_to_the_test_manifest(tmp_path):
    tree = make_manifest_corpus(tmp_path)
    dm = ManifestDataModule(**manifests(tree))
    assert dm.dataset("predict").ids == [c.id for c in tree.splits["test"]]


def test_class_names_are_required_without_a_training_manifest(tmp_path):
    tree = make_manifest_corpus(tmp_path)
    dm = ManifestDataModule(test_manifest=str(tree.root / "test.csv"))
    with pytest.raises(ValueError, match="pass class_names"):
        dm.setup("test")


def test_missing_manifest_error_describes_the_format(tmp_path):
    dm = ManifestDataModule(train_manifest=str(tmp_path / "absent.csv"))
    with pytest.raises(DatasetLayoutError, match=r"(?s)absent\.csv.*path +audio file"):
        dm.setup("fit")


def test_manifest_without_the_target_column_is_a_layout_error(tmp_path):
    write_audio(tmp_path / "a.wav", 800)
    (tmp_path / "m.csv").write_text("path,text\na.wav,hello\n")
    with pytest.raises(DatasetLayoutError, match=r"\['label'\]"):
        ManifestDataModule(train_manifest=str(tmp_path / "m.csv")).setup("fit")


def test_a_negative_offset_is_an_error_naming_the_row(tmp_path):
    write_audio(tmp_path / "a.wav", 800)
    (tmp_path / "m.csv").write_text("path,label,offset\na.wav,x,-1\n")
    with pytest.raises(ValueError, match=r"m\.csv:2: offset must be >= 0"):
        ManifestDataModule(train_manifest=str(tmp_path / "m.csv")).setup("fit")


def test_the_task_choices_of_the_manifest_are_the_ones_it_takes(capsys):
    from ldrop.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--data.help", "ManifestDataModule"])
    text = " ".join(capsys.readouterr().out.split())
    assert "{classification,ctc}" in text.replace(", ", ",") and "regression" not in text
