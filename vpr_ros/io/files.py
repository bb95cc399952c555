"""Output files written whole or not at all, and only over regular files.

Every result file (descriptors, plots, recall tables, exported checkpoints) is written to a
temporary file beside its target, flushed to disk and renamed over it, so a crash or a full disk
never leaves a half-written file under the real name. A rename replaces whatever the name points
at, so a target that exists and is not a regular file (a device such as ``/dev/null``, a folder, a
FIFO, a socket) is refused before anything is written: replacing ``/dev/null`` with a PNG breaks the
machine, and a folder cannot be replaced by a file anyway. A symbolic link is followed: its target
gets the new content and the link stays.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from vpr_ros.errors import InputError

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str:
    """What an ``st_mode`` is, in words (for messages)."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def output_path(path: str | os.PathLike) -> Path:
    """``path`` as a file to (re)write: the target of a symbolic link; an InputError when it exists and is
    not a regular file, or when its folder cannot be created. Cheap: commands call it before slow work."""
    path = Path(path)
    target = Path(os.path.realpath(path))
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    if mode is not None and not stat.S_ISREG(mode):
        raise InputError(f"{path} is {file_kind(mode)}, not a regular file: refusing to replace it; "
                         "name a file to write")
    if target.parent.exists() and not target.parent.is_dir():
        raise InputError(f"cannot write {path}: {target.parent} is not a folder")
    return target


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; on leaving the block it is fsynced and renamed over
    ``path`` (see :func:`output_path` for what is refused). On an error the temporary file is removed and
    ``path`` keeps its old content."""
    target = output_path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc} ({exc.filename or target.parent})") from exc
    tmp = temporary_beside(target)
    try:
        yield tmp
        fsync(tmp)
        output_path(target)  # again: the target may have changed while the file was written
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # the rename itself on disk; not every file system can
        fsync(target.parent)


def fsync(path: str | os.PathLike) -> None:
    """Flush a file's or a folder's content (a folder's: the names in it, after a rename) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_beside(path: Path) -> Path:
    """``.<name>.tmp-<pid>-<thread>`` beside ``path``: where this thread writes ``path`` before renaming it."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")


def left_by_dead_process(tmp: Path) -> bool:
    """Whether the process named in a :func:`temporary_beside` name has ended (what it wrote is left over)."""
    try:
        os.kill(int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, IndexError, OSError):
        return False
    return False


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object] | bytes) -> Path:
    """Write ``path`` atomically from bytes or with ``write(tmp_path)``; return the path written."""
    with atomic_output(path) as tmp:
        if isinstance(write, bytes):
            tmp.write_bytes(write)
        else:
            write(tmp)
    return Path(path)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, streamed in 4 MiB pieces (checkpoints can be several GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()
