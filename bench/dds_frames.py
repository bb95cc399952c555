"""Delivery and latency of best-effort camera frames between two processes, with and without the
shipped Fast DDS profile (``config/fastdds_large_frames.xml``).

Why: the node subscribes to camera images best effort (sensor-data QoS). With the wheels' default
Fast DDS settings, large frames from another process on the same host are mostly lost; this measures
how many arrive and how late, per frame size, so the profile's effect is a number, not an anecdote.

For each profile setting (none / shipped) and frame (640x480 rgb8, 1280x720 rgb8, 1920x1080 bgr8
raw; 640x480 and 1920x1080 as JPEG ``CompressedImage``, quality 95, from a bundled photo with a little
noise, roughly a camera frame's size), two fresh processes are started with the same environment: a
plain rclpy subscriber (``qos_profile_sensor_data``, no model) and a publisher that waits until it
sees the subscription, waits 1 s more, then publishes at ``--rate`` Hz for ``--seconds`` s. Latency
is the publisher's wall-clock stamp (``header.stamp``, taken just before ``publish``) to the
subscriber's callback, so it includes serialization, transport and deserialization into Python.
CPU time per frame (process time, all threads) shows what each side pays per message. DDS stays
on loopback (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``) on a random domain id per run.

Usage: ``python bench/dds_frames.py [--seconds 3] [--rate 30]`` (about a minute).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sensor_msgs.msg import CompressedImage, Image

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "config" / "fastdds_large_frames.xml"
SIZES = [(640, 480, "rgb8"), (1280, 720, "rgb8"), (1920, 1080, "bgr8"), (640, 480, "jpeg"), (1920, 1080, "jpeg")]
TOPIC = "/bench/image"
PHOTO = REPO / "vpr_ros" / "synth" / "data" / "scenes" / "building.jpg"


def frame_msg(width: int, height: int, encoding: str) -> Image | CompressedImage:
    """A raw Image of random bytes, or (``jpeg``) a CompressedImage of a resized photo plus noise."""
    import array

    from sensor_msgs.msg import CompressedImage, Image

    if encoding != "jpeg":
        msg = Image(height=height, width=width, encoding=encoding, step=width * 3)
        msg.data = array.array("B", os.urandom(width * height * 3))
        return msg
    import cv2

    bgr = cv2.resize(cv2.imread(str(PHOTO)), (width, height), interpolation=cv2.INTER_CUBIC)
    noisy = np.clip(bgr + np.random.default_rng(0).normal(0, 3, bgr.shape), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return CompressedImage(format="jpeg", data=array.array("B", buf.tobytes()))


def dds_env(profile: Path | None) -> dict[str, str]:
    """Environment for both processes: loopback only, fresh domain, the profile or none at all."""
    env = dict(os.environ)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["ROS_DOMAIN_ID"] = str(random.randint(1, 101))
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    env.pop("FASTRTPS_DEFAULT_PROFILES_FILE", None)  # the pre-3.0 name, still read
    if profile is not None:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)
    return env


def run_pub(width: int, height: int, encoding: str, rate: float, seconds: float) -> None:
    """Publisher process: one preallocated frame, a new stamp and sequence number per publish."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data

    msg = frame_msg(width, height, encoding)
    rclpy.init()
    node = rclpy.create_node("dds_frames_pub")
    pub = node.create_publisher(type(msg), TOPIC, qos_profile_sensor_data)
    deadline = time.monotonic() + 30.0
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    if pub.get_subscription_count() == 0:
        sys.exit("publisher: no subscriber matched in 30 s")
    time.sleep(1.0)  # the reader may match our writer a little after we matched it
    n = round(rate * seconds)
    period = 1.0 / rate
    cpu = time.process_time()
    start = time.monotonic()
    for i in range(n):
        delay = start + i * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        msg.header.frame_id = str(i)  # the sequence number
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns(), 1_000_000_000)
        pub.publish(msg)
    cpu_ms = 1000 * (time.process_time() - cpu) / n
    print(json.dumps({"sent": n, "bytes": len(msg.data), "pub_cpu_ms": cpu_ms}), flush=True)
    node.destroy_node()
    rclpy.shutdown()


