"""Atomic file writes (a temporary file in the target's folder, then ``os.replace``; a full disk is an
``OSError`` saying "no space left on <folder>"), and reading checkpoints with errors that name the file."""

from __future__ import annotations

import atexit
import contextlib
import errno
import glob
import json
import logging
import os
import pickle
import re
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], suffix: str = ".tmp") -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` (folder created); the temporary is removed
    on error.

    ``suffix`` is the temporary's (a writer that picks the format from it, as ``savefig``, needs the real
    one).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temporary_beside(path, suffix)
    except OSError as err:
        raise_if_disk_full(err, path)
        raise
    try:
        write(tmp)
        # mkstemp creates owner-only files; the result gets the usual permissions (0o666 less the umask)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        raise_if_disk_full(err, path)
        raise
    return path


def atomic_write_files(files: Mapping[str | os.PathLike, bytes], remove: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Write a set of files that belong together: a full disk or an error never mixes old and new files.

    All are written and synced to hidden temporaries first, then renamed in the given order (put the marker of
    a complete set last), then ``remove`` is deleted. Returns the written paths.
    """
    targets = [Path(path) for path in files]
    for folder in {path.parent for path in targets if path.parent.is_dir()}:  # a killed earlier write's
        remove_stale_temporaries(folder, [path.name for path in targets if path.parent == folder])
    staged: list[tuple[str, Path]] = []
    current = targets[0] if targets else Path(".")
    try:
        for current, data in zip(targets, files.values(), strict=True):
            current.parent.mkdir(parents=True, exist_ok=True)
            staged.append((_temporary_beside(current, ".tmp"), current))
            _write_synced(staged[-1][0], data)
            os.chmod(staged[-1][0], 0o666 & ~_umask())
        while staged:
            tmp, current = staged[0]
            os.replace(tmp, current)
            staged.pop(0)
    except BaseException as err:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise_if_disk_full(err, current)
        raise
    for path in remove:
        if Path(path) not in targets:
            Path(path).unlink(missing_ok=True)
    return targets


def _temporary_beside(path: Path, suffix: str) -> str:
    """A new empty hidden file ``.<name>.pid<this process>.<random><suffix>`` in ``path``'s folder (what
    :func:`remove_stale_temporaries` recognises, and leaves alone while this process runs)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path), suffix=suffix)
    os.close(fd)
    return tmp


def temporary_prefix(path: Path) -> str:
    """The name of a temporary of ``path`` up to its random part, as :func:`remove_stale_temporaries` reads it."""
    return f".{path.name}.pid{os.getpid()}."


def _write_synced(tmp: str, data: bytes) -> None:
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def exception_chain(err: BaseException) -> Iterator[BaseException]:
    """``err``, then what it was raised from (``__cause__``, else ``__context__``), each once."""
    seen: BaseException | None = err
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        yield seen
        seen = seen.__cause__ or seen.__context__


#: A full disk, an exceeded quota, a file over the size limit (``ulimit -f``).
DISK_ERRNOS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)


def disk_errno(err: BaseException) -> int | None:
    """The errno of :data:`DISK_ERRNOS` that ``err`` (or what it was raised from: ``torch.save`` raises "unexpected
    pos") is: an ``OSError``'s, or the "(os error N)" of a Rust I/O error (safetensors' ``SafetensorError``)."""
    for seen in exception_chain(err):
        code = seen.errno if isinstance(seen, OSError) else (
            int(found[1]) if (found := re.search(r"\(os error (\d+)\)", str(seen))) else None)
        if code in DISK_ERRNOS:
            return code
    return None


def disk_error_message(code: int, folder: Path | None) -> str:
    """``"no space left on <folder>"``, or for ``EFBIG`` ``"file too large for <folder> (the file size limit,
    ulimit -f)"``."""
    if code == errno.EFBIG:
        return f"file too large{'' if folder is None else f' for {folder}'} (the file size limit, ulimit -f)"
    return f"no space left on {folder if folder is not None else 'the device'}"


def raise_if_disk_full(err: BaseException, path: Path | None, folder: Path | None = None) -> None:
    """Re-raise a full disk, an exceeded quota or a file over the size limit (:func:`disk_errno`) as one
    ``OSError`` naming ``folder`` (default: ``path``'s) and the file ``path`` (if known)."""
    if (code := disk_errno(err)) is not None:
        folder = path.parent if folder is None else folder
        raise OSError(code, disk_error_message(code, folder), None if path is None else str(path)) from err


def check_writable_folder(folder: str | os.PathLike) -> Path:
    """Check that files can be written in ``folder`` (or created below its nearest existing parent) by
    creating and removing one; unlike ``os.access`` this catches read-only mounts and holds for root. Raises
    ``OSError`` naming the folder."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(existing))
    probe = existing / ".ldrop-write-check"
    try:
        Path(_temporary_beside(probe, ".tmp")).unlink()
    except OSError as err:
        raise_if_disk_full(err, None, existing)
        raise OSError(err.errno, err.strerror, str(existing)) from err  # the folder, not the random probe file
    return folder


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str] | None = None) -> list[Path]:
    """Delete the temporaries killed atomic writes left in ``folder`` (of ``names``, or every hidden
    ``.*.tmp``); not those of a process that still runs (another ldrop command writing the same files)."""
    folder = Path(folder)
    patterns = {".*.tmp": ".tmp"} if names is None else {
        f".{glob.escape(name)}.*": (".tmp", Path(name).suffix or ".tmp") for name in names}
    removed = sorted({p for pattern, ends in patterns.items() for p in folder.glob(pattern)
                      if p.name.endswith(ends) and p.is_file() and _stale(p)})  # not an editor's .swp
    for path in removed:
        path.unlink(missing_ok=True)
    if removed:
        log.info("removed %d stale temporary file(s) of an interrupted write from %s", len(removed), folder)
    return removed


def _stale(temporary: Path) -> bool:
    """Whether the process that made ``temporary`` (:func:`_temporary_beside`) has ended; one without a process
    id in its name is stale."""
    pid = re.search(r"\.pid(\d+)\.[A-Za-z0-9_]+\.[A-Za-z0-9]+$", temporary.name)
    return pid is None or not _running(int(pid[1]))


def _running(pid: int) -> bool:
    """Whether a process ``pid`` runs (or runs as another user)."""
    if not 0 < pid < 2**31:  # no such process id (0 and -1 would ask about process groups)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def usual_permissions(folder: Path) -> Iterator[None]:
    """Give the files that the block writes into ``folder`` (new, or replaced by a rename) the usual permissions
    (0o666 less the umask): writers that stage through owner-only temporaries (``save_pretrained``'s weights,
    through ``mkstemp``) leave them unreadable to the group and others."""
    def inodes() -> dict[str, int]:
        return {p.name: p.stat().st_ino for p in folder.iterdir() if p.is_file()} if folder.is_dir() else {}

    before = inodes()
    yield
    for name, inode in inodes().items():
        if before.get(name) != inode:
            os.chmod(folder / name, 0o666 & ~_umask())


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically, synced to disk before the rename."""
    return atomic_write(path, lambda tmp: _write_synced(tmp, text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write ``payload`` as indented JSON (with a final newline) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` atomically and synced, through a file object (a full disk is then an
    ``OSError``)."""
    import torch

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())

    return atomic_write(path, write)


class CheckpointError(ValueError):
    """A file given as a checkpoint cannot be used: damaged, empty, not a checkpoint, or one that does not fit
    the model. The message names the file (or the differing options) on one line."""


#: What ``torch.load`` raises for a file that is not a readable checkpoint (truncated, empty, text, random
#: bytes, a zip of something else): never a missing or unreadable file, which stay ``OSError``.
DAMAGED_CHECKPOINT_ERRORS = (RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError,
                             zipfile.BadZipFile)


def pickled_class_error(path: str | os.PathLike, err: BaseException, task_class: str | None = None
                        ) -> CheckpointError | None:
    """The one-line :class:`CheckpointError` for a checkpoint that ``torch.load(weights_only=True)`` refuses
    because it holds a pickled Python object (a selector class that a subclass's ``save_hyperparameters()``
    stored as given, before ldrop kept its hyper-parameters serialisable, or anything else); ``task_class``: the
    class whose ``load_from_checkpoint`` was called (none: a command). ``None`` for another error."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    if found is None:
        return None
    why = (" (a subclass's save_hyperparameters() stored the selector class as given)"
           if "selector" in found[1].lower() else "")
    load = (f"{task_class}.load_from_checkpoint(path, weights_only=False)" if task_class else
            "YourTask.load_from_checkpoint(path, weights_only=False) in Python, then save it again with this "
            "ldrop (trainer.save_checkpoint), which stores the selector as its spec")
    return CheckpointError(f"checkpoint {str(path)!r} holds a pickled Python object, {found[1]}{why}, which "
                           f"torch.load(weights_only=True) refuses: if you trust the file, load it with {load}")


