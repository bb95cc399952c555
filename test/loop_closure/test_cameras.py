"""Several cameras on one robot, without ROS: places remember their camera, frames of all cameras are
described in one batch, each camera keeps its own consistency history, and a place one camera saw
closes a loop for another. The ROS side (two publishers, one node) is in integration/test_slam_consumers.py."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from support import resign

from vpr_ros.cli import main
from vpr_ros.errors import InputError
from vpr_ros.extractor import load_extractor
from vpr_ros.loop_closure.matches import MatchPrior, camera_prior
from vpr_ros.loop_closure.policy import LoopClosureConfig
from vpr_ros.loop_closure.recognizer import CameraFrame, PlaceRecognizer
from vpr_ros.maps.place_map import PlaceMap
from vpr_ros.preprocess import load_image
from vpr_ros.ros.params import camera_pose, check_camera_names
from vpr_ros.types import Pose, to_ns

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "vpr_ros" / "synth" / "data" / "models" / "demo_salad.pt"
SCENES = REPO / "vpr_ros" / "synth" / "data" / "scenes"


@pytest.fixture(scope="module")
def demo():
    return load_extractor(DEMO, device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {n: load_image(SCENES / f"{n}.jpg") for n in ("building", "graf1", "home", "fruits")}


def unit(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_places_keep_their_camera_through_save_and_load(tmp_path: Path, capsys) -> None:
    pm = PlaceMap.create(16)
    pm.add(unit(np.random.default_rng(0), 3), [(1, 0), (2, 0), (3, 0)], cameras=["front", "rear", "front"])
    pm.add(unit(np.random.default_rng(1), 1), [(4, 0)])
    assert [pm.place(i).camera for i in range(4)] == ["front", "rear", "front", ""]
    pm.save(tmp_path / "m")
    loaded = PlaceMap.load(tmp_path / "m")
    assert [loaded.place(i).camera for i in range(4)] == ["front", "rear", "front", ""]
    assert main(["map-info", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "camera       front: 2 places" in out and "camera       rear: 1 places" in out
    with pytest.raises(InputError, match="cameras has 1 entries for 2"):
        pm.add(unit(np.random.default_rng(2), 2), [(5, 0), (6, 0)], cameras=["front"])


def test_a_map_saved_before_cameras_had_names_still_loads(tmp_path: Path) -> None:
    pm = PlaceMap.create(16)
    pm.add(unit(np.random.default_rng(0), 2), [(1, 0), (2, 0)], sources=["/a", "/b"])
    pm.save(tmp_path / "old")
    con = sqlite3.connect(tmp_path / "old" / "places.sqlite")
    con.execute("ALTER TABLE places DROP COLUMN camera")
    con.commit()
    con.close()
    resign(tmp_path / "old")
    loaded = PlaceMap.load(tmp_path / "old")
    assert [(p.source, p.camera) for p in map(loaded.place, range(2))] == [("/a", ""), ("/b", "")]


class CountingExtractor:
    """The demo extractor, counting how many batches it was asked for."""

    def __init__(self, inner) -> None:
        self.inner, self.batches = inner, []

    def extract(self, images, patch_tokens=False):
        self.batches.append(len(images))
        return self.inner.extract(images, patch_tokens)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_two_cameras_one_batch_and_a_loop_across_cameras(demo, photos) -> None:
    """Front and rear frames arrive together and are described in one batch; 60 s later the rear
    camera sees what the front camera saw at the start: a loop closure between the two cameras."""
    spy = CountingExtractor(demo)
    pm = PlaceMap.create(demo.descriptor_dim, model_id=demo.identity)
    config = LoopClosureConfig(threshold=0.9, exclude_seconds=30.0, exclude_last=0, consistency_k=1)
    rec = PlaceRecognizer(spy, pm, config, "slam")
    for t in np.arange(0.0, 100.0, 0.5):
        rec.poses.add(float(t), np.array([t, 0.0, 0.0]), np.array([0.0, 0.0, 0.0, 1.0]), "odom")
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


def test_camera_prior_is_the_pose_of_the_camera_that_saw_the_place() -> None:
    """A place at (10, 5, 0) heading +y (yaw 90 deg), seen by a camera 0.5 m ahead and 1 m up of the
    base, looking along the base's x axis in the optical convention (z forward)."""
    base = Pose((10.0, 5.0, 0.0), tuple(Rotation.from_euler("z", 90, degrees=True).as_quat()), "map")
    optical = Rotation.from_matrix(np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]]))  # x right, y down, z forward
    mount = Pose((0.5, 0.0, 1.0), tuple(optical.as_quat()), "")
    cov = np.diag([1.0, 1.0, 1.0, 0.1, 0.1, 0.1])
    out = camera_prior(MatchPrior(base, cov), mount)
    assert out.pose.position == pytest.approx((10.0, 5.5, 1.0))
    assert out.pose.frame_id == "map" and out.covariance is cov
    forward = Rotation.from_quat(out.pose.orientation).apply([0.0, 0.0, 1.0])  # the camera looks along +y
    assert forward == pytest.approx([0.0, 1.0, 0.0], abs=1e-9)
    assert camera_prior(MatchPrior(base, cov), None).pose == base


def test_camera_parameters_are_checked() -> None:
    assert camera_pose("camera_pose", [0, 0, 0, 0, 0, 0, 1]) is None
    pose = camera_pose("p", [1, 2, 3, 0, 0, 0, 2])
    assert pose.position == (1.0, 2.0, 3.0) and pose.orientation == (0.0, 0.0, 0.0, 1.0)
    for bad, why in (([0, 0, 0, 1], "7 finite numbers"), ([0, 0, 0, 0, 0, 0, 0], "zero quaternion"),
                     ([0, 0, math.nan, 0, 0, 0, 1], "7 finite numbers")):
        with pytest.raises(InputError, match=why):
            camera_pose("p", bad)
    check_camera_names(["front", "rear_left", "cam2"])
    for names in (["front", "front"], ["2cam"], ["front/left"], [""]):
        with pytest.raises(InputError):
            check_camera_names(names)


def test_a_silent_camera_warns_while_the_other_streams(monkeypatch) -> None:
    """The frame timeout is per camera: the rear camera dying shows even though front frames arrive."""
    from vpr_ros import health as health_module

    now = [1000.0]
    monkeypatch.setattr(health_module.time, "monotonic", lambda: now[0])
    monitor = health_module.HealthMonitor(frame_timeout=5.0, sources={"front": "/front/image_raw",
                                                                      "rear": "/rear/image_raw"})
    monitor.received("front")
    monitor.received("rear")
    for _ in range(10):  # 10 s of front frames only
        now[0] += 1.0
        monitor.received("front")
        monitor.frame(rejected=False)
    status = monitor.status()
    assert status.level == health_module.WARN
    assert status.message == "no frame for 10 s on /rear/image_raw"
    monitor.received("rear")
    assert monitor.status() == health_module.Health(health_module.OK, "")
    now[0] += 6.0  # now both are silent: both named
    assert monitor.status().message == "no frame for 6 s on /front/image_raw; no frame for 6 s on /rear/image_raw"
