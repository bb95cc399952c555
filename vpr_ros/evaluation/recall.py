"""Benchmark evaluation: Recall@K on the standard VPR sets, with a resumable descriptor cache.

The protocol is the one of the SALAD reference evaluation: an exact ``IndexFlatL2`` over the
reference (database) descriptors, the top ``max(K)`` references per query, and

    Recall@K = (# queries whose top-K holds at least one positive) / (# queries),

counting queries without any positive as misses. For unit vectors squared L2 ranks like cosine.

Descriptors are cached on disk per (dataset, split, model identity, image size, precision) in
chunks of ``chunk_size`` images, each written atomically (temporary file + rename) and listed
with its SHA-256 in a small ``index.json``: an interrupted run resumes at the first missing
chunk, a repeated run does no model work, and a damaged chunk is simply computed again.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np
import torch
from tqdm import tqdm

from vpr_ros.errors import InputError, ModelOutputError
from vpr_ros.io.files import write_atomic
from vpr_ros.preprocess import load_image, preprocess_exact

if TYPE_CHECKING:
    from vpr_ros.evaluation.datasets import EvalDataset
    from vpr_ros.extractor import DescriptorExtractor

LOG = logging.getLogger(__name__)

K_EVAL = (1, 5, 10, 15, 20, 25)  # reference eval.py
K_TRAIN_VALIDATION = (1, 5, 10, 15, 20, 50, 100)  # reference validation during training
CACHE_FORMAT = "vpr_ros.descriptor_cache/1"


# -- retrieval and recall ---------------------------------------------------------------------------


def search_topk(db: np.ndarray, queries: np.ndarray, k: int, gpu: bool | None = None) -> np.ndarray:
    """Exact L2 search (``faiss.IndexFlatL2``): indices of the ``k`` nearest db rows, [nq, k] int64.

    ``gpu=None`` uses a GPU when faiss was built with GPU support and sees one. Rows beyond the
    database size are -1.
    """
    db = np.ascontiguousarray(db, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if db.ndim != 2 or queries.ndim != 2 or db.shape[1] != queries.shape[1]:
        raise InputError(f"db {db.shape} and queries {queries.shape} must be 2-D with the same width")
    index: Any = faiss.IndexFlatL2(db.shape[1])
    if gpu is None:
        gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if gpu:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(db)
    _, predictions = index.search(queries, k)
    return predictions.astype(np.int64, copy=False)


def recalls_from_predictions(
    predictions: np.ndarray, positives: Sequence[np.ndarray], ks: Sequence[int] = K_EVAL
) -> dict[int, float]:
    """Recall@K from ranked predictions ``[nq, >= max(ks)]`` and per-query positive db indices.

    Negative entries are padding (faiss returns -1 when the database has fewer than K rows, a
    place map when it finds fewer): they never count as hits, even against a ground truth that
    itself holds -1, and neither do negative "positives".
    """
    ks = sorted(int(k) for k in ks)
    if len(positives) != len(predictions):
        raise InputError(f"{len(positives)} positive lists for {len(predictions)} queries")
    correct = np.zeros(len(ks))
    for pred, pos in zip(predictions, positives, strict=True):
        pred = np.asarray(pred)
        pos = np.asarray(pos).reshape(-1)
        for i, k in enumerate(ks):
            if np.any(np.isin(pred[:k], pos[pos >= 0]) & (pred[:k] >= 0)):
                correct[i:] += 1  # a hit at K is a hit at every larger K
                break
    recall = correct / max(len(predictions), 1)
    return {k: float(r) for k, r in zip(ks, recall, strict=True)}


def recall_at_k(
    db: np.ndarray, queries: np.ndarray, positives: Sequence[np.ndarray], ks: Sequence[int] = K_EVAL
) -> dict[int, float]:
    """Recall@K of ``queries`` against ``db`` (exact search), as the reference evaluation."""
    return recalls_from_predictions(search_topk(db, queries, max(ks)), positives, ks)


def index_predictions(db: np.ndarray, queries: np.ndarray, k: int, kind: str) -> np.ndarray:
    """Top-``k`` db rows per query from a :class:`vpr_ros.maps.place_map.PlaceMap` of index ``kind``."""
    from vpr_ros.maps.place_map import PlaceMap

    place_map = PlaceMap.create(db.shape[1], index=kind)
    place_map.add(db, stamps=np.arange(len(db), dtype=np.float64))  # ids are 0..n-1 = db rows
    return place_map.search(queries, k)[1]


# -- descriptor cache -------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 over a model's parameters and buffers (for models not loaded from a file)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def extractor_identity(extractor: DescriptorExtractor) -> dict[str, Any]:
    """What decides the descriptors: the model's identity (its weights hashed when it was not read from a
    file), and the precision and resize mode it runs with."""
    model = extractor.identity  # image_size as a list: the cache compares this with its JSON copy
    return {"arch": model.arch, "image_size": list(model.image_size), "descriptor_dim": model.descriptor_dim,
            "checkpoint_sha256": model.checkpoint_sha256 or weights_digest(extractor.model),
            "precision": extractor.precision, "resize": extractor.resize}


class DescriptorCache:
    """Descriptors of one image list, stored as ``chunk_<i>.npy`` files under one folder.

    The folder name is derived from the dataset, split and a hash of the identity and the image
    list, so another model, size or list never reads these descriptors.
    """

    def __init__(self, root: Path, dataset: str, split: str, identity: dict[str, Any],
                 images: Sequence[str], chunk_size: int = 512) -> None:
        if chunk_size < 1:
            raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
        self.n_images = len(images)
        self.chunk_size = chunk_size
        self.dim = int(identity["descriptor_dim"])
        key = {"identity": identity, "images_sha256": _sha256("\n".join(images).encode()), "chunk_size": chunk_size}
        self.key = key
        digest = _sha256(json.dumps(key, sort_keys=True).encode())[:16]
        self.dir = Path(root) / f"{dataset}.{split}.{digest}"
        self._index_path = self.dir / "index.json"
        self.chunks: dict[int, str] = self._read_index()

    def _read_index(self) -> dict[int, str]:
        try:
            data = json.loads(self._index_path.read_text())
        except (OSError, ValueError):
            return {}
        if data.get("format") != CACHE_FORMAT or data.get("key") != self.key:
            return {}
        return {int(i): sha for i, sha in data.get("chunks", {}).items()}

    def _write_index(self) -> None:
        data = {"format": CACHE_FORMAT, "key": self.key, "n_images": self.n_images,
                "chunks": {str(i): sha for i, sha in sorted(self.chunks.items())}}
        write_atomic(self._index_path, json.dumps(data, indent=1).encode())

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n_images / self.chunk_size)

    def chunk_range(self, i: int) -> range:
        return range(i * self.chunk_size, min((i + 1) * self.chunk_size, self.n_images))

    def _chunk_path(self, i: int) -> Path:
        return self.dir / f"chunk_{i:06d}.npy"

    def load_chunk(self, i: int) -> np.ndarray | None:
        """The chunk's descriptors, or None when it is missing or fails its checks."""
        sha = self.chunks.get(i)
        if sha is None:
            return None
        try:
            data = self._chunk_path(i).read_bytes()
            if _sha256(data) != sha:
                raise InputError("checksum mismatch")
            arr = np.load(io.BytesIO(data), allow_pickle=False)
            if arr.shape != (len(self.chunk_range(i)), self.dim) or arr.dtype != np.float32:
                raise InputError(f"shape {arr.shape} {arr.dtype}")
            if not np.isfinite(arr).all():  # written before non-finite rows were refused
                raise InputError("non-finite descriptors")
        except (OSError, ValueError) as exc:
            LOG.warning("descriptor cache chunk %s unusable (%s): computing it again", self._chunk_path(i), exc)
            self.chunks.pop(i, None)
            return None
        return arr

    def save_chunk(self, i: int, descriptors: np.ndarray) -> None:
        descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
        if descriptors.shape != (len(self.chunk_range(i)), self.dim):
            raise InputError(f"chunk {i} needs {len(self.chunk_range(i))} x {self.dim}, got {descriptors.shape}")
        bad = np.flatnonzero(~np.isfinite(descriptors).all(axis=1))
        if bad.size:  # a cached NaN would poison every later run of this model on these images
            rows = [self.chunk_range(i)[j] for j in bad[:5]]
            raise ModelOutputError(f"refusing to cache non-finite descriptors of images {rows} (chunk {i})")
        buf = io.BytesIO()
        np.save(buf, descriptors)
        data = buf.getvalue()
        write_atomic(self._chunk_path(i), data)
        self.chunks[i] = _sha256(data)
        self._write_index()


