"""The RGBD descriptor node puts RTAB-Map's global descriptor into ``rgbd_sync``'s stream.

RTAB-Map reads ``GlobalDescriptor.data`` with its ``uncompressData`` (rtabmap
``corelib/src/Compression.cpp``): the last three native ints are rows, cols and the OpenCV type;
everything before them is handed to zlib's ``uncompress``. :func:`uncompress_data` below does the
same, written from that description only, and the descriptor it yields must be the extractor's.

The node runs as its own process with the real ``rtabmap_msgs`` types (built into the venv from
upstream's definitions, test/rtabmap_msgs), on remapped topics; the frames come best effort from a
third process (vpr_ros/ros/rgbd_testing.py) with photos at 640x480, both with the shipped Fast DDS
profile, as a large best-effort frame between processes needs it (docs/node.md, "DDS").
"""

from __future__ import annotations

import subprocess
import sys
import threading
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from launch_files import launch_file_names
from rtabmap_msgs.msg import RGBDImage

from vpr_ros.errors import InputError
from vpr_ros.extractor import load_extractor
from vpr_ros.ros import launch_args
from vpr_ros.ros.params import PARAMS
from vpr_ros.ros.rgbd_descriptors import SPECS
from vpr_ros.ros.rgbd_testing import FRAME_ID, PROFILE, depth_mm, jpeg_of, photo_rgb
from vpr_ros.ros.testing import Client, start_node, stop_node
from vpr_ros.rtabmap_descriptors import encode_descriptor

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "vpr_ros" / "synth" / "data" / "models" / "demo_salad.pt"
MODULE = "vpr_ros.ros.rgbd_descriptors"
IN_TOPIC, OUT_TOPIC = "/camera/rgbd_image", "/rtabmap/rgbd_image"  # both remapped
CV_32FC1 = 5


def uncompress_data(data: bytes) -> np.ndarray:
    """RTAB-Map's ``uncompressData``: a matrix from zlib data followed by int rows, cols, type."""
    rows, cols, cv_type = np.frombuffer(data[-12:], dtype=np.dtype("=i4")).tolist()
    assert cv_type == CV_32FC1, f"OpenCV type {cv_type}, not CV_32FC1"
    inflater = zlib.decompressobj()
    raw = inflater.decompress(data)  # all of it, as RTAB-Map passes the whole buffer to uncompress()
    assert inflater.eof and inflater.unused_data == data[-12:], "the zlib stream must end where the ints begin"
    return np.frombuffer(raw, np.float32).reshape(rows, cols)


@pytest.fixture(scope="module")
def extractor():
    return load_extractor(DEMO, device="cpu")


# -- the wire format, without ROS ---------------------------------------------------------------


def test_encoded_descriptor_is_what_rtabmap_uncompresses(extractor) -> None:
    desc = extractor.describe([photo_rgb(0)])[0]
    data = encode_descriptor(desc)
    assert data[:2] == b"\x78\x9c"  # zlib stream at the default level, as compress() writes it
    row = uncompress_data(data)
    assert row.shape == (1, extractor.descriptor_dim) and row.dtype == np.float32
    assert np.array_equal(row[0], desc)
    assert abs(float(row[0] @ row[0]) - 1.0) < 1e-5  # RTAB-Map scores (dot + 1) / 2 of unit rows
    assert np.array_equal(uncompress_data(encode_descriptor(desc.astype(np.float64)))[0], desc)


@pytest.mark.parametrize("bad, why", [
    (np.full(8, np.nan, np.float32), "non-finite"),
    (np.array([1.0, np.inf, 0.0], np.float32), "non-finite"),
    (np.eye(2, dtype=np.float32), "one non-empty row"),
    (np.zeros(0, np.float32), "one non-empty row"),
    (np.array([1, 0, 0]), "floating point"),
    (np.full(4, 0.25, np.float32), "L2-normalised"),
])
def test_unusable_descriptors_are_refused(bad: np.ndarray, why: str) -> None:
    with pytest.raises(InputError, match=why):
        encode_descriptor(bad)


# -- the node on the wire ---------------------------------------------------------------------


