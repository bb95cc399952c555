"""The node's work without ROS (:class:`PlaceRecognizer`) on the bundled photos, the demo model and real
faiss maps: keyframe gates, decisions, the ``~/matches`` record, slam upkeep, several cameras, which
matches become LIO-SAM pairs, candidates that carry their place, and stamps kept in integer nanoseconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support import liosam_keyframes

from vpr_ros.extractor import load_extractor
from vpr_ros.loop_closure.policy import LoopClosureConfig
from vpr_ros.loop_closure.recognizer import CameraFrame, PlaceRecognizer
from vpr_ros.maps.place_map import PlaceMap
from vpr_ros.preprocess import load_image
from vpr_ros.types import Pose, ns_to_seconds, to_ns

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "vpr_ros" / "synth" / "data" / "models" / "demo_salad.pt"
SCENES = REPO / "vpr_ros" / "synth" / "data" / "scenes"


@pytest.fixture(scope="module")
def demo():
    return load_extractor(DEMO, device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {n: load_image(SCENES / f"{n}.jpg") for n in ("building", "graf1", "home", "fruits", "apple")}


class CountingExtractor:
    """The demo extractor, counting how many batches it was asked for."""

    def __init__(self, inner) -> None:
        self.inner, self.batches = inner, []

    def extract(self, images, patch_tokens=False):
        self.batches.append(len(images))
        return self.inner.extract(images, patch_tokens)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_recognizer_does_the_nodes_work_without_ros(demo, photos) -> None:
    """slam mode: each frame is queried, then added with its odometry pose; a revisit closes a loop."""
    order = [photos[n] for n in ("building", "graf1", "home", "fruits")]
    pm = PlaceMap.create(demo.descriptor_dim, model_id=demo.identity)
    config = LoopClosureConfig(threshold=0.9, exclude_seconds=5.0, exclude_last=0, consistency_k=1)
    rec = PlaceRecognizer(demo, pm, config, "slam", min_period=0.5)
    for t in np.arange(0.0, 60.0, 0.5):
        rec.poses.add(to_ns(t), np.array([t, 0.0, 0.0]), np.array([0.0, 0.0, 0.0, 1.0]), "odom")
    outcomes = []
    for i, t in enumerate([0.0, 0.2, 10.0, 20.0, 30.0, 40.0]):  # the frame at 0.2 s is inside min_period
        stamp = to_ns(t)
        if rec.wants(stamp):
            outcomes.append(rec.process(order[[0, 0, 1, 2, 3, 0][i]], stamp, "cam", "/image"))
    assert rec.skipped["period"] == 1 and len(pm) == 5
    assert [o.added_id for o in outcomes] == [0, 1, 2, 3, 4]
    last = outcomes[-1]
    assert last.decision.accepted is not None and last.decision.accepted.id == 0
    assert last.record["accepted_id"] == 0 and last.record["schema"] == "vpr_ros/matches"
    assert json.loads(json.dumps(last.record))["query"]["stamp"] == {"sec": 40, "nanosec": 0}
    assert last.prior is not None and last.prior.pose.position == (0.0, 0.0, 0.0)
    assert last.prior.covariance.shape == (6, 6) and last.prior.covariance[0, 0] >= 0.25
    assert last.current is not None and last.current.position[0] == pytest.approx(40.0)


def test_two_cameras_one_batch_and_a_loop_across_cameras(demo, photos) -> None:
    """Front and rear frames arrive together and are described in one batch; 60 s later the rear
    camera sees what the front camera saw at the start: a loop closure between the two cameras."""
    spy = CountingExtractor(demo)
    pm = PlaceMap.create(demo.descriptor_dim, model_id=demo.identity)
    config = LoopClosureConfig(threshold=0.9, exclude_seconds=30.0, exclude_last=0, consistency_k=1)
    rec = PlaceRecognizer(spy, pm, config, "slam")
    for t in np.arange(0.0, 100.0, 0.5):
        rec.poses.add(to_ns(t), np.array([t, 0.0, 0.0]), np.array([0.0, 0.0, 0.0, 1.0]), "odom")
    drive = [(0.0, "building", "graf1"), (10.0, "home", "fruits")]
    for t, front, rear in drive:
        frames = [CameraFrame(photos[front], to_ns(t), "front_optical", "/front/image", "front"),
                  CameraFrame(photos[rear], to_ns(t + 0.01), "rear_optical", "/rear/image", "rear")]
        assert all(rec.wants(f.stamp_ns, f.camera) for f in frames)
        outcomes = rec.process_batch(frames)
        assert [o.decision.accepted for o in outcomes] == [None, None]
    assert spy.batches == [2, 2]
    assert [(pm.place(i).camera, pm.place(i).frame_id, pm.place(i).source) for i in range(4)] == [
        ("front", "front_optical", "/front/image"), ("rear", "rear_optical", "/rear/image"),
        ("front", "front_optical", "/front/image"), ("rear", "rear_optical", "/rear/image")]
    (out,) = rec.process_batch([CameraFrame(photos["building"], to_ns(60.0), "rear_optical", "/rear/image", "rear")])
    assert out.decision.accepted is not None and out.decision.accepted.id == 0  # seen by the front camera
    assert out.record["query"]["camera"] == "rear"
    top = out.record["candidates"][0]
    assert top["camera"] == "front" and top["accepted"] and out.record["accepted_id"] == 0
    assert out.added_id == 4 and pm.place(4).camera == "rear"


def test_each_camera_keeps_its_own_gates(demo, photos) -> None:
    """min_period and the consistency history are per camera: a front frame does not use up the rear
    camera's keyframe slot, and a front match does not confirm a rear one."""
    pm = PlaceMap.create(demo.descriptor_dim, model_id=demo.identity)
    config = LoopClosureConfig(threshold=0.9, exclude_seconds=None, exclude_last=0, consistency_k=2,
                               consistency_n=2)
    pm.add(demo.describe([photos["building"]]), [(0, 0)], poses=[Pose((0.0, 0.0, 0.0))], cameras=["front"])
    rec = PlaceRecognizer(demo, pm, config, "localize", min_period=1.0)
    assert rec.wants(to_ns(100.0), "front") and rec.wants(to_ns(100.1), "rear")
    assert not rec.wants(to_ns(100.2), "front")
    (a,) = rec.process_batch([CameraFrame(photos["building"], to_ns(100.0), camera="front")])
    (b,) = rec.process_batch([CameraFrame(photos["building"], to_ns(100.1), camera="rear")])
    assert a.decision.accepted is None and b.decision.accepted is None  # each needs 2 of its own
    (c,) = rec.process_batch([CameraFrame(photos["building"], to_ns(101.0), camera="front")])
    assert c.decision.accepted is not None and c.record["query"]["camera"] == "front"
    assert rec.skipped["period"] == 1