def damaged_checkpoint_error(path: str | os.PathLike, err: BaseException) -> CheckpointError:
    """The one-line :class:`CheckpointError` for ``path``, which ``torch.load`` failed to read with ``err`` (one
    that holds a pickled class: :func:`pickled_class_error`)."""
    if (pickled := pickled_class_error(path, err)) is not None:
        return pickled
    if re.search(r"deserialize object on (a )?CUDA device", str(err)):  # a map_location that keeps its device
        return CheckpointError(f"checkpoint {str(path)!r} was saved on a CUDA device, which this machine lacks "
                               "or numbers otherwise: load it with map_location='cpu'")
    path = Path(path)
    size = path.stat().st_size if path.is_file() else None
    if size == 0:
        reason = "the file is empty"
    elif not zipfile.is_zipfile(path):
        reason = f"not a PyTorch checkpoint archive ({size} bytes: truncated, or another kind of file)"
    else:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        reason = f"{type(err).__name__}: {first[:200]}" if first else type(err).__name__
    return CheckpointError(f"checkpoint {str(path)!r} is damaged or not a checkpoint: {reason}")


def check_archive(path: str | os.PathLike, what: str = "checkpoint") -> None:
    """A :class:`CheckpointError` if an entry of the checkpoint archive at ``path`` fails its checksum: bytes
    changed inside the file after it was written, which ``torch.load`` does not notice (it loads the changed
    weights). Reads the whole file once; an archive ``torch.load`` cannot open is left to it to name."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return
    if bad is not None:
        raise CheckpointError(f"{what} {str(path)!r} is damaged: its entry {bad!r} fails its checksum (the file "
                              "changed after it was written): copy it again, or use another checkpoint")


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu", weights_only: bool = False,
                         what: str = "checkpoint", mmap: bool = False, verify: bool = True) -> Any:
    """``torch.load`` of a checkpoint (``mmap``: mapped, not read), its checksums verified first (``verify``:
    :func:`check_archive`); ``FileNotFoundError`` or :class:`CheckpointError`."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {str(path)!r}")
    if verify:
        check_archive(path, what)
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only, mmap=mmap)
    except DAMAGED_CHECKPOINT_ERRORS as err:
        raise damaged_checkpoint_error(path, err) from err
    except OSError as err:
        if err.filename is not None:  # the file itself cannot be read (permissions, I/O): an OS error
            raise
        raise damaged_checkpoint_error(path, err) from err  # torch's reader gave up inside the file (truncated)


