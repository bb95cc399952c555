"""Saving and loading a place map folder (``manifest.json``, ``index.faiss``, ``places.sqlite``).

Saving checks what it writes as loading would and renames a complete, fsynced folder into place, so
a process killed at any moment leaves the old map or the new one (:mod:`vpr_ros.maps.storage`), with
one writer at a time (:mod:`vpr_ros.maps.locking`). Loading reads the folder as untrusted input:
manifest, sizes, checksums, counts and index contents (:mod:`vpr_ros.maps.index_checks`) are checked
before any query.
"""

from __future__ import annotations

import errno
import glob
import itertools
import json
import logging
import math
import os
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from vpr_ros.bags.geodesy import enu_origin_of
from vpr_ros.errors import CorruptMapError, MapError, MapSaveError
from vpr_ros.io.files import left_by_dead_process, temporary_beside
from vpr_ros.maps import storage
from vpr_ros.maps.index_checks import check_contents
from vpr_ros.maps.index_kinds import IndexKind, new_index
from vpr_ros.maps.locking import lock_map
from vpr_ros.maps.manifest import (
    INDEX_FILE,
    MANIFEST,
    PLACES_FILE,
    MapInfo,
    check_model,
    manifest_digest,
    manifest_of,
    parse_manifest,
    read_info,
)
from vpr_ros.types import NS_PER_S, ModelIdentity, ns_to_pair

if TYPE_CHECKING:
    from vpr_ros.maps.place_map import PlaceMap

LOG = logging.getLogger(__name__)


def save(pm: PlaceMap, path: str | os.PathLike) -> None:
    """Write the map atomically: a complete copy beside ``path``, checked as ``load`` checks a map, fsynced,
    then renamed into place. A path that is a symbolic link saves into the link's target and stays a link.
    The save holds the map's write lock (:mod:`vpr_ros.maps.locking`): MapLockedError while another process
    writes the map. Any failure is a MapSaveError; the map in memory and the saved map stay intact."""
    path = Path(path)
    try:
        _save(pm, storage.save_target(path))
    except MapSaveError:
        raise
    except CorruptMapError as exc:  # the loader would refuse what is in memory: keep the saved map instead
        raise MapSaveError(f"saving the map to {path} failed: loading it would fail ({exc}); the previous "
                           "saved map is untouched") from exc
    except (OSError, sqlite3.Error, RuntimeError) as exc:  # disk full, permissions, faiss I/O
        raise MapSaveError(f"saving the map to {path} failed ({type(exc).__name__}: {exc}); the map in "
                           "memory is intact and the previous saved map is untouched") from exc


