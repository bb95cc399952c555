"""Loop-closure policy over a :class:`PlaceMap`: which retrieved places a SLAM back end may trust.

A candidate is accepted only if it passes every gate, in this order:

1. **exclusion window** - it is older than ``exclude_seconds`` before the query and not among
   the ``exclude_last`` most recent places (recent frames always look alike);
2. **threshold** - its cosine similarity is at least ``threshold`` (see :mod:`vpr_ros.loop_closure.calibration`);
3. **geometric verification** (optional) - the top candidates are checked by matching patch
   tokens and RANSAC, re-ranked by inliers, and need ``min_inliers``;
4. **temporal consistency** - at least ``consistency_k`` of the last ``consistency_n`` queries
   (this one included) matched places within ``consistency_seconds`` of this match.

Plain Python and numpy: the node feeds it descriptors and integer-nanosecond stamps; candidates carry their Place.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vpr_ros.errors import InputError
from vpr_ros.maps.place_map import PlaceMap
from vpr_ros.maps.places import Place
from vpr_ros.types import NS_PER_S, ns_to_pair


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
            raise InputError(f"threshold is a cosine similarity in [-1, 1], got {self.threshold}")
        if self.top_k < 1 or self.exclude_last < 0 or (self.exclude_seconds or 0) < 0 or self.min_inliers < 0:
            raise InputError("top_k must be >= 1; exclude_last, exclude_seconds and min_inliers >= 0")
        if not 1 <= self.consistency_k <= self.consistency_n:
            raise InputError(f"need 1 <= consistency_k <= consistency_n, got {self.consistency_k} of "
                             f"{self.consistency_n}")


@dataclass
class Candidate:
    place: Place
    score: float
    inliers: int | None = None  # None: not verified

    @property
    def id(self) -> int:
        return self.place.id


@dataclass
class Decision:
    """Outcome for one query: every candidate retrieved, and the accepted one if any."""

    stamp_ns: int  # the query's
    candidates: list[Candidate] = field(default_factory=list)
    accepted: Candidate | None = None
    reason: str = ""  # why nothing was accepted (or "accepted")


def temporally_consistent(history: Sequence[int | None], match_ns: int, k: int, window: float) -> bool:
    """True if at least ``k`` matches in ``history`` (stamps in nanoseconds, None = no match; the
    current match included) lie within ``window`` seconds of ``match_ns``."""
    return sum(1 for t in history if t is not None and abs(t - match_ns) <= window * NS_PER_S) >= k


class LoopClosureDetector:
    """Stateful policy for a stream of queries against ``place_map``: :meth:`process` each keyframe before
    adding it to the map."""

    def __init__(self, place_map: PlaceMap, config: LoopClosureConfig = LoopClosureConfig()) -> None:
        self.map = place_map
        self.config = config
        self._history: deque[int | None] = deque(maxlen=config.consistency_n)

    def reset(self) -> None:
        self._history.clear()

    def set_config(self, config: LoopClosureConfig) -> None:
        """Change gates at run time (history kept unless its length changes)."""
        if config.consistency_n != self.config.consistency_n:
            self._history = deque(self._history, maxlen=config.consistency_n)
        self.config = config

    def process(self, descriptor: np.ndarray, stamp_ns: int, local_features: object | None = None) -> Decision:
        """Retrieve, gate and (maybe) accept a loop closure for one query descriptor stamped ``stamp_ns``;
        verification needs its ``local_features`` (:class:`vpr_ros.loop_closure.verification.LocalFeatures`)."""
        cfg = self.config
        decision = Decision(int(stamp_ns))
        newest = None if cfg.exclude_seconds is None else ns_to_pair(stamp_ns - round(cfg.exclude_seconds * NS_PER_S))
        scores, ids = self.map.search(np.asarray(descriptor, np.float32).reshape(1, -1), cfg.top_k,
                                      exclude_newer_than=newest, exclude_last=cfg.exclude_last)
        decision.candidates = [Candidate(self.map.place(int(i)), float(s))
                               for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]
        passing = [c for c in decision.candidates if c.score >= cfg.threshold]
        if passing and cfg.verify:
            passing = self._verify(passing, local_features)
        best = passing[0] if passing else None
        self._history.append(best.place.stamp_ns if best else None)
        if best is None:
            decision.reason = ("no candidate outside the exclusion window" if not decision.candidates else
                               "below threshold" if not any(c.score >= cfg.threshold for c in decision.candidates)
                               else f"fewer than {cfg.min_inliers} inliers")
            return decision
        if not temporally_consistent(self._history, best.place.stamp_ns, cfg.consistency_k, cfg.consistency_seconds):
            decision.reason = f"not yet consistent ({cfg.consistency_k} of {cfg.consistency_n} needed)"
            return decision
        decision.accepted, decision.reason = best, "accepted"
        return decision

    def _verify(self, candidates: list[Candidate], query: object | None) -> list[Candidate]:
        from vpr_ros.loop_closure.verification import LocalFeatures, verify

        if query is None:
            raise InputError("verification is enabled but the query has no local features")
        kept = []
        for cand in candidates:
            blob = self.map.local_features_of(cand.id)
            if blob is None:
                cand.inliers = 0  # a place without stored features cannot be verified
                continue
            result = verify(query, LocalFeatures.from_bytes(blob), min_inliers=self.config.min_inliers)
            cand.inliers = result.inliers
            if result.accepted:
                kept.append(cand)
        return sorted(kept, key=lambda c: (-c.inliers, -c.score))
