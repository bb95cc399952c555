"""A map of places: global descriptors in a FAISS index plus per-place metadata, saved safely.

On disk a map is a folder: ``manifest.json`` (format, descriptor size, index kind, counts, the
model that built it, size and SHA-256 of every file and of the manifest itself), ``index.faiss``
and ``places.sqlite``.
Saving checks what it is about to write as loading would, writes a complete new folder beside the
old one, fsyncs it and renames it into place, so a process killed at any moment leaves a loadable
map (the old one or the new one), and a reader meanwhile reads one of them whole
(:mod:`vpr_ros.maps.storage`). One process writes a map at a time (:mod:`vpr_ros.maps.locking`).
Loading verifies the manifest, the file sizes and checksums, the counts and what the index holds
(:mod:`vpr_ros.maps.index_checks`) before answering any query.

Place ids are assigned in insertion order and never reused, so "the last N places" and
"places newer than t" are cheap to exclude at query time.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from vpr_ros.errors import CorruptMapError, InputError, MapError, MapSaveError, ModelMismatchError
from vpr_ros.maps import storage
from vpr_ros.maps.index_checks import NORM_TOLERANCE, check_contents
from vpr_ros.maps.index_kinds import IndexKind, new_index, train_index
from vpr_ros.maps.locking import MapLock, lock_map
from vpr_ros.types import NS_PER_S, ModelIdentity, Pose, Stamp, Stamped, ns_to_pair, to_ns

LOG = logging.getLogger(__name__)

FORMAT = "vpr_ros.place_map"
FORMAT_VERSION = 1
MANIFEST, INDEX_FILE, PLACES_FILE = "manifest.json", "index.faiss", "places.sqlite"
MAX_DIM = 1 << 16  # far above any descriptor (SALAD: 8448-d): a larger "dim" is damage, not a model
MAX_MANIFEST_BYTES = 1 << 20  # manifests are ~1 KB; a bigger file is not read into memory

@dataclass(frozen=True)
class Place(Stamped):
    """One stored place. ``source`` says where its image can be read again: ``"<bag path>#<image topic>"``
    for maps built from bags, the image topic for places a live node added, empty when unknown.
    ``camera`` names the camera that saw it on a robot with several (empty for a single camera)."""

    id: int
    stamp_ns: int  # header.stamp of the image, integer nanoseconds
    frame_id: str
    pose: Pose | None
    source: str
    camera: str = ""


@dataclass(frozen=True)
class MapInfo:
    """What a map folder's manifest says, read without loading the index (``vpr-ros map-info``,
    choosing the query input size, deciding whether a map exists)."""

    path: Path  # the folder read: ``path`` itself, or ``path.bak`` after an interrupted save
    version: int
    dim: int
    index: str
    trained: bool
    count: int
    next_id: int
    model: ModelIdentity | None
    enu_origin: tuple[float, float, float] | None  # (lat, lon, alt) of the ENU frame of GNSS poses
    files: dict[str, dict]  # name -> {bytes, sha256} of index.faiss and places.sqlite
    index_ntotal: int  # vectors in the index: places plus removed ones the index cannot delete (HNSW)
    calibration: dict[str, Any] | None = None  # see PlaceMap.calibration


class _Columns:
    """Per-place metadata as growable numpy columns indexed by place id."""

    def __init__(self) -> None:
        self.n = 0
        self.ns = np.zeros(0, np.int64)  # header stamps, integer nanoseconds
        self.alive = np.zeros(0, bool)
        self.pose = np.zeros((0, 7), np.float64)  # NaN row = no pose
        self.frame = np.zeros(0, np.int32)  # index into self.strings
        self.pose_frame = np.zeros(0, np.int32)
        self.source = np.zeros(0, np.int32)
        self.camera = np.zeros(0, np.int32)
        self.strings: list[str] = []
        self._string_ids: dict[str, int] = {}

    def intern(self, text: str) -> int:
        if text not in self._string_ids:
            self._string_ids[text] = len(self.strings)
            self.strings.append(text)
        return self._string_ids[text]

    def grow(self, extra: int) -> None:
        need = self.n + extra
        if need <= len(self.ns):
            return
        cap = max(need, 2 * len(self.ns), 1024)
        for name in ("ns", "alive", "pose", "frame", "pose_frame", "source", "camera"):
            old = getattr(self, name)
            new = np.zeros((cap, *old.shape[1:]), old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)

    @property
    def seconds(self) -> np.ndarray:
        return self.ns[: self.n] / 1e9


class PlaceMap:
    """Places with unit-norm descriptors; ``search`` returns cosine similarities.

    Thread-safe: one lock serialises add, remove, search and save, so a node may add keyframes
    while another thread queries.
    """

    def __init__(self, dim: int, kind: IndexKind, model_id: ModelIdentity | None) -> None:
        self.dim = dim
        self.kind = kind
        self.model_id = model_id
        self.cols = _Columns()
        self.index = new_index(IndexKind("flat") if kind.min_train(dim) else kind, dim)
        self.trained = not kind.min_train(dim)
        self.tombstones: set[int] = set()  # removed places the index cannot delete (HNSW)
        self.local_features: dict[int, bytes] = {}  # optional, for geometric verification
        self.enu_origin: tuple[float, float, float] | None = None  # GNSS maps: origin of their ENU frame
        # The loop-closure threshold calibrated on this map (``vpr-ros calibrate``): ``threshold``,
        # ``target_fpr`` and what it was computed from; the node uses it when no threshold is set.
        self.calibration: dict[str, Any] | None = None
        self._lock = threading.RLock()

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def create(cls, dim: int, index: str = "flat", model_id: ModelIdentity | None = None) -> PlaceMap:
        """An empty map for ``dim``-d descriptors (see :mod:`vpr_ros.maps.index_kinds` for kinds)."""
        if dim < 1:
            raise InputError(f"dim must be positive, got {dim}")
        if model_id is not None and model_id.descriptor_dim != dim:
            raise InputError(f"model makes {model_id.descriptor_dim}-d descriptors, map is {dim}-d")
        return cls(dim, IndexKind.parse(index), model_id)

    def __len__(self) -> int:
        return int(self.cols.alive[: self.cols.n].sum())

    def local_features_of(self, place_id: int) -> bytes | None:
        """The stored local features of a place (for geometric verification), None if it has none."""
        return self.local_features.get(int(place_id))

    # -- adding and removing --------------------------------------------------------------------

    def add(
        self,
        descriptors: np.ndarray,
        stamps: Sequence[Stamp] | None = None,
        poses: Sequence[Pose | None] | None = None,
        frame_ids: Sequence[str] | None = None,
        sources: Sequence[str] | None = None,
        local_features: Sequence[bytes | None] | None = None,
        cameras: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Add places; returns their new ids (int64). Descriptors must be unit vectors.

        ``stamps`` default to 0 s: enough for retrieval, but the loop-closure exclusion window and
        calibration tell places apart by their stamps.
        """
        x = self._check_descriptors(descriptors)
        n = len(x)
        norms = np.linalg.norm(x, axis=1)
        if n and np.abs(norms - 1.0).max() > NORM_TOLERANCE:
            raise InputError(f"descriptors must be unit vectors; got norms {norms.min():.4g} .. {norms.max():.4g}")
        for name, seq in (("stamps", stamps), ("poses", poses), ("frame_ids", frame_ids), ("sources", sources),
                          ("local_features", local_features), ("cameras", cameras)):
            if seq is not None and len(seq) != n:
                raise InputError(f"{name} has {len(seq)} entries for {n} descriptors")
        parsed = [0] * n if stamps is None else [to_ns(s) for s in stamps]
        pose_rows = [None if pose is None else _pose_row(pose) for pose in poses or []]
        for name, texts in (("frame_ids", frame_ids), ("sources", sources), ("cameras", cameras),
                            ("pose frame ids", [pose.frame_id for pose in poses or [] if pose is not None])):
            for text in texts or []:
                _check_text(name, text)
        if any(blob is not None and not isinstance(blob, bytes) for blob in local_features or []):
            raise InputError("local_features must be bytes (or None for a place without them)")
        with self._lock:
            c = self.cols
            ids = np.arange(c.n, c.n + n, dtype=np.int64)
            c.grow(n)
            rows = slice(c.n, c.n + n)
            c.ns[rows] = parsed
            c.alive[rows] = True
            c.frame[rows] = [c.intern(f) for f in frame_ids or [""] * n]
            c.source[rows] = [c.intern(s) for s in sources or [""] * n]
            c.camera[rows] = [c.intern(s) for s in cameras or [""] * n]
            c.pose[rows] = np.nan
            for i, (pose, row) in enumerate(zip(poses or [], pose_rows, strict=True)):
                if pose is not None:
                    c.pose[c.n + i] = row
                    c.pose_frame[c.n + i] = c.intern(pose.frame_id)
            self.index.add_with_ids(x, ids)
            c.n += n
            for pid, blob in zip(ids, local_features or [None] * n, strict=True):
                if blob is not None:
                    self.local_features[int(pid)] = blob
            self._train_if_ready()
        return ids

    def _train_if_ready(self) -> None:
        need = self.kind.min_train(self.dim)
        if self.trained or self.index.ntotal < need:
            return
        ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        vectors = self.index.index.reconstruct_n(0, self.index.ntotal)
        LOG.info("training %s index on %d places", self.kind.name, len(ids))
        self.index = train_index(self.kind, self.dim, vectors, ids)
        self.trained = True

    def remove(self, ids: Sequence[int]) -> int:
        """Remove places by id; returns how many were present."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))  # a repeated id is one removal
        with self._lock:
            c = self.cols
            ids = ids[(ids >= 0) & (ids < c.n)]
            ids = ids[c.alive[ids]]
            c.alive[ids] = False
            for pid in ids:
                self.local_features.pop(int(pid), None)
            try:
                self.index.remove_ids(faiss.IDSelectorBatch(ids))
            except RuntimeError:  # HNSW cannot delete: hide the places instead
                self.tombstones.update(int(i) for i in ids)
        return len(ids)

    # -- queries --------------------------------------------------------------------------------

    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude_newer_than: Stamp | None = None,
        exclude_last: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` places per query: ``(scores [nq, k] float32, ids [nq, k] int64)`` for queries
        ``[nq, D]``; ``(scores [k], ids [k])`` for one query given as a vector ``[D]``.

        Places stamped after ``exclude_newer_than`` and the ``exclude_last`` most recently added
        places are skipped (the loop-closure exclusion window). Missing results are id -1 with
        score -inf.
        """
        if np.ndim(queries) == 1:  # one query vector: results without the query axis
            scores, ids = self.search(np.reshape(queries, (1, -1)), k, exclude_newer_than, exclude_last)
            return scores[0], ids[0]
        q = self._check_descriptors(queries)
        if k < 1:
            raise InputError(f"k must be >= 1, got {k}")
        with self._lock:
            c = self.cols
            blocked = np.zeros(c.n, bool)
            if exclude_newer_than is not None:
                blocked |= c.ns[: c.n] > to_ns(exclude_newer_than)
            if exclude_last > 0:
                alive_ids = np.flatnonzero(c.alive[: c.n])
                blocked[alive_ids[-exclude_last:]] = True
            if self.tombstones:
                blocked[list(self.tombstones)] = True
            extra = int(blocked.sum())
            fetch = min(self.index.ntotal, k + extra)
            if fetch == 0:
                return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
            scores, ids = self.index.search(q, fetch)
        keep = ids >= 0
        keep[keep] = ~blocked[ids[keep]]
        out_s = np.full((len(q), k), -np.inf, np.float32)
        out_i = np.full((len(q), k), -1, np.int64)
        for row in range(len(q)):
            sel = np.flatnonzero(keep[row])[:k]
            out_s[row, : len(sel)] = scores[row, sel]
            out_i[row, : len(sel)] = ids[row, sel]
        return out_s, out_i

    def place(self, place_id: int) -> Place:
        """Metadata of one place; KeyError for unknown or removed ids."""
        c = self.cols
        pid = int(place_id)
        if not 0 <= pid < c.n or not c.alive[pid]:
            raise KeyError(f"no place with id {place_id}")
        row = c.pose[pid]
        pose = None
        if not np.isnan(row[0]):
            pose = Pose(tuple(row[:3].tolist()), tuple(row[3:].tolist()), c.strings[c.pose_frame[pid]])
        return Place(pid, int(c.ns[pid]), c.strings[c.frame[pid]], pose,
                     c.strings[c.source[pid]], c.strings[c.camera[pid]])

    def ids(self) -> np.ndarray:
        """Ids of the places in the map, in insertion order."""
        return np.flatnonzero(self.cols.alive[: self.cols.n]).astype(np.int64)

    def stamps(self) -> np.ndarray:
        """Stamps in seconds, indexed by place id (removed places included)."""
        return self.cols.seconds

    def positions(self) -> np.ndarray:
        """Positions [n, 3] indexed by place id; NaN rows for places without a pose."""
        return self.cols.pose[: self.cols.n, :3].copy()

    def descriptors(self, ids: Sequence[int]) -> np.ndarray:
        """Stored descriptors of ``ids`` as the index holds them (reduced for pca kinds)."""
        with self._lock:
            return np.stack([self.index.reconstruct(int(i)) for i in ids]) if len(ids) else np.zeros((0, self.dim))

    def _check_descriptors(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.atleast_2d(np.asarray(x)), dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise InputError(f"expected descriptors of shape [n, {self.dim}], got {tuple(np.shape(x))}")
        if not np.isfinite(x).all():
            raise InputError("descriptors contain NaN or inf")
        return x

    # -- persistence ----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the map atomically: a complete copy beside ``path``, checked as ``load`` checks a map, fsynced,
        then renamed into place. A path that is a symbolic link saves into the link's target and stays a link.
        The save holds the map's write lock (:mod:`vpr_ros.maps.locking`): MapLockedError while another process
        writes the map. Any failure is a MapSaveError; the map in memory and the saved map stay intact."""
        path = Path(path)
        try:
            self._save(storage.save_target(path))
        except MapSaveError:
            raise
        except CorruptMapError as exc:  # the loader would refuse what is in memory: keep the saved map instead
            raise MapSaveError(f"saving the map to {path} failed: loading it would fail ({exc}); the previous "
                               "saved map is untouched") from exc
        except (OSError, sqlite3.Error, RuntimeError) as exc:  # disk full, permissions, faiss I/O
            raise MapSaveError(f"saving the map to {path} failed ({type(exc).__name__}: {exc}); the map in "
                               "memory is intact and the previous saved map is untouched") from exc

    def _save(self, path: Path) -> None:
        if path.exists() and not (path / MANIFEST).is_file() and (not path.is_dir() or any(path.iterdir())):
            # a file or a folder of other things: replacing it would delete them (it would become path.bak)
            raise FileExistsError(errno.EEXIST, "something other than a place map is in the way", str(path))
        storage.io_step("mkdir", path.parent)
        path.parent.mkdir(parents=True, exist_ok=True)
        with lock_map(path):
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
            shutil.rmtree(tmp, ignore_errors=True)
            for stale in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
                if storage.left_by_dead_process(stale):  # a save killed part-way
                    shutil.rmtree(stale, ignore_errors=True)
            storage.io_step("mkdir", tmp)
            tmp.mkdir()
            try:
                self._write(tmp)
                with _SWAPPING:  # two threads of one process saving one path: one swap after the other
                    self._swap(tmp, path)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    def _write(self, tmp: Path) -> None:
        """The map as a complete folder ``tmp``, fsynced, after the loader's own checks of what it holds."""
        with self._lock:
            manifest = self._manifest()
            _check_index(self, _parse_manifest(tmp, json.loads(json.dumps({**manifest, "files": _UNWRITTEN}))))
            check_contents(self.index, tmp / INDEX_FILE)
            storage.io_step("write", tmp / INDEX_FILE)
            faiss.write_index(self.index, str(tmp / INDEX_FILE))
            storage.fsync_file(tmp / INDEX_FILE)
            self._write_places(tmp / PLACES_FILE)
        manifest["files"] = {name: storage.file_info(tmp / name) for name in (INDEX_FILE, PLACES_FILE)}
        manifest["manifest_sha256"] = _manifest_digest(manifest)
        text = json.dumps(manifest, indent=1)
        _parse_manifest(tmp, json.loads(text))  # e.g. a calibration out of range: refused here, not at the next load
        storage.write_synced(tmp / MANIFEST, text.encode())
        storage.fsync_dir(tmp)

    @staticmethod
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

    def _manifest(self) -> dict:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "dim": self.dim,
            "index": self.kind.name,
            "trained": self.trained,
            "count": len(self),
            "index_ntotal": int(self.index.ntotal),
            "next_id": int(self.cols.n),
            "model": None if self.model_id is None else asdict(self.model_id),
            "enu_origin": None if self.enu_origin is None else list(self.enu_origin),
            **({} if self.calibration is None else {"calibration": self.calibration}),
        }

    def _write_places(self, file: Path) -> None:
        c = self.cols
        rows = []
        for pid in range(c.n):
            pose = c.pose[pid]
            has = not np.isnan(pose[0])
            row = (pid, *ns_to_pair(c.ns[pid]), c.strings[c.frame[pid]], *(pose.tolist() if has else [None] * 7),
                   c.strings[c.pose_frame[pid]] if has else None, c.strings[c.source[pid]], int(not c.alive[pid]),
                   int(pid in self.tombstones), c.strings[c.camera[pid]])
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
            con.executemany("INSERT INTO local_features VALUES (?, ?)", self.local_features.items())
            con.commit()
        finally:
            con.close()
        storage.fsync_file(file)

    @classmethod
    def load(cls, path: str | os.PathLike, model_id: ModelIdentity | None = None) -> PlaceMap:
        """Open a saved map, verifying files, counts, index contents and (when given) the model identity. Every
        damage is a MapError (CorruptMapError, ModelMismatchError) or MissingFileError, never a wrong answer. A
        map saved meanwhile is read whole, the old or the new one (:func:`vpr_ros.maps.storage.read_consistently`).

        A process that will save the map again takes its write lock first (:func:`vpr_ros.maps.locking.lock_map`)
        and keeps it until it has saved, so no other writer's places are overwritten."""
        return storage.read_consistently(Path(path), MANIFEST, lambda folder: cls._load(folder, model_id))

    @classmethod
    def _load(cls, folder: storage.Folder, model_id: ModelIdentity | None) -> PlaceMap:
        info = _read_info(folder)
        path = info.path
        check_model(info.model, model_id, path)
        _check_files(folder, info)
        pm = cls(info.dim, IndexKind.parse(info.index), info.model)
        try:
            pm.index = faiss.read_index(str(folder.file(INDEX_FILE)))
        except (RuntimeError, MemoryError) as exc:
            raise CorruptMapError(f"{path / INDEX_FILE} cannot be read: {str(exc).splitlines()[0]}") from exc
        pm.trained = info.trained
        pm._read_places(folder.file(PLACES_FILE), path / PLACES_FILE, info.next_id)
        pm.enu_origin = info.enu_origin or _legacy_enu_origin(pm.cols.strings)
        pm.calibration = info.calibration
        _check_index(pm, info)
        check_contents(pm.index, path / INDEX_FILE)
        return pm

    @staticmethod
    def lock(path: str | os.PathLike) -> MapLock:
        """The write lock of the map at ``path`` (:func:`vpr_ros.maps.locking.lock_map`), for a process that loads
        a map (or starts a new one there) and saves it later: held until released or the process ends, and
        MapLockedError, naming the holder, while another process holds it."""
        return lock_map(path)

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        """Whether ``path`` holds a saved map, or its ``.bak`` does after an interrupted save."""
        path = Path(path)
        return (path / MANIFEST).is_file() or (storage.backup_of(path) / MANIFEST).is_file()

    @staticmethod
    def info(path: str | os.PathLike) -> MapInfo:
        """The manifest of a saved map (falling back to ``.bak`` after an interrupted save), every field
        type- and range-checked; the index and places are not read. The one reader of manifests, so
        ``load``, ``map-info``, ``query`` and the node agree on which folder a map is and what it says."""
        return storage.read_consistently(Path(path), MANIFEST, _read_info)

    def _read_places(self, file: Path, shown: Path, next_id: int) -> None:
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
        c = self.cols
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
                self.tombstones.add(pid)
            c.n += 1
        for pid, blob in features:
            if type(pid) is not int or not 0 <= pid < c.n or not c.alive[pid] or not isinstance(blob, bytes):
                raise CorruptMapError(f"{shown}: local features stored for {pid!r}, which is no place of the map "
                                      f"(or not a blob); restore the map or rebuild it")
        self.local_features = {pid: bytes(blob) for pid, blob in features}


