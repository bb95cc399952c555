"""Loop-closure policy over a :class:`PlaceMap`: which retrieved places a SLAM back end may trust.

A candidate is accepted only if it passes every gate, in this order:

1. **exclusion window** - it is older than ``exclude_seconds`` before the query and not among
   the ``exclude_last`` most recent places (recent frames always look alike);
2. **threshold** - its cosine similarity is at least ``threshold`` (see :func:`calibrate`);
3. **geometric verification** (optional) - the top candidates are checked by matching patch
   tokens and RANSAC, re-ranked by inliers, and need ``min_inliers``;
4. **temporal consistency** - at least ``consistency_k`` of the last ``consistency_n`` queries
   (this one included) matched places within ``consistency_seconds`` of this match.

Everything here is plain Python and numpy: the ROS node only feeds it descriptors and stamps.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vpr_ros.place_map import PlaceMap, Stamp, to_stamp


@dataclass(frozen=True)
class LoopClosureConfig:
    """Gates of the policy; defaults follow common SLAM practice (LIO-SAM 30 s, VINS 50 frames)."""

    threshold: float = 0.6
    top_k: int = 5
    exclude_seconds: float | None = 30.0  # None: no time window (localising in a map of another run)
    exclude_last: int = 50
    consistency_k: int = 2
    consistency_n: int = 3
    consistency_seconds: float = 10.0
    verify: bool = False
    min_inliers: int = 20

    def __post_init__(self) -> None:
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {self.threshold}")
        if self.top_k < 1 or self.exclude_last < 0 or (self.exclude_seconds or 0) < 0 or self.min_inliers < 0:
            raise ValueError("top_k must be >= 1; exclude_last, exclude_seconds and min_inliers >= 0")
        if not 1 <= self.consistency_k <= self.consistency_n:
            raise ValueError(f"need 1 <= consistency_k <= consistency_n, got {self.consistency_k} of "
                             f"{self.consistency_n}")


@dataclass
class Candidate:
    id: int
    score: float
    stamp: float  # seconds
    inliers: int | None = None  # None: not verified


@dataclass
class Decision:
    """Outcome for one query: every candidate retrieved, and the accepted one if any."""

    stamp: float
    candidates: list[Candidate] = field(default_factory=list)
    accepted: Candidate | None = None
    reason: str = ""  # why nothing was accepted (or "accepted")


def temporally_consistent(history: Sequence[float | None], match_stamp: float, k: int, window: float) -> bool:
    """True if at least ``k`` matches in ``history`` (stamps in seconds, None = no match; the
    current match included) lie within ``window`` seconds of ``match_stamp``."""
    close = sum(1 for t in history if t is not None and abs(t - match_stamp) <= window)
    return close >= k


class LoopClosureDetector:
    """Stateful policy for a stream of queries against ``place_map``.

    Call :meth:`process` once per keyframe, before adding that keyframe to the map.
    """

    def __init__(self, place_map: PlaceMap, config: LoopClosureConfig = LoopClosureConfig()) -> None:
        self.map = place_map
        self.config = config
        self._history: deque[float | None] = deque(maxlen=config.consistency_n)

    def reset(self) -> None:
        self._history.clear()

    def set_config(self, config: LoopClosureConfig) -> None:
        """Change gates at run time (history kept unless its length changes)."""
        if config.consistency_n != self.config.consistency_n:
            self._history = deque(self._history, maxlen=config.consistency_n)
        self.config = config

    def process(self, descriptor: np.ndarray, stamp: Stamp, local_features: object | None = None) -> Decision:
        """Retrieve, gate and (maybe) accept a loop closure for one query descriptor.

        ``local_features`` (a :class:`vpr_ros.verification.LocalFeatures`) is required when the
        config asks for verification.
        """
        cfg = self.config
        sec, nsec = to_stamp(stamp)
        t = sec + nsec * 1e-9
        decision = Decision(t)
        newest = None if cfg.exclude_seconds is None else t - cfg.exclude_seconds
        scores, ids = self.map.search(np.asarray(descriptor, np.float32).reshape(1, -1), cfg.top_k,
                                      exclude_newer_than=newest, exclude_last=cfg.exclude_last)
        stamps = self.map.stamps()
        decision.candidates = [Candidate(int(i), float(s), float(stamps[i]))
                               for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]
        passing = [c for c in decision.candidates if c.score >= cfg.threshold]
        if passing and cfg.verify:
            passing = self._verify(passing, local_features)
        best = passing[0] if passing else None
        self._history.append(best.stamp if best else None)
        if best is None:
            decision.reason = ("no candidate outside the exclusion window" if not decision.candidates else
                               "below threshold" if not any(c.score >= cfg.threshold for c in decision.candidates)
                               else f"fewer than {cfg.min_inliers} inliers")
            return decision
        if not temporally_consistent(self._history, best.stamp, cfg.consistency_k, cfg.consistency_seconds):
            decision.reason = f"not yet consistent ({cfg.consistency_k} of {cfg.consistency_n} needed)"
            return decision
        decision.accepted, decision.reason = best, "accepted"
        return decision

    def _verify(self, candidates: list[Candidate], query: object | None) -> list[Candidate]:
        from vpr_ros.verification import LocalFeatures, verify

        if query is None:
            raise ValueError("verification is enabled but the query has no local features")
        kept = []
        for cand in candidates:
            blob = self.map.local_features.get(cand.id)
            if blob is None:
                cand.inliers = 0  # a place without stored features cannot be verified
                continue
            result = verify(query, LocalFeatures.from_bytes(blob), min_inliers=self.config.min_inliers)
            cand.inliers = result.inliers
            if result.accepted:
                kept.append(cand)
        return sorted(kept, key=lambda c: (-c.inliers, -c.score))


@dataclass(frozen=True)
class Calibration:
    """Result of :func:`calibrate`."""

    threshold: float
    target_fpr: float
    negatives: int  # queries whose best non-revisit score was measured
    quantiles: dict[str, float]  # of the best non-revisit score: p50, p90, p99, max


def calibrate(
    place_map: PlaceMap,
    target_fpr: float = 0.01,
    min_separation_s: float = 60.0,
    min_distance_m: float = 30.0,
    sample: int = 2000,
    k: int = 50,
    seed: int = 0,
) -> Calibration:
    """Threshold for a target false-positive rate, estimated from the map itself.

    Each sampled place is queried against the map; among its top-``k`` results, places at least
    ``min_separation_s`` apart in time and, when both have poses, ``min_distance_m`` apart in
    space count as non-revisits. The threshold is the ``1 - target_fpr`` quantile of each
    query's best non-revisit score: a query with no true revisit then produces a candidate
    above it with probability ``target_fpr``. Queries whose top-``k`` are all revisits contribute
    their ``k``-th score, an upper bound. Without poses, real revisits far apart in time
    are counted as negatives, which makes the threshold conservative (too high), never lax.
    """
    if not 0 < target_fpr < 1:
        raise ValueError(f"target_fpr must be in (0, 1), got {target_fpr}")
    ids = place_map.ids()
    if len(ids) < 10:
        raise ValueError(f"calibration needs at least 10 places, the map has {len(ids)}")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(ids, size=min(sample, len(ids)), replace=False))
    queries = place_map.descriptors(chosen).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    scores, found = place_map.search(queries, min(k, len(ids)))
    stamps, positions = place_map.stamps(), place_map.positions()
    best = []
    for qid, row_s, row_i in zip(chosen, scores, found, strict=True):
        valid = row_i >= 0
        row_s, row_i = row_s[valid], row_i[valid]
        far = np.abs(stamps[row_i] - stamps[qid]) >= min_separation_s
        dist = np.linalg.norm(positions[row_i] - positions[qid], axis=1)
        far &= ~(dist < min_distance_m)  # NaN distance (no pose) does not veto
        if far.any():
            best.append(float(row_s[far].max()))
        elif len(row_s) == k:  # every top-k result is a revisit: the best non-revisit is below them all
            best.append(float(row_s.min()))  # an upper bound, so the threshold errs on the safe side
    if not best:
        raise ValueError("no non-revisit pairs found: the map spans less than min_separation_s")
    best_arr = np.asarray(best)
    threshold = float(np.quantile(best_arr, 1.0 - target_fpr))
    q = {name: float(np.quantile(best_arr, p)) for name, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))}
    q["max"] = float(best_arr.max())
    return Calibration(threshold, target_fpr, len(best_arr), q)