def _load_batch(paths: Sequence[Path], extractor: DescriptorExtractor, pool: ThreadPoolExecutor) -> torch.Tensor:
    """Decode (+ resize + normalise for ``exact``) images in parallel threads (PIL releases the GIL)."""
    if extractor.resize == "fast":  # decode here, resize on the extractor's device
        return extractor.preprocess(list(pool.map(load_image, paths)))
    return torch.cat(list(pool.map(lambda p: preprocess_exact([p], extractor.image_size), paths)))


def _check_finite(descriptors: np.ndarray, paths: Sequence[Path], precision: str) -> None:
    """Refuse NaN / inf descriptors before they are cached or searched: faiss would rank them
    arbitrarily and the recall table would look plausible."""
    bad = np.flatnonzero(~np.isfinite(descriptors).all(axis=1))
    if bad.size:
        names = ", ".join(str(paths[j]) for j in bad[:5]) + (f" and {bad.size - 5} more" if bad.size > 5 else "")
        hint = f"; try --precision fp32 (now {precision})" if precision != "fp32" else ""
        raise ModelOutputError(f"the model gave non-finite (NaN/inf) descriptors for {bad.size} image(s): "
                               f"{names}; nothing was cached for them{hint}")


def describe_cached(extractor: DescriptorExtractor, paths: Sequence[Path], cache: DescriptorCache,
                    desc: str = "describe", workers: int | None = None) -> np.ndarray:
    """Descriptors of ``paths`` (row i = image i), computing only the chunks ``cache`` lacks.

    Images are loaded one batch ahead of the model in a thread pool; each finished chunk is
    saved before the next one starts.
    """
    if len(paths) != cache.n_images:
        raise InputError(f"cache holds {cache.n_images} images, got {len(paths)} paths")
    out = np.zeros((len(paths), cache.dim), np.float32)
    todo = []
    for i in range(cache.n_chunks):
        arr = cache.load_chunk(i)
        if arr is None:
            todo.append(i)
        else:
            out[cache.chunk_range(i).start : cache.chunk_range(i).stop] = arr
    if not todo:
        return out
    bs = extractor.batch_size
    batches = [(i, range(s, min(s + bs, r.stop))) for i in todo for r in [cache.chunk_range(i)]
               for s in range(r.start, r.stop, bs)]
    n_todo = sum(len(cache.chunk_range(i)) for i in todo)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool, ThreadPoolExecutor(1) as prefetch, \
            tqdm(total=n_todo, desc=desc, unit="img", leave=False, dynamic_ncols=True) as bar:
        def load(rows: range) -> Future[torch.Tensor]:
            return prefetch.submit(_load_batch, [paths[j] for j in rows], extractor, pool)

        pending = load(batches[0][1])
        for b, (chunk, rows) in enumerate(batches):
            batch = pending.result()
            if b + 1 < len(batches):
                pending = load(batches[b + 1][1])
            descriptors, _ = extractor.forward(batch.to(extractor.device, non_blocking=True))
            out[rows.start : rows.stop] = descriptors.cpu().numpy()
            _check_finite(out[rows.start : rows.stop], [paths[j] for j in rows], extractor.precision)
            bar.update(len(rows))
            r = cache.chunk_range(chunk)
            if rows.stop == r.stop:
                cache.save_chunk(chunk, out[r.start : r.stop])
    return out


