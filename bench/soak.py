"""Soak of the slam node: a long 30 Hz camera stream with one hostile frame in four, and odometry.

Why: a node on a robot runs for hours against whatever its drivers send. This checks, over
``--seconds`` (default 10 minutes), that memory stays flat, that every frame is accounted for
(``received == processed + rejected + dropped (busy) + skipped``), that hostile frames and poses
are counted drops and never places, and that the map saved at the end holds every described frame.

The node (``python -m vpr_ros.ros.node``, demo model, CPU, slam mode on a new map in a temporary
folder) runs in its own process; this process publishes to it, best effort (sensor-data QoS, as
camera drivers do), with the shipped Fast DDS profile (config/fastdds_large_frames.xml) on both
sides: 640x480 frames at ``--rate`` Hz, of each four two raw rgb8 photos, one JPEG on
``/compressed`` and one hostile frame (in turn: empty data, a step shorter than a row, a NaN
``32FC1`` image, truncated rows, an absurd or zero size, odd-width ``yuv422``, a nanosecond field
over 1e9, a truncated JPEG, garbage bytes, a PNG header claiming 10^10 pixels, an empty JPEG);
and odometry at 50 Hz (reliable), one sample in ten hostile (NaN, +-1e308, inf, 1e10 m, a zero,
NaN or 1e308 quaternion). Good photos are the bundled ones (vpr_ros/synth/data/scenes) resized.

Measured: the node's VmRSS every ``--rss-every`` s, ``/diagnostics`` (once a second), ``~/matches``
(the stamp of every described frame: a hostile stamp there is a hostile frame made a place). At the
end: ``~/save_map``, SIGINT, the exit code, and the saved map loaded back.

Goals (exit status 1 when one is missed): counters add up exactly once the stream has stopped and
through the run never go negative; hostile frames that arrived are rejected (``rejected`` lies
between hostile sent - (lost in transport + dropped busy) and hostile sent) and none is described;
every hostile pose is rejected (odometry is reliable); the saved map holds exactly the described
frames (slam mode adds every described frame to the map); the node exits 0 without a traceback;
and memory growth over the steady state (from the end of ``--warmup``, default min(60 s, a quarter of
the run), to the end of the stream) net of the map's own data (places added meanwhile x (4 x dim +
89) bytes: descriptor, FAISS id and metadata columns) is at most 20 MiB. Raw growth is printed too.

Usage: ``python bench/soak.py [--seconds 600] [--json soak.json]`` (the stream plus about 20 s; on 2 CPU
cores the node used a third of a core, the publisher a twentieth). DDS stays on loopback
(``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``; ``ROS_DOMAIN_ID`` is yours, or a random one if unset).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # before rclpy is imported
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 101)))
os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(REPO / "config" / "fastdds_large_frames.xml")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from vpr_ros.errors import VprError  # noqa: E402
from vpr_ros.maps.place_map import PlaceMap  # noqa: E402
from vpr_ros.preprocess import load_image  # noqa: E402
from vpr_ros.ros.replay import spin_until  # noqa: E402
from vpr_ros.ros.testing import start_node, stop_node  # noqa: E402

DEMO = REPO / "vpr_ros" / "synth" / "data" / "models" / "demo_salad.pt"
PHOTOS = sorted((REPO / "vpr_ros" / "synth" / "data" / "scenes").glob("*.jpg"))
NODE = "/vpr_localize"
TOPIC, ODOM = "/soak/camera/image", "/soak/odom"
ODOM_RATE, HOSTILE_POSE_EVERY = 50.0, 10
T0 = 1000  # seconds of the first stamp (a simulated clock: stamp = T0 + slot / rate)
GOAL_MIB = 20.0
PLACE_EXTRA_BYTES = 8 + 81  # FAISS id + the map's metadata columns (stamp, alive, 7-float pose, 4 string ids)
KEYS = {"received": "frames received", "processed": "frames processed", "rejected": "frames rejected",
        "dropped": "frames dropped (busy)", "skipped": "frames skipped (keyframe period)",
        "poses_rejected": "poses rejected", "places": "map places"}


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS and its parts: anonymous (heap), file-backed (libraries) and shared memory (the DDS
    shared-memory segments of the node and of its publishers, mapped into it, resident as they are touched)."""
    fields = {"VmRSS": "rss_mib", "RssAnon": "anon_mib", "RssFile": "file_mib", "RssShmem": "shmem_mib",
              "VmHWM": "hwm_mib"}
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in fields:
            out[fields[name]] = round(int(value.split()[0]) / 1024, 2)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raw_msg(rgb: np.ndarray) -> Image:
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", step=rgb.shape[1] * 3)
    msg.data = rgb.tobytes()
    return msg


