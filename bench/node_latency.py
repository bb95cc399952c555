"""Overhead of the vpr_localize node over its model, and the node's memory over a long run.

Starts the node as a real process (tiny golden SALAD, 224x224, CPU, localize mode against a map
of the bundled photos, reliable image QoS) and talks to it over DDS on loopback, a random domain
id per run (unless ``ROS_AUTOMATIC_DISCOVERY_RANGE`` / ``ROS_DOMAIN_ID`` are set: they are kept).
Frames are 640x480 rgb8 (the bundled photos resized, cycled), sent one at a time: publish, wait
for the ``~/matches`` answer carrying that stamp, then the next, so none is dropped and each
end-to-end time (client wall clock, publish -> answer received) stands alone.

Model time is ``DescriptorExtractor.extract([rgb])`` (preprocess + forward, as the node calls it)
with the same model and settings in this process, timed on the same frame right after each
answer while the node idles, so both series see the same background load. Overhead =
end-to-end - model time, reported per percentile (p50 - p50, p99 - p99). Also printed: the node's
own latency p50/p95 from ``/diagnostics`` (callback -> published, last 1000 frames) and the node's
VmRSS sampled every 250 frames. Goal: overhead <= 2 ms p50 and flat memory; the last line says
whether each part was met.

Usage: ``python bench/node_latency.py [--frames N | --quick]`` (on 2 CPU cores the default 2,000
frames take about a minute, ``--quick`` 200 frames about 15 s). Exits non-zero only when the run
itself fails, not when the goal is missed.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

# Discovery on this host and a random domain id, unless the user chose them (before rclpy is imported).
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 101)))
REPO = Path(__file__).resolve().parents[1]

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from vpr_ros.extractor import load_extractor  # noqa: E402
from vpr_ros.maps.place_map import PlaceMap  # noqa: E402
from vpr_ros.preprocess import load_image  # noqa: E402
from vpr_ros.ros.testing import Client, image_msg, start_node, stop_node  # noqa: E402
from vpr_ros.types import Pose  # noqa: E402

GOLDEN = REPO / "test" / "data" / "golden" / "salad"
CKPT, CONFIG = GOLDEN / "tiny_salad_state_dict.pt", GOLDEN / "config.json"
PHOTOS = sorted((REPO / "vpr_ros" / "synth" / "data" / "scenes").glob("*.jpg"))
SIZE = [224, 224]
WARMUP = 20  # frames sent before measuring (not counted)
RSS_EVERY = 250


def vm_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, p))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="200 frames")
    args = parser.parse_args()
    n = 200 if args.quick else args.frames

    photos = [load_image(p) for p in PHOTOS]
    frames = [np.ascontiguousarray(cv2.resize(p, (640, 480), interpolation=cv2.INTER_AREA)) for p in photos]
    ext = load_extractor(CKPT, CONFIG, SIZE, "cpu", batch_size=1)  # as the node builds it
    ext.warmup(1)

    with tempfile.TemporaryDirectory() as tmp:
        pm = PlaceMap.create(ext.descriptor_dim, model_id=ext.identity)
        pm.add(ext.describe(photos), [(100 + i, 0) for i in range(len(photos))],
               poses=[Pose((float(i), 0.0, 0.0)) for i in range(len(photos))])
        pm.save(map_path := Path(tmp) / "scenes.map")

        params = {"checkpoint": str(CKPT), "model_config": str(CONFIG), "image_size": SIZE, "device": "cpu",
                  "mode": "localize", "map": str(map_path), "reliable": True}
        proc = start_node(params, ["-r", "image:=/cam/image"])
        client = Client()
        e2e, model_t, rss, diag, out = [], [], [], {}, ""
        try:
            client.wait_ready(proc)
            msgs = [image_msg(f, (0, 0)) for f in frames]  # built once; only the stamp changes
            for i in range(-WARMUP, n):
                msg = msgs[i % len(msgs)]
                msg.header.stamp.sec = 10_000 + WARMUP + i
                if i >= 0 and i % RSS_EVERY == 0:
                    rss.append((i, vm_rss_mib(proc.pid)))
                t0 = time.perf_counter()
                client.send_and_wait(msg)
                dt = time.perf_counter() - t0
                client.matches.clear()  # keeps send_and_wait's search O(1) over the run
                t0 = time.perf_counter()  # the node idles meanwhile
                ext.extract([frames[i % len(frames)]])
                if i >= 0:
                    e2e.append(dt)
                    model_t.append(time.perf_counter() - t0)
            rss.append((n, vm_rss_mib(proc.pid)))
            if not client.spin_until(
                    lambda: int(client.diag_values().get("frames processed", 0)) >= n + WARMUP, 5.0):
                print("warning: no /diagnostics covering the whole run", file=sys.stderr)
            diag = client.diag_values()
        finally:
            client.close()
            code, out = stop_node(proc)
        if code != 0:
            print(f"node exited with {code}:\n{out}", file=sys.stderr)
            return 1

    print(f"vpr_localize, tiny SALAD {SIZE[0]}x{SIZE[1]} on CPU ({torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} cores), 640x480 rgb8, {n} frames one at a time, map of {len(photos)} places, "
          f"ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'ms':<34}{'p50':>8}{'p99':>8}{'max':>8}")
    for name, vals in [("end-to-end (publish -> matches)", e2e), ("model (extract in-process)", model_t)]:
        print(f"{name:<34}{pct(vals, 50):8.2f}{pct(vals, 99):8.2f}{pct(vals, 100):8.2f}")
    over50, over99 = pct(e2e, 50) - pct(model_t, 50), pct(e2e, 99) - pct(model_t, 99)
    print(f"{'overhead (e2e - model)':<34}{over50:8.2f}{over99:8.2f}")
    paired = list(np.subtract(e2e, model_t))  # per frame: shared background load cancels more
    print(f"{'  per-frame e2e - model':<34}{pct(paired, 50):8.2f}{pct(paired, 99):8.2f}")
    print(f"node /diagnostics latency (last 1000): p50 {diag.get('latency p50 ms', '?')} ms "
          f"(model inside the node p50 {diag.get('model p50 ms', '?')} ms), "
          f"p95 {diag.get('latency p95 ms', '?')} ms; processed {diag.get('frames processed', '?')}, "
          f"dropped {diag.get('frames dropped (busy)', '?')}, rejected {diag.get('frames rejected', '?')}")
    print("node VmRSS MiB by frame: " + ", ".join(f"{i}: {m:.1f}" for i, m in rss))
    base_i, base = next(((i, m) for i, m in rss if i >= RSS_EVERY), rss[0])
    growth = rss[-1][1] - base
    print(f"RSS growth frame {base_i} -> {n}: {growth:+.1f} MiB")
    print(f"goal: overhead p50 <= 2 ms: {'met' if over50 <= 2 else 'MISSED'}; "
          f"flat memory (growth <= 5 MiB): {'met' if abs(growth) <= 5 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