# -- evaluation -------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    """Recall@K of one dataset (``recalls`` is None when the set has no ground truth)."""

    dataset: str
    n_db: int
    n_queries: int
    ks: tuple[int, ...]
    recalls: dict[int, float] | None
    predictions: np.ndarray = field(repr=False)  # [nq, max(ks)] db indices, exact search
    index_kind: str | None = None
    index_recalls: dict[int, float] | None = None
    describe_seconds: float = 0.0

    @property
    def index_loss(self) -> dict[int, float] | None:
        """Exact minus compressed-index recall, per K (positive = the index loses recall)."""
        if self.recalls is None or self.index_recalls is None:
            return None
        return {k: self.recalls[k] - self.index_recalls[k] for k in self.ks}

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "n_db": self.n_db, "n_queries": self.n_queries, "ks": list(self.ks),
            "recalls": _str_keys(self.recalls), "index_kind": self.index_kind,
            "index_recalls": _str_keys(self.index_recalls), "index_loss": _str_keys(self.index_loss),
            "describe_seconds": round(self.describe_seconds, 3),
        }


def _str_keys(d: dict[int, float] | None) -> dict[str, float] | None:
    return None if d is None else {str(k): v for k, v in d.items()}


def evaluate(
    extractor: DescriptorExtractor,
    dataset: EvalDataset,
    cache_dir: Path,
    ks: Sequence[int] = K_EVAL,
    index_kind: str | None = None,
    chunk_size: int = 512,
) -> EvalResult:
    """Describe the dataset (through the cache) and measure Recall@K; optionally also with ``index_kind``."""
    ks = tuple(sorted(int(k) for k in ks))
    identity = extractor_identity(extractor)
    t0 = time.perf_counter()
    descs = {}
    for split, names, paths in (("db", dataset.db_images, dataset.db_paths()),
                                ("queries", dataset.q_images, dataset.q_paths())):
        cache = DescriptorCache(cache_dir, dataset.name, split, identity, names, chunk_size)
        descs[split] = describe_cached(extractor, paths, cache, desc=f"{dataset.name} {split}")
    seconds = time.perf_counter() - t0
    db, queries = descs["db"], descs["queries"]
    predictions = search_topk(db, queries, max(ks))
    recalls = None if dataset.positives is None else recalls_from_predictions(predictions, dataset.positives, ks)
    index_recalls = None
    if index_kind is not None and dataset.positives is not None:
        index_recalls = recalls_from_predictions(index_predictions(db, queries, max(ks), index_kind),
                                                 dataset.positives, ks)
    return EvalResult(dataset.name, len(db), len(queries), ks, recalls, predictions, index_kind, index_recalls,
                      seconds)