def test_slam_pairs_name_only_places_of_this_run(tmp_path: Path, demo, photos) -> None:
    """A slam run on a map of an earlier run: a revisit of a loaded place is accepted (and reported) but
    makes no pair; a revisit of a place of this run makes [t_current, t_previous], and LIO-SAM's rule maps
    both stamps onto the right keyframes of this run."""
    old = PlaceMap.create(demo.descriptor_dim, model_id=demo.identity)
    old.add(demo.describe([photos["building"], photos["graf1"]]), [(5, 0), (6, 0)])
    old.save(tmp_path / "old.map")
    pm = PlaceMap.load(tmp_path / "old.map", model_id=demo.identity)
    config = LoopClosureConfig(threshold=0.9, consistency_k=1, exclude_seconds=30.0, exclude_last=0)
    rec = PlaceRecognizer(demo, pm, config, "slam")
    assert rec.first_own_id == 2
    run = [(100.0, "home"), (101.0, "fruits"), (102.0, "apple"), (140.0, "building"), (141.0, "home")]
    outcomes = [rec.process(photos[name], to_ns(t)) for t, name in run]
    assert [o.decision.accepted is not None for o in outcomes] == [False, False, False, True, True]
    assert outcomes[3].decision.accepted.id == 0 and outcomes[3].loop_pair is None  # loaded: keyframe 0 for LIO-SAM
    assert outcomes[4].decision.accepted.id == 2 and outcomes[4].loop_pair == (to_ns(141.0), to_ns(100.0))
    keyframes = [t for t, _ in run]  # keyframes of this run, one per frame here
    assert liosam_keyframes([ns_to_seconds(t) for t in outcomes[4].loop_pair], keyframes) == (4, 0)
    # what the same rule makes of a loaded place's stamp: keyframe 0, i.e. the wrong place
    assert liosam_keyframes([140.0, 5.0], keyframes) == (3, 0) and run[0][1] != "building"


