"""RTAB-Map ``RGBDImage`` frames as ``rgbd_sync`` sends them, built from the bundled photos, and a
publisher process for them.

``rgbd_sync`` (rtabmap_ros, ``rtabmap_sync/src/nodelets/rgbd_sync.cpp``) fills either the raw pair
(``rgb`` in the camera's encoding, ``depth`` 16UC1 or 32FC1) or, on ``rgbd_image/compressed``,
``rgb_compressed`` (cv_bridge's ``toCompressedImageMsg(..., JPG)``: format ``"jpg"``, OpenCV's default
JPEG of the BGR image) and ``depth_compressed`` (``"png"``); both with the colour camera's info and the
newer image's header.

``python -m vpr_ros.ros.rgbd_testing TOPIC`` is the tests' and benchmark's publisher: best effort, it
prints ``ready`` once a subscriber matched, then publishes one frame per stdin line and prints ``sent``:
``raw|jpg PHOTO SEC NSEC`` (a photo of :data:`PHOTOS`), ``empty SEC NSEC`` (no colour image), ``garbage
SEC NSEC`` (a broken JPEG). Large best-effort frames between processes need the shipped Fast DDS profile
in both (``FASTDDS_DEFAULT_PROFILES_FILE``, docs/node.md "DDS"); the environment passes it on.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
from rtabmap_msgs.msg import RGBDImage
from sensor_msgs.msg import CameraInfo

from vpr_ros.ros.testing import compressed_msg, image_msg

PACKAGE = Path(__file__).resolve().parents[1]
PROFILE = PACKAGE.parent / "config" / "fastdds_large_frames.xml"  # in a source checkout
PHOTOS = sorted((PACKAGE / "synth" / "data" / "scenes").glob("*.jpg"))
WIDTH, HEIGHT = 640, 480
FRAME_ID = "camera_color_optical_frame"


def photo_rgb(index: int) -> np.ndarray:
    """Photo ``index`` as a 640x480 RGB frame."""
    bgr = cv2.imread(str(PHOTOS[index % len(PHOTOS)]), cv2.IMREAD_COLOR)
    return cv2.cvtColor(cv2.resize(bgr, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)


def depth_mm(index: int) -> np.ndarray:
    """A 16UC1 depth frame (millimetres): a slanted plane, different per ``index``."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    return (500 + 10 * index + 3 * rows + cols).astype(np.uint16)


def camera_info(stamp: tuple[int, int]) -> CameraInfo:
    info = CameraInfo(width=WIDTH, height=HEIGHT, distortion_model="plumb_bob")
    info.header.stamp.sec, info.header.stamp.nanosec = stamp
    info.header.frame_id = FRAME_ID
    info.k = [525.0, 0.0, 319.5, 0.0, 525.0, 239.5, 0.0, 0.0, 1.0]
    info.d = [0.01, -0.02, 0.0, 0.0, 0.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [525.0, 0.0, 319.5, 0.0, 0.0, 525.0, 239.5, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def _rgbd(stamp: tuple[int, int]) -> RGBDImage:
    msg = RGBDImage()
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    msg.header.frame_id = FRAME_ID
    msg.rgb_camera_info = camera_info(stamp)
    msg.depth_camera_info = camera_info(stamp)
    return msg


def raw_rgbd(index: int, stamp: tuple[int, int]) -> RGBDImage:
    """Raw pair: bgr8 colour, 16UC1 depth."""
    msg = _rgbd(stamp)
    msg.rgb = image_msg(cv2.cvtColor(photo_rgb(index), cv2.COLOR_RGB2BGR), stamp, FRAME_ID, "bgr8")
    msg.depth = image_msg(depth_mm(index), stamp, FRAME_ID, "16UC1")
    return msg


def jpeg_of(index: int) -> bytes:
    """The colour image as cv_bridge's ``toCompressedImageMsg(JPG)`` encodes it (BGR, default quality)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(photo_rgb(index), cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def compressed_rgbd(index: int, stamp: tuple[int, int]) -> RGBDImage:
    """Compressed pair as on ``rgbd_image/compressed``: ``jpg`` colour, ``png`` 16-bit depth."""
    msg = _rgbd(stamp)
    msg.rgb_compressed = compressed_msg(jpeg_of(index), "jpg", stamp, FRAME_ID)
    ok, png = cv2.imencode(".png", depth_mm(index))
    assert ok
    msg.depth_compressed = compressed_msg(png.tobytes(), "png", stamp, FRAME_ID)
    return msg


def empty_rgbd(stamp: tuple[int, int]) -> RGBDImage:
    """Camera infos and depth, but neither colour field filled."""
    msg = _rgbd(stamp)
    msg.depth = image_msg(depth_mm(0), stamp, FRAME_ID, "16UC1")
    return msg


def garbage_rgbd(stamp: tuple[int, int]) -> RGBDImage:
    """A ``jpg`` colour image whose bytes decode to nothing."""
    msg = _rgbd(stamp)
    msg.rgb_compressed = compressed_msg(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, "jpg", stamp, FRAME_ID)
    return msg


def build(command: str) -> RGBDImage:
    """The frame a publisher command (see the module doc) names."""
    kind, *args = command.split()
    if kind in ("raw", "jpg"):
        index, sec, nsec = (int(a) for a in args)
        return (raw_rgbd if kind == "raw" else compressed_rgbd)(index, (sec, nsec))
    sec, nsec = (int(a) for a in args)
    return {"empty": empty_rgbd, "garbage": garbage_rgbd}[kind]((sec, nsec))


def _publish(topic: str) -> None:
    import time

    import rclpy
    from rclpy.qos import qos_profile_sensor_data

    rclpy.init()
    node = rclpy.create_node("rgbd_test_publisher")
    pub = node.create_publisher(RGBDImage, topic, qos_profile_sensor_data)
    end = time.monotonic() + 60
    while pub.get_subscription_count() == 0 and time.monotonic() < end:
        time.sleep(0.05)
    print("ready" if pub.get_subscription_count() else "no subscriber", flush=True)
    for line in sys.stdin:
        if line.strip():
            pub.publish(build(line))
            print("sent", flush=True)
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    _publish(sys.argv[1])
