"""Loop-closure policy on constructed query streams, and threshold calibration."""

from __future__ import annotations

import numpy as np
import pytest

from vpr_ros.loop_closure.calibration import calibrate
from vpr_ros.loop_closure.policy import (
    LoopClosureConfig,
    LoopClosureDetector,
    temporally_consistent,
)
from vpr_ros.maps.place_map import PlaceMap
from vpr_ros.types import Pose, to_ns

DIM = 96


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def noisy(rng: np.random.Generator, x: np.ndarray, sigma: float) -> np.ndarray:
    return unit(x + sigma * rng.standard_normal(x.shape) / np.sqrt(x.shape[-1]))


def drive(detector: LoopClosureDetector, descs: np.ndarray, stamps: list[float]) -> list:
    """SLAM usage: query each keyframe, then add it to the map."""
    out = []
    for d, t in zip(descs, stamps, strict=True):
        out.append(detector.process(d, to_ns(t)))
        detector.map.add(d[None], [t])
    return out


@pytest.fixture
def route():
    rng = np.random.default_rng(7)
    places = unit(rng.standard_normal((100, DIM)))
    return rng, places


def test_revisit_is_accepted_after_consistency_and_never_inside_the_window(route) -> None:
    rng, places = route
    pm = PlaceMap.create(DIM)
    det = LoopClosureDetector(pm, LoopClosureConfig(threshold=0.7, exclude_seconds=30, exclude_last=20,
                                                    consistency_k=2, consistency_n=3, consistency_seconds=5))
    first = drive(det, places, [float(t) for t in range(100)])  # 1 Hz, all places new
    assert all(d.accepted is None for d in first)
    # Standing still: near-identical frames of the newest place stay inside the window.
    still = drive(det, noisy(rng, np.repeat(places[-1:], 10, 0), 0.2), [100.0 + t for t in range(10)])
    assert all(d.accepted is None for d in still)
    # Revisit places 10..29 at t = 300..319 with other views of them.
    revisit = drive(det, noisy(rng, places[10:30], 0.5), [300.0 + t for t in range(20)])
    assert revisit[0].accepted is None and "consistent" in revisit[0].reason  # one match is not enough
    accepted = [(i, d.accepted.id) for i, d in enumerate(revisit) if d.accepted is not None]
    assert len(accepted) >= 18
    assert all(pid == 10 + i for i, pid in accepted)  # the right place every time


def test_isolated_false_match_is_rejected_by_consistency(route) -> None:
    rng, places = route
    pm = PlaceMap.create(DIM)
    pm.add(places, [float(t) for t in range(100)])
    det = LoopClosureDetector(pm, LoopClosureConfig(threshold=0.7, exclude_seconds=10, exclude_last=0,
                                                    consistency_k=2, consistency_n=3, consistency_seconds=5))
    # Matches that jump around the map (t=10, then 60, then 30) never agree in time.
    for pid, t in [(10, 500.0), (60, 501.0), (30, 502.0)]:
        assert det.process(noisy(rng, places[pid], 0.3), to_ns(t)).accepted is None
    # Consistent ones (42, 43) do.
    assert det.process(noisy(rng, places[42], 0.3), to_ns(503.0)).accepted is None
    d = det.process(noisy(rng, places[43], 0.3), to_ns(504.0))
    assert d.accepted is not None and d.accepted.id == 43


def test_threshold_and_window_reasons(route) -> None:
    rng, places = route
    pm = PlaceMap.create(DIM)
    pm.add(places[:50], [float(t) for t in range(50)])
    det = LoopClosureDetector(pm, LoopClosureConfig(threshold=0.9, exclude_seconds=1000, consistency_k=1))
    assert det.process(places[5], to_ns(60.0)).reason == "no candidate outside the exclusion window"
    det.set_config(LoopClosureConfig(threshold=0.99, exclude_seconds=1, exclude_last=0, consistency_k=1))
    d = det.process(noisy(rng, places[5], 1.0), to_ns(60.0))
    assert d.accepted is None and d.reason == "below threshold" and d.candidates[0].id == 5
    det.set_config(LoopClosureConfig(threshold=0.5, exclude_seconds=1, exclude_last=0, consistency_k=1))
    d = det.process(noisy(rng, places[5], 0.3), to_ns(61.0))
    assert d.accepted is not None and d.accepted.id == 5 and d.accepted.place.stamp_ns == to_ns(5.0)
    assert [c.score for c in d.candidates] == sorted((c.score for c in d.candidates), reverse=True)