def run_sub(stop_file: Path, compressed: bool) -> None:
    """Subscriber process: record (sequence, latency) per frame until ``stop_file`` exists."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image

    rclpy.init()
    node = rclpy.create_node("dds_frames_sub")
    got: list[tuple[int, float]] = []
    cpu = [0.0, 0.0]  # process CPU time at the first and the last frame

    def on_image(msg: Image | CompressedImage) -> None:
        now = time.time_ns()
        cpu[0 if not got else 1] = time.process_time()
        sent = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        got.append((int(msg.header.frame_id), (now - sent) / 1e6))

    node.create_subscription(CompressedImage if compressed else Image, TOPIC, on_image, qos_profile_sensor_data)
    while not stop_file.exists():
        rclpy.spin_once(node, timeout_sec=0.05)
    cpu_ms = 1000 * (cpu[1] - cpu[0]) / (len(got) - 1) if len(got) > 1 else float("nan")
    print(json.dumps({"received": got, "sub_cpu_ms": cpu_ms}), flush=True)
    node.destroy_node()
    rclpy.shutdown()


def trial(profile: Path | None, width: int, height: int, encoding: str, rate: float, seconds: float) -> dict:
    """One publisher/subscriber pair: frames sent and distinct frames received, latencies (ms) and
    CPU time (ms) per frame of each process (publisher: per frame sent; subscriber: per frame
    received, between its first and last frame)."""
    env = dds_env(profile)
    with tempfile.TemporaryDirectory() as tmp:
        stop = Path(tmp) / "stop"
        me = [sys.executable, __file__]
        sub = subprocess.Popen([*me, "--role", "sub", "--stop-file", str(stop), "--encoding", encoding], env=env,
                               stdout=subprocess.PIPE, text=True)
        pub = subprocess.run([*me, "--role", "pub", "--size", f"{width}x{height}", "--encoding", encoding,
                              "--rate", str(rate), "--seconds", str(seconds)],
                             env=env, capture_output=True, text=True, timeout=seconds + 120)
        time.sleep(0.5)  # let the last frames land
        stop.touch()
        out, _ = sub.communicate(timeout=60)
    if pub.returncode != 0:
        raise RuntimeError(f"publisher failed: {pub.stderr}")
    sent = json.loads(pub.stdout.splitlines()[-1])
    sub_result = json.loads(out.splitlines()[-1])
    received = sub_result["received"]
    seqs = {s for s, _ in received}
    return {**sent, "received": len(seqs), "latency_ms": [lat for _, lat in received],
            "sub_cpu_ms": sub_result["sub_cpu_ms"]}


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(values, p)) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="publishing time per trial")
    parser.add_argument("--rate", type=float, default=30.0, help="frames per second")
    parser.add_argument("--role", choices=["pub", "sub"], help=argparse.SUPPRESS)
    parser.add_argument("--size", default="640x480", help=argparse.SUPPRESS)
    parser.add_argument("--encoding", default="rgb8", help=argparse.SUPPRESS)
    parser.add_argument("--stop-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "pub":
        width, height = map(int, args.size.split("x"))
        run_pub(width, height, args.encoding, args.rate, args.seconds)
        return 0
    if args.role == "sub":
        run_sub(args.stop_file, args.encoding == "jpeg")
        return 0

    print(f"best effort, {args.rate:g} Hz, {args.seconds:g} s per trial, publisher and subscriber in separate "
          "processes, DDS on loopback")
    print(f"{'profile':<26} {'frame':<16} {'MB':>5} {'delivered':>12} {'p50 ms':>7} {'p95 ms':>7} "
          f"{'pub cpu ms':>10} {'sub cpu ms':>10}")
    for profile in (None, PROFILE):
        for width, height, encoding in SIZES:
            r = trial(profile, width, height, encoding, args.rate, args.seconds)
            name = profile.name if profile else "(none)"
            frac = f"{r['received']}/{r['sent']} {100 * r['received'] / r['sent']:.0f}%"
            print(f"{name:<26} {f'{width}x{height} {encoding}':<16} {r['bytes'] / 1e6:>5.2f} {frac:>12} "
                  f"{pct(r['latency_ms'], 50):>7.1f} {pct(r['latency_ms'], 95):>7.1f} "
                  f"{r['pub_cpu_ms']:>10.2f} {r['sub_cpu_ms']:>10.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
