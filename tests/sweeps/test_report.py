"""Sweep files: written atomically, read back, compared."""

from __future__ import annotations

import json

import pytest

from ldrop.sweeps import compare_sweeps, load_sweep, markdown_table, primary_metric, write_sweep

ROWS = [
    {"method": "m", "budget_layers": k, "budget_fraction": k / 4, "executed_layers": float(k),
     "gflops_per_utterance": 1.0 + k, "acc": 0.5 + 0.1 * k, "acc_std": 0.01}
    for k in (1, 2, 4)
]


def test_write_sweep_writes_csv_json_and_plots(tmp_path):
    paths = write_sweep(ROWS, tmp_path, layer_usage=[[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    assert {p.name for p in paths.values()} == {"budget_sweep.csv", "budget_sweep.json", "budget_sweep.png",
                                               "layer_usage.png", "sweep_manifest.json"}
    assert json.loads(paths["json"].read_text()) == ROWS
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_csv_and_json_read_back_the_same_rows(tmp_path):
    write_sweep(ROWS, tmp_path)
    assert load_sweep(tmp_path / "budget_sweep.csv") == load_sweep(tmp_path / "budget_sweep.json") == ROWS


def test_a_run_directory_is_searched_for_its_sweep(tmp_path):
    write_sweep(ROWS, tmp_path / "ldrop" / "version_3")
    assert load_sweep(tmp_path) == ROWS


def test_missing_sweep_names_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match="budget_sweep"):
        load_sweep(tmp_path)


def test_primary_metric_skips_base_and_derived_columns():
    assert primary_metric(ROWS) == "acc"


def test_markdown_table_has_a_row_per_budget():
    table = markdown_table(ROWS, ["budget_layers", "acc"])
    assert table.splitlines()[0] == "| budget_layers | acc |"
    assert len(table.splitlines()) == 2 + len(ROWS)


def test_compare_labels_each_run(tmp_path):
    write_sweep(ROWS, tmp_path / "a")
    write_sweep([{**r, "method": "n", "acc": r["acc"] - 0.1} for r in ROWS], tmp_path / "b")
    table, plot = compare_sweeps([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    assert plot.is_file() and "| m |" in table and "| n |" in table


def test_compare_tells_two_runs_of_one_method_apart_by_the_folder_their_paths_differ_in(tmp_path):
    write_sweep(ROWS, tmp_path / "lr-1e-3" / "version_0")
    write_sweep([{**r, "acc": r["acc"] - 0.1} for r in ROWS], tmp_path / "lr-1e-4" / "version_0")
    runs = [tmp_path / "lr-1e-3" / "version_0", tmp_path / "lr-1e-4" / "version_0"]
    table, _ = compare_sweeps(runs, tmp_path / "out", reference="m (lr-1e-4)")
    assert "| m (lr-1e-3) |" in table and "| m (lr-1e-4) |" in table and "m'" not in table
    summary = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert summary["reference"] == "m (lr-1e-4)"
    write_sweep(ROWS, tmp_path / "lr-1e-3" / "version_1")  # the fewest names that tell three apart
    table, _ = compare_sweeps([*runs, tmp_path / "lr-1e-3" / "version_1"], tmp_path / "out")
    assert {"m (lr-1e-3/version_0)", "m (lr-1e-4/version_0)", "m (lr-1e-3/version_1)"} == {
        r["run"] for r in json.loads((tmp_path / "out" / "compare.json").read_text())["budgets"]}
    table, _ = compare_sweeps(runs, tmp_path / "out", labels=["a", "b"])  # given labels are kept
    assert "| a |" in table and "| b |" in table


# ---------------------------------------------------------------- plots: titles, budget labels
RUN_ROWS = [{**r, "dataset": "Synthetic", "backbone": "tiny:wavlm"} for r in ROWS]


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_sweep_figure_is_titled_and_labels_each_point_with_its_budget():
    from ldrop.sweeps import sweep_figure

    fig = sweep_figure({"m": RUN_ROWS})
    title = fig.axes[0].get_title()
    assert "m" in title and "Synthetic" in title and "tiny:wavlm" in title
    assert sorted(_texts(fig)) == ["k=1", "k=2", "k=4"]


def test_layer_usage_figure_is_titled_and_labels_budgets():
    from ldrop.sweeps import layer_usage_figure, sweep_title

    fig = layer_usage_figure([[1, 0, 0, 0], [1, 1, 0, 0]], [1, 2], sweep_title(RUN_ROWS, "layer usage"))
    assert fig.axes[0].get_title() == "layer usage: m | Synthetic | tiny:wavlm"
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["k=1", "k=2"]


def test_compare_plot_is_titled_with_the_dataset_and_backbone(tmp_path, monkeypatch):
    import ldrop.sweeps.report as report

    figures = []
    original = report.sweep_figure
    monkeypatch.setattr(report, "sweep_figure", lambda *a, **k: figures.append(original(*a, **k)) or figures[-1])
    write_sweep(RUN_ROWS, tmp_path / "a")
    write_sweep([{**r, "method": "n"} for r in RUN_ROWS], tmp_path / "b")
    _, plot = compare_sweeps([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    assert plot.is_file()
    assert figures[-1].axes[0].get_title() == "compare: Synthetic | tiny:wavlm"
    assert _texts(figures[-1]).count("k=2") == 2  # one label per run's point


def test_sweep_goes_to_a_tensorboard_writer(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from ldrop.sweeps import add_sweep_to_tensorboard

    writer = SummaryWriter(str(tmp_path))
    add_sweep_to_tensorboard(writer, RUN_ROWS, [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]], step=3)
    writer.close()
    events = EventAccumulator(str(tmp_path)).Reload()
    assert {"sweep/budget_sweep", "sweep/layer_usage"} <= set(events.Tags()["images"])
    assert "sweep/table/text_summary" in events.Tags()["tensors"]  # how SummaryWriter.add_text stores it
    table = events.Tensors("sweep/table/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| budget_layers |" in table and events.Tensors("sweep/table/text_summary")[0].step == 3


# ---------------------------------------------------------------- atomic files
def test_sweep_files_get_the_usual_permissions_not_owner_only(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        paths = write_sweep(ROWS, tmp_path, layer_usage=[[1, 0, 0, 0]] * 3)
    finally:
        os.umask(old)
    assert {oct(p.stat().st_mode & 0o777) for p in paths.values()} == {oct(0o644)}


@pytest.mark.parametrize("failing", ["replace", "render"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, monkeypatch, failing):
    import os

    import matplotlib.figure

    write_sweep(ROWS, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def fail(*args, **kwargs):
        raise OSError("disk full")

    if failing == "replace":
        monkeypatch.setattr(os, "replace", fail)
    else:
        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", fail)
    with pytest.raises(OSError, match="disk full"):
        write_sweep([{**r, "acc": 0.0} for r in ROWS], tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing half-written, nothing hidden


def test_writing_a_sweep_removes_the_temporaries_a_killed_write_left(tmp_path):
    stale = [tmp_path / ".budget_sweep.csv.k3j2.tmp", tmp_path / ".budget_sweep.png.x81q.png"]
    for path in stale:
        path.write_bytes(b"")
    unrelated = tmp_path / ".notes.txt.tmp"
    unrelated.write_bytes(b"")
    write_sweep(ROWS, tmp_path)
    assert not any(path.exists() for path in stale)
    assert unrelated.exists()  # not a temporary of the sweep's own files


def test_sweep_figure_draws_the_headroom_oracles_when_present():
    from ldrop.sweeps import sweep_figure

    rows = [{**row, "acc_input_oracle": row["acc"] + 0.1, "acc_static_oracle": row["acc"]} for row in ROWS]
    labels = [line.get_label() for line in sweep_figure({"sel": rows}).axes[0].get_lines()]
    assert labels == ["sel", "sel: input oracle", "sel: static oracle"]


# ---------------------------------------------------------------- the files of a sweep as one set
TARGET_ROWS = [{"target": "gflops_per_second=0.1", "executed_layers": 2.0, "acc": 0.5, "over_target": 0.0}]


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_the_target_sweep_joins_the_set_and_leaves_with_it(tmp_path):
    from ldrop.sweeps import check_sweep_set

    paths = write_sweep(ROWS, tmp_path, layer_usage=[[1, 0, 0, 0]] * 3, target_rows=TARGET_ROWS)
    assert json.loads(paths["target_json"].read_text()) == TARGET_ROWS
    assert set(check_sweep_set(tmp_path)) == {"budget_sweep.csv", "budget_sweep.json", "budget_sweep.png",
                                              "layer_usage.png", "target_sweep.csv", "target_sweep.json"}
    write_sweep(ROWS, tmp_path)  # a later sweep without targets or layer usage: their old files go
    assert sorted(p.name for p in tmp_path.iterdir()) == ["budget_sweep.csv", "budget_sweep.json",
                                                          "budget_sweep.png", "sweep_manifest.json"]


@pytest.mark.parametrize("kill_after", [0, 1, 3], ids=["before-renames", "after-csv", "before-manifest"])
def test_a_sweep_killed_while_renaming_is_refused_by_load_and_compare(tmp_path, monkeypatch, kill_after):
    import os

    from ldrop.cli import main
    from ldrop.sweeps import IncompleteSweepError

    write_sweep(ROWS, tmp_path / "run", layer_usage=[[1, 0, 0, 0]] * 3)
    renamed, real_replace = [], os.replace

    def replace_then_die(src, dst):
        if len(renamed) == kill_after:
            raise KeyboardInterrupt  # as a kill: nothing after this point runs
        renamed.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        write_sweep([{**r, "acc": 0.0} for r in ROWS], tmp_path / "run", layer_usage=[[0, 1, 0, 0]] * 3)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # no temporaries left
    if kill_after == 0:  # nothing renamed yet: the old set, complete
        assert load_sweep(tmp_path / "run") == ROWS
        return
    with pytest.raises(IncompleteSweepError, match="incomplete budget sweep"):
        load_sweep(tmp_path / "run")
    with pytest.raises(IncompleteSweepError):
        load_sweep(tmp_path / "run" / "budget_sweep.csv")
    assert main(["compare", str(tmp_path / "run"), "--out", str(tmp_path / "cmp")]) == 2
    assert not (tmp_path / "cmp" / "compare.png").exists()


def test_a_folder_with_the_csv_only_is_not_a_sweep(tmp_path):
    from ldrop.sweeps import IncompleteSweepError

    write_sweep(ROWS, tmp_path)
    for name in ("budget_sweep.json", "budget_sweep.png", "sweep_manifest.json"):
        (tmp_path / name).unlink()
    with pytest.raises(IncompleteSweepError, match="no sweep_manifest.json"):
        load_sweep(tmp_path)


def test_a_users_own_table_is_read_without_a_manifest(tmp_path):
    (tmp_path / "mine.json").write_text(json.dumps(ROWS))
    assert load_sweep(tmp_path / "mine.json") == ROWS


def _fail_writes_after(monkeypatch, count: int):
    """Make the sweep's file writes hit a full disk (``ENOSPC``) after ``count`` successful ones."""
    import errno

    import ldrop._io as io_module

    written, real_write = [], io_module._write_synced

    def write(tmp, data):
        if len(written) >= count:
            with open(tmp, "wb") as handle:
                handle.write(data[: len(data) // 2])  # what a full disk leaves: part of the file
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(tmp)
        real_write(tmp, data)

    monkeypatch.setattr(io_module, "_write_synced", write)


@pytest.mark.parametrize("count", [0, 1, 3])
def test_a_full_disk_in_a_reused_directory_keeps_the_old_complete_set(tmp_path, monkeypatch, count):
    write_sweep(ROWS, tmp_path, layer_usage=[[1, 0, 0, 0]] * 3)
    before = _files(tmp_path)
    _fail_writes_after(monkeypatch, count)
    with pytest.raises(OSError, match=f"no space left on {tmp_path}"):
        write_sweep([{**r, "acc": 0.0} for r in ROWS], tmp_path, layer_usage=[[0, 1, 0, 0]] * 3)
    assert _files(tmp_path) == before  # no new csv beside the old plots, no temporary
    assert load_sweep(tmp_path) == ROWS


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MiB tmpfs (root only, where mounting is allowed; the monkeypatched variant runs everywhere)."""
    from tests.disks import mounted_tmpfs

    with mounted_tmpfs(tmp_path / "disk") as mount:
        yield mount


def test_a_real_full_disk_in_a_reused_directory_keeps_the_old_complete_set(small_tmpfs):
    import shutil

    write_sweep(ROWS, small_tmpfs, layer_usage=[[1, 0, 0, 0]] * 3)
    before = _files(small_tmpfs)
    # fill the disk but for a few KiB: the new csv and json fit, the plots do not
    (small_tmpfs / "filler").write_bytes(b"\0" * (shutil.disk_usage(small_tmpfs).free - 8192))
    with pytest.raises(OSError, match=f"no space left on {small_tmpfs}"):
        write_sweep([{**r, "acc": 0.0} for r in ROWS], small_tmpfs, layer_usage=[[0, 1, 0, 0]] * 3)
    (small_tmpfs / "filler").unlink()
    assert _files(small_tmpfs) == before
    assert load_sweep(small_tmpfs) == ROWS


# ---------------------------------------------------------------- equal compute, per-item errors
def _items(ids, errors_by_k):
    return {"metric": "acc", "ids": ids, "counts": [1.0] * len(ids), "budgets": sorted(errors_by_k),
            "errors": {str(k): e for k, e in errors_by_k.items()}, "fixed_errors": {}}


def _run(tmp_path, name, acc, gflops_per_layer, ids, seed):
    """A 4-layer sweep whose per-item errors give accuracy ``acc(k)`` (0/1 errors over 200 items)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows, errors = [], {}
    for k in (1, 2, 3, 4):
        wrong = np.zeros(len(ids))
        wrong[rng.permutation(len(ids))[: round((1 - acc(k)) * len(ids))]] = 1.0
        errors[k] = wrong.tolist()
        rows.append({**RUN_ROWS[0], "method": name, "budget_layers": k, "executed_layers": float(k),
                     "gflops_per_utterance": 0.5 + gflops_per_layer * k, "acc": 1 - wrong.mean(),
                     "acc_input_oracle": 1.0})
    write_sweep(rows, tmp_path / name, items=_items(ids, errors))
    return tmp_path / name


def test_compare_at_equal_gflops_with_paired_intervals(tmp_path, monkeypatch):
    import ldrop.sweeps.report as report
    from ldrop.sweeps import load_items

    ids = [f"u{i}" for i in range(200)]
    good = _run(tmp_path, "good", lambda k: 0.5 + 0.1 * k, 1.0, ids, 0)
    bad = _run(tmp_path, "bad", lambda k: 0.3 + 0.1 * k, 1.0, ids[::-1], 1)  # other order: aligned by id
    assert load_items(bad)["ids"][0] == "u199" and load_items(good / "budget_sweep.csv")["counts"] == [1.0] * 200
    figures = []
    original = report.sweep_figure
    monkeypatch.setattr(report, "sweep_figure", lambda *a, **k: figures.append(original(*a, **k)) or figures[-1])
    table, _ = compare_sweeps([good, bad], tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert summary["reference"] == "good" and (tmp_path / "out" / "compare.md").read_text().strip() == table.strip()
    at = {(r["run"], r["at"]): r for r in summary["equal_gflops"]}
    assert set(at) == {(run, p) for run in ("good", "bad") for p in ("N/4", "N/2", "3N/4", "AUC")}
    assert at[("good", "N/2")]["gflops"] == 2.5 and at[("good", "N/2")]["acc"] == pytest.approx(0.7)
    assert at[("good", "AUC")]["acc"] == pytest.approx(0.75)  # the mean of 0.6..0.9 over 1.5..4.5 GFLOPs
    cell = at[("bad", "N/2")]["vs good"]  # 20 points worse, on 200 items
    diff, low, high = (float(x) for x in cell.replace("[", "").replace("]", "").replace(",", "").split())
    assert diff == pytest.approx(-20.0) and -35 < low < diff < high < -5
    assert at[("good", "N/2")]["vs good"] is None
    assert {p["at"] for p in summary["paired"]} == {"N/4", "N/2", "3N/4", "AUC"}
    ax = figures[-1].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["good", "bad", "fixed part (CNN, selector)"]  # no oracle lines unless asked
    assert ax.get_legend().get_bbox_to_anchor().x0 > ax.bbox.x1 - 1  # outside the axes, on the right
    compare_sweeps([good, bad], tmp_path / "out", reference="bad", oracles=True)
    assert [t.get_text() for t in figures[-1].axes[0].get_legend().get_texts()].count("bad: input oracle") == 1
    assert "good: input oracle" not in [t.get_text() for t in figures[-1].axes[0].get_legend().get_texts()]
    _run(tmp_path, "other", lambda k: 0.5, 1.0, ids[:150], 2)
    with pytest.raises(ValueError, match="different items"):
        compare_sweeps([good, tmp_path / "other"], tmp_path / "out")


def test_an_older_sweep_without_items_still_loads_and_compares_without_intervals(tmp_path):
    from ldrop.sweeps import load_items

    write_sweep(ROWS, tmp_path / "a")
    write_sweep([{**r, "method": "n", "acc": r["acc"] - 0.1} for r in ROWS], tmp_path / "b")
    assert load_items(tmp_path / "a") is None and load_sweep(tmp_path / "a") == ROWS
    compare_sweeps([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    rows = json.loads((tmp_path / "out" / "compare.json").read_text())["equal_gflops"]
    assert next(r for r in rows if r["run"] == "n" and r["at"] == "N/2")["vs m"] == "-10.0"  # no interval
