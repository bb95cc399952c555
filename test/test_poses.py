"""PoseBuffer interpolation, tolerances, ordering, pruning and thread safety; real pose messages."""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, PoseStamped, PoseWithCovarianceStamped, Quaternion
from geometry_msgs.msg import Pose as PoseMsg
from nav_msgs.msg import Odometry
from rosbags.typesys import Stores, get_typestore
from std_msgs.msg import Header

from vpr_ros.errors import InputError
from vpr_ros.poses import MAX_POSITION_M, PoseBuffer, pose_from_msg, slerp
from vpr_ros.types import NS_PER_S, Pose, to_ns

T0 = 1_700_000_000.0  # realistic epoch stamps (seconds, made nanoseconds by to_ns); atol=1e-5 below


def yaw_quat(yaw: float) -> np.ndarray:
    return np.array([0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)])


def yaw_of(pose: Pose) -> float:
    x, y, z, w = pose.orientation
    return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def test_exact_at_samples_and_linear_between() -> None:
    buf = PoseBuffer()
    buf.add(to_ns(T0), [0, 0, 0], yaw_quat(0), "odom")
    buf.add(to_ns(T0 + 0.2), [2, -4, 1], yaw_quat(0), "odom")
    assert buf.lookup(to_ns(T0)) == Pose((0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0), "odom")
    assert buf.lookup(to_ns(T0 + 0.2)).position == (2.0, -4.0, 1.0)
    mid = buf.lookup(to_ns(T0 + 0.1))
    np.testing.assert_allclose(mid.position, (1.0, -2.0, 0.5), atol=1e-5)
    np.testing.assert_allclose(buf.lookup(to_ns(T0 + 0.05)).position, (0.5, -1.0, 0.25), atol=1e-5)
    assert mid.frame_id == "odom"


def test_slerp_of_90_degree_yaw_gives_45_at_half() -> None:
    buf = PoseBuffer()
    buf.add(to_ns(T0), [0, 0, 0], yaw_quat(0), "odom")
    buf.add(to_ns(T0 + 0.4), [0, 0, 0], yaw_quat(math.pi / 2), "odom")
    half = buf.lookup(to_ns(T0 + 0.2))
    assert yaw_of(half) == pytest.approx(math.pi / 4, abs=1e-5)
    assert np.linalg.norm(half.orientation) == pytest.approx(1.0)
    assert yaw_of(buf.lookup(to_ns(T0 + 0.1))) == pytest.approx(math.pi / 8, abs=1e-5)  # constant angular rate


def test_slerp_takes_the_short_way_for_negated_quaternions() -> None:
    q0, q1 = yaw_quat(math.radians(170)), yaw_quat(math.radians(-170))  # 20 degrees apart through 180
    q1_neg = -q1
    for end in (q1, q1_neg):
        mid = slerp(q0, end, 0.5)
        # 180 degrees, not 0: the short way
        assert abs(math.atan2(2 * mid[3] * mid[2], 1 - 2 * mid[2] ** 2)) == pytest.approx(math.pi, abs=1e-9)
    np.testing.assert_allclose(np.abs(slerp(q1, q1_neg, 0.3)), np.abs(q1), atol=1e-12)  # same rotation


def test_nearly_parallel_quaternions_use_nlerp() -> None:
    q0, q1 = yaw_quat(0.0), yaw_quat(1e-7)
    q = slerp(q0, q1, 0.5)
    assert np.isfinite(q).all() and np.linalg.norm(q) == pytest.approx(1.0)
    assert 2 * math.atan2(q[2], q[3]) == pytest.approx(5e-8, rel=1e-3)


def test_gap_too_long_gives_none_but_close_samples_still_count() -> None:
    buf = PoseBuffer(max_gap_s=0.5)
    buf.add(to_ns(T0), [0, 0, 0], yaw_quat(0), "odom")
    buf.add(to_ns(T0 + 2.0), [10, 0, 0], yaw_quat(0), "odom")
    assert buf.lookup(to_ns(T0 + 1.0)) is None  # no interpolation across a 2 s dropout
    assert buf.lookup(to_ns(T0 + 0.2)).position == (0.0, 0.0, 0.0)  # within max_gap/2 of a sample
    assert buf.lookup(to_ns(T0 + 1.9)).position == (10.0, 0.0, 0.0)


def test_gap_at_the_limit_interpolates() -> None:
    buf = PoseBuffer(max_gap_s=0.5)
    buf.add(to_ns(T0), [0, 0, 0], yaw_quat(0), "odom")
    buf.add(to_ns(T0 + 0.5), [1, 0, 0], yaw_quat(0), "odom")
    assert buf.lookup(to_ns(T0 + 0.4)).position == pytest.approx((0.8, 0.0, 0.0), abs=1e-5)


