"""What a place map's FAISS index holds, checked before it answers a query.

A matching checksum does not make the numbers sane: a re-signed index of vectors ×1000, with a NaN, or
of another id-map class accepted a random query as a loop closure with score 166, and faiss follows
HNSW links and IVF list ids without bounds checks. Checked here, each for less than reading the file
costs: classes and inner-product metric at every level; finite PCA matrices, centroids and codebooks;
every float32 / fp16 vector finite and of norm ≈ 1; a decoded sample of (lossy) IVF codes; HNSW links
and IVF list ids within range. Search settings (``efSearch``, ``nprobe``) are reset to policy, and the
IVF id hash table is rebuilt from the checked lists.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from vpr_ros.errors import CorruptMapError
from vpr_ros.maps.index_kinds import HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH, IVF_NPROBE

NORM_TOLERANCE = 1e-2  # unit vectors kept as float32 or fp16 (add() refuses others)
LOSSY_MAX_NORM = 1.5  # SQ8 / PQ reconstructions shrink toward their centroids, never grow to x1000
IVF_SAMPLE = 4096  # IVF vectors decoded (in 16 evenly spaced runs)
CHUNK = 1 << 15  # vectors checked at a time


def check_contents(index: faiss.Index, file: Path) -> None:
    """Raise CorruptMapError unless ``index`` (as read from ``file``) is an id-mapped cosine index of unit
    vectors whose internal links stay within it."""

    def damaged(why: str) -> CorruptMapError:
        return CorruptMapError(f"{file} is damaged: {why}; restore the map or rebuild it")

    if type(index) is not faiss.IndexIDMap2:
        raise damaged(f"its top level is {type(index).__name__}, not the IndexIDMap2 of a place index")
    n = index.ntotal
    if index.id_map.size() != n:
        raise damaged(f"{index.id_map.size()} ids for {n} vectors")
    inner = faiss.downcast_index(index.index)
    while True:
        if inner.metric_type != faiss.METRIC_INNER_PRODUCT or inner.ntotal != n:
            raise damaged(f"its {type(inner).__name__} is not an inner-product index of {n} vectors")
        if isinstance(inner, faiss.IndexPreTransform):
            for i in range(inner.chain.size()):
                transform = faiss.downcast_VectorTransform(inner.chain.at(i))
                if isinstance(transform, faiss.LinearTransform) and not (
                        _finite(faiss.vector_to_array(transform.A)) and _finite(faiss.vector_to_array(transform.b))):
                    raise damaged("its PCA matrix is not finite")
            inner = faiss.downcast_index(inner.index)
        elif isinstance(inner, faiss.IndexHNSW):
            if why := _hnsw_damage(inner.hnsw, n):
                raise damaged(f"its HNSW graph {why}")
            inner.hnsw.efConstruction, inner.hnsw.efSearch = HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH
            inner = faiss.downcast_index(inner.storage)
        else:
            break
    if isinstance(inner, faiss.IndexIVF):
        if why := _ivf_damage(inner, n):
            raise damaged(f"its inverted lists {why}")
        inner.nprobe = min(inner.nlist, IVF_NPROBE)
        inner.set_direct_map_type(faiss.DirectMap.NoMap)  # rebuilt from the lists just checked
        inner.set_direct_map_type(faiss.DirectMap.Hashtable)
    if why := _vector_damage(inner, n):
        raise damaged(why)


def _finite(values: np.ndarray) -> bool:
    return bool(np.isfinite(values).all())


def _stored_rows(storage: faiss.Index, n: int) -> np.ndarray | None:
    """The vectors of a float32 or fp16 storage as a zero-copy [n, d] view; None for other codes."""
    if isinstance(storage, faiss.IndexFlat):
        dtype = np.float32
    elif isinstance(storage, faiss.IndexScalarQuantizer) and storage.sq.qtype == faiss.ScalarQuantizer.QT_fp16:
        dtype = np.float16
    else:
        return None
    width = np.dtype(dtype).itemsize * storage.d
    if storage.code_size != width or storage.codes.size() != n * width:
        return np.zeros((0, storage.d), dtype) if n == 0 else None  # sizes disagree: caught as no rows below
    if n == 0:
        return np.zeros((0, storage.d), dtype)
    return faiss.rev_swig_ptr(storage.codes.data(), n * width).view(dtype).reshape(n, storage.d)


def _vector_damage(storage: faiss.Index, n: int) -> str:
    """Why the stored vectors are not unit vectors ("" when they are): all of them for float32 / fp16, a
    decoded sample for IVF codes."""
    rows = _stored_rows(storage, n)
    if rows is None and not isinstance(storage, faiss.IndexIVF):
        return f"its {type(storage).__name__} storage does not hold {n} vectors of {storage.d} numbers"
    if isinstance(storage, faiss.IndexIVF):
        starts = [0] if n <= IVF_SAMPLE else np.linspace(0, n, 16, endpoint=False, dtype=int)
        chunks = (storage.reconstruct_n(int(i0), min(n, IVF_SAMPLE) // len(starts)) for i0 in starts if n)
        low, high = 0.0, LOSSY_MAX_NORM
    else:
        chunks = (rows[i:i + CHUNK].astype(np.float32, copy=False) for i in range(0, n, CHUNK))
        low, high = 1.0 - NORM_TOLERANCE, 1.0 + NORM_TOLERANCE
    for chunk in chunks:
        if not _finite(chunk):
            return "a stored vector holds NaN or inf"
        norms = np.sqrt(np.einsum("ij,ij->i", chunk, chunk, dtype=np.float64))
        if len(norms) and not low <= norms.min() <= norms.max() <= high:
            odd = norms.max() if norms.max() > high else norms.min()
            return f"a stored vector has norm {odd:.4g}, place descriptors are unit vectors"
    return ""


def _hnsw_damage(hnsw: faiss.HNSW, n: int) -> str:
    """Why the graph of ``n`` nodes could lead a search outside it ("" when it cannot)."""
    levels = faiss.vector_to_array(hnsw.levels)
    offsets = faiss.vector_to_array(hnsw.offsets)
    per_level = faiss.vector_to_array(hnsw.cum_nneighbor_per_level)
    links = hnsw.neighbors.size()
    if len(levels) != n or len(offsets) != n + 1 or (n and (levels.min() < 1 or levels.max() >= len(per_level))):
        return "has levels for another number of nodes"
    if offsets[0] != 0 or not np.array_equal(np.diff(offsets), per_level[levels]) or offsets[-1] != links:
        return "has link tables of the wrong size"
    if links:
        neighbors = faiss.rev_swig_ptr(hnsw.neighbors.data(), links)
        if neighbors.min() < -1 or neighbors.max() >= n:
            return "links to nodes it does not hold"
    entry = int(hnsw.entry_point)
    if (n == 0) != (entry == -1) or not -1 <= entry < n or (n and hnsw.max_level != levels[entry] - 1):
        return "has an entry point outside it"
    return ""


def _ivf_damage(ivf: faiss.IndexIVF, n: int) -> str:
    """Why the inverted lists cannot hold positions 0..n-1 once each ("" when they do)."""
    quantizer = faiss.downcast_index(ivf.quantizer)
    centroids = _stored_rows(quantizer, ivf.nlist)
    if quantizer.ntotal != ivf.nlist or centroids is None or not _finite(centroids):
        return "have a coarse quantiser that is not nlist finite centroids"
    codebook = faiss.downcast_index(ivf)
    if isinstance(codebook, faiss.IndexIVFPQ) and not _finite(faiss.vector_to_array(codebook.pq.centroids)):
        return "have a PQ codebook that is not finite"
    if isinstance(codebook, faiss.IndexIVFScalarQuantizer) and not _finite(faiss.vector_to_array(codebook.sq.trained)):
        return "have scalar quantiser ranges that are not finite"
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    if not isinstance(lists, faiss.ArrayInvertedLists) or lists.nlist != ivf.nlist or lists.code_size != ivf.code_size:
        return "are not nlist lists of this index's codes"
    held = [faiss.rev_swig_ptr(lists.get_ids(i), size).copy() for i in range(ivf.nlist) if (size := lists.list_size(i))]
    ids = np.concatenate(held) if held else np.zeros(0, np.int64)
    if len(ids) != n or (n and (ids.min() < 0 or ids.max() >= n or np.bincount(ids, minlength=n).max() > 1)):
        return f"do not hold positions 0..{n - 1} once each"
    return ""
