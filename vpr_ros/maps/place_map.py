"""A map of places: global descriptors in a FAISS index plus per-place metadata.

Place ids are assigned in insertion order and never reused, so "the last N places" and
"places newer than t" are cheap to exclude at query time. A map is saved and loaded by
:mod:`vpr_ros.maps.map_store` and described by its manifest (:mod:`vpr_ros.maps.manifest`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np

from vpr_ros.errors import InputError
from vpr_ros.maps import map_store
from vpr_ros.maps.index_checks import NORM_TOLERANCE
from vpr_ros.maps.index_kinds import IndexKind, new_index, train_index
from vpr_ros.maps.locking import MapLock, lock_map
from vpr_ros.maps.manifest import MapInfo
from vpr_ros.maps.places import Place, PlaceColumns, check_text, pose_row
from vpr_ros.types import ModelIdentity, Pose, Stamp, to_ns

LOG = logging.getLogger(__name__)


class PlaceMap:
    """Places with unit-norm descriptors; ``search`` returns cosine similarities. Thread-safe: one lock serialises
    add, remove, search and save, so a node may add keyframes while another thread queries."""

    def __init__(self, dim: int, kind: IndexKind, model_id: ModelIdentity | None) -> None:
        self.dim = dim
        self.kind = kind
        self.model_id = model_id
        self.cols = PlaceColumns()
        self.index = new_index(IndexKind("flat") if kind.min_train(dim) else kind, dim)
        self.trained = not kind.min_train(dim)
        self.tombstones: set[int] = set()  # removed places the index cannot delete (HNSW)
        self.local_features: dict[int, bytes] = {}  # optional, for geometric verification
        self.enu_origin: tuple[float, float, float] | None = None  # GNSS maps: origin of their ENU frame
        # ``vpr-ros calibrate``'s threshold, target_fpr and inputs: the node's threshold when none is set
        self.calibration: dict[str, Any] | None = None
        self.guard = threading.RLock()  # held by add, remove, search and save

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
        """Add places of unit descriptors; returns their new ids (int64). ``stamps`` default to 0 s: enough for
        retrieval, but the loop-closure exclusion window and calibration tell places apart by their stamps."""
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
        pose_rows = [None if pose is None else pose_row(pose) for pose in poses or []]
        for name, texts in (("frame_ids", frame_ids), ("sources", sources), ("cameras", cameras),
                            ("pose frame ids", [pose.frame_id for pose in poses or [] if pose is not None])):
            for text in texts or []:
                check_text(name, text)
        if any(blob is not None and not isinstance(blob, bytes) for blob in local_features or []):
            raise InputError("local_features must be bytes (or None for a place without them)")
        with self.guard:
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
        with self.guard:
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
        """Top-``k`` places per query: ``(scores [nq, k] float32, ids [nq, k] int64)`` for queries ``[nq, D]``;
        ``(scores [k], ids [k])`` for one query vector ``[D]``. Places stamped after ``exclude_newer_than`` and the
        ``exclude_last`` newest places are skipped (the loop-closure exclusion window); missing results are id -1
        with score -inf."""
        if np.ndim(queries) == 1:  # one query vector: results without the query axis
            scores, ids = self.search(np.reshape(queries, (1, -1)), k, exclude_newer_than, exclude_last)
            return scores[0], ids[0]
        q = self._check_descriptors(queries)
        if k < 1:
            raise InputError(f"k must be >= 1, got {k}")
        out_s, out_i = np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        with self.guard:
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
                return out_s, out_i
            scores, ids = self.index.search(q, fetch)
        keep = ids >= 0
        keep[keep] = ~blocked[ids[keep]]
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
        pose = None if np.isnan(row[0]) else Pose(tuple(row[:3].tolist()), tuple(row[3:].tolist()),
                                                  c.strings[c.pose_frame[pid]])
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
        with self.guard:
            return np.stack([self.index.reconstruct(int(i)) for i in ids]) if len(ids) else np.zeros((0, self.dim))

    def _check_descriptors(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.atleast_2d(np.asarray(x)), dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise InputError(f"expected descriptors of shape [n, {self.dim}], got {tuple(np.shape(x))}")
        if not np.isfinite(x).all():
            raise InputError("descriptors contain NaN or inf")
        return x

    # -- persistence (:mod:`vpr_ros.maps.map_store`) ------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the map atomically (:func:`vpr_ros.maps.map_store.save`); any failure is a MapSaveError."""
        map_store.save(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, model_id: ModelIdentity | None = None) -> PlaceMap:
        """Open a saved map, verified whole (:func:`vpr_ros.maps.map_store.load`)."""
        return map_store.load(cls, path, model_id)

    @staticmethod
    def lock(path: str | os.PathLike) -> MapLock:
        """The write lock of the map at ``path`` (:func:`vpr_ros.maps.locking.lock_map`) for a process that will
        save there: held until released or the process ends; MapLockedError while another process holds it."""
        return lock_map(path)

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        """Whether ``path`` holds a saved map, or its ``.bak`` does after an interrupted save."""
        return map_store.exists(path)

    @staticmethod
    def info(path: str | os.PathLike) -> MapInfo:
        """The checked manifest of a saved map, the index and places unread (:func:`vpr_ros.maps.map_store.info`)."""
        return map_store.info(path)

    @classmethod
    def open(cls, path: str | os.PathLike | None, model_id: ModelIdentity, index: str = "flat",
             append: bool = True) -> PlaceMap:
        """The map to add to: the one at ``path`` (same model required; FileExistsError without ``append``), else a
        new one. The caller holds the map's write lock (:meth:`lock`) until it has saved."""
        if path is None or not (os.path.exists(path) or map_store.exists(path)):
            return cls.create(model_id.descriptor_dim, index, model_id)
        if not append:
            raise FileExistsError(f"{path} already exists; pass append=True (--append) to add to it, or choose a "
                                  "new path")
        return cls.load(path, model_id)  # MapError for a folder that is no map, ModelMismatchError for another model

    @staticmethod
    def input_size(path: str | os.PathLike | None, asked: tuple[int, int] | None = None) -> tuple[int, int] | None:
        """The size to describe frames at for the map at ``path``: ``asked`` when given, else the size the map was
        built with (None: no map there yet, or one that does not say)."""
        model = map_store.info(path).model if asked is None and path is not None and map_store.exists(path) else None
        return asked if model is None else model.image_size
