"""The node's outputs read the way SLAM stacks read them, over real DDS from a separate node process,
with camera frames published best effort (sensor-data QoS) as camera drivers do. The frames are JPEG
(``<topic>/compressed``, what most drivers also offer): small enough for the DDS defaults, so these
tests need no transport profile (raw large frames: ros/test_dds_large_frames.py).

- RTAB-Map ``global_pose`` (geometry_msgs/PoseWithCovarianceStamped, its subscription: reliable, depth
  1), a pose *prior*, published in localize mode only: ``header.frame_id`` is the *sensor* frame
  (RTAB-Map looks up sensor -> base in TF and multiplies it in), ``header.stamp`` the time the pose
  held (it corrects by odometry since then), the pose that sensor's pose in the map frame,
  ``pose.covariance`` a row-major 6x6 over (x, y, z, roll, pitch, yaw) that it inverts into an
  information matrix. A place seen by a camera whose mounting (``camera_pose``) is unknown gives
  none: its base pose would be taken for the camera's.
- LIO-SAM ``lio_loop/loop_closure_detection`` (std_msgs/Float64MultiArray, its subscription: best
  effort, depth 1): exactly two values ``[t_current, t_previous]``, the header stamps in seconds of
  frames it also holds, at least its ``historyKeyframeSearchTimeDiff`` (30 s) apart, mapped onto its
  keyframes by its own rule (current: the oldest keyframe at or after; previous: the newest at or before,
  else keyframe 0). Sent in slam mode only, and never for a place loaded from another run's map.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import CompressedImage
from std_msgs.msg import Float64MultiArray
from support import liosam_keyframes

from vpr_ros.extractor import load_extractor
from vpr_ros.maps.place_map import PlaceMap
from vpr_ros.preprocess import load_image
from vpr_ros.ros.testing import Client, jpeg_msg, odom_msg, start_node, stop_node
from vpr_ros.types import Pose, to_stamp

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "vpr_ros" / "synth" / "data" / "models" / "demo_salad.pt"
SCENES = REPO / "vpr_ros" / "synth" / "data" / "scenes"
NAMES = ["building", "graf1", "home", "fruits", "apple", "board", "cards", "orange"]
RTABMAP_QOS = QoSProfile(depth=1)  # CoreWrapper's global_pose subscription: depth 1, reliable, volatile
LIOSAM_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
# A camera 0.3 m ahead of and 1.2 m above the base, in the optical convention (x right, y down, z forward).
OPTICAL = Rotation.from_matrix(np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]]))
MOUNT = [0.3, 0.0, 1.2, *OPTICAL.as_quat().tolist()]


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {n: cv2.resize(load_image(SCENES / f"{n}.jpg"), (320, 240), interpolation=cv2.INTER_AREA) for n in NAMES}


def handshake(client: Client, pub, proc, expect: int) -> None:
    """Best-effort samples sent before the node's reader has matched our writer are lost: send 1x1 frames
    (rejected, harmless) until the node has rejected ``expect`` frames in all."""
    ping = CompressedImage(format="jpeg")  # no bytes: rejected
    for _ in range(60):
        pub.publish(ping)
        if client.spin_until(lambda: int(client.diag_values().get("frames rejected", 0)) >= expect, 0.5):
            return
        assert proc.poll() is None
    raise AssertionError("the node never received a frame")


def check_rtabmap_message(msg: PoseWithCovarianceStamped, stamp: tuple[int, int], sensor_frame: str,
                          place: Pose, mount: list[float]) -> None:
    """What RTAB-Map does with a global pose, checked on the message."""
    assert msg.header.frame_id == sensor_frame  # looked up in TF as the sensor frame
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == stamp  # odometry correction from this time
    expected = Rotation.from_quat(place.orientation) * Rotation.from_quat(mount[3:])
    position = np.asarray(place.position) + Rotation.from_quat(place.orientation).apply(mount[:3])
    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    assert [p.x, p.y, p.z] == pytest.approx(position.tolist(), abs=1e-9)
    got = Rotation.from_quat([q.x, q.y, q.z, q.w])
    assert (got.inv() * expected).magnitude() < 1e-9
    cov = np.asarray(msg.pose.covariance, np.float64)
    assert cov.shape == (36,) and np.isfinite(cov).all()
    cov = cov.reshape(6, 6)  # row-major, (x, y, z, roll, pitch, yaw)
    assert np.allclose(cov, cov.T) and np.linalg.eigvalsh(cov).min() > 0  # invertible into an information matrix
    assert min(cov[0, 0], cov[1, 1], cov[2, 2]) >= 0.25 and cov[5, 5] > 0


def test_rtabmap_global_pose_from_a_localize_node(tmp_path: Path, photos) -> None:
    """Localize against a map whose places face different ways in the map frame: the accepted match comes
    out on /rtabmap/global_pose as the camera's pose, in the camera's frame, at the image's stamp."""
    demo = load_extractor(DEMO, device="cpu")
    names = NAMES[:6]
    poses = [Pose((5.0 * i, 2.0 * i, 0.0), tuple(Rotation.from_euler("z", 30 * i, degrees=True).as_quat()), "map")
             for i in range(len(names))]
    pm = PlaceMap.create(demo.descriptor_dim, model_id=demo.identity)
    # place 4 was seen by a camera this node does not have: its mounting is unknown
    pm.add(demo.describe([photos[n] for n in names]), [(100 + i, 0) for i in range(len(names))], poses=poses,
           cameras=["", "", "", "", "other", ""])
    pm.save(tmp_path / "m.map")
    proc = start_node({"checkpoint": str(DEMO), "map": str(tmp_path / "m.map"), "device": "cpu", "consistency_k": 1,
                       "threshold": 0.9, "camera_pose": MOUNT},
                      ["-r", "image:=/camera/image_raw", "-r", "~/global_pose:=/rtabmap/global_pose"])
    client = Client(image_topic="/camera/image_raw")
    got: list[PoseWithCovarianceStamped] = []
    client.node.create_subscription(PoseWithCovarianceStamped, "/rtabmap/global_pose", got.append, RTABMAP_QOS)
    camera = client.node.create_publisher(CompressedImage, "/camera/image_raw/compressed", qos_profile_sensor_data)
    try:
        client.wait_ready(proc)
        assert client.spin_until(lambda: client.node.count_publishers("/rtabmap/global_pose") > 0, 30)
        handshake(client, camera, proc, 1)
        for idx, stamp in ((3, (2000, 250_000_000)), (1, (2001, 0))):
            msg = jpeg_msg(photos[names[idx]], stamp, frame_id="front_camera_optical_frame")
            for _ in range(3):  # our reader may match the node's writer a moment after we see it: resend once
                camera.publish(msg)
                if client.spin_until(lambda s=stamp: any(
                        (m.header.stamp.sec, m.header.stamp.nanosec) == s for m in got), 10):
                    break
            else:
                raise AssertionError(f"no global pose for {stamp}; ~/matches: {client.matches}")
            msg_out = next(m for m in got if (m.header.stamp.sec, m.header.stamp.nanosec) == stamp)
            check_rtabmap_message(msg_out, stamp, "front_camera_optical_frame", poses[idx], MOUNT)
        # A driver that leaves header.frame_id empty (and no camera_frame set): no sensor frame to name, so no
        # global pose (RTAB-Map would fail the TF lookup), counted in the diagnostics instead.
        m = client.send_and_wait(jpeg_msg(photos[names[2]], (2002, 0), frame_id=""))
        assert m["accepted_id"] == 2
        assert client.spin_until(lambda: client.diag_values().get("global poses skipped (no camera frame)") == "1", 5)
        assert all(g.header.stamp.sec != 2002 for g in got)
        # A place seen by a camera of unknown mounting: its base pose must not pass for the camera's pose.
        m = client.send_and_wait(jpeg_msg(photos[names[4]], (2003, 0), frame_id="front_camera_optical_frame"))
        assert m["accepted_id"] == 4
        assert client.spin_until(lambda: client.diag_values().get("global poses skipped (no camera_pose)") == "1", 5)
        assert all(g.header.stamp.sec != 2003 for g in got) and len(got) == 2
        assert client.loops == []  # localize mode: no LIO-SAM pairs (the map is another run's)
        # ~/match_pose keeps the place's own (base) pose in the map frame for consumers that want that.
        assert client.spin_until(lambda: len(client.poses) >= 2, 10)
        assert client.poses[0].header.frame_id == "map"
        assert client.poses[0].pose.pose.position.x == pytest.approx(15.0)
    finally:
        client.close()
        code, out = stop_node(proc)
    assert code == 0, out