def test_outside_the_range_uses_nearest_within_half_gap() -> None:
    buf = PoseBuffer(max_gap_s=0.5)
    assert buf.lookup(to_ns(T0)) is None  # empty
    buf.add(to_ns(T0), [1, 2, 3], yaw_quat(0.3), "odom")
    buf.add(to_ns(T0 + 0.1), [2, 2, 3], yaw_quat(0.3), "odom")
    assert buf.lookup(to_ns(T0 + 0.1 + 0.24)).position == (2.0, 2.0, 3.0)  # odometry lagging the image
    assert buf.lookup(to_ns(T0 - 0.24)).position == (1.0, 2.0, 3.0)
    assert buf.lookup(to_ns(T0 + 0.1 + 0.26)) is None
    assert buf.lookup(to_ns(T0 - 0.26)) is None


def test_no_interpolation_across_a_frame_change() -> None:
    buf = PoseBuffer()
    buf.add(to_ns(T0), [0, 0, 0], yaw_quat(0), "odom")
    buf.add(to_ns(T0 + 0.4), [5, 0, 0], yaw_quat(0), "map")
    assert buf.lookup(to_ns(T0 + 0.1)) == Pose((0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0), "odom")
    assert buf.lookup(to_ns(T0 + 0.3)).frame_id == "map"


def test_out_of_order_adds_and_duplicates() -> None:
    ordered, shuffled = PoseBuffer(), PoseBuffer()
    stamps = T0 + np.arange(50) * 0.05
    rng = np.random.default_rng(1)
    for s in stamps:
        ordered.add(to_ns(s), [s - T0, 0, 0], yaw_quat(s - T0), "odom")
    for s in rng.permutation(stamps):
        shuffled.add(to_ns(s), [s - T0, 0, 0], yaw_quat(s - T0), "odom")
    for q in T0 + rng.uniform(-0.1, 2.6, 100):
        assert ordered.lookup(to_ns(q)) == shuffled.lookup(to_ns(q))
    shuffled.add(to_ns(stamps[10]), [99, 0, 0], yaw_quat(0), "odom")  # same stamp replaces
    assert len(shuffled) == 50 and shuffled.lookup(to_ns(stamps[10])).position == (99.0, 0.0, 0.0)
    assert shuffled.lookup(to_ns(T0 + 0.6125)).position[0] == pytest.approx(0.6125, abs=1e-5)


def test_pruning_keeps_only_max_age() -> None:
    buf = PoseBuffer(max_age_s=1.0)
    for k in range(30):
        buf.add(to_ns(T0 + k * 0.1), [k, 0, 0], yaw_quat(0), "odom")
    oldest, newest = buf.span()
    assert newest == to_ns(T0 + 2.9) and newest - oldest <= NS_PER_S and len(buf) == 11
    assert buf.lookup(to_ns(T0)) is None
    buf.add(to_ns(T0), [0, 0, 0], yaw_quat(0), "odom")  # a late sample older than max_age is dropped
    assert len(buf) == 11


def test_invalid_samples_are_rejected() -> None:
    buf = PoseBuffer()
    with pytest.raises(ValueError):
        buf.add(to_ns(T0), [0, 0], yaw_quat(0), "odom")
    with pytest.raises(ValueError):
        buf.add(to_ns(T0), [0, 0, math.nan], yaw_quat(0), "odom")
    with pytest.raises(ValueError):
        buf.add(to_ns(T0), [0, 0, 0], [0, 0, 0, 0], "odom")
    with pytest.raises(ValueError):
        buf.add(T0 + 0.5, [0, 0, 0], yaw_quat(0), "odom")  # seconds are not nanoseconds
    buf.add(to_ns(T0), [0, 0, 0], [0, 0, 0, 2.0], "odom")  # normalised
    assert buf.lookup(to_ns(T0)).orientation == (0.0, 0.0, 0.0, 1.0)


def test_absurd_positions_are_refused_so_every_lookup_is_finite() -> None:
    """Odometry of +-1e308 was accepted and interpolated to inf, and the place map that stored it could no longer
    be loaded. Such samples are refused (callers count them); between the largest accepted ones a lookup stays
    finite, and so does a quaternion of huge but finite components."""
    buf = PoseBuffer(max_gap_s=1.0)
    for stamp, x in ((T0, -1e308), (T0 + 0.2, 1e308), (T0 + 0.4, 1e10), (T0 + 0.6, -MAX_POSITION_M * 1.001)):
        with pytest.raises(InputError, match="from the origin of its frame"):
            buf.add(to_ns(stamp), [x, 0, 0], yaw_quat(0), "odom")
    with pytest.raises(InputError, match="quaternion"):
        buf.add(to_ns(T0), [0, 0, 0], [1e308, 1e308, 0, 0], "odom")  # its norm overflows
    buf.add(to_ns(T0), [-MAX_POSITION_M, MAX_POSITION_M, 0], [1e150, 0, 0, 1e150], "odom")
    buf.add(to_ns(T0 + 0.5), [MAX_POSITION_M, -MAX_POSITION_M, 0], yaw_quat(3.0), "odom")
    assert len(buf) == 2
    for t in np.linspace(-0.2, 0.7, 31):
        pose = buf.lookup(to_ns(T0 + t))
        assert pose is None or all(math.isfinite(v) for v in (*pose.position, *pose.orientation)), (t, pose)
    mid = buf.lookup(to_ns(T0 + 0.25))
    np.testing.assert_allclose(mid.position, (0.0, 0.0, 0.0), atol=1e-3)
    assert np.linalg.norm(mid.orientation) == pytest.approx(1.0)


