"""Several cameras on one robot, without ROS: places remember their camera, the prior is the pose of the
camera that saw the place, camera parameters are checked. How the recognizer serves several cameras is in
loop_closure/test_recognizer.py, the ROS side (two publishers, one node) in integration/test_slam_consumers.py."""

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
from vpr_ros.loop_closure.matches import MatchPrior, camera_prior
from vpr_ros.maps.place_map import PlaceMap
from vpr_ros.ros.params import camera_pose, check_camera_names
from vpr_ros.types import Pose


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