def check_new_folder(out_dir: str | os.PathLike, error: type[Exception] = FileExistsError) -> Path:
    """``out_dir`` as a path if it is new or an empty folder, else ``error`` (one line)."""
    out_dir = Path(out_dir)
    blocker = next((parent for parent in out_dir.parents if parent.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise error(f"{str(out_dir)!r} cannot be made: {str(blocker)!r} is a file, not a folder")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise error(f"{str(out_dir)!r} already exists and is not an empty folder: choose a new folder")
    return out_dir


#: The folders this process has claimed (:func:`claim_folder`): ``(lock file, its open handle, folders it made)``.
_CLAIMS: list[tuple[Path, Any, list[Path]]] = []
#: The lock file beside a claimed folder ``<name>``, named ``.<name><CLAIM_SUFFIX>`` (it holds the claiming
#: process's id, for the message): outside the folder, which may have to be empty (Lightning warns about a
#: checkpoint folder that is not).
CLAIM_SUFFIX = ".ldrop-run.pid"


def claim_folder(folder: str | os.PathLike, what: str, error: type[Exception] = FileExistsError) -> None:
    """Claim ``folder`` for this process until :func:`release_claims` (or its exit): raises ``error`` naming the
    process if another one holds it. The claim is an advisory lock (``flock``) on a hidden file beside the folder,
    which the system releases when the process ends, killed or not; on a filesystem without locks (or a system
    without ``flock``) there is no claim. The folders this makes are removed again on release if left empty."""
    folder = Path(folder).absolute()
    lock = folder.parent / f".{folder.name}{CLAIM_SUFFIX}"
    if any(claimed == lock for claimed, _, _ in _CLAIMS):
        return
    try:
        import fcntl
    except ImportError:
        return
    made = missing_folders(folder.parent)
    folder.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(10):
        handle = open(lock, "a+", encoding="utf-8")  # noqa: SIM115 - held open for as long as the claim
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read(32).strip()
            handle.close()
            _remove_empty(made)
            raise error(f"{folder} is in use by another {what} (process {holder if holder.isdigit() else '?'}) "
                        f"that writes there: wait for it, or give this one its own folder") from None
        except OSError:  # a filesystem without locks
            handle.close()
            return
        try:  # the file this locked is still the one at that path (not one a releasing claim just removed)
            same = os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            _CLAIMS.append((lock, handle, made))
            return
        handle.close()
    raise error(f"{folder}: could not claim it for this {what} (others keep claiming it)")


def release_claims() -> None:
    """Release every folder this process claimed (and remove the folders the claims made that are left empty)."""
    while _CLAIMS:
        lock, handle, made = _CLAIMS.pop()
        with contextlib.suppress(OSError):
            lock.unlink()  # while still locked: a process that opened it before retries on the new file
        handle.close()
        _remove_empty(made)


atexit.register(release_claims)


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and each of its parents that does not exist yet (what writing there creates), deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


@contextlib.contextmanager
def staged_folder(out_dir: str | os.PathLike, error: type[Exception] = FileExistsError) -> Iterator[Path]:
    """A hidden sibling folder to write into, renamed to ``out_dir`` when the block succeeds, else removed: the
    folder appears complete or not at all. ``error`` (one line) if ``out_dir`` is a file or a non-empty folder."""
    out_dir = check_new_folder(out_dir, error)
    made: list[Path] = []  # the parents this call made (not another process's), removed again if it fails
    try:
        for parent in reversed(out_dir.parents):
            with contextlib.suppress(FileExistsError):
                parent.mkdir()
                made.insert(0, parent)
        staging = _new_hidden_sibling(out_dir)
    except OSError as err:
        _remove_empty(made)
        raise OSError(err.errno, err.strerror, str(out_dir)) from err  # named as asked, not the hidden sibling
    for stale in out_dir.parent.glob(f".{glob.escape(out_dir.name)}.pid*.*"):  # a killed run's, not a running one's
        pid = re.fullmatch(rf"\.{re.escape(out_dir.name)}\.pid(\d+)\..+", stale.name)
        if stale.is_dir() and pid and not _running(int(pid[1])):
            shutil.rmtree(stale, ignore_errors=True)
            log.info("removed %s, the staging folder of an interrupted run", stale)
    try:
        yield staging
        try:
            if out_dir.exists():
                out_dir.rmdir()  # empty, checked above
            os.replace(staging, out_dir)
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise
            raise error(f"{str(out_dir)!r} was written by another process while this one staged its files (kept "
                        "none of them): give each its own folder") from err
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(made)
        # a full disk names the folder asked for (and the file in it), not the hidden staging folder (gone now)
        raise_if_disk_full(err, _as_written(err, staging, out_dir), out_dir)
        raise


def _as_written(err: BaseException, staging: Path, out_dir: Path) -> Path | None:
    """The file of ``out_dir`` that ``err`` names in ``staging`` (as the failed write named it), if any."""
    for seen in exception_chain(err):
        name = getattr(seen, "filename", None)
        if isinstance(name, str) and Path(name) != staging and Path(name).is_relative_to(staging):
            return out_dir / Path(name).relative_to(staging)
    return None


def _new_hidden_sibling(out_dir: Path) -> Path:
    """A new folder ``.<name>.pid<this process>.<random>`` beside ``out_dir``, made by ``mkdir``, not ``mkdtemp``
    (owner-only): it gets what any new folder there gets (the umask, a setgid group, default ACLs)."""
    while True:
        folder = out_dir.parent / f".{out_dir.name}.pid{os.getpid()}.{uuid.uuid4().hex[:8]}"
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
            return folder


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders that are empty, deepest first (those a failed block made, left as they were)."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()
