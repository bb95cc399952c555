"""FAISS index kinds of a place map, all answering in cosine similarity (inner product of unit
vectors) and keyed by place id.

| kind      | structure (faiss factory)         | bytes / place     | trains at (places)     |
|-----------|-----------------------------------|-------------------|------------------------|
| flat      | IDMap2,Flat (exact)               | 4 d               | never needs training   |
| fp16      | IDMap2,SQfp16                     | 2 d               | never needs training   |
| pca<N>    | IDMap2,PCA<N>,L2norm,Flat         | 4 N               | max(N, 1000)           |
| ivfpq     | IDMap2,IVF<nlist>,PQ<m>x8 (nlist ≈ 4 sqrt(n)) | m     | 10,000                 |
| hnsw      | IDMap2,HNSW32,Flat (graph)        | 4 d + ~256        | never needs training   |
| pca<N>ivf | IDMap2,PCA<N>,L2norm,IVF<nlist>,SQ8 | N + ~10         | max(N, 10,000)         |

(plus 8 bytes of id per place.) Until a kind that needs training has enough places, the map answers
exactly from a flat index; at the threshold ``add`` trains it on the map's own descriptors under the
map's lock (tens of seconds once for ivfpq on 8448-d: a live node drops frames meanwhile, so build large
maps offline). pca<N> scores are cosines in the reduced space. HNSW and IVF-PQ cannot delete: the map
hides removed places (tombstones). pca<N>ivf is the kind for ~1M places: on bench/map.py's synthetic
8448-d descriptors it answers in ~3 ms with 315 MB and 98.4 % of exact search's top-1 answers, where
ivfpq's 64-byte codes keep 4 %. IVF kinds fix their lists when they train (256 at 10,000 places), so a
query scans IVF_NPROBE / 256 of the map and its time grows linearly with the map.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import faiss
import numpy as np

from vpr_ros.errors import InputError

IVFPQ_MIN_TRAIN = 10_000
PCA_MIN_TRAIN = 1_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 80, 128
IVF_NPROBE = 32  # lists visited per query: recall vs. speed, measured in bench/map.py
_PCA = re.compile(r"pca([1-9]\d*)(ivf)?")
_UNTRAINED = {"flat": "IDMap2,Flat", "fp16": "IDMap2,SQfp16", "hnsw": f"IDMap2,HNSW{HNSW_M},Flat"}  # factory strings


@dataclass(frozen=True)
class IndexKind:
    """A parsed ``index=`` string."""

    name: str

    @classmethod
    def parse(cls, text: str) -> IndexKind:
        if text in ("flat", "fp16", "ivfpq", "hnsw") or _PCA.fullmatch(text):
            return cls(text)
        raise InputError(
            f"unknown index kind {text!r}; use flat, fp16, pca<N> (e.g. pca256), ivfpq, hnsw "
            "or pca<N>ivf (e.g. pca256ivf)"
        )

    @property
    def pca_dim(self) -> int | None:
        match = _PCA.fullmatch(self.name)
        return int(match[1]) if match else None

    @property
    def ivf(self) -> bool:
        return self.name == "ivfpq" or self.name.endswith("ivf")

    def min_train(self, dim: int) -> int:
        """Places needed before this kind can be trained (0: no training)."""
        if self.pca_dim is not None:
            if self.pca_dim >= dim:
                raise InputError(f"{self.name} must reduce the {dim}-d descriptors to fewer dimensions")
            return max(self.pca_dim, IVFPQ_MIN_TRAIN if self.ivf else PCA_MIN_TRAIN)
        return IVFPQ_MIN_TRAIN if self.ivf else 0

    def factory(self, dim: int, count: int) -> str:
        """faiss factory string for a map of ``count`` places (sizes IVF lists to the data)."""
        if self.name in _UNTRAINED:
            return _UNTRAINED[self.name]
        if self.pca_dim is not None and not self.ivf:
            return f"IDMap2,PCA{self.pca_dim},L2norm,Flat"
        nlist = int(np.clip(2 ** round(math.log2(4 * math.sqrt(max(count, 1)))), 64, 16384))
        nlist = min(nlist, max(1, count // 39))  # faiss wants >= 39 training points per list
        if self.pca_dim is not None:
            return f"IDMap2,PCA{self.pca_dim},L2norm,IVF{nlist},SQ8"
        return f"IDMap2,IVF{nlist},PQ{pq_subquantizers(dim)}x8"


def pq_subquantizers(dim: int) -> int:
    """Largest m <= 64 dividing ``dim`` (64 bytes per place for the released sizes)."""
    return next(m for m in range(min(64, dim), 0, -1) if dim % m == 0)


def new_index(kind: IndexKind, dim: int, count: int = 0) -> faiss.Index:
    """An empty index of ``kind`` with inner-product metric."""
    index = faiss.index_factory(dim, kind.factory(dim, count), faiss.METRIC_INNER_PRODUCT)
    if isinstance(inner := faiss.downcast_index(index.index), faiss.IndexHNSW):
        inner.hnsw.efConstruction, inner.hnsw.efSearch = HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH
    return index


def train_index(kind: IndexKind, dim: int, vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
    """Build ``kind`` trained on ``vectors`` and holding them under ``ids``."""
    index = new_index(kind, dim, len(vectors))
    if kind.ivf and kind.pca_dim is not None:  # PCA on max(N, 1000) places like pca<N>: its eigensolver
        sample = max(kind.pca_dim, PCA_MIN_TRAIN)  # is cubic in min(places, dim) (minutes at 10k x 8448)
        pca = faiss.downcast_VectorTransform(faiss.downcast_index(index.index).chain.at(0))
        pca.train(np.ascontiguousarray(vectors[:: max(1, len(vectors) // sample)][:sample]))
    inner = faiss.try_extract_index_ivf(index)
    inner = None if inner is None else faiss.downcast_index(inner)
    if isinstance(inner, faiss.IndexIVFPQ):  # polysemous training only serves Hamming-filtered search, which
        inner.do_polysemous_training = False  # the map never uses; it was ~85 % of ivfpq's training time
    if not index.is_trained:
        index.train(vectors)
    if inner is not None:
        inner.nprobe = min(inner.nlist, IVF_NPROBE)
        inner.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct() and remove_ids() by id
    index.add_with_ids(vectors, ids)
    return index
