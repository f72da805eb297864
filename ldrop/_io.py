"""Atomic file writes: a reader (or a crash) never sees a half-written file.

Every writer goes through :func:`atomic_write`: write a temporary file in the target's folder, then
``os.replace`` it onto the target (atomic on POSIX and Windows within one file system).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], suffix: str = ".tmp") -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path``; the temporary file is removed on error.

    Args:
        path: the file to (re)place; its folder is created.
        write: writes the complete content to the temporary path it is given.
        suffix: the temporary file's suffix (a writer that picks the format from it, as matplotlib's
            ``savefig``, needs the real one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates owner-only files; the result gets the usual permissions (0o666 less the umask)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str] | None = None) -> list[Path]:
    """Delete the temporary files that killed atomic writes left in ``folder``; returns the deleted paths.

    Args:
        folder: where the writes went.
        names: only the temporaries of these target file names (``.<name>.<random><suffix>``); ``None``:
            every hidden ``.*.tmp`` file (a folder that only ldrop writes to, as a checkpoint folder).
    """
    folder = Path(folder)
    patterns = [".*.tmp"] if names is None else [f".{name}.*" for name in names]
    removed = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
    for path in removed:
        path.unlink(missing_ok=True)
    if removed:
        log.info("removed %d stale temporary file(s) of an interrupted write from %s", len(removed), folder)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, synced to disk before the rename."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    return atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write ``payload`` as indented JSON (with a final newline) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` atomically (checkpoints, exported task state)."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