def test_localize_mode_makes_no_pairs(demo, photos) -> None:
    pm = PlaceMap.create(demo.descriptor_dim, model_id=demo.identity)
    pm.add(demo.describe([photos["building"]]), [(5, 0)])
    rec = PlaceRecognizer(demo, pm, LoopClosureConfig(threshold=0.9, consistency_k=1, exclude_seconds=None,
                                                      exclude_last=0), "localize")
    out = rec.process(photos["building"], to_ns(500.0))
    assert out.decision.accepted is not None and out.loop_pair is None


def test_candidates_carry_their_place_looked_up_once(tmp_path: Path, demo, photos, monkeypatch) -> None:
    """Each candidate holds the place the detector looked up; the record, the prior and the loop pair are
    built from it, with no further trip into the map."""
    built = PlaceMap.create(demo.descriptor_dim, model_id=demo.identity)
    names = ["building", "graf1", "home", "fruits"]
    built.add(demo.describe([photos[n] for n in names]), [(10 + i, 0) for i in range(4)],
              poses=[Pose((float(i), 2.0 * i, 0.0)) for i in range(4)], frame_ids=["cam"] * 4,
              sources=[f"run.bag#/image {n}" for n in names], cameras=["front", "rear", "front", "rear"])
    built.save(tmp_path / "m")
    pm = PlaceMap.load(tmp_path / "m", demo.identity)
    rec = PlaceRecognizer(demo, pm, LoopClosureConfig(threshold=0.9, consistency_k=1, exclude_seconds=None,
                                                      exclude_last=0, top_k=3), "localize")
    lookups: list[int] = []
    place = PlaceMap.place
    monkeypatch.setattr(pm, "place", lambda pid: lookups.append(int(pid)) or place(pm, pid))
    out = rec.process(photos["home"], to_ns(500.0), "cam", "/image", "front")
    candidates = out.decision.candidates
    assert len(candidates) == 3 and sorted(lookups) == sorted(c.id for c in candidates)  # once each
    assert out.decision.accepted.place == place(pm, 2) and out.decision.accepted.id == 2
    for c, row in zip(candidates, out.record["candidates"], strict=True):
        assert c.place == place(pm, c.id) and row["id"] == c.place.id
        assert row["camera"] == c.place.camera and row["pose"]["position"] == list(c.place.pose.position)
        assert row["stamp"] == {"sec": c.place.stamp[0], "nanosec": c.place.stamp[1]}
    assert out.prior.pose == place(pm, 2).pose


def test_stamps_stay_integer_nanoseconds(demo, photos) -> None:
    """Stamps a float of seconds cannot hold (nanoseconds of a 2023 clock) come out exactly: the decision,
    the record, the places added and the loop pair."""
    pm = PlaceMap.create(demo.descriptor_dim, model_id=demo.identity)
    rec = PlaceRecognizer(demo, pm, LoopClosureConfig(threshold=0.9, consistency_k=1, exclude_seconds=30.0,
                                                      exclude_last=0), "slam")
    first, later = 1_700_000_000_123_456_789, 1_700_000_100_987_654_321
    assert to_ns(ns_to_seconds(first)) != first  # seconds would lose it
    a = rec.process(photos["building"], first)
    b = rec.process(photos["building"], later)
    assert a.decision.stamp_ns == first and b.decision.stamp_ns == later
    assert b.record["query"]["stamp"] == {"sec": 1_700_000_100, "nanosec": 987_654_321}
    assert b.record["candidates"][0]["stamp"] == {"sec": 1_700_000_000, "nanosec": 123_456_789}
    assert b.decision.accepted.place.stamp_ns == first and pm.place(b.added_id).stamp_ns == later
    assert b.loop_pair == (later, first) and all(type(t) is int for t in b.loop_pair)
    # the exclusion window is counted in nanoseconds too: a frame 30 s minus 1 ns later finds nothing
    (c,) = rec.process_batch([CameraFrame(photos["graf1"], first + 30 * 10**9 - 1)])
    assert c.decision.reason == "no candidate outside the exclusion window"
    # and so is the keyframe gate: 1 ns short of min_period is too soon, which seconds could not tell
    gated = PlaceRecognizer(demo, pm, rec.config, "localize", min_period=1.0)
    assert gated.wants(first) and not gated.wants(first + 10**9 - 1) and gated.wants(first + 10**9)
    assert ns_to_seconds(first + 10**9 - 1) - ns_to_seconds(first) == 1.0
