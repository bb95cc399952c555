"""How a place map folder meets the file system: crash-safe writing steps and consistent reading.

A save renames a complete new folder into place (the old one waits in ``<name>.bak`` between the two
renames); every step that can fail on a real disk first calls :func:`io_step`, which tests replace.
A reader sees the old map or the new one, never a mix: :class:`Folder` reads every file through the
directory it opened (``/proc/self/fd/N/<file>``), and :func:`read_consistently` reads again when a
save removed that folder meanwhile.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from vpr_ros.errors import MapError, MissingFileError, VprError
from vpr_ros.io.files import file_sha256, fsync

LOG = logging.getLogger(__name__)

T = TypeVar("T")
READ_TRIES = 10  # a read retried this often when saves keep replacing the folder under it
_PROC_FD = Path("/proc/self/fd")  # Linux: an open directory's files by fd, whatever its name is now


def io_step(what: str, target: Path) -> None:
    """Called before each write, fsync, rename and removal of a save (``what`` says which). Does nothing;
    fault-injection tests replace it to fail (ENOSPC, EIO) or to end the process at a chosen step."""


def save_target(path: Path) -> Path:
    """Where a save writes: the target of a symbolic link (so the link stays a link), else ``path``."""
    if not path.is_symlink():
        return path
    target = Path(os.path.realpath(path))
    if target.is_symlink():  # a loop of links
        raise OSError(40, "too many levels of symbolic links", str(path))
    return target


def backup_of(path: Path) -> Path:
    """The ``<name>.bak`` an interrupted save leaves (beside the link's target for a link)."""
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    return target.with_name(f"{target.name}.bak")


class Folder:
    """A map folder opened once; :meth:`file` names its files through the open directory."""

    def __init__(self, path: Path) -> None:
        self.path = path  # for messages: the folder's name when it was opened
        try:
            self._fd: int | None = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except PermissionError:  # a folder that may be entered but not listed: read it by name
            self._fd = None
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise MissingFileError(f"no place map at {path}") from exc
        except OSError as exc:  # a loop of links, an I/O error
            raise MapError(f"{path} cannot be read: {exc.strerror or exc}") from exc
        try:
            stat = os.fstat(self._fd) if self._fd is not None else os.stat(path)
        except OSError as exc:
            raise MapError(f"{path} cannot be read: {exc.strerror or exc}") from exc
        self._identity = (stat.st_dev, stat.st_ino)
        self.pinned = self._fd is not None and _PROC_FD.is_dir()  # files come from this very folder
        self._root = _PROC_FD / str(self._fd) if self.pinned else path

    def file(self, name: str) -> Path:
        return self._root / name

    def replaced(self) -> bool:
        """Whether the folder's name no longer leads to it (a save renamed or removed it)."""
        try:
            stat = os.stat(self.path)
        except OSError:
            return True
        return (stat.st_dev, stat.st_ino) != self._identity

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def open_folder(path: Path, manifest: str) -> Folder:
    """The map at ``path``, or its ``.bak`` when only that holds a ``manifest`` (a save interrupted between its
    two renames)."""
    backup = backup_of(path)
    if not (path / manifest).is_file() and (backup / manifest).is_file():
        LOG.warning("%s is missing after an interrupted save; using the previous map %s", path, backup)
        path = backup
    return Folder(path)


def read_consistently(path: Path, manifest: str, read: Callable[[Folder], T]) -> T:
    """``read`` of the map folder at ``path``; read again when a save replaced the folder while it was read, so
    a reader sees a whole map, the old or the new one. A damaged map fails at once (its folder stays put)."""
    for attempt in range(READ_TRIES):
        last = attempt == READ_TRIES - 1
        try:
            folder = open_folder(path, manifest)
        except MissingFileError:
            if last or not (path.is_dir() or backup_of(path).is_dir()):  # none there now either: no map
                raise
            continue
        try:
            result = read(folder)
            if folder.pinned or not folder.replaced():
                return result
        except VprError:
            # the backup of a save in progress is removed file by file once the new map is in place: a read
            # that fails there is read again (from the new map), as is one of a folder a save replaced
            if last or not (folder.replaced() or folder.path == backup_of(path)):
                raise
        finally:
            folder.close()
        time.sleep(0.002 * attempt)  # let the save finish its renames
    raise MissingFileError(f"the map at {path} kept being replaced while it was read ({READ_TRIES} tries)")


def file_info(file: Path) -> dict:
    return {"bytes": file.stat().st_size, "sha256": file_sha256(file)}


def write_synced(file: Path, data: bytes) -> None:
    io_step("write", file)
    with open(file, "wb") as f:
        f.write(data)
        f.flush()
        io_step("fsync", file)
        os.fsync(f.fileno())


def fsync_file(file: Path) -> None:
    io_step("fsync", file)
    fsync(file)


def fsync_dir(folder: Path) -> None:
    io_step("fsync", folder)
    fsync(folder)
