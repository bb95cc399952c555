"""Place-map index kinds on synthetic descriptors: add throughput, query latency, memory, Recall@1.

Usage: ``python bench/map.py [--sizes 10000 100000 1000000] [--dims 8448 544] [--kinds ...]
[--queries 1000] [--nprobes 32 64] [--quick] [--out results.json]``; prints a markdown table.

Synthetic places (``Synth``, seed 0). Real descriptors have a low intrinsic dimension: place p has
a latent u_p ~ N(0, I_128), and one view of it is

    x = normalise(A (s * u_p + SIGMA_Z e) + (SIGMA_C g_p + SIGMA_V g) / sqrt(D))

with A a fixed 128 x D map with N(0, 1/D) entries, s_i ∝ 1 / (1 + i/8) a decaying latent spectrum
(sum s_i^2 = 1, ~24 effective dimensions), e ~ N(0, I_128) the view's appearance change in latent
space (SIGMA_Z = 0.05: it swamps the latent directions with s_i < 0.05, so the descriptors are
informative in ~45 of them), g_p the place's own isotropic detail (SIGMA_C = 0.1, the same in all
its views) and g per-view isotropic noise (SIGMA_V = 0.5); g_p and g are i.i.d. uniform per
dimension with unit variance (cheap to draw: 1M x 8448 in a minute). The map holds one view per
place; the queries are another view of random places among the last 10,000 added (outside the
training sample except at 10k places), and the ground truth is that place. Exact search then
finds 99.8 / 97.6 / 94.1 % at 10k / 100k / 1M places at 544-d, and 99.9 / 99.9 / 98.3 % at
8448-d (its isotropic detail is less noisy). The pca kinds may beat exact search here: they drop
most of the per-view isotropic noise and little else (the latent is 128-d), a generator property
that real descriptors may not share; so read "top-1 = exact" (the share of queries whose top-1
is the exact one) beside the Recall@1 loss.

How it is measured. Places are generated in chunks of 10,000 (1M x 8448 float32 = 34 GB never
exists) and added to every kind of a (size, dim) configuration through ``PlaceMap.add`` in batches
of 1,000, so trainable kinds train when a growing map would (pca<N> at max(N, 1000) places, ivfpq
and pca<N>ivf at 10,000); "add/s" is places / total add time including that training ("train s").
Latency: single queries (k=10) through ``PlaceMap.search`` with faiss on one thread, as a robot
issues them, for up to 2 s per row (at least 20 queries; flat and fp16 rows at 100k+ take ~20); on
this shared 2-core machine p99 includes scheduling stalls, so the goal below uses p50. Recall@1:
batched search (faiss on all cores) against the ground truth, and the loss against exact search
(positive: worse than exact) and the share of identical top-1 answers; exact is the
flat kind where it runs, else (8448-d at 1M) chunked brute force over the regenerated chunks.
Memory: the index as faiss serialises it (codes, ids, lists, graph), per place, and the growth of
the process's resident memory during adds, per place (noisy below 100k places).

Skipped (listed under the table): kinds whose index would exceed 4 GB (flat, fp16 and hnsw at
8448-d and 1M), hnsw where building it would take over ~2.5 minutes here (~0.4 µs per place and
dimension on 2 cores: 8448-d at 100k, 544-d at 1M), pca<N> (flat) at 8448-d and 1M (1M x 544
shows its flat scan is ~4x over the latency goal) and pca<N> with N >= D. IVF kinds get a row per
``--nprobes`` value (map_index.IVF_NPROBE is what a map uses). The full default run took 14 min
on a 2-core machine, 8 of them at 1M x 8448 (generation 4 min, brute force 1.2 min, ivfpq adds
2 min); ``--quick`` (10k places, both dims, 300 queries, no 8448-d hnsw or ivfpq) about a minute.

Goal: a 1M-place map in <= 2 GB (index) answering in <= 10 ms (p50) with Recall@1 at most 1 point
below exact search; the verdict is printed after the table.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import faiss
import numpy as np

from vpr_ros.maps.index_kinds import HNSW_M, IVF_NPROBE, IndexKind, pq_subquantizers
from vpr_ros.maps.place_map import PlaceMap

LATENT, TAU, SIGMA_Z, SIGMA_C, SIGMA_V = 128, 8.0, 0.05, 0.1, 0.5
CHUNK, ADD_BATCH, K = 10_000, 1_000, 10
LATENCY_S, MIN_LATENCY_QUERIES = 2.0, 20
MAX_INDEX_BYTES, MAX_HNSW_BUILD_S = 4e9, 150
QUICK = False  # --quick: also skip ivfpq at 8448-d (its training alone takes over a minute)
FP16_SCAN = 1.5e11  # fp16 searches without BLAS (~5e9 dims/s here): recall on <= this / (places * dim) queries
GOAL_PLACES, GOAL_BYTES, GOAL_MS, GOAL_LOSS = 1_000_000, 2e9, 10.0, 1.0
U16_STD = 65536 / math.sqrt(12)  # std of a uniform int16
DEFAULT_KINDS = ["flat", "fp16", "pca256", "ivfpq", "hnsw", "pca128ivf", "pca256ivf"]


class Synth:
    """Deterministic synthetic descriptors, regenerated chunk by chunk (see the module docstring)."""

    def __init__(self, dim: int, seed: int = 0) -> None:
        self.dim, self.seed = dim, seed
        rng = np.random.default_rng([seed, dim, 1 << 30])
        self.A = rng.standard_normal((LATENT, dim), dtype=np.float32) / np.float32(math.sqrt(dim))
        s = 1 / (1 + np.arange(LATENT) / TAU)
        self.s = (s / np.linalg.norm(s)).astype(np.float32)

    def _uniform(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """[n, dim] i.i.d. uniform noise, unit variance scaled by 1/sqrt(dim) (unit expected norm)."""
        raw = rng.bit_generator.random_raw(n * self.dim // 4 + 1).view(np.int16)[: n * self.dim]
        return raw.astype(np.float32).reshape(n, self.dim)

    def _places(self, chunk: int, n: int) -> tuple[np.random.Generator, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.dim, chunk])
        u = rng.standard_normal((n, LATENT), dtype=np.float32)
        return rng, u, self._uniform(rng, n)

    def _view(self, u: np.ndarray, detail: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = (u * self.s + SIGMA_Z * rng.standard_normal(u.shape, dtype=np.float32)) @ self.A
        scale = np.float32(1 / (U16_STD * math.sqrt(self.dim)))
        x += (SIGMA_C * scale) * detail
        x += (SIGMA_V * scale) * self._uniform(rng, len(u))
        x /= np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
        return x

    def chunk(self, chunk: int, n: int) -> np.ndarray:
        """Map views of places chunk * CHUNK ... + n - 1."""
        rng, u, detail = self._places(chunk, n)
        return self._view(u, detail, rng)

    def queries(self, chunk: int, n: int, rows: np.ndarray) -> np.ndarray:
        """Other views of the places ``rows`` of a chunk of ``n`` places."""
        _, u, detail = self._places(chunk, n)
        return self._view(u[rows], detail[rows], np.random.default_rng([self.seed, self.dim, chunk, 7]))


def estimated_bytes(kind: IndexKind, dim: int) -> float:
    if kind.ivf:
        return kind.pca_dim or pq_subquantizers(dim)
    if kind.pca_dim:
        return 4 * kind.pca_dim
    return {"flat": 4 * dim, "fp16": 2 * dim, "hnsw": 4 * dim + 10 * HNSW_M}[kind.name]


def skip_reason(name: str, n: int, dim: int) -> str | None:
    kind = IndexKind.parse(name)
    if kind.pca_dim is not None and kind.pca_dim >= dim:
        return f"{name} does not reduce {dim}-d descriptors"
    if (size := estimated_bytes(kind, dim) * n) > MAX_INDEX_BYTES:
        return f"index ~{size / 1e9:.0f} GB > {MAX_INDEX_BYTES / 1e9:.0f} GB"
    if name == "hnsw" and (build := n * dim * 4e-7) > MAX_HNSW_BUILD_S:
        return f"build ~{build / 60:.0f} min on 2 cores"
    if QUICK and kind.name == "ivfpq" and dim > 1024:
        return "--quick: training its product quantizer at this width takes over a minute on 2 cores"
    if kind.pca_dim and not kind.ivf and n >= GOAL_PLACES and dim > 1024:
        return "its flat scan misses the latency goal at 1M (see 544-d) and projecting 1M x D takes minutes"
    return None


def index_bytes(index: faiss.Index) -> int:
    """Serialised size, counted without holding a copy (an 8448-d flat index is GBs)."""
    total = 0

    def count(chunk: bytes) -> None:
        nonlocal total
        total += len(chunk)

    faiss.write_index(index, faiss.PyCallbackIOWriter(count))
    return total


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def latencies(pm: PlaceMap, q: np.ndarray) -> np.ndarray:
    """Seconds per single-query search, faiss on one thread."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        pm.search(q[:1], K)  # warm-up
        out, stop = [], time.perf_counter() + LATENCY_S
        for row in q:
            t0 = time.perf_counter()
            pm.search(row[None], K)
            out.append(time.perf_counter() - t0)
            if len(out) >= MIN_LATENCY_QUERIES and time.perf_counter() > stop:
                break
        return np.array(out)
    finally:
        faiss.omp_set_num_threads(threads)


