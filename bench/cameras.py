"""One node, several cameras: what a two-camera robot gets compared with one camera.

Starts the node as a real process (bundled demo model, CPU, slam mode on a new map) with
``cameras: [cam0, cam1, ...]``, and publishes 640x480 rgb8 frames best effort (sensor-data QoS, as
camera drivers do) from this process to each camera's topic at ``--rate`` Hz for ``--seconds``,
with the shipped Fast DDS profile (config/fastdds_large_frames.xml) on both sides. Prints, per
run: frames published / received / described / dropped by the latest-frame slots, described
frames per second and in how many model batches, the node's latency p50/p95 (callback ->
published, from /diagnostics) and the places per camera in the saved map.

Usage: ``python bench/cameras.py [--cameras 1 2] [--rate 10] [--seconds 10]``. DDS stays on loopback
(``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``; ``ROS_DOMAIN_ID`` is yours, or a random one if unset).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # before rclpy is imported
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 101)))
os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(REPO / "config" / "fastdds_large_frames.xml")

import cv2  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from vpr_ros.maps.place_map import PlaceMap  # noqa: E402
from vpr_ros.preprocess import load_image  # noqa: E402
from vpr_ros.ros.testing import Client, image_msg, start_node, stop_node  # noqa: E402

DEMO = REPO / "vpr_ros" / "synth" / "data" / "models" / "demo_salad.pt"
PHOTOS = sorted((REPO / "vpr_ros" / "synth" / "data" / "scenes").glob("*.jpg"))


def run(n_cameras: int, rate: float, seconds: float, frames: list) -> dict:
    names = [f"cam{i}" for i in range(n_cameras)]
    with tempfile.TemporaryDirectory() as tmp:
        params = Path(tmp) / "cameras.yaml"
        params.write_text(json.dumps({"/**": {"ros__parameters": {
            "cameras": names, **{n: {"image_topic": f"/{n}/image_raw"} for n in names}}}}))
        path = Path(tmp) / "bench.map"
        proc = start_node({"checkpoint": str(DEMO), "device": "cpu", "mode": "slam", "map": str(path)},
                          params_file=params)
        client = Client(image_topic="/unused")
        pubs = [client.node.create_publisher(Image, f"/{n}/image_raw", qos_profile_sensor_data) for n in names]
        try:
            if not client.spin_until(lambda: proc.poll() is not None or all(
                    p.get_subscription_count() > 0 for p in pubs), 60) or proc.poll() is not None:
                raise RuntimeError(f"node did not come up:\n{stop_node(proc)[1]}")
            client.spin_until(lambda: False, 1.0)  # let both sides match before counting
            sent, start = 0, time.monotonic()
            for k in range(int(seconds * rate)):
                stamp = (100 + k // int(rate), int((k % int(rate)) * 1e9 / rate))
                for i, pub in enumerate(pubs):
                    pub.publish(image_msg(frames[(k + 7 * i) % len(frames)], stamp, f"{names[i]}_optical"))
                    sent += 1
                client.spin_until(lambda: False, max(0.0, start + (k + 1) / rate - time.monotonic()))
            elapsed = time.monotonic() - start
            client.spin_until(lambda: False, 3.0)  # the last frames and a diagnostics message
            values = client.diag_values()
        finally:
            client.close()
            code, out = stop_node(proc)
        if code != 0:
            raise RuntimeError(f"node exited {code}:\n{out}")
        saved = PlaceMap.load(path)
        per_camera = Counter(saved.place(i).camera for i in saved.ids())
    described = int(values.get("frames processed", 0))
    return {"cameras": n_cameras, "published": sent, "received": int(values.get("frames received", 0)),
            "described": described, "dropped_busy": int(values.get("frames dropped (busy)", 0)),
            "batches": int(values.get("batches described", 0)), "described_per_s": round(described / elapsed, 2),
            "latency_p50_ms": float(values.get("latency p50 ms", "nan")),
            "latency_p95_ms": float(values.get("latency p95 ms", "nan")), "places_per_camera": dict(per_camera)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cameras", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rate", type=float, default=10.0, help="Hz per camera")
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    frames = [cv2.resize(load_image(p), (640, 480), interpolation=cv2.INTER_AREA) for p in PHOTOS]
    for n in args.cameras:
        r = run(n, args.rate, args.seconds, frames)
        print(f"{n} camera(s), 640x480 rgb8 at {args.rate:g} Hz each for {args.seconds:g} s: "
              f"published {r['published']}, received {r['received']}, described {r['described']} "
              f"({r['described_per_s']}/s) in {r['batches']} batches, "
              f"dropped by the latest-frame slots {r['dropped_busy']}, "
              f"latency p50 {r['latency_p50_ms']:.1f} ms p95 {r['latency_p95_ms']:.1f} ms, "
              f"places per camera {r['places_per_camera']}")
        print(json.dumps(r))


if __name__ == "__main__":
    main()
