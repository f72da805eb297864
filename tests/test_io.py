"""Atomic writes: the target holds the old or the new content, never a partial one, and no temporary is left."""

from __future__ import annotations

import json

import pytest
import torch

from ldrop._io import (
    atomic_torch_save,
    atomic_write,
    atomic_write_files,
    atomic_write_json,
    atomic_write_text,
)


def test_json_is_written_without_leaving_temporary_files(tmp_path):
    path = tmp_path / "out" / "records.json"
    atomic_write_json(path, [{"a": 1}])
    atomic_write_json(path, [{"a": 2}])
    assert json.loads(path.read_text()) == [{"a": 2}]
    assert [p.name for p in path.parent.iterdir()] == ["records.json"]


def test_a_failed_write_keeps_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "table.csv"
    atomic_write_text(path, "old\n")

    def fail(tmp: str) -> None:
        with open(tmp, "w") as handle:
            handle.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_torch_save_round_trips(tmp_path):
    path = atomic_torch_save({"w": torch.arange(3)}, tmp_path / "state.pt")
    assert torch.equal(torch.load(path)["w"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_a_set_of_files_removes_the_temporaries_a_killed_write_of_them_left(tmp_path):
    (tmp_path / ".compare.json.a1b2.tmp").write_text("{")  # kill -9 between writing and renaming
    (tmp_path / ".other.json.c3d4.tmp").write_text("{")  # another file's: not this set's to remove
    atomic_write_files({tmp_path / "compare.md": b"table\n", tmp_path / "compare.json": b"{}\n"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.c3d4.tmp", "compare.json", "compare.md"]


def test_temporaries_of_a_process_that_still_runs_are_not_stale(tmp_path, live_pid):
    from ldrop._io import remove_stale_temporaries

    dead = 2**22 + 12345  # above Linux's largest process id: no process has it
    live = tmp_path / f".compare.json.pid{live_pid}.k3j2x_q1.tmp"  # another command writing it right now
    for name in (live.name, f".compare.json.pid{dead}.a1b2c3d4.tmp", ".compare.json.x9y8.tmp", f".fig.png.pid{dead}.z.png"):
        (tmp_path / name).write_text("{")
    atomic_write_files({tmp_path / "compare.md": b"table\n", tmp_path / "compare.json": b"{}\n"})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, f".fig.png.pid{dead}.z.png", "compare.json", "compare.md"])
    assert remove_stale_temporaries(tmp_path, ["fig.png"]) == [tmp_path / f".fig.png.pid{dead}.z.png"]
    assert remove_stale_temporaries(tmp_path) == [] and live.exists()  # every hidden .tmp: the live one stays
    (tmp_path / ".compare.json.swp").write_text("an editor's")  # not a temporary of ldrop's
    (tmp_path / ".compare.json.pid99999999999999999999.a1b2.tmp").write_text("{")  # no process has such an id
    assert remove_stale_temporaries(tmp_path, ["compare.json"]) == [
        tmp_path / ".compare.json.pid99999999999999999999.a1b2.tmp"]
    assert (tmp_path / ".compare.json.swp").is_file()


def test_a_staged_folder_removes_only_killed_runs_staging_of_the_same_name(tmp_path):
    import os

    from ldrop._io import staged_folder

    running = tmp_path / f".exp1.pid{os.getpid()}.k3j2"  # a running export to exp1
    killed = tmp_path / ".ex[p]1.pid999999999.a1b2"  # a killed export to ex[p]1
    for folder in (running, killed):
        folder.mkdir()
    with staged_folder(tmp_path / "ex[p]1") as staging:  # a glob pattern in the name matched exp1's before
        (staging / "x").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name, "ex[p]1"]


@pytest.mark.parametrize("other", ["folder", "file"])
def test_a_folder_another_process_filled_meanwhile_is_one_line_and_kept_as_it_wrote_it(tmp_path, other):
    from ldrop._io import staged_folder

    out = tmp_path / "export"
    with pytest.raises(FileExistsError, match="'.*export' was written by another process") as raised, \
            staged_folder(out) as staging:
        (staging / "mine").write_text("mine")
        if other == "folder":  # another export that finished first
            out.mkdir()
            (out / "theirs").write_text("theirs")
        else:
            out.write_text("theirs")
    assert "\n" not in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staging folder left
    assert (out / "theirs" if other == "folder" else out).read_text() == "theirs"


def test_a_staged_folder_gets_the_usual_permissions_and_leaves_no_folder_it_made_on_failure(tmp_path, monkeypatch):
    import os

    import ldrop._io
    from ldrop._io import staged_folder

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o2775)  # a group folder: new folders in it keep its group (setgid)
    old = os.umask(0o022)
    try:
        with staged_folder(shared / "made" / "export") as staging:
            (staging / "x").write_text("x")
    finally:
        os.umask(old)
    for folder in (shared / "made", shared / "made" / "export"):  # mkdtemp's 0o700 kept others out
        assert folder.stat().st_mode & 0o7777 == 0o2755, oct(folder.stat().st_mode)
    with pytest.raises(RuntimeError), staged_folder(tmp_path / "a" / "b" / "export") as staging:
        (staging / "x").write_text("x")
        raise RuntimeError("the export failed")
    assert not (tmp_path / "a").exists()  # the parents it made are gone too
    (tmp_path / "kept").mkdir()  # an empty parent it did not make stays
    with pytest.raises(RuntimeError), staged_folder(tmp_path / "kept" / "export"):
        raise RuntimeError("the export failed")
    assert (tmp_path / "kept").is_dir() and not any((tmp_path / "kept").iterdir())

    def refuse(out_dir):
        raise PermissionError(13, "Permission denied", str(out_dir.parent / f".{out_dir.name}.pid1.abc"))

    monkeypatch.setattr(ldrop._io, "_new_hidden_sibling", refuse)
    with pytest.raises(PermissionError) as raised, staged_folder(tmp_path / "c" / "export"):
        pass
    assert raised.value.filename == str(tmp_path / "c" / "export")  # the folder asked for, not the hidden sibling
    assert not (tmp_path / "c").exists()