def write_msls_predictions(path: Path, dataset: EvalDataset, predictions: np.ndarray) -> None:
    """MSLS challenge submission: per query one line, the query key then its ranked db keys.

    Keys are file stems (the Mapillary image keys), space-separated.
    """
    db_keys = [Path(name).stem for name in dataset.db_images]
    lines = [" ".join([Path(q_name).stem, *(db_keys[j] for j in pred if j >= 0)])
             for q_name, pred in zip(dataset.q_images, predictions, strict=True)]
    write_atomic(path, ("\n".join(lines) + "\n").encode())


# -- result tables ----------------------------------------------------------------------------------


def _rows(results: Sequence[EvalResult], percent: bool) -> tuple[list[str], list[list[str]]]:
    ks = sorted({k for r in results for k in r.ks})
    header = ["dataset", "index", "queries", "db", *(f"R@{k}" for k in ks)]

    def cells(recalls: dict[int, float] | None) -> list[str]:
        if recalls is None:
            return ["-"] * len(ks)
        return [("-" if k not in recalls else f"{100 * recalls[k]:.2f}" if percent else f"{recalls[k]:.6f}")
                for k in ks]

    rows = []
    for r in results:
        rows.append([r.dataset, "exact", str(r.n_queries), str(r.n_db), *cells(r.recalls)])
        if r.index_recalls is not None:  # no index row for a set without ground truth
            rows.append([r.dataset, r.index_kind, str(r.n_queries), str(r.n_db), *cells(r.index_recalls)])
    return header, rows


def format_table(results: Sequence[EvalResult]) -> str:
    """Aligned console table, recalls in percent."""
    header, rows = _rows(results, percent=True)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    fmt = lambda row: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)  # noqa: E731
                                for i, (c, w) in enumerate(zip(row, widths, strict=True)))
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)])


def format_markdown(results: Sequence[EvalResult]) -> str:
    header, rows = _rows(results, percent=True)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def write_results(results: Sequence[EvalResult], out_dir: Path, meta: dict[str, Any] | None = None) -> list[Path]:
    """Write ``results.csv`` (fractions), ``results.json`` and ``results.md`` (percent) into ``out_dir``."""
    out_dir = Path(out_dir)
    header, rows = _rows(results, percent=False)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    files = {
        "results.csv": buf.getvalue(),
        "results.json": json.dumps({"meta": meta or {}, "results": [r.to_json() for r in results]}, indent=1) + "\n",
        "results.md": format_markdown(results),
    }
    for name, text in files.items():
        write_atomic(out_dir / name, text.encode())
    return [out_dir / name for name in files]