def run_config(n: int, dim: int, kinds: list[str], nq: int, nprobes: list[int]) -> list[dict]:
    """Build every kind of ``kinds`` over the same ``n`` places in one generation pass and measure."""
    synth = Synth(dim)
    nchunks = math.ceil(n / CHUNK)
    last_n = n - (nchunks - 1) * CHUNK
    rows = np.sort(np.random.default_rng([0, n]).choice(last_n, min(nq, last_n), replace=False))
    truth = (nchunks - 1) * CHUNK + rows
    q = synth.queries(nchunks - 1, last_n, rows)
    maps = {k: PlaceMap.create(dim, index=k) for k in kinds}
    add_s, train_s, rss = dict.fromkeys(kinds, 0.0), dict.fromkeys(kinds, 0.0), dict.fromkeys(kinds, 0)
    brute = "flat" not in kinds
    best, exact = np.full(len(q), -np.inf, np.float32), np.zeros(len(q), np.int64)
    t_gen = t_brute = 0.0
    for c in range(nchunks):
        t0 = time.perf_counter()
        x = synth.chunk(c, min(CHUNK, n - c * CHUNK))
        t_gen += time.perf_counter() - t0
        if brute:  # exact top-1 by chunked brute force
            t0 = time.perf_counter()
            sims = q @ x.T
            arg = sims.argmax(1)
            val = sims[np.arange(len(q)), arg]
            better = val > best
            best[better], exact[better] = val[better], arg[better] + c * CHUNK
            t_brute += time.perf_counter() - t0
            del sims
        for name, pm in maps.items():
            for b in range(0, len(x), ADD_BATCH):
                first = c * CHUNK + b
                batch = x[b : b + ADD_BATCH]
                was_trained, r0, t0 = pm.trained, rss_bytes(), time.perf_counter()
                pm.add(batch, np.arange(first, first + len(batch)) * 0.1)
                dt = time.perf_counter() - t0
                add_s[name] += dt
                rss[name] += rss_bytes() - r0
                if pm.trained and not was_trained:
                    train_s[name] = dt
        del x
    print(
        f"# {n} x {dim}: generated in {t_gen:.0f} s" + (f", brute-force exact in {t_brute:.0f} s" if brute else ""),
        flush=True,
    )
    results = []
    for name, pm in maps.items():
        size = index_bytes(pm.index)
        ivf = faiss.try_extract_index_ivf(pm.index)
        for nprobe in sorted(set(nprobes) | {IVF_NPROBE}) if ivf is not None else [None]:
            if ivf is not None:
                ivf.nprobe = min(nprobe, ivf.nlist)
            sub = np.arange(len(q))
            if name == "fp16":
                sub = sub[: max(100, int(FP16_SCAN / (n * dim)))]
            _, ids = pm.search(q[sub], K)
            if name == "flat":
                exact = ids[:, 0].copy()
            lat = latencies(pm, q) * 1e3
            results.append(
                {
                    "places": n,
                    "dim": dim,
                    "kind": name,
                    "nprobe": nprobe,
                    "nlist": ivf.nlist if ivf else None,
                    "add_per_s": n / add_s[name],
                    "train_s": train_s[name],
                    "p50_ms": float(np.median(lat)),
                    "p99_ms": float(np.percentile(lat, 99)),
                    "latency_queries": len(lat),
                    "index_bytes": size,
                    "bytes_per_place": size / n,
                    "rss_per_place": rss[name] / n,
                    "top1": ids[:, 0],
                    "sub": sub,
                }
            )
            print(
                f"#   {name}{'' if nprobe is None else f' nprobe {nprobe}'}: add {n / add_s[name]:,.0f}/s, "
                f"p50 {np.median(lat):.2f} ms",
                flush=True,
            )
        del pm
        maps[name] = None
    r1_exact = float(np.mean(exact == truth))
    for r in results:
        top1, sub = r.pop("top1"), r.pop("sub")
        r["recall1"] = float(np.mean(top1 == truth[sub]))
        r["exact_recall1"] = r1_exact
        r["loss_points"] = 100 * (float(np.mean(exact[sub] == truth[sub])) - r["recall1"])
        r["agree_exact"] = float(np.mean(top1 == exact[sub]))
        r["exact_from"] = "brute force" if brute else "flat"
        r["queries"] = len(sub)
    return results


