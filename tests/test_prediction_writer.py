"""JsonlPredictionWriter: records are written as they come; the output is complete or absent, and what a
failed run predicted is kept beside it as ``<output>.partial``."""

from __future__ import annotations

import contextlib
import json
import re

import pytest
import torch

from ldrop.cli.callbacks import JsonlPredictionWriter
from ldrop.tasks import ClassificationTask
from tests.disks import mounted_tmpfs
from tests.helpers import quiet_trainer, tiny_classification_data


def _predict(tmp_path, output, fail_at: int | None = None) -> JsonlPredictionWriter:
    torch.manual_seed(0)
    model = ClassificationTask(labels=["a", "b", "c", "d"], backbone="tiny:wavlm")
    if fail_at is not None:
        step = model.predict_step

        def failing(batch, batch_idx, dataloader_idx=0):
            if batch_idx == fail_at:
                raise RuntimeError("the machine went away")
            return step(batch, batch_idx, dataloader_idx)

        model.predict_step = failing
    writer = JsonlPredictionWriter(output=str(output))
    quiet_trainer(tmp_path, callbacks=[writer]).predict(model, datamodule=tiny_classification_data(batch_size=4),
                                                        return_predictions=False)
    return writer


def test_a_failed_prediction_run_keeps_what_it_wrote_as_partial_and_no_output(tmp_path):
    output = tmp_path / "out" / "pred.jsonl"
    with pytest.raises(RuntimeError, match="went away"):
        _predict(tmp_path, output, fail_at=2)
    assert not output.exists()
    partial = [json.loads(line) for line in output.with_name("pred.jsonl.partial").read_text().splitlines()]
    assert len(partial) == 8 and all("output" in r and "id" in r for r in partial)  # the first two batches
    assert sorted(p.name for p in output.parent.iterdir()) == ["pred.jsonl.partial"]  # no temporary left


def test_a_complete_run_writes_every_record_and_replaces_an_old_partial(tmp_path):
    output = tmp_path / "pred.jsonl"
    output.with_name("pred.jsonl.partial").write_text("{}\n")
    writer = _predict(tmp_path, output)
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(records) == 16 and writer.count == 16 and writer.written == output
    assert len({r["id"] for r in records}) == 16
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("pred", ".pred"))) == ["pred.jsonl"]


def test_a_run_writing_the_same_output_at_the_same_time_keeps_its_temporary(tmp_path, live_pid):
    # another ldrop predict with this --predictions.output is writing it: its temporary is not a killed run's
    output = tmp_path / "pred.jsonl"
    other = tmp_path / f".pred.jsonl.pid{live_pid}.q7t7yi2w.tmp"
    other.write_text('{"id": "another run"}\n')
    writer = _predict(tmp_path, output)
    assert writer.count == 16 and len(output.read_text().splitlines()) == 16
    assert other.read_text() == '{"id": "another run"}\n'  # which the other run then moves onto the output


def test_an_output_in_a_file_path_fails_at_setup_naming_it(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match="file"):
        _predict(tmp_path, tmp_path / "file" / "pred.jsonl")


@pytest.mark.parametrize("free_bytes", [0, 6000], ids=["full", "one-batch-free"])
def test_a_disk_that_fills_names_the_folder_and_keeps_only_whole_batches_for_any_user(tmp_path, free_bytes,
                                                                                       monkeypatch):
    """The full-disk test below needs root for its tmpfs; here the file refuses writes past ``free_bytes`` (a batch
    of four records is about 4.1 KB: one fits in 6000 bytes, two do not)."""
    import errno
    import io
    import os

    class Filling(io.FileIO):
        written = 0

        def write(self, data):  # as a disk does: what fits (a short write), then "no space"
            room = free_bytes - self.written
            if room <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            count = super().write(bytes(data)[:room])
            self.written += count
            return count

    fdopen = os.fdopen

    def filling_fdopen(fd, mode="r", *args, **kwargs):
        if mode != "w":
            return fdopen(fd, mode, *args, **kwargs)
        return io.TextIOWrapper(io.BufferedWriter(Filling(fd, "w")), encoding=kwargs.get("encoding"))

    decode = ClassificationTask.decode  # long records: a 4 KiB page holds one batch of four, not two
    monkeypatch.setattr(ClassificationTask, "decode", lambda self, *a: [f"{o}:{'x' * 900}" for o in decode(self, *a)])
    monkeypatch.setattr(os, "fdopen", filling_fdopen)
    disk = tmp_path / "disk"
    disk.mkdir()
    with pytest.raises(OSError, match=f"no space left on {re.escape(str(disk))}"):
        _predict(tmp_path, disk / "pred.jsonl")
    monkeypatch.undo()
    left = sorted(p.name for p in disk.iterdir())
    assert left == (["pred.jsonl.partial"] if free_bytes else []), left
    if free_bytes:
        records = [json.loads(line) for line in (disk / "pred.jsonl.partial").read_text().splitlines()]
        assert len(records) == 4, len(records)  # the one whole batch that fitted (about 4.1 KB of 6 KB)


@pytest.mark.parametrize("free_pages", [0, 1], ids=["full", "one-page-free"])
def test_a_full_disk_names_the_folder_and_keeps_only_whole_batches(tmp_path, free_pages, monkeypatch):
    """Closing the file flushed the failed batch's lines again: a second "no space" replaced the line that names
    the folder, and the temporary stayed."""
    decode = ClassificationTask.decode  # long records: a 4 KiB page holds one batch of four, not two
    monkeypatch.setattr(ClassificationTask, "decode", lambda self, *a: [f"{o}:{'x' * 900}" for o in decode(self, *a)])
    with mounted_tmpfs(tmp_path / "disk", size="64k") as disk:
        with open(disk / "filler", "wb", buffering=0) as filler:  # fill the disk, then free the pages asked for
            with contextlib.suppress(OSError):
                while filler.write(b"\0" * 4096):
                    pass
        with open(disk / "filler", "r+b") as filler:
            filler.truncate(max(0, (disk / "filler").stat().st_size - 4096 * free_pages))
        with pytest.raises(OSError, match=f"no space left on {disk}"):
            _predict(tmp_path, disk / "pred.jsonl")
        left = sorted(p.name for p in disk.iterdir() if p.name != "filler")
        assert left == (["pred.jsonl.partial"] if free_pages else []), left
        if free_pages:
            records = [json.loads(line) for line in (disk / "pred.jsonl.partial").read_text().splitlines()]
            assert len(records) % 4 == 0 and 0 < len(records) < 16, len(records)  # whole batches of four
