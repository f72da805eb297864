"""A checkpoint whose bytes changed after it was written (bit rot, a bad copy) is refused by its checksums: torch
loads such a file without a word, with the changed weights."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest

from ldrop.cli import main
from tests.cli.common import QUICKSTART, SMALL, one_error_line


def _rotted(good: Path, folder: Path) -> tuple[Path, str]:
    """A copy of ``good`` with 256 bytes in the middle of its largest tensor zeroed; the entry's name."""
    with zipfile.ZipFile(good) as archive:
        entry = max(archive.infolist(), key=lambda info: info.file_size)
    data = bytearray(good.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[entry.header_offset + 26: entry.header_offset + 30])
    start = entry.header_offset + 30 + name_length + extra_length + entry.file_size // 2
    assert any(data[start:start + 256])
    data[start:start + 256] = bytes(256)
    path = folder / "rotted.ckpt"
    path.write_bytes(bytes(data))
    return path, entry.filename


@pytest.mark.parametrize("command", ["test", "export"])
def test_a_checkpoint_changed_inside_is_refused_in_one_line(trained, tmp_path, capsys, command):
    rotted, entry = _rotted(trained / "checkpoints" / "last.ckpt", tmp_path)
    args = {"test": ["test", "--config", QUICKSTART, *SMALL, "--ckpt_path", str(rotted),
                     "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")],
            "export": ["export", str(rotted), str(tmp_path / "exported")]}[command]
    assert main(args) == 2
    line = one_error_line(capsys)
    assert f"checkpoint '{rotted}' is damaged: its entry '{entry}' fails its checksum" in line
    assert not (tmp_path / "logs").exists() and not (tmp_path / "exported").exists()


def test_load_model_refuses_a_checkpoint_changed_inside(trained, tmp_path):
    from ldrop import load_model
    from ldrop._io import CheckpointError

    rotted, _ = _rotted(trained / "checkpoints" / "last.ckpt", tmp_path)
    with pytest.raises(CheckpointError, match="fails its checksum"):
        load_model(rotted)
    assert load_model(trained / "checkpoints" / "last.ckpt") is not None  # the good one loads