def jpeg_bytes(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's signature)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def hostile_frames(rgb: np.ndarray) -> list[tuple[str, Image | CompressedImage]]:
    """Frames image_msgs must refuse, each a counted drop; ``bad stamp`` is refused by its header."""
    data, (h, w) = rgb.tobytes(), rgb.shape[:2]
    jpeg = jpeg_bytes(rgb)
    nan = np.full(h * w, np.nan, np.float32).tobytes()
    bad_stamp = raw_msg(rgb)
    bad_stamp.header.stamp.nanosec = 1_500_000_000  # set once: publish() keeps it
    return [
        ("empty data", Image(height=h, width=w, encoding="rgb8", step=w * 3)),
        ("step < row", Image(height=h, width=w, encoding="rgb8", step=1000, data=data)),
        ("NaN 32FC1", Image(height=h, width=w, encoding="32FC1", step=w * 4, data=nan)),
        ("truncated rows", Image(height=h, width=w, encoding="rgb8", step=w * 3, data=data[: len(data) // 2])),
        ("absurd size", Image(height=100_000, width=100_000, encoding="rgb8", step=300_000, data=data)),
        ("zero width", Image(height=h, width=0, encoding="rgb8", step=0, data=data)),
        ("odd yuv422", Image(height=h, width=w - 1, encoding="yuv422", step=(w - 1) * 2, data=data)),
        ("bad stamp", bad_stamp),
        ("truncated JPEG", CompressedImage(format="jpeg", data=jpeg[: len(jpeg) // 2])),
        ("garbage bytes", CompressedImage(format="jpeg", data=random.Random(0).randbytes(50_000))),
        ("PNG bomb header", CompressedImage(format="png", data=png_header(100_000, 100_000))),
        ("empty JPEG", CompressedImage(format="jpeg")),
    ]


HOSTILE_POSES = [("NaN x", (math.nan, 0, 0), (0, 0, 0, 1)), ("1e308 x", (1e308, 0, 0), (0, 0, 0, 1)),
                 ("-1e308 y", (0, -1e308, 0), (0, 0, 0, 1)), ("inf z", (0, 0, math.inf), (0, 0, 0, 1)),
                 ("1e10 m", (1e10, 0, 0), (0, 0, 0, 1)), ("zero quaternion", (0, 0, 0), (0, 0, 0, 0)),
                 ("NaN quaternion", (0, 0, 0), (math.nan, 0, 0, 1)), ("1e308 quaternion", (0, 0, 0), (1e308, 0, 0, 1))]


def odom_msg(stamp_s: float, position: tuple, orientation: tuple) -> Odometry:
    msg = Odometry()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(round(stamp_s * 1e9), 1_000_000_000)
    msg.header.frame_id, msg.child_frame_id = "odom", "base_link"
    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    p.x, p.y, p.z = (float(v) for v in position)
    q.x, q.y, q.z, q.w = (float(v) for v in orientation)
    return msg


def set_stamp(msg: Image | CompressedImage, stamp_s: float) -> tuple[int, int]:
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(round(stamp_s * 1e9), 1_000_000_000)
    return msg.header.stamp.sec, msg.header.stamp.nanosec


class Bench:
    """This process's side: publishers, and what it hears from the node."""

    def __init__(self) -> None:
        rclpy.init()
        self.node = rclpy.create_node(f"vpr_soak_{os.getpid()}")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.raw = self.node.create_publisher(Image, TOPIC, qos_profile_sensor_data)
        self.compressed = self.node.create_publisher(CompressedImage, TOPIC + "/compressed", qos_profile_sensor_data)
        self.odom = self.node.create_publisher(Odometry, ODOM, 50)
        self.diag: dict[str, str] = {}
        self.diag_count = 0
        self.min_balance = 0  # received - (processed + rejected + dropped + skipped), lowest seen
        self.matched: list[tuple[int, int]] = []
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.node.create_subscription(String, f"{NODE}/matches", self._on_match, 100)
        self.save = self.node.create_client(Trigger, f"{NODE}/save_map")

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == f"{NODE}: pipeline":
                self.diag = {kv.key: kv.value for kv in status.values}
                self.diag_count += 1
                if all(k in self.diag for k in KEYS.values()):
                    self.min_balance = min(self.min_balance, self.balance())

    def _on_match(self, msg: String) -> None:
        stamp = json.loads(msg.data)["query"]["stamp"]
        self.matched.append((stamp["sec"], stamp["nanosec"]))

    def count(self, name: str) -> int:
        return int(self.diag.get(KEYS[name], 0))

    def balance(self) -> int:
        """Frames received but not (yet) counted anywhere: pending or being described."""
        return self.count("received") - sum(self.count(k) for k in ("processed", "rejected", "dropped", "skipped"))

    def spin_until(self, cond, timeout: float) -> bool:
        return spin_until(self.executor, cond, timeout)

    def next_diag(self, timeout: float = 5.0) -> bool:
        seen = self.diag_count
        return self.spin_until(lambda: self.diag_count > seen, timeout)

    def close(self) -> None:
        self.executor.remove_node(self.node)
        self.node.destroy_node()
        rclpy.try_shutdown()


def handshake(bench: Bench, proc: subprocess.Popen) -> None:
    """Until the node counts our frames and poses: best-effort samples sent before its reader matched our
    writer are lost, and volatile odometry too. Pings are refused (empty frame, NaN pose): counted, harmless."""
    if not bench.spin_until(lambda: proc.poll() is not None or (
            bench.raw.get_subscription_count() > 0 and bench.compressed.get_subscription_count() > 0
            and bench.odom.get_subscription_count() > 0 and bench.save.service_is_ready()), 120):
        raise RuntimeError("the node's subscriptions did not appear in 120 s")
    if proc.poll() is not None:
        raise RuntimeError(f"the node exited with {proc.returncode} while starting")
    ping, pose = Image(height=1, width=1, encoding="rgb8", step=3), odom_msg(1.0, (math.nan, 0, 0), (0, 0, 0, 1))
    end = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < end:
        bench.raw.publish(ping)
        bench.odom.publish(pose)
        if bench.spin_until(lambda: bench.count("rejected") > 0 and bench.count("poses_rejected") > 0, 0.5):
            return
    raise RuntimeError("the node never counted a frame and a pose (exit code "
                       f"{proc.poll()}; is it warming up for over 2 minutes?)")


def stream(bench: Bench, proc: subprocess.Popen, args: argparse.Namespace) -> dict:
    """Publish for ``args.seconds``; VmRSS and the counters every ``args.rss_every`` s."""
    photos = [np.ascontiguousarray(cv2.resize(load_image(p), (640, 480), interpolation=cv2.INTER_AREA))
              for p in PHOTOS]
    raws = [raw_msg(p) for p in photos]
    jpegs = [CompressedImage(format="jpeg", data=jpeg_bytes(p)) for p in photos]
    hostile = hostile_frames(photos[0])
    sent = {"good_raw": 0, "good_jpeg": 0, "hostile": 0, "poses_good": 0, "poses_hostile": 0, "slots_late": 0}
    hostile_stamps: set[tuple[int, int]] = set()
    samples: list[dict] = []
    start = time.monotonic()
    frames = poses = 0
    last_slot = last_odom = -1
    next_sample = start
    while (now := time.monotonic()) < start + args.seconds:
        if proc.poll() is not None:
            raise RuntimeError(f"the node exited with {proc.returncode} after {now - start:.0f} s")
        slot = int((now - start) * args.rate)
        if slot > last_slot:
            sent["slots_late"] += slot - last_slot - 1  # this process fell behind: those frames are not sent
            last_slot, stamp_s = slot, T0 + slot / args.rate
            good = frames - frames // 4  # good frames so far
            if frames % 4 == 3:
                name, msg = hostile[(frames // 4) % len(hostile)]
                if name == "bad stamp":  # its nanosec stays out of range
                    msg.header.stamp.sec = int(stamp_s)
                    hostile_stamps.add((int(stamp_s), msg.header.stamp.nanosec))
                else:
                    hostile_stamps.add(set_stamp(msg, stamp_s))
                (bench.compressed if isinstance(msg, CompressedImage) else bench.raw).publish(msg)
                sent["hostile"] += 1
            elif frames % 4 == 2:
                msg = jpegs[good % len(jpegs)]
                set_stamp(msg, stamp_s)
                bench.compressed.publish(msg)
                sent["good_jpeg"] += 1
            else:
                msg = raws[good % len(raws)]
                set_stamp(msg, stamp_s)
                bench.raw.publish(msg)
                sent["good_raw"] += 1
            frames += 1
        odom_slot = int((now - start) * ODOM_RATE)
        if odom_slot > last_odom:
            last_odom, stamp_s = odom_slot, T0 + odom_slot / ODOM_RATE
            if poses % HOSTILE_POSE_EVERY == HOSTILE_POSE_EVERY - 1:
                _, position, orientation = HOSTILE_POSES[(poses // HOSTILE_POSE_EVERY) % len(HOSTILE_POSES)]
                bench.odom.publish(odom_msg(stamp_s, position, orientation))
                sent["poses_hostile"] += 1
            else:
                bench.odom.publish(odom_msg(stamp_s, (0.5 * (stamp_s - T0), 0.0, 0.0), (0, 0, 0, 1)))
                sent["poses_good"] += 1
            poses += 1
        if now >= next_sample:
            samples.append(sample(bench, proc, start))
            next_sample += args.rss_every
        wake = min(start + (last_slot + 1) / args.rate, start + (last_odom + 1) / ODOM_RATE, next_sample)
        bench.executor.spin_once(timeout_sec=max(0.0, wake - time.monotonic()))
    samples.append(sample(bench, proc, start))
    return {"sent": sent, "hostile_stamps": hostile_stamps, "samples": samples,
            "elapsed_s": time.monotonic() - start}


def sample(bench: Bench, proc: subprocess.Popen, start: float) -> dict:
    """The node's memory now and its counters from the latest /diagnostics."""
    return {"t": round(time.monotonic() - start, 1), **memory_mib(proc.pid), "cpu_s": cpu_seconds(proc.pid),
            "own_cpu_s": time.process_time(),
            **{k: bench.count(k) for k in ("received", "processed", "rejected", "dropped", "places")},
            "latency_p95_ms": float(bench.diag.get("latency p95 ms", "nan"))}


def settle(bench: Bench, timeout: float = 30.0) -> bool:
    """Until two diagnostics in a row show the same counts with nothing pending (the stream has stopped)."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        if not bench.next_diag():
            return False
        now = tuple(bench.count(k) for k in KEYS)
        if now == last and bench.balance() == 0:
            return True
        last = now
    return False


def run(args: argparse.Namespace) -> dict:
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        map_path = Path(tmp) / "soak.map"
        proc = start_node({"checkpoint": DEMO, "device": "cpu", "mode": "slam", "map": map_path},
                          ["-r", f"image:={TOPIC}", "-r", f"odom:={ODOM}"])
        bench = Bench()
        failed = True  # until the stream and the save are through: then the node's log tail is printed
        try:
            handshake(bench, proc)
            bench.spin_until(lambda: False, 2.5)  # the last pings counted, then the counts before the stream
            base = {k: bench.count(k) for k in KEYS}
            matched_before = len(bench.matched)
            idle = memory_mib(proc.pid)
            result = stream(bench, proc, args)
            settled = settle(bench)
            final = {k: bench.count(k) for k in KEYS}
            diag = dict(bench.diag)
            assert bench.save.wait_for_service(timeout_sec=10)
            future = bench.save.call_async(Trigger.Request())
            bench.spin_until(future.done, 120)
            saved = future.result()
            hwm = memory_mib(proc.pid)["hwm_mib"]
            failed = False
        finally:
            bench.close()
            code, node_log = stop_node(proc, timeout=60.0)
            if failed or code != 0 or "Traceback" in node_log:
                print("the node's log ends:\n" + "\n".join(node_log.splitlines()[-30:]), file=sys.stderr)
        try:
            loaded = PlaceMap.load(map_path)
        except VprError as exc:
            print(f"the saved map does not load: {exc}", file=sys.stderr)
            loaded = None
        places = -1 if loaded is None else len(loaded)
        places_with_pose = -1 if loaded is None else int(np.isfinite(loaded.positions()[loaded.ids()][:, 0]).sum())
        dim = 0 if loaded is None else loaded.dim
    load_end = os.getloadavg()

    sent, samples = result["sent"], result["samples"]
    delta = {k: final[k] - base[k] for k in KEYS}
    frames_sent = sent["good_raw"] + sent["good_jpeg"] + sent["hostile"]
    lost = frames_sent - delta["received"]
    hostile_described = sum(1 for s in bench.matched[matched_before:] if s in result["hostile_stamps"])
    steady = [s for s in samples if s["t"] >= args.warmup] or samples[-1:]
    first, last = steady[0], steady[-1]
    growth = last["rss_mib"] - first["rss_mib"]
    map_mib = (last["places"] - first["places"]) * (4 * dim + PLACE_EXTRA_BYTES) / 2**20
    slope = (float(np.polyfit([s["t"] for s in steady], [s["rss_mib"] for s in steady], 1)[0]) * 60
             if len(steady) > 2 else math.nan)
    span = samples[-1]["t"] - samples[0]["t"]
    node_cpu, own_cpu = ((samples[-1][k] - samples[0][k]) / span for k in ("cpu_s", "own_cpu_s"))
    tracebacks = node_log.count("Traceback")
    checks = {
        "counters add up at the end": settled and final["received"] == sum(
            final[k] for k in ("processed", "rejected", "dropped", "skipped")),
        "counters never negative during the run": bench.min_balance >= 0,
        "hostile frames rejected": sent["hostile"] - lost - delta["dropped"] <= delta["rejected"] <= sent["hostile"],
        "no hostile frame described": hostile_described == 0,
        "every hostile pose rejected": delta["poses_rejected"] == sent["poses_hostile"],
        "saved map holds every described frame": places == final["processed"] == final["places"],
        "~/save_map succeeded": bool(saved is not None and saved.success),
        "node exit code 0": code == 0,
        "no traceback in the node's log": tracebacks == 0,
        f"memory growth net of map data <= {GOAL_MIB:g} MiB": growth - map_mib <= GOAL_MIB,
    }
    return {
        "seconds": args.seconds, "elapsed_s": round(result["elapsed_s"], 1), "rate_hz": args.rate,
        "warmup_s": args.warmup, "ros_domain_id": int(os.environ["ROS_DOMAIN_ID"]),
        "cpu_count": os.cpu_count(), "load_average_start": load_start[:2], "load_average_end": load_end[:2],
        "sent": sent, "frames_sent": frames_sent, "lost_in_transport": lost, "counts_before_stream": base,
        "counts_end": final, "counts_stream": delta, "settled": settled,
        "min_balance_during_run": bench.min_balance, "matches_received": len(bench.matched) - matched_before,
        "hostile_described": hostile_described, "places_saved": places, "places_with_pose": places_with_pose,
        "save_map": None if saved is None else {"success": saved.success, "message": saved.message},
        "rss_idle_mib": round(idle["rss_mib"], 1), "steady_start_s": first["t"],
        "rss_steady_start_mib": round(first["rss_mib"], 1),
        "rss_max_mib": round(max(s["rss_mib"] for s in samples), 1), "rss_end_mib": round(last["rss_mib"], 1),
        "vm_hwm_mib": round(hwm, 1), "growth_mib": round(growth, 2), "map_data_mib": round(map_mib, 2),
        "growth_net_mib": round(growth - map_mib, 2),
        "growth_by_part_mib": {k: round(last[k] - first[k], 2) for k in ("anon_mib", "shmem_mib", "file_mib")},
        "rss_slope_mib_per_min": round(slope, 3),
        "latency_p50_ms": float(diag.get("latency p50 ms", "nan")),
        "latency_p95_ms": float(diag.get("latency p95 ms", "nan")),
        "latency_p95_max_ms": max((s["latency_p95_ms"] for s in samples if not math.isnan(s["latency_p95_ms"])),
                                  default=math.nan),
        "model_p50_ms": float(diag.get("model p50 ms", "nan")), "node_cpu_cores": round(node_cpu, 2),
        "publisher_cpu_cores": round(own_cpu, 2), "exit_code": code, "tracebacks": tracebacks,
        "node_warnings": sum(1 for line in node_log.splitlines() if line.startswith("[WARN]")),
        "checks": checks, "samples": samples,
    }


def report(r: dict) -> None:
    s, d, e, g = r["sent"], r["counts_stream"], r["counts_end"], r["growth_by_part_mib"]
    rest = e["received"] - sum(e[k] for k in ("processed", "rejected", "dropped", "skipped"))
    rows = [
        ("duration s", f"{r['elapsed_s']:.0f} at {r['rate_hz']:g} Hz (late slots not sent: {s['slots_late']})"),
        ("frames sent", f"{r['frames_sent']}: good {s['good_raw'] + s['good_jpeg']} "
                        f"({s['good_raw']} raw, {s['good_jpeg']} JPEG), hostile {s['hostile']}"),
        ("frames received", f"{d['received']} (lost in transport {r['lost_in_transport']})"),
        ("frames processed", f"{d['processed']} ({d['processed'] / max(r['elapsed_s'], 1e-9):.1f}/s; "
                             f"~/matches heard {r['matches_received']}, of hostile frames {r['hostile_described']})"),
        ("frames rejected", f"{d['rejected']} (hostile sent {s['hostile']})"),
        ("frames dropped (busy)", str(d["dropped"])),
        ("frames skipped", str(d["skipped"])),
        ("counters (whole run)", f"received {e['received']} - (processed {e['processed']} + rejected "
                                 f"{e['rejected']} + dropped {e['dropped']} + skipped {e['skipped']}) = {rest}; "
                                 f"lowest during the run {r['min_balance_during_run']}"),
        ("poses sent / rejected", f"{s['poses_good'] + s['poses_hostile']} ({s['poses_hostile']} hostile) / "
                                  f"{d['poses_rejected']}"),
        ("places in map", f"{r['places_saved']} saved ({r['places_with_pose']} with a pose), "
                          f"diagnostics {r['counts_end']['places']}"),
        ("RSS MiB", f"idle {r['rss_idle_mib']}, steady start (t={r['steady_start_s']:g} s) "
                    f"{r['rss_steady_start_mib']}, "
                    f"max {r['rss_max_mib']} (VmHWM {r['vm_hwm_mib']}), end {r['rss_end_mib']}"),
        ("RSS growth MiB", f"{r['growth_mib']:+.1f} over the steady state (anon {g['anon_mib']:+.1f}, shmem "
                           f"{g['shmem_mib']:+.1f}, file {g['file_mib']:+.1f}), of which map data "
                           f"{r['map_data_mib']:.1f}: net {r['growth_net_mib']:+.1f} "
                           f"(slope {r['rss_slope_mib_per_min']:+.2f} MiB/min)"),
        ("latency ms", f"p50 {r['latency_p50_ms']:.1f}, p95 {r['latency_p95_ms']:.1f} (last 1000 frames; "
                       f"highest p95 seen {r['latency_p95_max_ms']:.1f}), model p50 {r['model_p50_ms']:.1f}"),
        ("CPU cores in use", f"node {r['node_cpu_cores']:.2f}, this process (publisher) "
                             f"{r['publisher_cpu_cores']:.2f}, over the stream"),
        ("exit code", f"{r['exit_code']} ({r['tracebacks']} tracebacks, {r['node_warnings']} warnings in the log)"),
    ]
    print(f"vpr_localize slam soak, demo model on CPU, {r['cpu_count']} cores, ROS_DOMAIN_ID={r['ros_domain_id']}, "
          f"load average {r['load_average_start'][0]:.1f} at start, {r['load_average_end'][0]:.1f} at end")
    for name, value in rows:
        print(f"{name:<24}{value}")
    for name, ok in r["checks"].items():
        print(f"goal: {name}: {'met' if ok else 'MISSED'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="length of the stream")
    parser.add_argument("--rate", type=float, default=30.0, help="camera frames per second")
    parser.add_argument("--warmup", type=float, help="seconds before the steady state (default min(60, seconds/4))")
    parser.add_argument("--rss-every", type=float, default=5.0, help="seconds between VmRSS samples")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    if args.warmup is None:
        args.warmup = min(60.0, args.seconds / 4)
    r = run(args)
    report(r)
    if args.json:
        args.json.write_text(json.dumps(r, indent=1) + "\n")
    return 0 if all(r["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