def table(rows: list[dict]) -> str:
    head = (
        "| places | dim | kind | nprobe | add/s | train s | p50 ms | p99 ms (n) | B/place | RSS Δ B/place "
        "| index MB | R@1 % | R@1 loss vs exact, pts | top-1 = exact % |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    most = max(r["queries"] for r in rows)
    for r in rows:
        subset = "" if r["queries"] == most else f" ({r['queries']} q)"
        lines.append(
            f"| {r['places']:,} | {r['dim']} | {r['kind']} | {r['nprobe'] or ''} | {r['add_per_s']:,.0f} "
            f"| {r['train_s']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} ({r['latency_queries']}) "
            f"| {r['bytes_per_place']:,.0f} | {r['rss_per_place']:,.0f} | {r['index_bytes'] / 1e6:,.0f} "
            f"| {100 * r['recall1']:.1f}{subset} | {r['loss_points']:+.1f} | {100 * r['agree_exact']:.1f} |"
        )
    return "\n".join(lines)


def meets_goal(r: dict) -> bool:
    return (
        r["places"] >= GOAL_PLACES
        and r["index_bytes"] <= GOAL_BYTES
        and r["p50_ms"] <= GOAL_MS
        and r["loss_points"] <= GOAL_LOSS
    )


def verdict(rows: list[dict]) -> str:
    big = [r for r in rows if r["places"] >= GOAL_PLACES]
    if not big:
        return f"Goal (>= {GOAL_PLACES:,} places) not evaluated: no such size in this run."
    out = [
        f"Goal: {GOAL_PLACES:,} places, index <= {GOAL_BYTES / 1e9:.0f} GB, p50 <= {GOAL_MS:.0f} ms, "
        f"Recall@1 loss <= {GOAL_LOSS:.0f} point vs exact:"
    ]
    for dim in sorted({r["dim"] for r in big}, reverse=True):
        rs = [r for r in big if r["dim"] == dim]
        ok = [r for r in rs if meets_goal(r)]
        for r in ok:
            out.append(
                f"- {dim}-d: MET by {r['kind']}"
                + (f" (nprobe {r['nprobe']})" if r["nprobe"] else "")
                + f": {r['index_bytes'] / 1e6:,.0f} MB, p50 {r['p50_ms']:.1f} ms, "
                f"R@1 {100 * r['recall1']:.1f} % vs exact {100 * r['exact_recall1']:.1f} % "
                f"(loss {r['loss_points']:+.1f} pts, top-1 = exact for {100 * r['agree_exact']:.1f} %), "
                f"adds {r['add_per_s']:,.0f} places/s"
            )
        if not ok:
            out.append(f"- {dim}-d: NOT met. Shortfalls:")
        for r in rs if not ok else []:
            miss = []
            if r["index_bytes"] > GOAL_BYTES:
                miss.append(f"{r['index_bytes'] / 1e9:.1f} GB")
            if r["p50_ms"] > GOAL_MS:
                miss.append(f"p50 {r['p50_ms']:.0f} ms")
            if r["loss_points"] > GOAL_LOSS:
                miss.append(f"loss {r['loss_points']:.1f} pts")
            out.append(f"  - {r['kind']}" + (f" nprobe {r['nprobe']}" if r["nprobe"] else "") + ": " + ", ".join(miss))
    return "\n".join(out)


def render(rows: list[dict], skipped: list[str]) -> str:
    out = table(rows) + ("\n\nSkipped: " + "; ".join(skipped) + "." if skipped else "")
    return out + "\n\n" + verdict(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[8448, 544])
    parser.add_argument("--kinds", nargs="+", default=DEFAULT_KINDS)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--nprobes", type=int, nargs="+", default=[32, 64], help="IVF lists probed per query")
    parser.add_argument("--quick", action="store_true",
                        help="10k places, both dims, 300 queries, no 8448-d hnsw or ivfpq (about a minute on 2 cores)")
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args()
    if args.quick:
        global MAX_HNSW_BUILD_S, QUICK
        args.sizes, args.queries, MAX_HNSW_BUILD_S, QUICK = [10_000], min(args.queries, 300), 30, True
    for k in args.kinds:
        IndexKind.parse(k)
    rows, skipped, t_start = [], [], time.perf_counter()
    for n in args.sizes:
        for dim in args.dims:
            kinds = []
            for k in args.kinds:
                why = skip_reason(k, n, dim)
                if why:
                    skipped.append(f"{k} at {n:,} x {dim}: {why}")
                else:
                    kinds.append(k)
            if kinds:
                rows += run_config(n, dim, kinds, args.queries, args.nprobes)
    print(
        f"\nfaiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; {args.queries} queries; "
        f"total {time.perf_counter() - t_start:.0f} s\n"
    )
    print(render(rows, skipped))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows, "skipped": skipped}, f, indent=1)


if __name__ == "__main__":
    main()