def test_exclude_last_counts_places_not_seconds(route) -> None:
    rng, places = route
    pm = PlaceMap.create(DIM)
    pm.add(places[:30], [float(t) for t in range(30)])
    cfg = LoopClosureConfig(threshold=0.5, exclude_seconds=0, exclude_last=10, consistency_k=1)
    det = LoopClosureDetector(pm, cfg)
    assert det.process(noisy(rng, places[25], 0.2), to_ns(31.0)).accepted is None  # among the last 10
    assert det.process(noisy(rng, places[15], 0.2), to_ns(31.0)).accepted.id == 15


def test_temporally_consistent_counts_matches_near_the_current_one() -> None:
    assert temporally_consistent([to_ns(10.0), None, to_ns(12.0)], to_ns(12.0), k=2, window=5)
    assert not temporally_consistent([to_ns(10.0), None, to_ns(30.0)], to_ns(30.0), k=2, window=5)
    assert temporally_consistent([None, None, to_ns(7.0)], to_ns(7.0), k=1, window=0)
    assert not temporally_consistent([None, None, None], to_ns(7.0), k=1, window=100)
    assert temporally_consistent([to_ns(10.0), to_ns(12.5)], to_ns(12.5), k=2, window=2.5)  # seconds, exactly


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="consistency_k"):
        LoopClosureConfig(consistency_k=4, consistency_n=3)
    with pytest.raises(ValueError, match="cosine"):
        LoopClosureConfig(threshold=1.5)
    with pytest.raises(ValueError, match="top_k"):
        LoopClosureConfig(top_k=0)


@pytest.mark.parametrize("target", [0.01, 0.05, 0.2])
def test_calibration_hits_the_requested_false_positive_rate(target: float) -> None:
    """Non-revisit queries are fresh random descriptors; the map also holds true revisits
    (later views of early places, close in space) which calibration must not count."""
    rng = np.random.default_rng(3)
    base = unit(rng.standard_normal((2500, DIM)))
    revisits = noisy(rng, base[:500], 0.3)
    pm = PlaceMap.create(DIM)
    pm.add(base, [float(t) for t in range(2500)], poses=[Pose((float(i), 0.0, 0.0)) for i in range(2500)])
    pm.add(revisits, [5000.0 + t for t in range(500)], poses=[Pose((float(i), 0.0, 0.0)) for i in range(500)])
    cal = calibrate(pm, target_fpr=target, min_separation_s=60, min_distance_m=5, sample=3000)
    fresh = unit(rng.standard_normal((8000, DIM)))
    scores, _ = pm.search(fresh, 1)
    measured = float((scores[:, 0] >= cal.threshold).mean())
    assert abs(measured - target) <= max(0.35 * target, 0.006), (target, measured, cal)
    assert cal.negatives >= 2900 and cal.quantiles["p50"] < cal.threshold <= cal.quantiles["max"]


def test_calibration_without_poses_is_conservative() -> None:
    """Without poses the true revisits count as negatives: the threshold can only go up."""
    rng = np.random.default_rng(4)
    base = unit(rng.standard_normal((1000, DIM)))
    with_pose, no_pose = PlaceMap.create(DIM), PlaceMap.create(DIM)
    stamps = [float(t) for t in range(1000)] + [5000.0 + t for t in range(200)]
    descs = np.concatenate([base, noisy(rng, base[:200], 0.3)])
    poses = [Pose((float(i % 1000), 0.0, 0.0)) for i in range(1200)]
    with_pose.add(descs, stamps, poses=poses)
    no_pose.add(descs, stamps)
    a = calibrate(with_pose, 0.05, min_distance_m=5)
    b = calibrate(no_pose, 0.05)
    assert b.threshold > a.threshold + 0.1