def _rust_io_error(code: int) -> Exception:
    """What safetensors raises on a full disk: not an ``OSError``, the errno only in its message."""
    from safetensors import SafetensorError

    reason = {28: "No space left on device", 27: "File too large"}[code]
    return SafetensorError(f"Error while serializing: I/O error: {reason} (os error {code})")


@pytest.mark.parametrize("raised", ["ENOSPC", "EFBIG", "safetensors ENOSPC", "safetensors EFBIG"])
def test_a_full_disk_or_a_file_over_the_size_limit_names_the_folder(tmp_path, raised):
    import errno

    from ldrop._io import raise_if_disk_full

    code = errno.EFBIG if raised.endswith("EFBIG") else errno.ENOSPC
    err = _rust_io_error(code) if raised.startswith("safetensors") else OSError(code, "from the writer")
    with pytest.raises(OSError) as named:
        raise_if_disk_full(err, tmp_path / "model.safetensors")
    says = (f"file too large for {tmp_path} (the file size limit, ulimit -f)" if code == errno.EFBIG
            else f"no space left on {tmp_path}")
    assert (named.value.errno, named.value.strerror, named.value.filename) == (code, says, str(tmp_path / "model.safetensors"))


@pytest.mark.parametrize("raised", ["onnx.save", "atomic write", "safetensors"])
def test_a_full_disk_in_a_staged_folder_names_the_folder_asked_for_not_the_staging_one(tmp_path, monkeypatch, raised):
    """onnx.save's OSError names no file; ldrop's atomic writes name the file in the (hidden, removed) staging
    folder; safetensors' error is no OSError."""
    import errno

    import ldrop._io as io_module
    from ldrop._io import staged_folder

    def full(tmp, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_module, "_write_synced", full)
    out = tmp_path / "d" / "model"
    with pytest.raises(OSError) as named, staged_folder(out) as staging:
        (staging / "config.json").write_text("{}")
        if raised == "onnx.save":
            raise OSError(errno.ENOSPC, "No space left on device")
        if raised == "safetensors":
            raise _rust_io_error(28)
        io_module.atomic_write_files({staging / "ldrop_task_state.pt": b"state"})
    assert named.value.strerror == f"no space left on {out}", named.value
    assert named.value.filename == (str(out / "ldrop_task_state.pt") if raised == "atomic write" else None)
    assert list(tmp_path.iterdir()) == []  # no staging folder, no parent it made


def test_a_folder_that_cannot_be_written_is_named_not_the_probe_file(tmp_path, monkeypatch):
    import errno

    import ldrop._io as io_module
    from ldrop._io import check_writable_folder

    def read_only(path, suffix):  # as mkstemp fails: naming the random temporary
        raise OSError(errno.EROFS, "Read-only file system", str(path.parent / f".{path.name}.pid1.x7k2{suffix}"))

    monkeypatch.setattr(io_module, "_temporary_beside", read_only)
    with pytest.raises(OSError) as named:
        check_writable_folder(tmp_path / "new" / "sub")
    assert (named.value.errno, named.value.filename) == (errno.EROFS, str(tmp_path))
