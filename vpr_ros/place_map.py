"""A map of places: global descriptors in a FAISS index plus per-place metadata, saved safely.

On disk a map is a folder: ``manifest.json`` (format, descriptor size, index kind, counts, the
model that built it, size and SHA-256 of every file), ``index.faiss`` and ``places.sqlite``.
Saving writes a complete new folder beside the old one, fsyncs it and renames it into place,
so a process killed at any moment leaves a loadable map (the old one or the new one). Loading
verifies the manifest, the file checksums and the counts before answering any query.

Place ids are assigned in insertion order and never reused, so "the last N places" and
"places newer than t" are cheap to exclude at query time.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import math
import os
import shutil
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from vpr_ros.map_index import IndexKind, new_index, train_index

LOG = logging.getLogger(__name__)

FORMAT = "vpr_ros.place_map"
FORMAT_VERSION = 1
MANIFEST, INDEX_FILE, PLACES_FILE = "manifest.json", "index.faiss", "places.sqlite"

Stamp = float | tuple[int, int]


class MapError(ValueError):
    """A map that cannot be used as asked (bad folder, wrong model, damaged files)."""


class ModelMismatchError(MapError):
    """The map was built by another model: its descriptors are not comparable."""


class CorruptMapError(MapError):
    """Files missing, truncated or inconsistent with each other."""


@dataclass(frozen=True)
class ModelIdentity:
    """What makes descriptors comparable: architecture, input size and weights."""

    arch: str
    image_size: tuple[int, int]
    descriptor_dim: int
    checkpoint_sha256: str | None = None

    def __post_init__(self) -> None:  # lists from JSON/YAML compare equal to tuples after this
        object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))

    @classmethod
    def of(cls, model: Any, image_size: Sequence[int]) -> ModelIdentity:
        """Identity of a loaded :class:`vpr_ros.models.VPRModel` used at ``image_size``."""
        return cls(model.cfg.describe(), tuple(int(s) for s in image_size), model.descriptor_dim,
                   model.checkpoint_sha256)

    @classmethod
    def from_json(cls, data: dict) -> ModelIdentity:
        return cls(data["arch"], tuple(data["image_size"]), int(data["descriptor_dim"]), data.get("checkpoint_sha256"))


@dataclass(frozen=True)
class Pose:
    """Position (x, y, z) and orientation quaternion (x, y, z, w) in ``frame_id``."""

    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)
    frame_id: str = "map"


@dataclass(frozen=True)
class Place:
    id: int
    stamp: tuple[int, int]  # (sec, nanosec) of the image header
    frame_id: str
    pose: Pose | None
    source: str

    @property
    def seconds(self) -> float:
        return self.stamp[0] + self.stamp[1] * 1e-9


def to_stamp(stamp: Stamp) -> tuple[int, int]:
    """(sec, nanosec) from a float in seconds or a (sec, nanosec) pair."""
    if isinstance(stamp, (tuple, list)):
        sec, nsec = int(stamp[0]), int(stamp[1])
    else:
        if not math.isfinite(stamp):
            raise ValueError(f"stamp must be finite, got {stamp}")
        sec = math.floor(stamp)
        nsec = int(round((stamp - sec) * 1e9))
        sec, nsec = sec + nsec // 1_000_000_000, nsec % 1_000_000_000
    if not 0 <= nsec < 1_000_000_000:
        raise ValueError(f"nanosec must be in [0, 1e9), got {nsec}")
    return sec, nsec


class _Columns:
    """Per-place metadata as growable numpy columns indexed by place id."""

    def __init__(self) -> None:
        self.n = 0
        self.sec = np.zeros(0, np.int64)
        self.nsec = np.zeros(0, np.int64)
        self.alive = np.zeros(0, bool)
        self.pose = np.zeros((0, 7), np.float64)  # NaN row = no pose
        self.frame = np.zeros(0, np.int32)  # index into self.strings
        self.pose_frame = np.zeros(0, np.int32)
        self.source = np.zeros(0, np.int32)
        self.strings: list[str] = []
        self._string_ids: dict[str, int] = {}

    def intern(self, text: str) -> int:
        if text not in self._string_ids:
            self._string_ids[text] = len(self.strings)
            self.strings.append(text)
        return self._string_ids[text]

    def grow(self, extra: int) -> None:
        need = self.n + extra
        if need <= len(self.sec):
            return
        cap = max(need, 2 * len(self.sec), 1024)
        for name in ("sec", "nsec", "alive", "pose", "frame", "pose_frame", "source"):
            old = getattr(self, name)
            new = np.zeros((cap, *old.shape[1:]), old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)

    @property
    def seconds(self) -> np.ndarray:
        return self.sec[: self.n] + self.nsec[: self.n] * 1e-9


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
        self._lock = threading.RLock()

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def create(cls, dim: int, index: str = "flat", model_id: ModelIdentity | None = None) -> PlaceMap:
        """An empty map for ``dim``-d descriptors (see :mod:`vpr_ros.map_index` for kinds)."""
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        if model_id is not None and model_id.descriptor_dim != dim:
            raise ValueError(f"model makes {model_id.descriptor_dim}-d descriptors, map is {dim}-d")
        return cls(dim, IndexKind.parse(index), model_id)

    def __len__(self) -> int:
        return int(self.cols.alive[: self.cols.n].sum())

    # -- adding and removing --------------------------------------------------------------------

    def add(
        self,
        descriptors: np.ndarray,
        stamps: Sequence[Stamp],
        poses: Sequence[Pose | None] | None = None,
        frame_ids: Sequence[str] | None = None,
        sources: Sequence[str] | None = None,
        local_features: Sequence[bytes | None] | None = None,
    ) -> np.ndarray:
        """Add places; returns their new ids (int64). Descriptors must be unit vectors."""
        x = self._check_descriptors(descriptors)
        n = len(x)
        for name, seq in (("stamps", stamps), ("poses", poses), ("frame_ids", frame_ids), ("sources", sources),
                          ("local_features", local_features)):
            if seq is not None and len(seq) != n:
                raise ValueError(f"{name} has {len(seq)} entries for {n} descriptors")
        parsed = [to_stamp(s) for s in stamps]
        with self._lock:
            c = self.cols
            ids = np.arange(c.n, c.n + n, dtype=np.int64)
            c.grow(n)
            rows = slice(c.n, c.n + n)
            c.sec[rows] = [s for s, _ in parsed]
            c.nsec[rows] = [ns for _, ns in parsed]
            c.alive[rows] = True
            c.frame[rows] = [c.intern(f) for f in frame_ids or [""] * n]
            c.source[rows] = [c.intern(s) for s in sources or [""] * n]
            c.pose[rows] = np.nan
            for i, pose in enumerate(poses or []):
                if pose is not None:
                    c.pose[c.n + i] = [*pose.position, *pose.orientation]
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
        """Top-``k`` places per query: ``(scores [nq, k] float32, ids [nq, k] int64)``.

        Places stamped after ``exclude_newer_than`` and the ``exclude_last`` most recently added
        places are skipped (the loop-closure exclusion window). Missing results are id -1 with
        score -inf.
        """
        q = self._check_descriptors(queries)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        with self._lock:
            c = self.cols
            blocked = np.zeros(c.n, bool)
            if exclude_newer_than is not None:
                sec, nsec = to_stamp(exclude_newer_than)
                blocked |= (c.sec[: c.n] > sec) | ((c.sec[: c.n] == sec) & (c.nsec[: c.n] > nsec))
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
        return Place(pid, (int(c.sec[pid]), int(c.nsec[pid])), c.strings[c.frame[pid]], pose,
                     c.strings[c.source[pid]])

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
            raise ValueError(f"expected descriptors of shape [n, {self.dim}], got {tuple(np.shape(x))}")
        if not np.isfinite(x).all():
            raise ValueError("descriptors contain NaN or inf")
        return x

    # -- persistence ----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the map atomically: a complete copy beside ``path``, fsynced, then renamed."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        backup = path.with_name(f"{path.name}.bak")
        shutil.rmtree(tmp, ignore_errors=True)
        for stale in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
            if _left_by_dead_process(stale):  # a save killed part-way
                shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
        try:
            with self._lock:
                faiss.write_index(self.index, str(tmp / INDEX_FILE))
                _fsync_file(tmp / INDEX_FILE)
                self._write_places(tmp / PLACES_FILE)
                manifest = self._manifest()
            manifest["files"] = {name: _file_info(tmp / name) for name in (INDEX_FILE, PLACES_FILE)}
            _write_synced(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
            _fsync_dir(tmp)
            if backup.exists() and path.exists():
                shutil.rmtree(backup)  # left over from an interrupted save; path is complete
            if path.exists():
                os.replace(path, backup)  # a crash from here on: load() falls back to the backup
            os.replace(tmp, path)
            _fsync_dir(path.parent)
            shutil.rmtree(backup, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

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
        }

    def _write_places(self, file: Path) -> None:
        c = self.cols
        con = sqlite3.connect(file)
        try:
            con.executescript(
                "CREATE TABLE places (id INTEGER PRIMARY KEY, sec INTEGER, nanosec INTEGER, frame_id TEXT,"
                " px REAL, py REAL, pz REAL, qx REAL, qy REAL, qz REAL, qw REAL, pose_frame TEXT,"
                " source TEXT, removed INTEGER, hidden INTEGER);"
                "CREATE TABLE local_features (id INTEGER PRIMARY KEY, data BLOB);"
            )
            rows = []
            for pid in range(c.n):
                pose = c.pose[pid]
                has = not np.isnan(pose[0])
                rows.append((pid, int(c.sec[pid]), int(c.nsec[pid]), c.strings[c.frame[pid]],
                             *(pose.tolist() if has else [None] * 7),
                             c.strings[c.pose_frame[pid]] if has else None, c.strings[c.source[pid]],
                             int(not c.alive[pid]), int(pid in self.tombstones)))
            con.executemany("INSERT INTO places VALUES (" + ",".join("?" * 15) + ")", rows)
            con.executemany("INSERT INTO local_features VALUES (?, ?)", self.local_features.items())
            con.commit()
        finally:
            con.close()
        _fsync_file(file)

    @classmethod
    def load(cls, path: str | os.PathLike, model_id: ModelIdentity | None = None) -> PlaceMap:
        """Open a saved map, verifying files, counts and (when given) the model identity."""
        path = Path(path)
        backup = path.with_name(f"{path.name}.bak")
        if not (path / MANIFEST).is_file() and (backup / MANIFEST).is_file():
            LOG.warning("%s is missing after an interrupted save; loading the previous map %s", path, backup)
            path = backup
        if not path.is_dir():
            raise FileNotFoundError(f"no place map at {path}")
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError as exc:
            raise MapError(f"{path} is not a place map: no {MANIFEST}") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptMapError(f"{path / MANIFEST} is damaged: {exc}") from exc
        if manifest.get("format") != FORMAT:
            raise MapError(f"{path} is not a place map ({MANIFEST} has format {manifest.get('format')!r})")
        if manifest.get("version", 0) > FORMAT_VERSION:
            raise MapError(f"{path} has map format version {manifest['version']}; this vpr_ros reads "
                           f"up to {FORMAT_VERSION}: upgrade vpr_ros")
        stored = ModelIdentity.from_json(manifest["model"]) if manifest.get("model") else None
        check_model(stored, model_id, path)
        for name, info in manifest.get("files", {}).items():
            actual = _file_info(path / name) if (path / name).is_file() else None
            if actual != info:
                what = "missing" if actual is None else f"{actual['bytes']:,} bytes, expected {info['bytes']:,}" \
                    if actual["bytes"] != info["bytes"] else "checksum mismatch"
                raise CorruptMapError(f"{path / name} is truncated or damaged ({what}); restore the map or rebuild it")
        pm = cls(int(manifest["dim"]), IndexKind.parse(manifest["index"]), stored)
        try:
            pm.index = faiss.read_index(str(path / INDEX_FILE))
        except RuntimeError as exc:
            raise CorruptMapError(f"{path / INDEX_FILE} cannot be read: {str(exc).splitlines()[0]}") from exc
        pm.trained = bool(manifest["trained"])
        pm._read_places(path / PLACES_FILE)
        if pm.index.d != pm.dim:
            raise CorruptMapError(f"{path}: index holds {pm.index.d}-d vectors, manifest says {pm.dim}")
        expected = len(pm) + len(pm.tombstones)
        if pm.index.ntotal != expected or len(pm) != manifest["count"]:
            raise CorruptMapError(
                f"{path}: index holds {pm.index.ntotal} vectors but the metadata lists {expected} places "
                f"(manifest count {manifest['count']}); the map is inconsistent, rebuild it"
            )
        return pm

    def _read_places(self, file: Path) -> None:
        con = sqlite3.connect(f"file:{file}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT * FROM places ORDER BY id").fetchall()
            features = con.execute("SELECT id, data FROM local_features").fetchall()
        except sqlite3.DatabaseError as exc:
            raise CorruptMapError(f"{file} is not a readable places database: {exc}") from exc
        finally:
            con.close()
        c = self.cols
        c.grow(len(rows))
        for pid, sec, nsec, frame, *rest in rows:
            if pid != c.n:
                raise CorruptMapError(f"{file}: place ids are not contiguous at {pid}")
            pose, pose_frame, source, removed, hidden = rest[:7], rest[7], rest[8], rest[9], rest[10]
            c.sec[pid], c.nsec[pid], c.alive[pid] = sec, nsec, not removed
            c.frame[pid], c.source[pid] = c.intern(frame), c.intern(source)
            c.pose[pid] = np.nan if pose[0] is None else pose
            c.pose_frame[pid] = c.intern(pose_frame or "")
            if hidden:
                self.tombstones.add(pid)
            c.n += 1
        self.local_features = {int(i): bytes(b) for i, b in features}


def check_model(stored: ModelIdentity | None, wanted: ModelIdentity | None, path: Path) -> None:
    """Refuse a map whose descriptors come from another model than ``wanted``."""
    if wanted is None or stored is None:
        return
    if stored != wanted:
        raise ModelMismatchError(
            f"map {path} was built with {stored.arch} at {stored.image_size[0]}x{stored.image_size[1]} "
            f"(checkpoint sha256 {str(stored.checkpoint_sha256)[:12]}), but the current model is {wanted.arch} at "
            f"{wanted.image_size[0]}x{wanted.image_size[1]} (sha256 {str(wanted.checkpoint_sha256)[:12]}); "
            "rebuild the map with the current checkpoint (vpr-ros build-map ... --checkpoint CKPT)"
        )


def _file_info(file: Path) -> dict:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return {"bytes": file.stat().st_size, "sha256": digest.hexdigest()}


def _left_by_dead_process(tmp: Path) -> bool:
    """Whether the process named in a ``.<name>.tmp-<pid>-<thread>`` folder has ended."""
    try:
        os.kill(int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, IndexError, OSError):
        return False
    return False


def _write_synced(file: Path, data: bytes) -> None:
    with open(file, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_file(file: Path) -> None:
    with open(file, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