def test_calibration_rejects_unusable_maps() -> None:
    pm = PlaceMap.create(DIM)
    with pytest.raises(ValueError, match="at least 10"):
        calibrate(pm)
    pm.add(unit(np.random.default_rng(0).standard_normal((20, DIM))), [float(t) for t in range(20)])
    with pytest.raises(ValueError, match="min_separation_s"):
        calibrate(pm, min_separation_s=100)
    with pytest.raises(ValueError, match="target_fpr"):
        calibrate(pm, target_fpr=0)


def test_verification_rejects_a_higher_scoring_wrong_place_and_accepts_the_true_one() -> None:
    """Real photos: the map holds graf1 and four distractor photos with stored local features;
    the query is graf3 (another viewpoint of graf1) whose global descriptor is made to prefer a
    distractor. Verification re-ranks by inliers and accepts graf1. Tokens: the content-only
    patch embedding of the tiny golden model (see test_verification.py for why)."""
    import json
    from pathlib import Path

    import torch

    from vpr_ros.loop_closure.verification import compress_tokens
    from vpr_ros.models import load_model
    from vpr_ros.preprocess import load_image, preprocess_exact

    repo = Path(__file__).resolve().parents[2]
    golden = repo / "test" / "data" / "golden" / "salad"
    model = load_model(golden / "tiny_salad_state_dict.pt", config=json.loads((golden / "config.json").read_text()))
    names = ["graf1", "baboon", "sudoku", "fruits", "board", "graf3"]
    images = [load_image(repo / "vpr_ros" / "synth" / "data" / "scenes" / f"{n}.jpg") for n in names]
    with torch.no_grad():
        tokens = model.backbone.model.patch_embed(preprocess_exact(images, (322, 322))).numpy()
    feats = compress_tokens(tokens, (322, 322))

    rng = np.random.default_rng(1)
    descs = unit(rng.standard_normal((5, DIM)))
    query = unit(0.6 * descs[1] + 0.5 * descs[0])  # globally closer to the distractor "baboon"
    pm = PlaceMap.create(DIM)
    pm.add(descs, [float(t) for t in range(5)], local_features=[f.to_bytes() for f in feats[:5]])
    cfg = LoopClosureConfig(threshold=0.3, exclude_seconds=0, exclude_last=0, consistency_k=1, top_k=5)
    plain = LoopClosureDetector(pm, cfg).process(query, to_ns(100.0))
    assert plain.accepted.id == 1  # without verification the wrong place wins
    verified = LoopClosureDetector(pm, LoopClosureConfig(**{**cfg.__dict__, "verify": True, "min_inliers": 15}))
    d = verified.process(query, to_ns(100.0), local_features=feats[5])
    assert d.accepted is not None and d.accepted.id == 0 and d.accepted.inliers >= 15
    assert all(c.inliers is not None for c in d.candidates if c.score >= cfg.threshold)
    with pytest.raises(ValueError, match="local features"):
        verified.process(query, to_ns(101.0))


def test_no_time_window_when_localising_in_another_runs_map(route) -> None:
    """exclude_seconds=None: a map recorded later (larger stamps) is still searched."""
    rng, places = route
    pm = PlaceMap.create(DIM)
    pm.add(places[:20], [1e6 + t for t in range(20)])
    det = LoopClosureDetector(pm, LoopClosureConfig(threshold=0.5, exclude_seconds=None, exclude_last=0,
                                                    consistency_k=1))
    assert det.process(noisy(rng, places[3], 0.2), to_ns(10.0)).accepted.id == 3


def test_calibration_warns_when_the_map_cannot_support_the_estimate():
    rng = np.random.default_rng(3)
    base = rng.normal(size=DIM).astype(np.float32)
    alike = base + 1e-2 * rng.normal(size=(40, DIM)).astype(np.float32)  # one view, 40 times, nearly alike
    pm = PlaceMap.create(DIM)
    pm.add(alike / np.linalg.norm(alike, axis=1, keepdims=True), [100.0 * i for i in range(40)])
    cal = calibrate(pm, target_fpr=0.01, min_separation_s=60)
    assert any("too few" in w for w in cal.warnings) and any("all score alike" in w for w in cal.warnings)
    assert cal.to_json()["warnings"] == list(cal.warnings) and cal.places == 40