def test_concurrent_adds_and_lookups() -> None:
    buf = PoseBuffer(max_age_s=5.0, max_gap_s=0.5)
    n_writers, per_writer = 4, 2000
    errors: list[BaseException] = []
    done = threading.Event()

    def write(offset: int) -> None:
        for k in range(per_writer):
            s = (k * n_writers + offset) * 0.001  # interleaved stamps from several threads
            buf.add(to_ns(T0 + s), [s, 2 * s, 0], yaw_quat(s), "odom")

    def read() -> None:
        try:
            while not done.is_set():
                span = buf.span()
                if span is None:
                    continue
                pose = buf.lookup((span[0] + span[1]) // 2)
                if pose is not None:  # a writer may have pruned or filled in meanwhile; shape must hold
                    assert pose.position[1] == pytest.approx(2 * pose.position[0], abs=1e-6)
        except BaseException as exc:  # reported to the main thread
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(i,)) for i in range(n_writers)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    done.set()
    reader.join()
    assert not errors
    # 8 s of samples; whatever the interleaving, every one within 5 s of the newest survives
    oldest, newest = buf.span()
    assert newest == to_ns(T0 + 7.999) and 5000 <= len(buf) <= 5001
    assert buf.lookup(to_ns(T0 + 3.5005)).position[0] == pytest.approx(3.5005, abs=1e-5)


def _header(sec: int, nanosec: int, frame: str) -> Header:
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame)


def _pose_msg() -> PoseMsg:
    return PoseMsg(position=Point(x=1.5, y=-2.0, z=0.25), orientation=Quaternion(x=0.0, y=0.0, z=0.6, w=0.8))


def test_pose_from_rclpy_messages_feeds_the_buffer() -> None:
    odom = Odometry(header=_header(1_700_000_000, 500_000_000, "odom"), child_frame_id="base_link")
    odom.pose.pose = _pose_msg()
    stamped = PoseStamped(header=_header(1_700_000_001, 0, "map"), pose=_pose_msg())
    with_cov = PoseWithCovarianceStamped(header=_header(1_700_000_002, 250, "map"))
    with_cov.pose.pose = _pose_msg()

    stamp, pos, quat, frame = pose_from_msg(odom)
    assert stamp == 1_700_000_000_500_000_000 and frame == "odom"
    np.testing.assert_array_equal(pos, [1.5, -2.0, 0.25])
    np.testing.assert_array_equal(quat, [0.0, 0.0, 0.6, 0.8])
    assert pose_from_msg(stamped)[0] == 1_700_000_001 * NS_PER_S and pose_from_msg(stamped)[3] == "map"
    assert pose_from_msg(with_cov)[0] == 1_700_000_002 * NS_PER_S + 250  # exact in integer nanoseconds

    buf = PoseBuffer()
    buf.add(*pose_from_msg(odom))
    assert buf.lookup(to_ns(1_700_000_000.5)) == Pose((1.5, -2.0, 0.25), (0.0, 0.0, 0.6, 0.8), "odom")
    with pytest.raises(ValueError):
        pose_from_msg(Header())


def test_pose_from_rosbags_odometry() -> None:
    ts = get_typestore(Stores.ROS2_KILTED)
    odom_type = ts.types["nav_msgs/msg/Odometry"]
    raw = ts.serialize_cdr(_bag_odometry(ts, odom_type), odom_type.__msgtype__)
    msg = ts.deserialize_cdr(raw, odom_type.__msgtype__)
    stamp, pos, quat, frame = pose_from_msg(msg)
    assert (stamp, frame) == (12_500_000_000, "odom")
    np.testing.assert_array_equal(pos, [1.5, -2.0, 0.25])
    np.testing.assert_array_equal(quat, [0.0, 0.0, 0.6, 0.8])


def _bag_odometry(ts: Any, odom_type: Any) -> Any:
    t = ts.types
    header = t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=12, nanosec=500_000_000),
                                      frame_id="odom")
    pose = t["geometry_msgs/msg/Pose"](position=t["geometry_msgs/msg/Point"](x=1.5, y=-2.0, z=0.25),
                                       orientation=t["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.6, w=0.8))
    pose_cov = t["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36))
    vec = t["geometry_msgs/msg/Vector3"]
    twist = t["geometry_msgs/msg/TwistWithCovariance"](
        twist=t["geometry_msgs/msg/Twist"](linear=vec(x=0.0, y=0.0, z=0.0), angular=vec(x=0.0, y=0.0, z=0.0)),
        covariance=np.zeros(36))
    return odom_type(header=header, child_frame_id="base_link", pose=pose_cov, twist=twist)