def test_two_cameras_feed_lio_sam(tmp_path: Path, photos) -> None:
    """One slam node on the map of an earlier run, front and rear cameras on their own topics (two
    best-effort publishers): both are described, places remember their camera, and when the rear camera
    passes a place the front camera saw 50 s earlier, LIO-SAM gets [t_rear_frame, t_front_frame], which its
    own rule maps onto the right keyframes. The front camera's revisit of the earlier run's place is
    reported on ~/matches but makes no pair, and a slam node gives RTAB-Map no global pose."""
    path = tmp_path / "two.map"
    demo = load_extractor(DEMO, device="cpu")
    earlier = PlaceMap.create(demo.descriptor_dim, model_id=demo.identity)
    earlier.add(demo.describe([photos["orange"]]), [(5, 0)], cameras=["front"])
    earlier.save(path)
    params_file = tmp_path / "cameras.yaml"
    params_file.write_text(json.dumps({"vpr_localize": {"ros__parameters": {
        "cameras": ["front", "rear"],
        "front": {"image_topic": "/front/image_raw", "camera_pose": MOUNT},
        "rear": {"image_topic": "/rear/image_raw", "camera_frame": "rear_optical"},
    }}}))
    proc = start_node({"checkpoint": str(DEMO), "device": "cpu", "mode": "slam", "map": str(path),
                       "consistency_k": 1, "threshold": 0.9, "exclude_last": 0},
                      ["-r", "odom:=/odom", "-r", "~/loop_closure:=/lio_loop/loop_closure_detection",
                       "-r", "~/global_pose:=/rtabmap/global_pose"], params_file=params_file)
    client = Client(image_topic="/unused")
    loops: list[list[float]] = []
    got: list[PoseWithCovarianceStamped] = []
    client.node.create_subscription(Float64MultiArray, "/lio_loop/loop_closure_detection",
                                    lambda m: loops.append(list(m.data)), LIOSAM_QOS)
    client.node.create_subscription(PoseWithCovarianceStamped, "/rtabmap/global_pose", got.append, RTABMAP_QOS)
    pubs = {cam: client.node.create_publisher(CompressedImage, f"/{cam}/image_raw/compressed", qos_profile_sensor_data)
            for cam in ("front", "rear")}
    try:
        assert client.spin_until(lambda: proc.poll() is not None or all(
            p.get_subscription_count() > 0 for p in pubs.values()), 60), "node did not subscribe to both cameras"
        assert proc.poll() is None, stop_node(proc)[1]
        handshake(client, pubs["front"], proc, 1)
        handshake(client, pubs["rear"], proc, 2)
        assert client.spin_until(lambda: client.odom.get_subscription_count() > 0, 30)
        # Odometry x = t - 10 around the frames' stamps, a few samples at a time (the writer keeps 50) and
        # repeated (samples sent before the node's reader matched ours are lost; repeats replace themselves).
        times = (*np.arange(9.5, 13.0, 0.25), *np.arange(59.5, 61.0, 0.25))
        odom = [odom_msg(to_stamp(t), float(t - 10)) for t in times]
        for _ in range(5):
            for m in odom:
                client.odom.publish(m)
                client.spin_until(lambda: False, 0.005)
        drive = [(10, "building", "graf1"), (11, "home", "fruits"), (12, "apple", "board")]
        stamps = {}
        for t, front, rear in drive:
            stamps[("front", t)] = (t, 0)
            stamps[("rear", t)] = (t, 100_000_000)
            pubs["front"].publish(jpeg_msg(photos[front], (t, 0), "front_optical"))
            pubs["rear"].publish(jpeg_msg(photos[rear], (t, 100_000_000), "rear_link"))
            assert client.spin_until(lambda n=2 * (t - 9): len(client.matches) >= n, 30), client.matches
        assert all(m["accepted_id"] is None for m in client.matches)
        assert sorted((m["query"]["camera"], m["query"]["frame_id"]) for m in client.matches) == [
            ("front", "front_optical")] * 3 + [("rear", "rear_optical")] * 3  # the rear camera's frame is set
        # 50 s later the rear camera sees what the front camera saw at t = 10 s, and the front camera the
        # place of the earlier run (stamped 5 s: LIO-SAM would take it for its keyframe 0).
        pubs["front"].publish(jpeg_msg(photos["orange"], (60, 0), "front_optical"))
        pubs["rear"].publish(jpeg_msg(photos["building"], (60, 250_000_000), "rear_link"))
        assert client.spin_until(lambda: len(client.matches) >= 8 and loops, 30), (client.matches, loops)
        rear = next(m for m in client.matches if m["query"]["stamp"] == {"sec": 60, "nanosec": 250_000_000})
        assert rear["query"]["camera"] == "rear" and rear["accepted_id"] is not None
        best = rear["candidates"][0]
        assert best["camera"] == "front" and best["accepted"] and best["stamp"] == {"sec": 10, "nanosec": 0}
        front = next(m for m in client.matches if m["query"]["stamp"] == {"sec": 60, "nanosec": 0})
        assert front["accepted_id"] == 0 and front["candidates"][0]["stamp"] == {"sec": 5, "nanosec": 0}
        client.spin_until(lambda: False, 1.5)  # a held-back or wrong pair would arrive meanwhile
        assert loops == [[60.25, 10.0]]  # LIO-SAM: two header stamps of this run, >= 30 s apart
        assert len(loops[0]) == 2 and loops[0][0] - loops[0][1] >= 30.0
        keyframes = sorted(s[0] + s[1] / 1e9 for s in stamps.values()) + [60.0, 60.25]
        current, previous = liosam_keyframes(loops[0], keyframes)
        assert (keyframes[current], keyframes[previous]) == (60.25, 10.0)
        assert got == []  # slam mode: odometry poses are no prior for RTAB-Map
        assert client.spin_until(lambda: int(client.diag_values().get("frames processed", 0)) >= 8, 5)
        values = client.diag_values()
        assert int(values["frames processed"]) == 8 and int(values["frames dropped (busy)"]) == 0
    finally:
        client.close()
        code, out = stop_node(proc)
    assert code == 0, out
    saved = PlaceMap.load(path)
    new = [i for i in saved.ids() if i > 0]
    assert sorted(saved.place(i).camera for i in new) == ["front"] * 4 + ["rear"] * 4
    assert {saved.place(i).source for i in new} == {"/front/image_raw/compressed", "/rear/image_raw/compressed"}
    assert all(math.isfinite(saved.place(i).pose.position[0]) for i in new)
