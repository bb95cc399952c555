"""Latency the RGBD descriptor node adds to RTAB-Map's sync path (rgbd_sync -> RTAB-Map).

The node (``python -m vpr_ros.ros.rgbd_descriptors``, demo model, CPU) runs in its own process.
This process stands in for both ends: it publishes ``rtabmap_msgs/RGBDImage`` frames best effort
as ``rgbd_sync`` would (640x480 photos; raw bgr8 + 16UC1 depth, or the compressed pair, JPEG colour
+ PNG depth, vpr_ros/ros/rgbd_testing.py) at ``--rate`` Hz, and receives them reliable as RTAB-Map would.
Latency is publish -> receipt on one clock (this process), so it includes serialising, DDS,
deserialising into Python on both hops, decoding, the model and the descriptor encoding.

Three paths, one after the other, so they do not compete for the CPU:
``direct`` (no node between: what RTAB-Map gets without this package), ``relay`` (a pass-through
rclpy process with the node's QoS: the cost of one more hop) and ``node``. Added latency is
node - direct. Every process loads the shipped Fast DDS profile (``FASTDDS_DEFAULT_PROFILES_FILE``,
unless already set), as large best-effort frames between processes need it. DDS stays on loopback
on a random domain id unless ``ROS_AUTOMATIC_DISCOVERY_RANGE`` / ``ROS_DOMAIN_ID`` are set.

Usage: ``python bench/rgbd_latency.py [--frames 100] [--rate 10]`` (about 90 s on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 101)))
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO / "config" / "fastdds_large_frames.xml"))

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
import torch  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from rtabmap_msgs.msg import RGBDImage  # noqa: E402

from vpr_ros.ros.rgbd_descriptors import OUTPUT_QOS  # noqa: E402
from vpr_ros.ros.rgbd_testing import compressed_rgbd, raw_rgbd  # noqa: E402
from vpr_ros.ros.testing import Client, start_node, stop_node  # noqa: E402

DEMO = REPO / "vpr_ros" / "synth" / "data" / "models" / "demo_salad.pt"
WARMUP = 10  # frames per format sent before measuring (not counted)
PHOTOS = 8  # distinct photos cycled

# The pass-through baseline: the node's QoS, no work.
RELAY = """
import sys
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rtabmap_msgs.msg import RGBDImage
rclpy.init()
node = rclpy.create_node("rgbd_relay")
pub = node.create_publisher(RGBDImage, sys.argv[2], QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
node.create_subscription(RGBDImage, sys.argv[1], pub.publish, qos_profile_sensor_data)
try:
    rclpy.spin(node)
except KeyboardInterrupt:
    pass
"""


def measure(path: str, frames: dict[str, list[RGBDImage]], n: int, rate: float) -> dict[str, tuple[list[float], int]]:
    """Publish each format's frames on ``/bench/<path>/in`` (``direct``: and receive them there) and
    receive them on ``/bench/<path>/out``; per format, the latencies (s) of those of the ``n`` frames
    after warmup that arrived, and ``n``."""
    topic_in = f"/bench/{path}/in"
    topic_out = topic_in if path == "direct" else f"/bench/{path}/out"
    child = None
    if path == "relay":
        child = subprocess.Popen([sys.executable, "-c", RELAY, topic_in, topic_out])
    elif path == "node":
        child = start_node({"checkpoint": str(DEMO), "device": "cpu"},
                           ["-r", f"rgbd_image:={topic_in}", "-r", f"rgbd_image_vpr:={topic_out}"],
                           module="vpr_ros.ros.rgbd_descriptors")
    node = rclpy.create_node(f"rgbd_bench_{path}")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    received: dict[tuple[int, int], float] = {}

    def on_frame(msg: RGBDImage) -> None:
        received[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = time.perf_counter()

    pub = node.create_publisher(RGBDImage, topic_in, qos_profile_sensor_data)
    out_qos = qos_profile_sensor_data if path == "direct" else OUTPUT_QOS  # direct: RTAB-Map with qos_image 2
    node.create_subscription(RGBDImage, topic_out, on_frame, out_qos)
    try:
        end = time.monotonic() + 90
        while time.monotonic() < end and not (pub.get_subscription_count() and node.count_publishers(topic_out)):
            if child is not None and child.poll() is not None:
                raise RuntimeError(f"{path} process exited with {child.returncode}")
            executor.spin_once(timeout_sec=0.1)
        if not pub.get_subscription_count():
            raise RuntimeError(f"{path}: nobody subscribed to {topic_in}")
        end = time.monotonic() + 1.0  # the readers may match a little after our writer
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        result = {}
        for fmt, msgs in frames.items():
            sent: dict[tuple[int, int], float] = {}
            start = time.perf_counter()
            for i in range(WARMUP + n):
                msg = msgs[i % len(msgs)]
                stamp = (1000 * (1 + list(frames).index(fmt)) + i, 0)
                msg.header.stamp.sec = msg.global_descriptor.header.stamp.sec = stamp[0]
                due = start + i / rate
                while (now := time.perf_counter()) < due:
                    executor.spin_once(timeout_sec=due - now)
                t0 = time.perf_counter()
                pub.publish(msg)
                if i >= WARMUP:
                    sent[stamp] = t0
            end = time.monotonic() + 3.0  # the last answers
            while time.monotonic() < end and not all(s in received for s in sent):
                executor.spin_once(timeout_sec=0.05)
            result[fmt] = ([received[s] - t for s, t in sent.items() if s in received], len(sent))
        return result
    finally:
        node.destroy_node()
        if path == "node":
            diag_node_and_stop(child)
        elif child is not None:
            child.send_signal(2)
            child.wait(10)


def diag_node_and_stop(proc: subprocess.Popen) -> None:
    """The node's own view (/diagnostics), then stop it."""
    client = Client(node_name="vpr_rgbd_descriptors")
    client.spin_until(lambda: bool(client.diag_values()), 5.0)
    d = client.diag_values()
    client.close()
    code, out = stop_node(proc)
    if code != 0:
        raise RuntimeError(f"node exited with {code}:\n{out}")
    print(f"node /diagnostics: received {d.get('frames received')}, published {d.get('frames published')}, "
          f"dropped (busy) {d.get('frames dropped (busy)')}, rejected {d.get('frames rejected')}; "
          f"receive -> publish p50 {d.get('latency p50 ms')} ms, p95 {d.get('latency p95 ms')} ms, "
          f"model p50 {d.get('model p50 ms')} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100, help="measured frames per path and format")
    parser.add_argument("--rate", type=float, default=10.0, help="frames per second")
    args = parser.parse_args()
    rclpy.init()
    frames = {"raw": [raw_rgbd(i, (0, 0)) for i in range(PHOTOS)],
              "compressed": [compressed_rgbd(i, (0, 0)) for i in range(PHOTOS)]}
    results = {path: measure(path, frames, args.frames, args.rate) for path in ("direct", "relay", "node")}
    rclpy.shutdown()

    print(f"RGBDImage 640x480 (raw: bgr8 + 16UC1, {len(bytes(frames['raw'][0].rgb.data)) / 1e6:.2f} + "
          f"{len(bytes(frames['raw'][0].depth.data)) / 1e6:.2f} MB; compressed: jpg + png, "
          f"{len(frames['compressed'][0].rgb_compressed.data) / 1e3:.0f} + "
          f"{len(frames['compressed'][0].depth_compressed.data) / 1e3:.0f} kB) at {args.rate:g} Hz, "
          f"{args.frames} frames per row; node: demo model on CPU ({torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} cores), load average {os.getloadavg()[0]:.1f}")
    print(f"{'publish -> receipt, ms':<28}{'got':>9}{'p50':>8}{'p95':>8}{'max':>8}")
    for path, by_format in results.items():
        for fmt in frames:
            ms = np.asarray(by_format[fmt][0]) * 1000
            got = f"{len(ms)}/{by_format[fmt][1]}"
            stats = [np.percentile(ms, p) for p in (50, 95, 100)] if len(ms) else [float("nan")] * 3
            print(f"{path + ' ' + fmt:<28}{got:>9}" + "".join(f"{v:8.1f}" for v in stats))
    for fmt in frames:
        node, direct = (np.asarray(results[p][fmt][0]) * 1000 for p in ("node", "direct"))
        if len(node) and len(direct):
            print(f"added by the node ({fmt}): p50 {np.percentile(node, 50) - np.percentile(direct, 50):.1f} ms, "
                  f"p95 {np.percentile(node, 95) - np.percentile(direct, 95):.1f} ms (node - direct, per percentile)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
