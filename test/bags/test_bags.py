"""Reading frames and poses from real bags (ROS 1, ROS 2 sqlite3 and mcap) written by ``write_bag``."""

from __future__ import annotations

import math
import shutil
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from vpr_ros.bags.bag_files import check_bag, list_topics
from vpr_ros.bags.geodesy import enu_origin_of, geodetic_to_enu
from vpr_ros.bags.read_ahead import ReadAhead
from vpr_ros.bags.reader import ReadStats, frame_at, read_frames
from vpr_ros.bags.writer import write_bag
from vpr_ros.errors import BagError
from vpr_ros.preprocess import load_image

SCENES = Path(__file__).resolve().parents[2] / "vpr_ros" / "synth" / "data" / "scenes"
T0 = 1_700_000_000 * 10**9  # header stamps of the test bags start here (ns)
TOPIC = "/camera/image_raw"


def small(name: str) -> np.ndarray:
    """A bundled photo at 160x120: real image content, fast to encode and decode."""
    return cv2.resize(load_image(SCENES / name), (160, 120), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [small(n) for n in ("building.jpg", "graf1.jpg", "home.jpg", "fruits.jpg")]


def bag_path(tmp_path: Path, storage: str, name: str = "run") -> Path:
    return tmp_path / (f"{name}.bag" if storage == "ros1" else name)


def gray(rgb: np.ndarray) -> np.ndarray:
    return np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


STORAGES = ("mcap", "sqlite3", "ros1")
IMAGES = [("raw", "rgb8"), ("raw", "bgr8"), ("raw", "mono8"), ("raw", "mono16"), ("jpeg", "rgb8"), ("png", "rgb8")]


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize(("image_format", "encoding"), IMAGES)
def test_frames_round_trip_every_storage_and_encoding(tmp_path, photos, storage, image_format, encoding) -> None:
    stamps = [T0 + i * 100_000_000 for i in range(len(photos))]
    path = write_bag(bag_path(tmp_path, storage), zip(stamps, photos, strict=True), storage=storage,
                     image_format=image_format, encoding=encoding, receive_delay_ns=30_000_000)
    msgtype = "sensor_msgs/msg/Image" if image_format == "raw" else "sensor_msgs/msg/CompressedImage"
    assert [(t.name, t.msgtype, t.count) for t in list_topics(path)] == [(TOPIC, msgtype, len(photos))]
    stats = ReadStats()
    frames = list(read_frames(path, TOPIC, stats=stats))
    # places are keyed by header.stamp, not by the receive time 30 ms later
    assert [f.stamp for f in frames] == [(s // 10**9, s % 10**9) for s in stamps]
    assert stats.frames == len(photos) and stats.bad_frames == 0
    assert all(f.pose is None and f.frame_id == "camera" for f in frames)
    assert frames[0].source.endswith(f"{path.name}#{TOPIC}")
    for frame, rgb in zip(frames, photos, strict=True):
        expected = gray(rgb) if encoding.startswith("mono") else rgb
        diff = np.abs(frame.rgb.astype(int) - expected)
        assert frame.rgb.shape == rgb.shape and frame.rgb.dtype == np.uint8
        if image_format == "jpeg":
            assert diff.mean() < 6, diff.mean()
        else:
            assert diff.max() <= (1 if encoding == "mono16" else 0)


def test_write_bag_refuses_existing_path_and_bad_options(tmp_path, photos) -> None:
    path = write_bag(tmp_path / "a", [(T0, photos[0])])
    with pytest.raises(FileExistsError, match="already exists"):
        write_bag(path, [(T0, photos[0])])
    with pytest.raises(ValueError, match=r"must end in \.bag"):
        write_bag(tmp_path / "b", [(T0, photos[0])], storage="ros1")
    with pytest.raises(ValueError, match=r"storage must be one of mcap, sqlite3, ros1; got 'zip'"):
        write_bag(tmp_path / "c", [(T0, photos[0])], storage="zip")
    with pytest.raises(ValueError, match="encoding must be one of rgb8, bgr8, mono8; got 'mono16'"):
        write_bag(tmp_path / "d", [(T0, photos[0])], image_format="jpeg", encoding="mono16")
    with pytest.raises(ValueError, match=r"HxWx3 uint8 RGB arrays, got float64 \(4, 4\)"):
        write_bag(tmp_path / "e", [(T0, np.zeros((4, 4)))])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # failed writes leave nothing behind


def yaw_of(q) -> float:
    x, y, z, w = q
    return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def linear_turn(n: int, period_ns: int, offset_ns: int = 0) -> list[tuple[int, tuple, tuple]]:
    """Poses of a robot moving at 2 m/s along x and 1 m/s along z while turning at 0.5 rad/s."""
    out = []
    for i in range(n):
        t = i * period_ns / 1e9 + offset_ns / 1e9
        yaw = 0.5 * t
        out.append((T0 + offset_ns + i * period_ns, (2.0 * t, 0.0, 1.0 * t), (0.0, 0.0, math.sin(yaw / 2),
                                                                            math.cos(yaw / 2))))
    return out


@pytest.mark.parametrize(("storage", "pose_type"), [("mcap", "odometry"), ("sqlite3", "pose_stamped"),
                                                    ("ros1", "pose_cov"), ("ros1", "odometry")])
def test_poses_are_interpolated_at_image_stamps(tmp_path, photos, storage, pose_type) -> None:
    # images at 10 Hz starting 30 ms after the first pose; poses at 4 Hz: every image falls between two
    image_stamps = [T0 + 30_000_000 + i * 100_000_000 for i in range(8)]
    frames = [(s, photos[i % len(photos)]) for i, s in enumerate(image_stamps)]
    path = write_bag(bag_path(tmp_path, storage), frames, linear_turn(5, 250_000_000), storage=storage,
                     pose_type=pose_type, pose_topic="/pose", pose_frame="map", receive_delay_ns=40_000_000)
    assert check_bag(path, TOPIC, "/pose") == 8
    got = list(read_frames(path, TOPIC, pose_topic="/pose", max_pose_gap=0.3))
    assert len(got) == 8
    for frame, stamp in zip(got, image_stamps, strict=True):
        t = (stamp - T0) / 1e9
        assert frame.pose is not None and frame.pose.frame_id == "map"
        np.testing.assert_allclose(frame.pose.position, (2 * t, 0.0, t), atol=1e-5)
        assert yaw_of(frame.pose.orientation) == pytest.approx(0.5 * t, abs=1e-5)  # slerp about z is linear in yaw


def test_pose_gap_and_range_limit_interpolation(tmp_path, photos) -> None:
    poses = [p for p in linear_turn(9, 100_000_000) if not T0 + 250_000_000 < p[0] < T0 + 750_000_000]
    stamps = [T0 + 50_000_000, T0 + 500_000_000, T0 + 850_000_000, T0 + 1_500_000_000]
    path = write_bag(tmp_path / "gap", [(s, photos[0]) for s in stamps], poses)
    got = [f.pose for f in read_frames(path, TOPIC, pose_topic="/odom", max_pose_gap=0.3)]
    assert got[0] is not None and got[2] is not None
    assert got[1] is None  # inside a 0.6 s gap between samples: no invented motion
    assert got[3] is None  # 0.7 s after the last sample


def test_navsatfix_becomes_local_enu_metres(tmp_path, photos) -> None:
    # equator: 0.001 deg of latitude is 110.574 m (meridian arc), of longitude 111.319 m
    fixes = [(T0, (0.0, 10.0, 5.0), (0, 0, 0, 1)), (T0 + 10**9, (0.001, 10.0, 5.0), (0, 0, 0, 1)),
             (T0 + 2 * 10**9, (0.001, 10.001, 7.0), (0, 0, 0, 1))]
    stamps = [T0, T0 + 500_000_000, T0 + 10**9, T0 + 2 * 10**9]
    path = write_bag(tmp_path / "gps.bag", [(s, photos[0]) for s in stamps], fixes, storage="ros1",
                     pose_type="navsatfix", pose_topic="/fix")
    got = [f.pose for f in read_frames(path, TOPIC, pose_topic="/fix", max_pose_gap=1.5)]
    np.testing.assert_allclose(got[0].position, (0, 0, 0), atol=1e-6)
    np.testing.assert_allclose(got[1].position, (0, 110.574 / 2, 0), atol=0.01)
    np.testing.assert_allclose(got[2].position, (0, 110.574, 0), atol=0.01)
    np.testing.assert_allclose(got[3].position, (111.319, 110.574, 2.0), atol=0.01)
    assert got[0].orientation == (0.0, 0.0, 0.0, 1.0)
    assert enu_origin_of(got[0].frame_id) == pytest.approx((0.0, 10.0, 5.0))
    # a given origin (e.g. the map's, when appending) is used instead of the first fix
    shifted = list(read_frames(path, TOPIC, pose_topic="/fix", enu_origin=(-0.001, 10.0, 5.0)))
    assert shifted[0].pose.position[1] == pytest.approx(110.574, abs=0.01)


def test_geodetic_to_enu_away_from_the_equator() -> None:
    # at 48 deg N one degree of latitude is 111.2 km (meridian radius of curvature), of longitude 74.6 km
    origin = (48.0, 11.0, 500.0)
    north = geodetic_to_enu(48.001, 11.0, 500.0, origin)
    east = geodetic_to_enu(48.0, 11.001, 500.0, origin)
    up = geodetic_to_enu(48.0, 11.0, 510.0, origin)
    assert north[1] == pytest.approx(111.2, abs=0.1) and abs(north[0]) < 1e-6
    assert east[0] == pytest.approx(74.6, abs=0.1) and abs(east[2]) < 0.01  # earth curvature: 0.4 mm
    np.testing.assert_allclose(up, (0, 0, 10), atol=1e-6)


def test_frames_come_in_header_stamp_order_not_receive_order(tmp_path, photos) -> None:
    stamps = [T0 + i * 100_000_000 for i in range(10)]
    # odd frames arrive 250 ms late: receive order 0 2 1 4 3 ... differs from stamp order
    late = {s: (250_000_000 if i % 2 else 5_000_000) for i, s in enumerate(stamps)}
    path = write_bag(tmp_path / "jitter", [(s, photos[i % 4]) for i, s in enumerate(stamps)],
                     receive_delay_ns=late.__getitem__)
    got = [f.stamp for f in read_frames(path, TOPIC)]
    assert got == [(s // 10**9, s % 10**9) for s in stamps]


def test_start_and_end_select_seconds_after_the_first_message(tmp_path, photos) -> None:
    stamps = [T0 + i * 100_000_000 for i in range(10)]
    path = write_bag(tmp_path / "se", [(s, photos[0]) for s in stamps], receive_delay_ns=20_000_000)
    got = [f.stamp for f in read_frames(path, TOPIC, start=0.25, end=0.55)]
    assert got == [(1_700_000_000, 300_000_000), (1_700_000_000, 400_000_000), (1_700_000_000, 500_000_000)]


def test_missing_or_wrong_topic_lists_the_bags_topics(tmp_path, photos) -> None:
    path = write_bag(tmp_path / "t", [(T0, photos[0])], linear_turn(2, 10**8))
    with pytest.raises(BagError) as info:
        list(read_frames(path, "/front/image"))
    text = str(info.value)
    assert "no image topic '/front/image'" in text and str(path) in text
    assert f"{TOPIC}  [sensor_msgs/msg/Image]  1 messages" in text and "/odom  [nav_msgs/msg/Odometry]" in text
    with pytest.raises(BagError, match=r"topic '/odom' carries nav_msgs/msg/Odometry; a image topic must carry"):
        check_bag(path, "/odom")
    with pytest.raises(BagError, match="no pose topic '/gps'"):
        check_bag(path, TOPIC, "/gps")
    with pytest.raises(FileNotFoundError, match="no bag at"):
        check_bag(tmp_path / "nope", TOPIC)


@pytest.mark.parametrize("storage", STORAGES)
def test_truncated_bag_raises_an_error_naming_the_file(tmp_path, photos, storage) -> None:
    path = write_bag(bag_path(tmp_path, storage), [(T0 + i * 10**8, p) for i, p in enumerate(photos)],
                     storage=storage)
    data_file = path if path.is_file() else next(f for f in path.iterdir() if f.name != "metadata.yaml")
    data = data_file.read_bytes()
    data_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(BagError, match=r"cannot read the bag, it is damaged or truncated") as info:
        list(read_frames(path, TOPIC))
    assert str(path) in str(info.value)


def test_bad_frames_are_counted_and_skipped(tmp_path, photos) -> None:
    """A recorder can store broken messages; they must not stop a long mapping run."""
    store = get_typestore(Stores.ROS2_KILTED)
    t = store.types
    path = tmp_path / "broken"
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection(TOPIC, "sensor_msgs/msg/Image", typestore=store)
        for i, (height, step, data) in enumerate([(120, 480, photos[0].reshape(-1)),  # good
                                                  (120, 480, photos[1].reshape(-1)[:1000]),  # truncated
                                                  (120, 100, photos[2].reshape(-1)),  # step < width * 3
                                                  (120, 480, photos[3].reshape(-1))]):  # good
            header = t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=1, nanosec=i), frame_id="c")
            msg = t["sensor_msgs/msg/Image"](header=header, height=height, width=160, encoding="rgb8",
                                             is_bigendian=0, step=step, data=np.ascontiguousarray(data))
            writer.write(conn, 10**9 + i, store.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    stats = ReadStats()
    frames = list(read_frames(path, TOPIC, stats=stats))
    assert [f.stamp for f in frames] == [(1, 0), (1, 3)]
    assert stats.frames == 4 and dict(stats.bad) == {"truncated data": 1, "step mismatch": 1}


def test_frame_at_reads_a_frame_back_by_stamp(tmp_path, photos) -> None:
    path = write_bag(tmp_path / "f", [(T0 + i * 10**8, p) for i, p in enumerate(photos)], image_format="png")
    np.testing.assert_array_equal(frame_at(path, TOPIC, (1_700_000_000, 200_000_000)), photos[2])
    assert frame_at(path, TOPIC, (1_700_000_000, 250_000_000)) is None
    # received on another clock (simulated time in the headers): found by a scan of the whole topic
    other_clock = write_bag(tmp_path / "sim", [(i * 10**8, p) for i, p in enumerate(photos)],
                            receive_delay_ns=T0)
    np.testing.assert_array_equal(frame_at(other_clock, TOPIC, (0, 300_000_000)), photos[3])


def test_read_ahead_keeps_order_and_raises_producer_errors() -> None:
    assert list(ReadAhead(iter(range(100)), depth=3)) == list(range(100))

    def failing():
        yield 1
        raise BagError("broken.bag: damaged")

    with pytest.raises(BagError, match="broken.bag"):
        list(ReadAhead(failing()))
    closed = threading.Event()

    def endless():
        try:
            while True:
                yield 0
        finally:
            closed.set()

    with ReadAhead(endless(), depth=2) as ahead:
        next(iter(ahead))
    assert closed.wait(5)  # leaving early stops the producer and runs its cleanup (closing the bag)


def test_moved_ros2_bag_folder_stays_readable(tmp_path, photos) -> None:
    """A ROS 2 bag folder stays readable after being moved (paths inside are relative)."""
    path = write_bag(tmp_path / "orig", [(T0, photos[0])])
    moved = tmp_path / "moved"
    shutil.move(path, moved)
    assert [f.stamp for f in read_frames(moved, TOPIC)] == [(1_700_000_000, 0)]
