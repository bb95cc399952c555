"""One writer per place map: an OS file lock (``flock``) on ``<map>.lock`` beside the map folder.

A writer holds the lock from loading the map to saving it (``build-map --append``, ``calibrate``, a slam
node for its whole run), so no two writers add places to one map and silently drop each other's. The
file sits beside the folder because a save renames a new folder into place. A second writer is refused
at once (no hang behind a forgotten node) with a :class:`MapLockedError` naming the holder, who writes
itself into the file. The OS drops the lock when its process ends, even by kill -9, so a lock is never
stale. Readers take no lock (a save swaps folders atomically). Within one process the lock is re-entrant.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path

from vpr_ros.errors import MapSaveError

LOG = logging.getLogger(__name__)


class MapLockedError(MapSaveError):
    """Another process is writing this map (it holds the map's lock); nothing was read or written."""


class MapLock:
    """A held write lock of one map path; ``release()`` (or leaving a ``with`` block) lets it go."""

    def __init__(self, lock_file: Path) -> None:
        self.file = lock_file
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            _release(self.file)

    def __enter__(self) -> MapLock:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


class _Held:
    def __init__(self, fd: int) -> None:
        self.fd, self.count = fd, 1


_HELD: dict[Path, _Held] = {}  # lock files this process holds, with how many MapLocks share each
_GUARD = threading.Lock()


def lock_file_of(map_path: str | os.PathLike) -> Path:
    """The lock file of a map: ``<name>.lock`` beside the folder the path resolves to (a map reached through a
    symbolic link shares the lock of its target)."""
    target = Path(os.path.realpath(map_path))
    return target.with_name(f"{target.name}.lock")


def lock_map(map_path: str | os.PathLike) -> MapLock:
    """Take the write lock of the map at ``map_path`` (which need not exist yet) and keep it until released.

    Call it before loading a map that will be saved again. Raises :class:`MapLockedError` naming the holder
    when another process writes the map, :class:`MapSaveError` when the lock file cannot be created.
    """
    file = lock_file_of(map_path)
    with _GUARD:
        if file in _HELD:
            _HELD[file].count += 1
        else:
            _HELD[file] = _Held(_acquire(file, Path(map_path)))
    return MapLock(file)


def _acquire(file: Path, map_path: Path) -> int:
    """An fd of ``file`` holding its exclusive flock, with this process described in the file."""
    for _ in range(10):  # the holder unlinks the file on release: lock the file that is still at the path
        try:
            file.parent.mkdir(parents=True, exist_ok=True)  # a new map's folder may not exist yet
            fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise MapSaveError(f"cannot lock the map {map_path} for writing: {file}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise MapLockedError(f"the map {map_path} is being written by {holder}; a map has one writer at a "
                                     f"time: let it finish (or stop it) and try again") from exc
            raise MapSaveError(f"cannot lock the map {map_path} for writing: {exc.strerror or exc}") from exc
        try:
            same = os.fstat(fd).st_ino == os.stat(file, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if same:
            _describe_holder(fd)
            return fd
        os.close(fd)  # released and unlinked between our open and our lock: try the new file
    raise MapSaveError(f"cannot lock the map {map_path} for writing: {file} keeps being replaced")


def _describe_holder(fd: int) -> None:
    """Write who holds the lock into the lock file (best effort: a full disk must not stop the writer)."""
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300],
              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    except OSError as exc:
        LOG.debug("could not describe the lock holder: %s", exc)


def _holder(fd: int) -> str:
    """The holder as its lock file describes it, for the error message of a refused writer."""
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        return (f"process {int(record['pid'])} on {str(record['host'])[:100]} since {str(record['since'])[:40]} "
                f"({str(record['command'])[:300]!r})")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # being written, or not ours
        return "another process"


def _release(file: Path) -> None:
    with _GUARD:
        held = _HELD.get(file)
        if held is None:
            return
        held.count -= 1
        if held.count:
            return
        del _HELD[file]
        try:
            os.unlink(file)  # while still locked: the next writer creates and locks a fresh file
        except OSError:
            pass
        os.close(held.fd)