_SWAPPING = threading.Lock()
_UNWRITTEN = {name: {"bytes": 0, "sha256": "0" * 64} for name in (INDEX_FILE, PLACES_FILE)}  # checked before writing
SQLITE_STEPS_PER_PLACE = 200  # progress-handler calls (of 1000 VM steps) a read may take per place, plus a base


def _select_places(con: sqlite3.Connection, shown: Path, next_id: int) -> tuple[list, list]:
    """Rows of the places and local_features tables, read defensively (see ``_read_places``)."""
    con.execute("PRAGMA trusted_schema = OFF")  # no functions with side effects from the schema
    budget = [SQLITE_STEPS_PER_PLACE * (next_id + 1000)]

    def spend() -> int:
        budget[0] -= 1
        return budget[0] < 0  # non-zero: sqlite interrupts the statement

    con.set_progress_handler(spend, 1000)
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


def _read_info(folder: storage.Folder) -> MapInfo:
    return _parse_manifest(folder.path, _read_manifest(folder.file(MANIFEST), folder.path / MANIFEST))


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


def _read_manifest(source: Path, file: Path) -> dict:
    """The manifest read from ``source`` (named ``file`` in messages) as a JSON object; MapError when the folder
    is no map, CorruptMapError when damaged."""
    try:
        if source.exists() and not source.is_file():  # a folder, a device such as /dev/zero, a pipe
            raise MapError(f"{file} is not a regular file")
        with open(source, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            raise CorruptMapError(f"{file} is damaged: over {MAX_MANIFEST_BYTES:,} bytes, a place map manifest "
                                  "is about one kilobyte")
        manifest = json.loads(data.decode("utf-8"))
    except FileNotFoundError as exc:
        raise MapError(f"{file.parent} is not a place map: no {MANIFEST}") from exc
    except OSError as exc:  # no read permission, I/O error
        raise MapError(f"{file} cannot be read: {exc.strerror or exc}") from exc
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, absurdly nested or long numbers
        raise CorruptMapError(f"{file} is damaged: not JSON ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if not isinstance(manifest, dict):
        raise CorruptMapError(f"{file} is damaged: it holds {_json_type(manifest)}, a place map manifest is "
                              "an object")
    return manifest


class _Fields:
    """Typed access to manifest fields: every missing or wrong value is a CorruptMapError that names
    the file and the field (never a TypeError or KeyError from deep inside a cast)."""

    def __init__(self, file: Path, manifest: dict) -> None:
        self.file, self.manifest = file, manifest

    def error(self, field: str, why: str) -> CorruptMapError:
        return CorruptMapError(f"{self.file} is damaged: field {field!r} {why}; restore the map or rebuild it")

    def get(self, field: str, types: tuple[type, ...], what: str, optional: bool = False) -> object:
        if field not in self.manifest:
            if optional:
                return None
            raise self.error(field, "is missing")
        value = self.manifest[field]
        if not _is(value, types):
            raise self.error(field, f"is {json.dumps(value)[:80]}, expected {what}")
        return value

    def integer(self, field: str, lo: int, hi: int | None = None, lo_field: str = "") -> int:
        """An int (not a bool or float) in ``lo..hi``; ``lo_field`` names the field ``lo`` comes from."""
        value = self.get(field, (int,), "an integer")
        if value < lo or (hi is not None and value > hi):
            bound = f"{lo}..{hi}" if hi is not None else f">= {lo_field + ' ' if lo_field else ''}{lo}"
            raise self.error(field, f"is {value}, out of range (expected {bound})")
        return value


def _json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for messages about a manifest."""
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
             dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _is(value: object, types: tuple[type, ...]) -> bool:
    """isinstance where bool is no int and int is a float (JSON has no such distinctions)."""
    if isinstance(value, bool):
        return bool in types
    if float in types and isinstance(value, int):
        return True
    return isinstance(value, types)


def _parse_manifest(path: Path, manifest: dict) -> MapInfo:
    """MapInfo of a manifest written by this format version, each field checked for type and range."""
    m = _Fields(path / MANIFEST, manifest)
    if manifest.get("format") != FORMAT:
        raise MapError(f"{path} is not a place map ({MANIFEST} has format {manifest.get('format')!r})")
    version = m.get("version", (int,), "an integer")
    if version > FORMAT_VERSION:
        raise MapError(f"{path} has map format version {version}; this vpr_ros reads up to {FORMAT_VERSION}: "
                       "upgrade vpr_ros")
    version = m.integer("version", 1)
    for field in sorted(set(manifest) - _MANIFEST_FIELDS):  # e.g. a key name with a flipped bit
        raise m.error(field, f"is no field of a version-{FORMAT_VERSION} place map manifest")
    dim = m.integer("dim", 1, MAX_DIM)
    index = m.get("index", (str,), "an index kind name")
    try:
        kind = IndexKind.parse(index)
        needs_training = kind.min_train(dim) > 0
    except InputError as exc:
        raise m.error("index", f"is invalid: {exc}") from exc
    trained = m.get("trained", (bool,), "true or false")
    if not trained and not needs_training:
        raise m.error("trained", f"is false, but index kind {index} needs no training")
    count = m.integer("count", 0)
    ntotal = m.integer("index_ntotal", count, lo_field="count")  # places plus hidden (tombstoned) ones
    next_id = m.integer("next_id", ntotal, lo_field="index_ntotal")  # ids are never reused: all stored ones are below
    info = MapInfo(path=path, version=version, dim=dim, index=index, trained=trained, count=count, next_id=next_id,
                   model=_manifest_model(m, dim), enu_origin=_manifest_origin(m), files=_manifest_files(m),
                   index_ntotal=ntotal, calibration=_manifest_calibration(m))
    digest = m.get("manifest_sha256", (str,), "64 hex digits", optional=True)  # absent in maps saved before it
    if digest is not None and digest != _manifest_digest(manifest):
        raise m.error("manifest_sha256", "does not match the manifest's content: a field was edited or damaged")
    return info


_MANIFEST_FIELDS = frozenset({"format", "version", "dim", "index", "trained", "count", "index_ntotal", "next_id",
                              "model", "enu_origin", "files", "calibration", "manifest_sha256"})


def _manifest_digest(manifest: dict) -> str:
    """SHA-256 of the manifest without its own digest, as canonical JSON. The data files carry checksums in the
    manifest; this one catches a damaged manifest value that still parses (a digit of enu_origin, a model name)."""
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _manifest_model(m: _Fields, dim: int) -> ModelIdentity | None:
    model = m.get("model", (dict, type(None)), "null or an object")
    if model is None:
        return None
    arch, size = model.get("arch"), model.get("image_size")
    sha, out_dim = model.get("checkpoint_sha256"), model.get("descriptor_dim")
    if not isinstance(arch, str) or not arch:
        raise m.error("model", f"has arch {arch!r}, expected a name")
    if not isinstance(size, list) or len(size) != 2 or not all(type(v) is int and v > 0 for v in size):
        raise m.error("model", f"has image_size {size!r}, expected [H, W]")
    if type(out_dim) is not int:
        raise m.error("model", f"has descriptor_dim {out_dim!r}, expected an integer")
    if out_dim != dim:
        raise m.error("model", f"has descriptor_dim {out_dim}, but the map holds {dim}-d descriptors")
    if sha is not None and not isinstance(sha, str):
        raise m.error("model", f"has checkpoint_sha256 {sha!r}, expected text or null")
    return ModelIdentity(arch, (size[0], size[1]), out_dim, sha)


def _manifest_origin(m: _Fields) -> tuple[float, float, float] | None:
    origin = m.get("enu_origin", (list, type(None)), "null or [lat, lon, alt]", optional=True)  # added in v1
    if origin is None:
        return None
    if len(origin) != 3 or not all(_is(v, (float,)) and math.isfinite(v) for v in origin) \
            or abs(origin[0]) > 90 or abs(origin[1]) > 180:
        raise m.error("enu_origin", f"is {origin!r}, expected [lat, lon, alt] in degrees and metres")
    return float(origin[0]), float(origin[1]), float(origin[2])


def _manifest_calibration(m: _Fields) -> dict[str, Any] | None:
    """Optional: a threshold in [-1, 1] for a false-positive rate in (0, 1), plus numbers on what it came from."""
    cal = m.get("calibration", (dict,), "an object", optional=True)
    if cal is None:
        return None
    threshold, fpr = cal.get("threshold"), cal.get("target_fpr")
    if not _is(threshold, (float,)) or not -1.0 <= threshold <= 1.0:
        raise m.error("calibration", f"has threshold {threshold!r}, expected a cosine similarity in [-1, 1]")
    if not _is(fpr, (float,)) or not 0.0 < fpr < 1.0:
        raise m.error("calibration", f"has target_fpr {fpr!r}, expected a rate in (0, 1)")
    return cal


def _manifest_files(m: _Fields) -> dict[str, dict]:
    """Sizes and SHA-256 of both data files: required, so a swapped or damaged file can never skip the check."""
    files = m.get("files", (dict,), "an object")
    if set(files) != {INDEX_FILE, PLACES_FILE}:
        raise m.error("files", f"lists {sorted(files)}, expected exactly {INDEX_FILE} and {PLACES_FILE}")
    for name, entry in files.items():
        if not isinstance(entry, dict) or set(entry) != {"bytes", "sha256"} or type(entry["bytes"]) is not int \
                or entry["bytes"] < 0 or not isinstance(entry["sha256"], str) \
                or not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]):
            raise m.error("files", f"has {name}: {entry!r}, expected {{\"bytes\": N, \"sha256\": 64 hex digits}}")
    return files


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


def _pose_row(pose: Pose) -> list[float]:
    """The 7 numbers stored for a pose; InputError unless they are finite (a stored NaN or inf would make the
    saved map unloadable)."""
    try:
        row = [float(v) for v in (*pose.position, *pose.orientation)]
        shaped = len(pose.position) == 3 and len(pose.orientation) == 4
    except (TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"pose {pose!r} is no position of 3 and orientation of 4 numbers") from exc
    if not shaped or not all(math.isfinite(v) for v in row):
        raise InputError(f"pose {pose!r} is not 3 + 4 finite numbers; a place keeps finite poses only")
    return row


def _check_text(name: str, text: object) -> None:
    """InputError unless ``text`` is a string the places database can store (UTF-8: no lone surrogates)."""
    if not isinstance(text, str):
        raise InputError(f"{name} must be text, got {text!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{name} {text!r} is not valid text ({exc.reason})") from exc


def _legacy_enu_origin(strings: Sequence[str]) -> tuple[float, float, float] | None:
    """Origin of maps saved before the manifest had ``enu_origin``: it is in their ``enu:lat,lon,alt`` frame ids."""
    for text in strings:
        if text.startswith("enu:"):
            try:
                lat, lon, alt = (float(v) for v in text[4:].split(","))
            except ValueError:
                continue
            return lat, lon, alt
    return None


def check_model(stored: ModelIdentity | None, wanted: ModelIdentity | None, path: Path) -> None:
    """Refuse a map whose descriptors come from another model than ``wanted``."""
    if wanted is None or stored is None:
        return
    same_weights = (stored.arch, stored.checkpoint_sha256) == (wanted.arch, wanted.checkpoint_sha256)
    if same_weights and stored.image_size != wanted.image_size:
        (h, w), (qh, qw) = stored.image_size, wanted.image_size
        raise ModelMismatchError(
            f"map {path} was built by this checkpoint ({stored.arch}, sha256 {str(stored.checkpoint_sha256)[:12]}) "
            f"at input size {h}x{w}, but the model is set to {qh}x{qw}; "
            f"describe at the map's size (--image-size {h} {w}, node parameter image_size [{h}, {w}]) or rebuild "
            "the map at the new size"
        )
    if stored != wanted:
        raise ModelMismatchError(
            f"map {path} was built with {stored.arch} at {stored.image_size[0]}x{stored.image_size[1]} "
            f"(checkpoint sha256 {str(stored.checkpoint_sha256)[:12]}), but the current model is {wanted.arch} at "
            f"{wanted.image_size[0]}x{wanted.image_size[1]} (sha256 {str(wanted.checkpoint_sha256)[:12]}); "
            "rebuild the map with the current checkpoint (vpr-ros build-map ... --checkpoint CKPT)"
        )
