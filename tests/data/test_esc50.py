"""ESC50DataModule: folds, 44.1 kHz resampling, ESC-10 remapping, label checks, fold summary."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import yaml

from ldrop.data import ESC50_CLASSES, DatasetLayoutError, ESC50DataModule, summarize_folds
from ldrop.testing.fixtures import make_esc50_tree

REPO = Path(__file__).resolve().parents[2]


def fold_ids(tree, *folds) -> list[str]:
    return sorted(c.id for f in folds for c in tree.splits[str(f)])


def test_class_list_is_known_right_after_init(esc50):
    dm = ESC50DataModule(esc50.root)
    assert dm.num_classes == 50 and dm.class_names == list(ESC50_CLASSES)
    assert dm.task == "classification"


def test_test_fold_is_held_out_and_val_fold_defaults_to_the_next_fold(esc50):
    dm = ESC50DataModule(esc50.root, test_fold=2)
    dm.setup()
    assert sorted(dm.dataset("test").ids) == fold_ids(esc50, 2)
    assert sorted(dm.dataset("val").ids) == fold_ids(esc50, 3)
    assert sorted(dm.dataset("train").ids) == fold_ids(esc50, 1, 4, 5)


def test_val_fold_after_fold_5_wraps_to_fold_1(esc50):
    assert ESC50DataModule(esc50.root, test_fold=5).val_fold == 1


@pytest.mark.parametrize("test_fold", [1, 2, 3, 4, 5])
def test_the_shipped_config_never_validates_on_its_test_fold(esc50, test_fold):
    """The README runs configs/data/esc50.yaml once per ``--data.test_fold 1..5``."""
    args = yaml.safe_load((REPO / "configs" / "data" / "esc50.yaml").read_text())["data"]["init_args"]
    args.update(root=str(esc50.root), test_fold=test_fold)
    assert ESC50DataModule(**args).val_fold not in (test_fold, None)


def test_val_fold_may_be_chosen(esc50):
    dm = ESC50DataModule(esc50.root, test_fold=1, val_fold=4)
    assert sorted(dm.dataset("train").ids) == fold_ids(esc50, 2, 3, 5)


def test_val_fold_equal_to_test_fold_trains_on_four_folds_with_a_warning(esc50, caplog):
    with caplog.at_level("WARNING", logger="ldrop.data"):
        dm = ESC50DataModule(esc50.root, test_fold=3, val_fold=3)
    assert "val_fold == test_fold" in caplog.text
    assert sorted(dm.dataset("train").ids) == fold_ids(esc50, 1, 2, 4, 5)


def test_predict_split_is_the_test_fold(esc50):
    assert sorted(ESC50DataModule(esc50.root, test_fold=4).dataset("predict").ids) == fold_ids(esc50, 4)


def test_targets_follow_the_csv_target_column(esc50):
    dataset = ESC50DataModule(esc50.root).dataset("test")
    expected = {c.id: ESC50_CLASSES.index(c.target) for c in esc50.splits["1"]}
    assert dict(zip(dataset.ids, dataset.targets, strict=True)) == expected


def test_clips_are_resampled_from_44_1_khz_to_16_khz(esc50):
    dataset = ESC50DataModule(esc50.root).dataset("val")
    clip = esc50.splits["2"][0]
    assert clip.sample_rate == 44100
    expected = -(-clip.num_frames * 16000 // 44100)
    assert dataset.lengths[0] == expected
    assert dataset[0].waveform.shape == (expected,)


def test_esc10_keeps_ten_classes_remapped_to_0_9(esc50):
    dm = ESC50DataModule(esc50.root, esc10=True)
    assert dm.class_names == ["dog", "rooster", "rain", "sea_waves", "crackling_fire", "crying_baby", "sneezing",
                              "clock_tick", "helicopter", "chainsaw"]  # fmt: skip
    dataset = dm.dataset("test")
    assert sorted(dataset.targets) == list(range(10))
    for item_id, target in zip(dataset.ids, dataset.targets, strict=True):
        assert dm.class_names[target] == ESC50_CLASSES[int(item_id.rsplit("-", 1)[1].removesuffix(".wav"))]


def test_root_may_be_the_esc50_master_folder(esc50):
    assert len(ESC50DataModule(esc50.root / "ESC-50-master").dataset("test")) == len(esc50.splits["1"])


def test_missing_metadata_error_shows_the_expected_layout(tmp_path):
    with pytest.raises(DatasetLayoutError, match=r"(?s)meta/esc50\.csv.*filename,fold,target,category"):
        ESC50DataModule(tmp_path).setup("fit")


def _rewrite_first_row(tmp_path, esc50, **changes):
    root = tmp_path / "esc"
    shutil.copytree(esc50.root, root)
    csv_path = root / "ESC-50-master" / "meta" / "esc50.csv"
    rows = list(csv.DictReader(open(csv_path)))
    rows[0].update(changes)
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def _rewrite_rows(root, change):
    """Rewrite ``meta/esc50.csv`` of the tree at ``root`` with ``change(row)`` applied to every row."""
    csv_path = root / "ESC-50-master" / "meta" / "esc50.csv"
    rows = list(csv.DictReader(open(csv_path)))
    for row in rows:
        change(row)
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_classes_come_from_the_csv_so_other_esc50_layout_corpora_load(tmp_path):
    tree = make_esc50_tree(tmp_path / "src", targets=[0, 1, 2])
    names = {"0": "kettle", "1": "doorbell", "2": "tram"}
    root = _rewrite_rows(tree.root, lambda row: row.update(category=names[row["target"]]))
    dm = ESC50DataModule(root)
    assert dm.class_names == ["kettle", "doorbell", "tram"]
    dataset = dm.dataset("test")
    expected = {c.id: ESC50_CLASSES.index(c.target) for c in tree.splits["1"]}
    assert dict(zip(dataset.ids, dataset.targets, strict=True)) == expected


def test_class_ids_follow_target_order_when_targets_have_gaps(tmp_path):
    tree = make_esc50_tree(tmp_path / "src", targets=[3, 7, 40])
    dm = ESC50DataModule(tree.root)
    assert dm.class_names == [ESC50_CLASSES[3], ESC50_CLASSES[7], ESC50_CLASSES[40]]
    assert sorted(set(dm.dataset("test").targets)) == [0, 1, 2]


def test_a_target_beyond_the_official_50_is_a_class_like_any_other(tmp_path):
    tree = make_esc50_tree(tmp_path / "src", targets=[0, 1])
    root = _rewrite_first_row(tmp_path, tree, target="50", category="new_sound")
    assert ESC50DataModule(root).class_names == ["dog", "rooster", "new_sound"]


def test_a_target_given_two_categories_is_an_error_naming_the_file_and_target(tmp_path):
    tree = make_esc50_tree(tmp_path / "src", targets=[0, 1])
    root = _rewrite_first_row(tmp_path, tree, category="cat")
    with pytest.raises(
        ValueError, match=r"esc50\.csv:\d+ .*target 0 is category 'dog' here, 'cat' on an earlier row"
    ):
        ESC50DataModule(root).setup("fit")


def test_a_category_given_two_targets_is_an_error_naming_the_file_and_targets(tmp_path):
    tree = make_esc50_tree(tmp_path / "src", targets=[0, 1])
    root = _rewrite_rows(tree.root, lambda row: row.update(category="dog"))
    with pytest.raises(
        ValueError, match=r"esc50\.csv: category 'dog' is given to both target 0 and target 1"
    ):
        _ = ESC50DataModule(root).class_names


def test_a_fold_outside_1_to_5_in_the_csv_is_an_error(tmp_path):
    tree = make_esc50_tree(tmp_path / "src", targets=[0, 1])
    root = _rewrite_first_row(tmp_path, tree, fold="6")
    with pytest.raises(ValueError, match="fold 6 is not one of the folds"):
        ESC50DataModule(root).setup("fit")


def test_esc10_needs_the_esc10_targets_in_the_csv(tmp_path):
    tree = make_esc50_tree(tmp_path / "src", targets=[0, 1])
    with pytest.raises(ValueError, match=r"esc10=True needs the ESC-10 targets"):
        _ = ESC50DataModule(tree.root, esc10=True).class_names


def test_test_fold_outside_1_to_5_is_rejected(esc50):
    with pytest.raises(ValueError, match="test_fold"):
        ESC50DataModule(esc50.root, test_fold=6)


def test_summarize_folds_reports_mean_and_standard_deviation():
    summary = summarize_folds({1: 0.8, 2: 0.9, 3: 0.7, 4: 0.8, 5: 0.8})
    assert summary["mean"] == pytest.approx(0.8)
    assert summary["std"] == pytest.approx((0.02 / 5) ** 0.5)
    assert summary["folds"] == 5


def test_summarize_folds_rejects_a_fold_outside_1_to_5():
    with pytest.raises(ValueError, match=r"\[6\]"):
        summarize_folds({1: 0.5, 6: 0.5})