class Wire:
    """The node, a publisher process (commands on its stdin) and the test's own subscriber."""

    def __init__(self) -> None:
        with pytest.MonkeyPatch.context() as env:  # read by both child processes at start
            env.delenv("FASTRTPS_DEFAULT_PROFILES_FILE", raising=False)
            env.setenv("FASTDDS_DEFAULT_PROFILES_FILE", str(PROFILE))
            self.node = start_node({"checkpoint": str(DEMO), "device": "cpu"},
                                   ["-r", f"rgbd_image:={IN_TOPIC}", "-r", f"rgbd_image_vpr:={OUT_TOPIC}"],
                                   module=MODULE)
            self.pub = subprocess.Popen([sys.executable, "-m", "vpr_ros.ros.rgbd_testing", IN_TOPIC],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(line.strip() for line in self.pub.stdout),
                         daemon=True).start()
        self.client = Client(node_name="vpr_rgbd_descriptors")
        self.out: list[RGBDImage] = []
        self.client.node.create_subscription(RGBDImage, OUT_TOPIC, self.out.append, 10)

    def start(self) -> None:
        c = self.client
        up = c.spin_until(lambda: self.node.poll() is not None or c.node.count_publishers(OUT_TOPIC) > 0, 60)
        assert up and self.node.poll() is None, f"node did not come up:\n{stop_node(self.node)[1]}"
        assert c.spin_until(lambda: bool(self.lines), 60) and self.lines[0] == "ready", self.lines
        # best effort: samples sent before the node's reader matched ours are lost; send frames without
        # a colour image (rejected, never republished) until the node counts one
        for _ in range(60):
            self.send("empty 1 0")
            if c.spin_until(lambda: self.count("frames rejected") > 0, 1.0):
                return
        raise AssertionError("the node never received a frame")

    def send(self, command: str) -> None:
        sent = self.lines.count("sent")
        self.pub.stdin.write(command + "\n")
        self.pub.stdin.flush()
        assert self.client.spin_until(lambda: self.lines.count("sent") > sent, 30), "publisher stuck"

    def count(self, key: str) -> int:
        return int(self.client.diag_values().get(key, 0))

    def answer(self, stamp: tuple[int, int], timeout: float = 30.0) -> RGBDImage:
        def find() -> RGBDImage | None:
            return next((m for m in self.out if (m.header.stamp.sec, m.header.stamp.nanosec) == stamp), None)

        assert self.client.spin_until(lambda: find() is not None, timeout), f"no rgbd_image_vpr for {stamp}"
        return find()

    def close(self) -> tuple[int, str]:
        if self.pub.poll() is None:
            self.pub.stdin.close()
            try:
                self.pub.wait(10)
            except subprocess.TimeoutExpired:
                self.pub.kill()
                self.pub.wait()
        self.client.close()
        return stop_node(self.node)


@pytest.fixture(scope="module")
def wire():
    w = Wire()
    try:
        w.start()
        yield w
    finally:
        code, out = w.close()
        assert code == 0, out
        assert "XMLPARSER" not in out, out  # the profile loaded without parser errors


def check_descriptor(msg: RGBDImage, rgb: np.ndarray, extractor) -> None:
    gd = msg.global_descriptor
    assert gd.type == 1 and len(gd.info) == 0
    assert (gd.header.stamp, gd.header.frame_id) == (msg.header.stamp, msg.header.frame_id)
    row = uncompress_data(bytes(gd.data))
    assert row.shape == (1, extractor.descriptor_dim)
    expected = extractor.describe([rgb])[0]
    assert float(row[0] @ expected) > 0.9999
    np.testing.assert_allclose(row[0], expected, atol=1e-5)


def check_untouched(msg: RGBDImage, stamp: tuple[int, int]) -> None:
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == stamp and msg.header.frame_id == FRAME_ID
    for info in (msg.rgb_camera_info, msg.depth_camera_info):
        assert (info.header.stamp.sec, info.header.stamp.nanosec, info.header.frame_id) == (*stamp, FRAME_ID)
        assert (info.width, info.height, info.distortion_model) == (640, 480, "plumb_bob")
        assert list(info.k) == [525.0, 0.0, 319.5, 0.0, 525.0, 239.5, 0.0, 0.0, 1.0]
        assert list(info.d) == [0.01, -0.02, 0.0, 0.0, 0.0]


def test_raw_and_compressed_frames_carry_rtabmaps_descriptor(wire: Wire, extractor) -> None:
    published = wire.count("frames published")
    for kind, photo, stamp in [("raw", 1, (100, 5)), ("jpg", 2, (101, 999_999_999)), ("raw", 3, (102, 0)),
                               ("jpg", 1, (103, 7))]:
        wire.send(f"{kind} {photo} {stamp[0]} {stamp[1]}")
        msg = wire.answer(stamp)
        check_untouched(msg, stamp)
        if kind == "raw":
            rgb = photo_rgb(photo)
            assert (msg.rgb.encoding, msg.rgb.width, msg.rgb.height) == ("bgr8", 640, 480)
            assert bytes(msg.rgb.data) == cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).tobytes()
            assert (msg.depth.encoding, msg.depth.step) == ("16UC1", 1280)
            assert bytes(msg.depth.data) == depth_mm(photo).tobytes()
            assert len(msg.rgb_compressed.data) == len(msg.depth_compressed.data) == 0
        else:
            jpeg = jpeg_of(photo)
            assert msg.rgb_compressed.format == "jpg" and bytes(msg.rgb_compressed.data) == jpeg
            depth = cv2.imdecode(np.frombuffer(bytes(msg.depth_compressed.data), np.uint8), cv2.IMREAD_UNCHANGED)
            assert msg.depth_compressed.format == "png" and np.array_equal(depth, depth_mm(photo))
            assert len(msg.rgb.data) == len(msg.depth.data) == 0
            rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        check_descriptor(msg, rgb, extractor)
    assert wire.client.spin_until(lambda: wire.count("frames published") == published + 4, 5)
    diag = wire.client.diag_values()
    assert float(diag["latency p95 ms"]) > 0 and float(diag["model p50 ms"]) > 0


