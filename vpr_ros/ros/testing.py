"""Driving the ROS node from outside, for the tests and the benchmarks: start it as a real process,
talk to it over real DDS.

Importing this module keeps DDS on loopback (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST) on a per-run
domain id unless one is set: it is meant for test and benchmark processes, never for a robot's.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 101)))

import rclpy  # noqa: E402  (after the DDS environment is set)
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseWithCovarianceStamped  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

from vpr_ros.ros.replay import spin_until  # noqa: E402


def start_node(params: dict, extra_args: list[str] = (), params_file: Path | None = None,
               preexec_fn: Callable[[], None] | None = None, module: str = "vpr_ros.ros.node") -> subprocess.Popen:
    """``python -m <module>`` (the localize node by default) with ``-p name:=value`` for each param
    (``preexec_fn`` runs in the child before it starts, e.g. to set resource limits)."""
    cmd = [sys.executable, "-m", module, "--ros-args"]
    if params_file is not None:
        cmd += ["--params-file", str(params_file)]
    for name, value in params.items():
        text = json.dumps(value) if isinstance(value, (list, bool)) else str(value) or "''"  # YAML empty string
        cmd += ["-p", f"{name}:={text}"]
    cmd += list(extra_args)
    log = tempfile.TemporaryFile("w+")  # not a pipe: a chatty node must never block on a full pipe
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, preexec_fn=preexec_fn)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def stop_node(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 30.0) -> tuple[int, str]:
    """Signal the node, wait for it, and return (exit code, everything it printed)."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.log.seek(0)  # type: ignore[attr-defined]
    return proc.returncode, proc.log.read()  # type: ignore[attr-defined]


def image_msg(pixels: np.ndarray, stamp: tuple[int, int], frame_id: str = "camera", encoding: str = "rgb8") -> Image:
    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding, step=pixels[0].nbytes)
    msg.data = pixels.tobytes()
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    msg.header.frame_id = frame_id
    return msg


def compressed_msg(data: bytes, fmt: str, stamp: tuple[int, int], frame_id: str = "camera") -> CompressedImage:
    msg = CompressedImage(format=fmt, data=data)
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    msg.header.frame_id = frame_id
    return msg


def jpeg_msg(rgb: np.ndarray, stamp: tuple[int, int], frame_id: str = "camera") -> CompressedImage:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return compressed_msg(buf.tobytes(), "jpeg", stamp, frame_id)


def odom_msg(stamp: tuple[int, int], x: float, y: float = 0.0) -> Odometry:
    msg = Odometry()
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    msg.header.frame_id = "odom"
    msg.pose.pose.position.x, msg.pose.pose.position.y = x, y
    msg.pose.pose.orientation.w = 1.0
    return msg


class Client:
    """The test's side of the conversation: publishes frames, records the node's outputs."""

    def __init__(self, ns: str = "", image_topic: str = "/cam/image", odom_topic: str = "/odom",
                 node_name: str = "vpr_localize") -> None:
        if not rclpy.ok():
            rclpy.init()
        base = f"{ns}/{node_name}"  # whose /diagnostics diag_values reads
        self.node = rclpy.create_node(f"vpr_test_client_{os.getpid()}_{random.randint(0, 1 << 30)}")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.image = self.node.create_publisher(Image, image_topic, 10)
        self.compressed = self.node.create_publisher(CompressedImage, image_topic + "/compressed", 10)
        self.odom = self.node.create_publisher(Odometry, odom_topic, 50)
        self.matches: list[dict] = []
        self.loops: list[list[float]] = []
        self.poses: list[PoseWithCovarianceStamped] = []
        self.diagnostics: list[DiagnosticArray] = []
        self.markers: list[MarkerArray] = []
        self.node.create_subscription(String, f"{base}/matches", lambda m: self.matches.append(json.loads(m.data)), 50)
        self.node.create_subscription(Float64MultiArray, f"{base}/loop_closure",
                                      lambda m: self.loops.append(list(m.data)), 50)
        self.node.create_subscription(PoseWithCovarianceStamped, f"{base}/match_pose", self.poses.append, 50)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(MarkerArray, f"{base}/markers", self.markers.append, latched)
        self.save = self.node.create_client(Trigger, f"{base}/save_map")
        self.reset = self.node.create_client(Trigger, f"{base}/reset")
        self.base = base

    def spin_until(self, cond: Callable[[], bool], timeout: float = 30.0) -> bool:
        return spin_until(self.executor, cond, timeout)

    def wait_ready(self, proc: subprocess.Popen, timeout: float = 60.0) -> None:
        """Until the node's subscriptions and publishers are matched with ours."""
        ok = self.spin_until(lambda: proc.poll() is not None or (
            self.image.get_subscription_count() > 0 and self.node.count_publishers(f"{self.base}/matches") > 0),
            timeout)
        if proc.poll() is not None or not ok:
            code, out = stop_node(proc)
            raise AssertionError(f"node did not come up (exit {code}):\n{out}")

    def handshake(self, proc: subprocess.Popen, timeout: float = 30.0) -> None:
        """For best-effort subscriptions: DDS may match our writer before the node's reader has
        matched it, and best-effort samples sent in that gap are lost. Send empty (rejected,
        harmless) frames until the node's diagnostics count one."""
        ping = Image(height=1, width=1, encoding="rgb8", step=3)
        end = time.monotonic() + timeout
        while time.monotonic() < end and proc.poll() is None:
            self.image.publish(ping)
            if self.spin_until(lambda: int(self.diag_values().get("frames rejected", 0)) > 0, 0.5):
                return
        raise AssertionError("the node never received a frame")

    def call(self, client, timeout: float = 30.0) -> Trigger.Response:
        assert client.wait_for_service(timeout_sec=timeout)
        future = client.call_async(Trigger.Request())
        assert self.spin_until(future.done, timeout)
        return future.result()

    def send_and_wait(self, msg, timeout: float = 30.0) -> dict:
        """Publish one frame and wait for its ~/matches answer (matched by stamp)."""
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        (self.compressed if isinstance(msg, CompressedImage) else self.image).publish(msg)

        def answered() -> bool:
            return any((m["query"]["stamp"]["sec"], m["query"]["stamp"]["nanosec"]) == stamp for m in self.matches)

        assert self.spin_until(answered, timeout), f"no answer for frame {stamp}"
        return next(m for m in self.matches if (m["query"]["stamp"]["sec"], m["query"]["stamp"]["nanosec"]) == stamp)

    def diag_values(self) -> dict[str, str]:
        ours = [s for d in self.diagnostics for s in d.status if s.name.startswith(self.base + ":")]
        return {kv.key: kv.value for kv in ours[-1].values} if ours else {}

    def close(self) -> None:
        self.executor.remove_node(self.node)
        self.node.destroy_node()
