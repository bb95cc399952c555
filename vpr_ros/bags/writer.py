"""Real bags in all three formats (ROS 1, ROS 2 sqlite3 and mcap) from frames and poses.

Tests, benchmarks and the demo route write what a recorder would have produced, so the reader in
:mod:`vpr_ros.bags.reader` is exercised on real files: receive times lag ``header.stamp`` as they do
on a robot.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rosbags.rosbag1 import Writer as Ros1Writer
from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2 import Writer as Ros2Writer
from rosbags.typesys.store import Typestore

from vpr_ros.bags.bag_files import (
    COMPRESSED,
    IMAGE,
    NAVSATFIX,
    POSE_MSGTYPES,
    RAW_ENCODINGS,
    STORAGES,
    ImageFormat,
    PoseType,
    Storage,
    typestore,
)
from vpr_ros.errors import InputError
from vpr_ros.io.files import temporary_beside


def _header(ts: Typestore, stamp_ns: int, frame_id: str, seq: int) -> Any:
    types = ts.types
    stamp = types["builtin_interfaces/msg/Time"](sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
    if "seq" in types["std_msgs/msg/Header"].__dataclass_fields__:  # ROS 1
        return types["std_msgs/msg/Header"](seq=seq, stamp=stamp, frame_id=frame_id)
    return types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"frames must be HxWx3 uint8 RGB arrays, got {rgb.dtype} {rgb.shape}")
    return rgb


def _pixels(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """``rgb`` as the pixel layout of ``encoding`` (mono16 spans the full 16-bit range)."""
    if encoding == "rgb8":
        return np.ascontiguousarray(rgb)
    if encoding == "bgr8":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return gray if encoding == "mono8" else gray.astype("<u2") * np.uint16(257)


def _image_msg(ts: Typestore, header: Any, rgb: np.ndarray, image_format: str, encoding: str) -> Any:
    pixels = _pixels(_check_rgb(rgb), encoding)
    if image_format == "raw":
        height, width = pixels.shape[:2]
        data = np.frombuffer(pixels.tobytes(), np.uint8)
        return ts.types[IMAGE](header=header, height=height, width=width, encoding=encoding, is_bigendian=0,
                               step=data.size // height, data=data)
    if encoding == "rgb8":  # OpenCV encodes BGR channel order, as image_transport does
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg" if image_format == "jpeg" else ".png", pixels)
    if not ok:
        raise InputError(f"OpenCV could not encode a {pixels.dtype} {pixels.shape} image as {image_format}")
    return ts.types[COMPRESSED](header=header, format=image_format, data=encoded.reshape(-1))


def _pose_msg(ts: Typestore, pose_type: str, header: Any, position: Sequence[float],
              orientation: Sequence[float], child_frame: str) -> Any:
    t = ts.types
    if pose_type == "navsatfix":
        lat, lon, alt = (float(v) for v in position)
        status = t["sensor_msgs/msg/NavSatStatus"](status=0, service=1)
        return t[NAVSATFIX](header=header, status=status, latitude=lat, longitude=lon, altitude=alt,
                            position_covariance=np.zeros(9), position_covariance_type=0)
    point = t["geometry_msgs/msg/Point"](*(float(v) for v in position))
    quat = t["geometry_msgs/msg/Quaternion"](*(float(v) for v in orientation))
    pose = t["geometry_msgs/msg/Pose"](position=point, orientation=quat)
    if pose_type == "pose_stamped":
        return t["geometry_msgs/msg/PoseStamped"](header=header, pose=pose)
    with_cov = t["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36))
    if pose_type == "pose_cov":
        return t["geometry_msgs/msg/PoseWithCovarianceStamped"](header=header, pose=with_cov)
    zero = t["geometry_msgs/msg/Vector3"](0.0, 0.0, 0.0)
    twist = t["geometry_msgs/msg/TwistWithCovariance"](
        twist=t["geometry_msgs/msg/Twist"](linear=zero, angular=zero), covariance=np.zeros(36))
    return t["nav_msgs/msg/Odometry"](header=header, child_frame_id=child_frame, pose=with_cov, twist=twist)


def _check_write_options(path: Path, storage: str, image_format: str, encoding: str, pose_type: str) -> None:
    def check(name: str, value: str, accepted: Iterable[str]) -> None:
        if value not in accepted:
            raise InputError(f"{name} must be one of {', '.join(accepted)}; got {value!r}")

    check("storage", storage, STORAGES)
    check("image_format", image_format, ("raw", "jpeg", "png"))
    check("encoding", encoding, RAW_ENCODINGS if image_format == "raw" else ("rgb8", "bgr8", "mono8"))
    check("pose_type", pose_type, tuple(POSE_MSGTYPES))
    if (storage == "ros1") != (path.suffix == ".bag"):
        raise InputError(f"{path}: ROS 1 bags must end in .bag and ROS 2 bags must not (storage={storage!r})")
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose a new path (bags are never overwritten)")


def write_bag(
    path: str | os.PathLike,
    frames: Iterable[tuple[int, np.ndarray]],
    poses: Iterable[tuple[int, Sequence[float], Sequence[float]]] = (),
    *,
    storage: Storage = "mcap",
    image_topic: str = "/camera/image_raw",
    pose_topic: str = "/odom",
    image_format: ImageFormat = "raw",
    encoding: str = "rgb8",
    pose_type: PoseType = "odometry",
    frame_id: str = "camera",
    pose_frame: str = "odom",
    receive_delay_ns: int | Callable[[int], int] = 5_000_000,
) -> Path:
    """Write ``(stamp_ns, rgb)`` frames and ``(stamp_ns, position, orientation xyzw)`` poses to a new bag.

    ``storage`` picks a ROS 2 folder (``mcap``/``sqlite3``) or a ROS 1 ``.bag`` file. Compressed
    frames (``jpeg``/``png``) go out as ``sensor_msgs/CompressedImage`` on ``image_topic``. For
    ``navsatfix`` the position is (latitude°, longitude°, altitude m). Each message is received
    ``receive_delay_ns`` after its header stamp (a constant, or a function of the stamp), as a
    recorder would see it, so readers that key frames by receive time are caught. The bag is
    written under a temporary name and renamed, so ``path`` never holds a half-written bag.
    """
    path = Path(path)
    _check_write_options(path, storage, image_format, encoding, pose_type)
    delay = receive_delay_ns if callable(receive_delay_ns) else (lambda _stamp: int(receive_delay_ns))
    tmp_dir = temporary_beside(path)
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    try:
        _write(tmp_dir / path.name, frames, poses, storage, image_topic, pose_topic, image_format, encoding,
               pose_type, frame_id, pose_frame, delay)
        os.replace(tmp_dir / path.name, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def _write(path: Path, frames: Iterable[tuple[int, np.ndarray]], poses: Iterable[tuple[int, Sequence[float],
           Sequence[float]]], storage: str, image_topic: str, pose_topic: str, image_format: str, encoding: str,
           pose_type: str, frame_id: str, pose_frame: str, delay: Callable[[int], int]) -> None:
    ts = typestore(storage)
    ros1 = storage == "ros1"
    if ros1:
        writer: Any = Ros1Writer(path)
    else:
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        writer = Ros2Writer(path, version=9, storage_plugin=plugin)
    serialize = ts.serialize_ros1 if ros1 else ts.serialize_cdr
    with writer:
        image_type = IMAGE if image_format == "raw" else COMPRESSED
        image_conn = writer.add_connection(image_topic, image_type, typestore=ts)
        pose_conn = None
        for seq, (stamp, rgb) in enumerate(frames):
            msg = _image_msg(ts, _header(ts, int(stamp), frame_id, seq), rgb, image_format, encoding)
            writer.write(image_conn, int(stamp) + delay(int(stamp)), serialize(msg, image_type))
        for seq, (stamp, position, orientation) in enumerate(poses):
            if pose_conn is None:
                pose_conn = writer.add_connection(pose_topic, POSE_MSGTYPES[pose_type], typestore=ts)
            msg = _pose_msg(ts, pose_type, _header(ts, int(stamp), pose_frame, seq), position, orientation, frame_id)
            writer.write(pose_conn, int(stamp) + delay(int(stamp)), serialize(msg, POSE_MSGTYPES[pose_type]))