def _save(pm: PlaceMap, path: Path) -> None:
    if path.exists() and not (path / MANIFEST).is_file() and (not path.is_dir() or any(path.iterdir())):
        # a file or a folder of other things: replacing it would delete them (it would become path.bak)
        raise FileExistsError(errno.EEXIST, "something other than a place map is in the way", str(path))
    storage.io_step("mkdir", path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    with lock_map(path):
        tmp = temporary_beside(path)
        shutil.rmtree(tmp, ignore_errors=True)
        for stale in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
            if left_by_dead_process(stale):  # a save killed part-way
                shutil.rmtree(stale, ignore_errors=True)
        storage.io_step("mkdir", tmp)
        tmp.mkdir()
        try:
            _write(pm, tmp)
            with _SWAPPING:  # two threads of one process saving one path: one swap after the other
                _swap(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _write(pm: PlaceMap, tmp: Path) -> None:
    """The map as a complete folder ``tmp``, fsynced, after the loader's own checks of what it holds."""
    with pm.guard:
        manifest = manifest_of(pm)
        _check_index(pm, parse_manifest(tmp, json.loads(json.dumps({**manifest, "files": _UNWRITTEN}))))
        check_contents(pm.index, tmp / INDEX_FILE)
        storage.io_step("write", tmp / INDEX_FILE)
        faiss.write_index(pm.index, str(tmp / INDEX_FILE))
        storage.fsync_file(tmp / INDEX_FILE)
        _write_places(pm, tmp / PLACES_FILE)
    manifest["files"] = {name: storage.file_info(tmp / name) for name in (INDEX_FILE, PLACES_FILE)}
    manifest["manifest_sha256"] = manifest_digest(manifest)
    text = json.dumps(manifest, indent=1)
    parse_manifest(tmp, json.loads(text))  # e.g. a calibration out of range: refused here, not at the next load
    storage.write_synced(tmp / MANIFEST, text.encode())
    storage.fsync_dir(tmp)


def _swap(tmp: Path, path: Path) -> None:
    """Put the complete folder ``tmp`` at ``path``; the old map waits in ``path.bak`` between the renames."""
    backup = path.with_name(f"{path.name}.bak")
    if backup.exists() and path.exists():
        storage.io_step("remove", backup)
        shutil.rmtree(backup)  # left over from an interrupted save; path is complete
    if path.exists():
        storage.io_step("rename", path)
        os.replace(path, backup)  # a crash from here on: load() falls back to the backup
    storage.io_step("rename", tmp)
    os.replace(tmp, path)
    try:
        storage.fsync_dir(path.parent)
    except OSError as exc:
        raise MapSaveError(f"the map was written to {path}, but the disk did not confirm it ({exc}); save "
                           "again to be sure") from exc
    try:
        storage.io_step("remove", backup)
        shutil.rmtree(backup, ignore_errors=True)
    except OSError as exc:  # the new map is saved; the next save removes the backup
        LOG.warning("could not remove %s: %s", backup, exc)


def _write_places(pm: PlaceMap, file: Path) -> None:
    c = pm.cols
    rows = []
    for pid in range(c.n):
        pose = c.pose[pid]
        has = not np.isnan(pose[0])
        row = (pid, *ns_to_pair(c.ns[pid]), c.strings[c.frame[pid]], *(pose.tolist() if has else [None] * 7),
               c.strings[c.pose_frame[pid]] if has else None, c.strings[c.source[pid]], int(not c.alive[pid]),
               int(pid in pm.tombstones), c.strings[c.camera[pid]])
        if why := _bad_place(*row[1:4], list(row[4:11]), *row[11:15]):  # what the loader would refuse
            raise CorruptMapError(f"place {pid} has {why}")
        rows.append(row)
    storage.io_step("write", file)
    con = sqlite3.connect(file)
    try:
        con.executescript(
            "CREATE TABLE places (id INTEGER PRIMARY KEY, sec INTEGER, nanosec INTEGER, frame_id TEXT,"
            " px REAL, py REAL, pz REAL, qx REAL, qy REAL, qz REAL, qw REAL, pose_frame TEXT,"
            " source TEXT, removed INTEGER, hidden INTEGER, camera TEXT);"
            "CREATE TABLE local_features (id INTEGER PRIMARY KEY, data BLOB);"
        )
        con.executemany("INSERT INTO places VALUES (" + ",".join("?" * 16) + ")", rows)
        con.executemany("INSERT INTO local_features VALUES (?, ?)", pm.local_features.items())
        con.commit()
    finally:
        con.close()
    storage.fsync_file(file)


def load(cls: type[PlaceMap], path: str | os.PathLike, model_id: ModelIdentity | None = None) -> PlaceMap:
    """Open a saved map, verified whole, and against ``model_id`` when given: every damage is a MapError or
    MissingFileError, never a wrong answer. A process that will save it again holds its write lock
    (:func:`vpr_ros.maps.locking.lock_map`) from before loading until it has saved."""
    return storage.read_consistently(Path(path), MANIFEST, lambda folder: _load(cls, folder, model_id))


def _load(cls: type[PlaceMap], folder: storage.Folder, model_id: ModelIdentity | None) -> PlaceMap:
    info = read_info(folder)
    check_model(info.model, model_id, info.path)
    _check_files(folder, info)
    pm = cls(info.dim, IndexKind.parse(info.index), info.model)
    try:
        pm.index = faiss.read_index(str(folder.file(INDEX_FILE)))
    except (RuntimeError, MemoryError) as exc:
        raise CorruptMapError(f"{info.path / INDEX_FILE} cannot be read: {str(exc).splitlines()[0]}") from exc
    pm.trained = info.trained
    _read_places(pm, folder.file(PLACES_FILE), info.path / PLACES_FILE, info.next_id)
    # maps saved before the manifest had enu_origin carry it in their ``enu:lat,lon,alt`` frame ids
    pm.enu_origin = info.enu_origin or next(filter(None, map(enu_origin_of, pm.cols.strings)), None)
    pm.calibration = info.calibration
    _check_index(pm, info)
    check_contents(pm.index, info.path / INDEX_FILE)
    return pm


def exists(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a saved map, or its ``.bak`` does after an interrupted save."""
    path = Path(path)
    return (path / MANIFEST).is_file() or (storage.backup_of(path) / MANIFEST).is_file()


def info(path: str | os.PathLike) -> MapInfo:
    """The manifest of a saved map (falling back to ``.bak`` after an interrupted save), every field
    type- and range-checked; the index and places are not read. The one reader of manifests, so
    ``load``, ``map-info``, ``query`` and the node agree on which folder a map is and what it says."""
    return storage.read_consistently(Path(path), MANIFEST, read_info)


def _read_places(pm: PlaceMap, file: Path, shown: Path, next_id: int) -> None:
    """Places and local features from ``file`` (named ``shown`` in messages). The database is untrusted: only
    real tables are read (a view or virtual table could compute rows without end), with SQLite's defensive
    settings, at most ``next_id`` + 1 rows and a bounded amount of work."""
    try:
        damage = _sqlite_size_error(file)
    except OSError as exc:
        raise MapError(f"{shown} cannot be read: {exc.strerror or exc}") from exc
    if damage:
        raise CorruptMapError(f"{shown} is not a whole places database ({damage}); restore the map or rebuild it")
    try:
        # immutable: read exactly the bytes the checksum covered, never a leftover journal, and create no files
        con = sqlite3.connect(f"{file.absolute().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            rows, features = _select_places(con, shown, next_id)
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise CorruptMapError(f"{shown} is not a readable places database: {exc}") from exc
    c = pm.cols
    c.grow(len(rows))
    for pid, sec, nsec, frame, *pose, pose_frame, source, removed, hidden, camera in rows:
        if type(pid) is not int or pid != c.n:
            raise CorruptMapError(f"{shown}: place ids are not contiguous at {pid!r} (expected {c.n})")
        why = _bad_place(sec, nsec, frame, pose, pose_frame, source, removed, hidden)
        if not why and not isinstance(camera, str):
            why = f"camera {camera!r} that is not text"
        if why:
            raise CorruptMapError(f"{shown}: place {pid} has {why}; restore the map or rebuild it")
        c.ns[pid], c.alive[pid] = sec * NS_PER_S + nsec, not removed
        c.frame[pid], c.source[pid], c.camera[pid] = c.intern(frame), c.intern(source), c.intern(camera)
        c.pose[pid] = np.nan if pose[0] is None else pose
        c.pose_frame[pid] = c.intern(pose_frame or "")
        if hidden:
            pm.tombstones.add(pid)
        c.n += 1
    for pid, blob in features:
        if type(pid) is not int or not 0 <= pid < c.n or not c.alive[pid] or not isinstance(blob, bytes):
            raise CorruptMapError(f"{shown}: local features stored for {pid!r}, which is no place of the map "
                                  f"(or not a blob); restore the map or rebuild it")
    pm.local_features = {pid: bytes(blob) for pid, blob in features}


_SWAPPING = threading.Lock()
_UNWRITTEN = {name: {"bytes": 0, "sha256": "0" * 64} for name in (INDEX_FILE, PLACES_FILE)}  # checked before writing
SQLITE_STEPS_PER_PLACE = 200  # progress-handler calls (of 1000 VM steps) a read may take per place, plus a base


def _select_places(con: sqlite3.Connection, shown: Path, next_id: int) -> tuple[list, list]:
    """Rows of the places and local_features tables, read defensively (see ``_read_places``)."""
    con.execute("PRAGMA trusted_schema = OFF")  # no functions with side effects from the schema
    calls, budget = itertools.count(), SQLITE_STEPS_PER_PLACE * (next_id + 1000)
    con.set_progress_handler(lambda: next(calls) >= budget, 1000)  # true: sqlite interrupts the statement
    tables = dict(con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name IN "
                              "('places', 'local_features')"))
    columns: dict[str, set[str]] = {}
    for table in ("places", "local_features"):
        if not str(tables.get(table, "")).upper().startswith("CREATE TABLE"):  # a view, a virtual table, none
            raise CorruptMapError(f"{shown} is damaged: it has no table {table!r}; restore the map or rebuild it")
        info = con.execute(f"PRAGMA table_xinfo({table})").fetchall()
        if any(row[6] != 0 for row in info):  # generated or hidden columns compute values on reading
            raise CorruptMapError(f"{shown} is damaged: table {table!r} has computed columns; restore the map or "
                                  "rebuild it")
        columns[table] = {row[1] for row in info}
    camera = "camera" if "camera" in columns["places"] else "''"  # maps saved before cameras had names
    limit = min(next_id, 1 << 40) + 1  # one more than the manifest allows, to notice extra rows
    rows = con.execute(f"SELECT {_PLACE_COLUMNS}, {camera} FROM places ORDER BY id LIMIT ?", (limit,)).fetchall()
    features = con.execute("SELECT id, data FROM local_features ORDER BY id LIMIT ?", (limit,)).fetchall()
    if len(rows) > next_id or len(features) > next_id:
        raise CorruptMapError(f"{shown} is damaged: more rows than the {next_id} places its manifest lists; restore "
                              "the map or rebuild it")
    return rows, features


def _check_files(folder: storage.Folder, info: MapInfo) -> None:
    """Sizes first (against the manifest and a bound from its counts: a 20 GB sparse file is refused at once, not
    hashed for a minute), then the SHA-256 of each data file."""
    path = info.path
    for name, expected in info.files.items():
        file = folder.file(name)
        try:
            size = os.stat(file).st_size if file.is_file() else None
            bound = _size_bound(name, info)
            what = "missing" if size is None else f"{size:,} bytes, expected {expected['bytes']:,}" \
                if size != expected["bytes"] else f"{size:,} bytes, more than a map of these counts can hold" \
                if size > bound else "checksum mismatch" if storage.file_info(file) != expected else ""
        except OSError as exc:
            raise MapError(f"{path / name} cannot be read: {exc.strerror or exc}") from exc
        if what:
            raise CorruptMapError(f"{path / name} is truncated or damaged ({what}); restore the map or rebuild it")


def _size_bound(name: str, info: MapInfo) -> int:
    """The most bytes a data file of a map with ``info``'s counts can take (generously: damage is far beyond)."""
    if name == PLACES_FILE:  # a row of stamps, pose and names, plus verification features of up to a few MB
        return (16 << 20) + info.next_id * (4 << 20)
    kind = IndexKind.parse(info.index) if info.trained else IndexKind("flat")
    reduced = kind.pca_dim or info.dim
    fixed = (1 << 20) + 4 * info.dim * (kind.pca_dim or 0) + (4 * 16384 * reduced + 1024 * info.dim) * kind.ivf
    return fixed + info.index_ntotal * (4 * info.dim + 2048)


def _sqlite_size_error(file: Path) -> str:
    """Why a database file cannot be whole ("" when it can): sqlite reads a cut-off last page as zeros without
    complaint, but its header records the page size and count."""
    with open(file, "rb") as f:
        header = f.read(100)
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        return "no SQLite 3 header"
    page = int.from_bytes(header[16:18], "big")
    page, pages, size = 65536 if page == 1 else page, int.from_bytes(header[28:32], "big"), file.stat().st_size
    if header[24:28] == header[92:96] and pages and size != page * pages:  # the page count is valid (sqlite >= 3.7)
        return f"{size:,} bytes where its header says {pages} pages of {page:,}"
    return ""


_PLACE_COLUMNS = "id, sec, nanosec, frame_id, px, py, pz, qx, qy, qz, qw, pose_frame, source, removed, hidden"
_INT64 = (-(2**63), 2**63)


def _bad_place(sec: object, nsec: object, frame: object, pose: list, pose_frame: object, source: object,
               removed: object, hidden: object) -> str:
    """Why a places row cannot be a place this code wrote ("" when it can): sqlite stores any type in
    any column, so a damaged or foreign database must not reach numpy casts or string tables."""
    if type(sec) is not int or type(nsec) is not int or not 0 <= nsec < NS_PER_S:
        return f"stamp ({sec!r}, {nsec!r}) that is no (sec, nanosec) pair"
    if not _INT64[0] <= sec * NS_PER_S + nsec < _INT64[1]:
        return f"stamp second {sec} out of range"
    if not isinstance(frame, str) or not isinstance(source, str):
        return f"frame_id {frame!r} / source {source!r} that are not text"
    if any(v is None for v in pose):
        if any(v is not None for v in pose) or pose_frame not in (None, ""):
            return "a partial pose"
    elif not all(type(v) in (int, float) and math.isfinite(v) for v in pose) or not isinstance(pose_frame, str):
        return f"pose {pose!r} in frame {pose_frame!r} that is no finite pose"
    if removed not in (0, 1) or hidden not in (0, 1) or type(removed) is not int or type(hidden) is not int:
        return f"removed={removed!r} hidden={hidden!r} flags that are not 0/1"
    if hidden and not removed:
        return "a hidden flag without removed (only removed places are hidden)"
    return ""


def _check_index(pm: PlaceMap, info: MapInfo) -> None:
    """The index read must be the one the places describe: keyed by their ids, cosine, of the manifest's size."""
    index, path = pm.index, info.path
    if not hasattr(index, "id_map") or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise CorruptMapError(f"{path / INDEX_FILE} is no place index (not keyed by place id or not cosine); "
                              "restore the map or rebuild it")
    if not _has_structure(index, IndexKind.parse(info.index) if info.trained else IndexKind("flat"), pm.dim):
        raise CorruptMapError(f"{path / INDEX_FILE} is no {info.index if info.trained else 'untrained'} index, "
                              f"but {MANIFEST} field 'index' says {info.index}; the map is inconsistent, rebuild it")
    if index.d != pm.dim:
        raise CorruptMapError(f"{path / INDEX_FILE} holds {index.d}-d vectors, but {MANIFEST} field 'dim' says "
                              f"{pm.dim}; the map is inconsistent, rebuild it")
    expected = len(pm) + len(pm.tombstones)
    if index.ntotal != expected:
        hidden = f" ({len(pm.tombstones)} of them removed but kept hidden)" if pm.tombstones else ""
        raise CorruptMapError(f"{path / INDEX_FILE} holds {index.ntotal} vectors but {PLACES_FILE} lists {expected} "
                              f"places{hidden}; the map is inconsistent, rebuild it")
    for field, stored, listed in (("count", info.count, len(pm)), ("index_ntotal", info.index_ntotal, expected),
                                  ("next_id", info.next_id, pm.cols.n)):
        if stored != listed:
            raise CorruptMapError(f"{path / MANIFEST} field {field!r} is {stored}, but {PLACES_FILE} and "
                                  f"{INDEX_FILE} hold {listed}; the map is inconsistent, rebuild it")
    stored = np.sort(faiss.vector_to_array(index.id_map))
    listed = np.union1d(pm.ids(), np.fromiter(pm.tombstones, np.int64, len(pm.tombstones)))
    if not np.array_equal(stored, listed):
        raise CorruptMapError(f"{path}: the index holds other place ids than {PLACES_FILE} lists; rebuild the map")


def _has_structure(index: faiss.Index, kind: IndexKind, dim: int) -> bool:
    """Whether ``index`` is built like a new index of ``kind`` (same faiss classes, pre-transforms unwrapped)."""
    reference = new_index(kind, dim)  # kept alive: it owns the inner indexes compared below
    want, have = faiss.downcast_index(reference.index), faiss.downcast_index(index.index)
    while isinstance(have, type(want)):
        if not isinstance(want, faiss.IndexPreTransform):
            return True
        want, have = faiss.downcast_index(want.index), faiss.downcast_index(have.index)
    return False