def test_a_frame_without_a_usable_image_is_dropped_and_counted(wire: Wire) -> None:
    """Neither colour field filled, or JPEG bytes that do not decode: no message goes on (RTAB-Map
    would get a node without a descriptor), /diagnostics counts each; the stream goes on."""
    for command in ("empty 200 0", "garbage 201 0"):
        rejected = wire.count("frames rejected")
        wire.send(command)
        assert wire.client.spin_until(lambda r=rejected: wire.count("frames rejected") == r + 1, 20), command
    wire.send("raw 4 202 0")
    wire.answer((202, 0))
    assert not [m for m in wire.out if m.header.stamp.sec in (1, 200, 201)]
    assert wire.count("frames dropped (busy)") == 0


def test_missing_rtabmap_msgs_is_one_fatal_line() -> None:
    code = ("import sys; sys.modules['rtabmap_msgs'] = None; "  # import rtabmap_msgs now fails
            "from vpr_ros.ros.rgbd_descriptors import run; run()")
    res = subprocess.run([sys.executable, "-c", code, "--ros-args", "-p", f"checkpoint:={DEMO}"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    fatal = [line for line in out.splitlines() if "FATAL" in line]
    assert len(fatal) == 1 and "ros-$ROS_DISTRO-rtabmap-msgs" in fatal[0] and "Traceback" not in out, out


# -- how it is started ----------------------------------------------------------------------------


def test_parameters_are_the_localize_nodes() -> None:
    assert set(SPECS) == {"checkpoint", "model_config", "image_size", "device", "precision", "reliable", "frame_size",
                          "frame_timeout"}
    assert all(SPECS[name] is PARAMS[name] for name in SPECS)


def test_launch_file_starts_the_console_script_with_its_arguments() -> None:
    """launch_ros is not installable here: check the file's syntax and the names it relies on (what
    the arguments become is tested below, without ROS)."""
    source, imported, declared = launch_file_names(REPO / "launch" / "rtabmap_descriptors.launch.py")
    assert 'executable="rgbd_descriptors"' in source and 'name="vpr_rgbd_descriptors"' in source
    assert "rgbd_descriptors = vpr_ros.ros.rgbd_descriptors:run" in (REPO / "setup.py").read_text()
    assert '"fastdds_large_frames.xml"' in source and (REPO / "config" / "fastdds_large_frames.xml").is_file()
    assert imported and all(hasattr(launch_args, name) for name in imported)
    assert declared | set(launch_args.DESCRIPTOR_ARGUMENTS) == {
        "checkpoint", "model_config", "image_size", "device", "precision", "reliable", "namespace", "dds_profile",
        "rgbd_image", "rgbd_image_vpr"}
    assert "check_known(context.launch_configurations" in source and "on_exit=" in source


def test_launch_arguments_become_typed_parameters() -> None:
    args = {"checkpoint": "~/m.pt", "image_size": "224, 224", "device": "cuda", "precision": "", "reliable": "True",
            "rgbd_image": "/camera/rgbd_image"}
    assert launch_args.parse_parameters(args, launch_args.DESCRIPTOR_ARGUMENTS) == {
        "checkpoint": str(Path("~/m.pt").expanduser()), "image_size": [224, 224], "device": "cuda", "reliable": True}
    with pytest.raises(InputError, match="reliable must be true or false"):
        launch_args.parse_parameters({"reliable": "yes"}, launch_args.DESCRIPTOR_ARGUMENTS)
    with pytest.raises(InputError, match=r"'chekpoint' \(did you mean 'checkpoint'\?\); rtabmap_descriptors"):
        launch_args.check_known({"chekpoint"}, set(launch_args.DESCRIPTOR_ARGUMENTS), "rtabmap_descriptors.launch.py")


def test_a_failed_node_fails_the_launch() -> None:
    class Exited:
        process_name, returncode = "rgbd_descriptors-1", 1

    with pytest.raises(RuntimeError, match="rgbd_descriptors-1 exited with code 1"):
        launch_args.end_launch_with_node(Exited(), None)
