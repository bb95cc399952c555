"""The loop-closure threshold for a target false-positive rate, estimated from a map alone."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from vpr_ros.errors import InputError
from vpr_ros.maps.place_map import PlaceMap

SAME_SCORE = 1e-6  # a best non-revisit score this close to 1 is an identical image, not a place
UNIFORM_SPREAD = 0.01  # p99 - p50 of the best non-revisit scores below this: the places are indistinguishable


@dataclass(frozen=True)
class Calibration:
    """Result of :func:`calibrate`."""

    threshold: float
    target_fpr: float
    negatives: int  # queries whose best non-revisit score was measured
    quantiles: dict[str, float]  # of the best non-revisit score: p50, p90, p99, max
    places: int = 0  # in the map when it was calibrated
    min_separation_s: float = 60.0
    min_distance_m: float = 30.0
    warnings: tuple[str, ...] = ()  # why the estimate may not mean much (too few places, too uniform)

    def to_json(self) -> dict:
        """What a map stores about its calibration (``PlaceMap.calibration``)."""
        return {**asdict(self), "warnings": list(self.warnings)}


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

    Each sampled place is queried against the map; results at least ``min_separation_s`` apart in time
    and, when both have poses, ``min_distance_m`` apart in space are non-revisits. The threshold is the
    ``1 - target_fpr`` quantile of each query's best non-revisit score (its ``k``-th score, an upper
    bound, when all top-``k`` are revisits): a query with no true revisit scores above it with
    probability ``target_fpr``. Without poses, revisits far apart in time count as non-revisits, which
    errs towards too high a threshold, never too low.
    """
    if not 0 < target_fpr < 1:
        raise InputError(f"target_fpr must be in (0, 1), got {target_fpr}")
    for name, value in (("min_separation_s", min_separation_s), ("min_distance_m", min_distance_m)):
        if not (math.isfinite(value) and value >= 0):
            raise InputError(f"{name} must be a finite number >= 0, got {value}")
    ids = place_map.ids()
    if len(ids) < 10:
        raise InputError(f"calibration needs at least 10 places, the map has {len(ids)}")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(ids, size=min(sample, len(ids)), replace=False))
    queries = place_map.descriptors(chosen).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    scores, found = place_map.search(queries, min(k, len(ids)))
    stamps, positions = place_map.stamps(), place_map.positions()
    best = []
    for qid, row_s, row_i in zip(chosen, scores, found, strict=True):
        full = int((row_i >= 0).sum()) == k
        valid = (row_i >= 0) & (row_i != qid)  # a place matching itself is no revisit of anything
        row_s, row_i = row_s[valid], row_i[valid]
        far = np.abs(stamps[row_i] - stamps[qid]) >= min_separation_s
        dist = np.linalg.norm(positions[row_i] - positions[qid], axis=1)
        far &= ~(dist < min_distance_m)  # NaN distance (no pose) does not veto
        if far.any():
            best.append(float(row_s[far].max()))
        elif full and len(row_s):  # every top-k result is a revisit: the best non-revisit is below them all
            best.append(float(row_s.min()))  # an upper bound, so the threshold errs on the safe side
    if not best:
        raise InputError("no non-revisit pairs found: the map spans less than min_separation_s")
    best_arr = np.asarray(best)
    threshold = float(np.quantile(best_arr, 1.0 - target_fpr))
    q = {name: float(np.quantile(best_arr, p)) for name, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))}
    q["max"] = float(best_arr.max())
    _check_threshold(threshold, target_fpr, q)
    warnings = []
    if len(best_arr) * target_fpr < 1:
        warnings.append(f"only {len(best_arr)} non-revisit queries: too few to resolve a false-positive rate of "
                        f"{target_fpr:g} (need at least {math.ceil(1 / target_fpr)}); map more places")
    if q["p99"] - q["p50"] < UNIFORM_SPREAD:
        warnings.append(f"the map's places all score alike (p50 {q['p50']:.4f}, p99 {q['p99']:.4f}): the model "
                        "does not tell them apart, so no threshold separates revisits from the rest")
    return Calibration(threshold, target_fpr, len(best_arr), q, len(ids), min_separation_s, min_distance_m,
                       tuple(warnings))


def _check_threshold(threshold: float, target_fpr: float, quantiles: dict[str, float]) -> None:
    """A threshold the map loader accepts (a cosine similarity in [-1, 1], all numbers finite), or an InputError.
    Float rounding scores identical descriptors a hair above 1: when that many non-revisits score so high, no
    threshold reaches the rate, and storing 1.0000001 would make the map unloadable."""
    if not all(math.isfinite(v) for v in (threshold, *quantiles.values())):
        raise InputError(f"calibration gave non-finite scores (threshold {threshold}): the map's descriptors are "
                         "damaged; nothing was stored")
    if threshold > 1.0 - SAME_SCORE:
        raise InputError(
            f"no threshold reaches a false-positive rate of {target_fpr:g}: at least that share of the non-revisit "
            f"queries has a non-revisit place scoring {threshold:.7f}, as identical images do (frames of a robot "
            "standing still, a model that tells nothing apart); nothing was stored. Raise --target-fpr or "
            "--min-separation, or thin the map (build-map --min-distance / --novelty)")
    if threshold < -1.0:
        raise InputError(f"calibration gave a threshold of {threshold:.7f}, below any cosine similarity; "
                         "nothing was stored")
