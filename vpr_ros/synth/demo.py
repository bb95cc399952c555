"""``make demo``: map a drive through real photographs, relocalize a second drive over ROS 2, score it.

1. Generate the route (:mod:`vpr_ros.synth.route`): traversal 1 along a street of landmarks (the
   bundled real photos), traversal 2 a day later under other light, partly on the same street,
   partly on a street never mapped; both written as bags with ground-truth odometry.
2. Build a place map from traversal 1 (:func:`vpr_ros.bags.mapping.build_map`).
3. Choose the loop-closure threshold from the map alone (:func:`vpr_ros.loop_closure.calibration.calibrate`):
   the query run's ground truth is never used to tune anything.
4. Start the ``vpr_localize`` node (a real process, real DDS on loopback) in localize mode and
   play traversal 2 to it from the bag; collect ``~/matches`` and ``~/match_pose``.
5. Score against ground truth: loop-closure precision and recall, localization error; plot the
   trajectories with each loop closure drawn green (correct) or red (wrong).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vpr_ros.extractor import load_extractor
from vpr_ros.ros.replay import Collected, play_and_collect
from vpr_ros.synth.route import FULL, SHORT, Route, RouteSpec, image_topic, make_route, write_bags

DATA = Path(__file__).resolve().parent / "data"

# -- the demo model: replace these lines to run the demo with another model ---------------------------
MODEL_CHECKPOINT = DATA / "models" / "demo_salad.pt"  # its demo_salad.json (24-d heads, 112x112) is read with it
MODEL_NOTE = ("demo_salad: ViT width 96, 4 blocks, 112 px + SALAD m=16 l=16 g=64 (320-d), trained from scratch "
              "by training/ (config/train_demo.yaml) on scikit-image's photos. Never saw this route's photos.")
# ------------------------------------------------------------------------------------------------------

TARGET_FPR = 0.01  # calibration: rate of above-threshold candidates among the map's own non-revisits
KEYFRAME_SPACING_M = 1.0  # map keyframes (build_map min_distance)
NODE_MIN_PERIOD_S = 0.2  # the node describes at most 5 frames per second of bag time


@dataclass
class Metrics:
    radius_m: float
    threshold: float
    frames_sent: int
    frames_processed: int
    positives: int  # processed frames with a map place within radius_m (should close a loop)
    negatives: int  # processed frames without (must not)
    accepted: int
    correct: int  # accepted and within radius_m
    false_on_negatives: int  # accepted on a frame with no map place near: a loop closure to nowhere
    precision: float | None
    recall: float | None
    top1_within_radius: float | None  # threshold-free: positives whose best candidate is correct
    loop_closures: int
    loc_err_median_m: float | None
    loc_err_p90_m: float | None


# -- steps -----------------------------------------------------------------------------------------------


def build_demo_map(bag: Path, out: Path, extractor, topic: str):
    """Map of traversal 1: a keyframe every metre, with its ground-truth odometry pose."""
    from vpr_ros.bags.mapping import build_map

    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.with_name(out.name + ".bak"), ignore_errors=True)
    return build_map([bag], extractor, out, image_topic=topic, pose_topic="/odom",
                     min_distance=KEYFRAME_SPACING_M, progress=False)


def choose_threshold(map_path: Path, radius_m: float):
    """Threshold from the map alone: the score that only TARGET_FPR of place pairs at least two
    radii apart exceed (no query ground truth involved)."""
    from vpr_ros.loop_closure.calibration import calibrate
    from vpr_ros.maps.place_map import PlaceMap

    return calibrate(PlaceMap.load(map_path), TARGET_FPR, min_separation_s=0.0, min_distance_m=2 * radius_m)


def start_node(args: argparse.Namespace, image_size: tuple[int, int], map_path: Path, threshold: float, topic: str,
               log: Path) -> subprocess.Popen:
    params = {"checkpoint": args.checkpoint, "map": map_path, "mode": "localize", "reliable": "true",
              "image_size": json.dumps(list(image_size)), "threshold": f"{threshold:.6f}",
              "min_period": NODE_MIN_PERIOD_S, "device": args.device}
    if args.config:
        params["model_config"] = args.config
    remap = "image/compressed" if topic.endswith("/compressed") else "image"
    cmd = [sys.executable, "-m", "vpr_ros.ros.node", "--ros-args", "-r", f"{remap}:={topic}"]
    for name, value in params.items():
        cmd += ["-p", f"{name}:={value}"]
    with log.open("w") as f:  # a file, not a pipe: a chatty node must never block on a full pipe
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)


def stop_node(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _query_ns(match: dict) -> int:
    stamp = match["query"]["stamp"]
    return stamp["sec"] * 10**9 + stamp["nanosec"]


def _truth(route: Route) -> dict[int, np.ndarray]:
    """Ground-truth x, y of each query frame by its stamp (ns)."""
    run = route.query_run
    return {int(s): p[:2] for s, p in zip(run.frame_stamps_ns, run.frame_positions, strict=True)}


# -- scoring ---------------------------------------------------------------------------------------------


def evaluate(route: Route, map_xy: np.ndarray, got: Collected, threshold: float,
             ) -> tuple[Metrics, list[dict]]:
    """Score every answered frame against ground truth; also return one row per loop closure
    (query and matched positions, correct or not) for the plot."""
    radius = route.spec.radius_m
    truth = _truth(route)
    answered = [m for m in got.matches if _query_ns(m) in truth]
    pos = np.array([_near_map(truth[_query_ns(m)], map_xy, radius) for m in answered], dtype=bool)
    accepted = [m for m in answered if m["accepted_id"] is not None]
    neg_hits = sum(not _near_map(truth[_query_ns(m)], map_xy, radius) for m in accepted)
    top1 = [_top1_correct(m, truth, radius) for m, p in zip(answered, pos, strict=True) if p]
    errors = np.array([np.linalg.norm(xyz[:2] - truth[ns]) for ns, xyz in got.poses if ns in truth])
    lines = _match_lines(accepted, truth, radius)
    tp = sum(row["correct"] for row in lines)  # an accepted place without a pose is never correct
    metrics = Metrics(
        radius_m=radius, threshold=threshold, frames_sent=got.frames_sent, frames_processed=len(answered),
        positives=int(pos.sum()), negatives=int((~pos).sum()), accepted=len(accepted), correct=tp,
        false_on_negatives=int(neg_hits),
        precision=tp / len(accepted) if accepted else None,
        recall=tp / int(pos.sum()) if pos.any() else None,
        top1_within_radius=float(np.mean(top1)) if top1 else None,
        loop_closures=len(lines),
        loc_err_median_m=float(np.median(errors)) if len(errors) else None,
        loc_err_p90_m=float(np.percentile(errors, 90)) if len(errors) else None,
    )
    return metrics, lines


def _near_map(xy: np.ndarray, map_xy: np.ndarray, radius: float) -> bool:
    return bool(len(map_xy) and np.min(np.linalg.norm(map_xy - xy, axis=1)) <= radius)


def _top1_correct(match: dict, truth: dict, radius: float) -> bool:
    return bool(match["candidates"]) and _candidate_correct(match["candidates"][0], truth[_query_ns(match)], radius)


def _candidate_correct(cand: dict, xy: np.ndarray, radius: float) -> bool:
    pose = cand["pose"]
    return pose is not None and float(np.linalg.norm(np.asarray(pose["position"][:2]) - xy)) <= radius


def _match_lines(accepted: list[dict], truth: dict, radius: float) -> list[dict]:
    """Each accepted match as two points: where the query frame truly was, and the matched place's pose."""
    rows = []
    for m in accepted:
        cand = next(c for c in m["candidates"] if c["id"] == m["accepted_id"])
        if cand["pose"] is None:
            continue
        q, p = truth[_query_ns(m)], np.asarray(cand["pose"]["position"][:2], np.float64)
        rows.append({"query": q, "place": p, "correct": bool(np.linalg.norm(q - p) <= radius)})
    return rows


# -- output ----------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".2f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def summary_table(m: Metrics, got: Collected, build, calibration, note: str) -> str:
    d = got.diagnostics
    rows = [
        ("model", note),
        ("map (traversal 1)", f"{build.map_places} keyframes from {build.frames_read} frames "
                              f"({KEYFRAME_SPACING_M:g} m apart) in {build.seconds:.1f} s"),
        ("threshold", f"{m.threshold:.4f} (calibrated on the map alone, target FPR {TARGET_FPR:g}; "
                      f"non-revisit p50 {calibration.quantiles['p50']:.3f}, max {calibration.quantiles['max']:.3f})"),
        ("query (traversal 2)", f"{m.frames_sent} frames sent in {got.play_seconds:.1f} s; node: received "
                                f"{d.get('frames received', '?')}, described {m.frames_processed}, dropped busy "
                                f"{d.get('frames dropped (busy)', '?')}, skipped by min_period "
                                f"{d.get('frames skipped (keyframe period)', '?')}"),
        ("ground truth", f"{m.positives} described frames have a map place within {m.radius_m:g} m, "
                         f"{m.negatives} have none (unmapped street)"),
        ("loop closures", f"{m.accepted} accepted: {m.correct} correct, {m.accepted - m.correct} wrong "
                          f"({m.false_on_negatives} of them on frames with no map place near)"),
        ("precision", _fmt(m.precision, ".3f")),
        ("recall", _fmt(m.recall, ".3f")),
        ("top-1 within radius", _fmt(m.top1_within_radius, ".3f") + "  (threshold-free retrieval, positives only)"),
        ("localization error", f"median {_fmt(m.loc_err_median_m, '.1f', ' m')}, "
                               f"p90 {_fmt(m.loc_err_p90_m, '.1f', ' m')} over {len(got.poses)} match poses"),
        ("node latency", f"p50 {d.get('latency p50 ms', '?')} ms, model p50 {d.get('model p50 ms', '?')} ms"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def plot_trajectory(route: Route, map_xy: np.ndarray, got: Collected, metrics: Metrics, lines: list[dict],
                    out: Path, title: str) -> Path:
    """Left: map and query trajectories, landmarks, loop closures green/red. Right: best score of
    each described frame over time, against the threshold, coloured by whether it is correct."""
    from matplotlib.collections import LineCollection

    from vpr_ros.plotting import plt, save_figure

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(15, 6.5), gridspec_kw={"width_ratios": [1.5, 1]})
    spec = route.spec
    mp, qp = route.map_run.positions, route.query_run.positions
    ax.plot(mp[:, 0], mp[:, 1], color="tab:blue", lw=2, label="traversal 1 (map)")
    ax.scatter(map_xy[:, 0], map_xy[:, 1], s=4, color="tab:blue", zorder=3, label="map keyframes")
    ax.plot(qp[:, 0], qp[:, 1], color="tab:orange", lw=1.5, label="traversal 2 (query, ground truth)")
    lm = route.landmark_positions
    mapped = np.arange(len(lm)) < spec.map_places
    ax.scatter(lm[mapped, 0], lm[mapped, 1], marker="s", s=30, color="0.35", label="landmark (mapped)")
    ax.scatter(lm[~mapped, 0], lm[~mapped, 1], marker="s", s=30, facecolor="none", edgecolor="0.35",
               label="landmark (not mapped)")
    for (x, y), name in zip(lm, route.landmarks, strict=True):
        ax.annotate(name, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6, color="0.3")
    for ok, colour, label in ((True, "tab:green", "loop closure, correct"), (False, "tab:red", "loop closure, wrong")):
        segs = [[row["query"], row["place"]] for row in lines if row["correct"] == ok]
        ax.add_collection(LineCollection(segs, colors=colour, linewidths=1.2, alpha=0.8, zorder=4,
                                         label=f"{label} ({len(segs)})"))
    ax.set_aspect("equal")
    ax.set_xlabel("x [m]")
    ax.set_ylabel("y [m]")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    _plot_scores(ax2, route, got, metrics)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out)


def _plot_scores(ax, route: Route, got: Collected, metrics: Metrics) -> None:
    run, truth = route.query_run, _truth(route)
    t0 = int(run.stamps_ns[0])
    rows = [(m, truth[_query_ns(m)]) for m in got.matches if _query_ns(m) in truth and m["candidates"]]
    t = np.array([(_query_ns(m) - t0) * 1e-9 for m, _ in rows])
    score = np.array([m["candidates"][0]["score"] for m, _ in rows])
    ok = np.array([_candidate_correct(m["candidates"][0], xy, metrics.radius_m) for m, xy in rows], dtype=bool)
    if len(rows):
        ax.scatter(t[ok], score[ok], s=6, color="tab:green", label="best candidate within radius")
        ax.scatter(t[~ok], score[~ok], s=6, color="tab:red", label="best candidate elsewhere")
    novel = [(int(s) - t0) * 1e-9 for s, v in zip(run.frame_stamps_ns, run.views, strict=True) if v.segment == "novel"]
    if novel:
        ax.axvspan(min(novel), max(novel), color="0.9", zorder=0, label="unmapped street")
    ax.axhline(metrics.threshold, color="k", lw=1, ls="--", label=f"threshold {metrics.threshold:.3f}")
    ax.set_xlabel("traversal 2 time [s]")
    ax.set_ylabel("cosine similarity of the best map place")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)


def title_of(m: Metrics, note: str) -> str:
    return (f"loop closures: precision {_fmt(m.precision, '.2f')}, recall {_fmt(m.recall, '.2f')} "
            f"(correct within {m.radius_m:g} m); localization error median {_fmt(m.loc_err_median_m, '.1f', ' m')}, "
            f"p90 {_fmt(m.loc_err_p90_m, '.1f', ' m')}\nmodel: {note.split('. ')[0]}")


# -- main ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    parser.add_argument("--storage", choices=("mcap", "sqlite3", "ros1"), default="mcap", help="bag format")
    parser.add_argument("--short", action="store_true", help="shortened route (5 mapped places; for tests)")
    parser.add_argument("--seed", type=int, default=0, help="route seed: which photo stands where")
    parser.add_argument("--rate", type=float, default=2.0, help="playback speed factor (1 = real time)")
    parser.add_argument("--checkpoint", type=Path, default=MODEL_CHECKPOINT)
    parser.add_argument("--config", type=Path, default=None,
                        help="model options JSON (default: the .json next to the checkpoint)")
    parser.add_argument("--image-size", nargs=2, type=int, default=None, metavar=("H", "W"),
                        help="model input (default: the checkpoint's .json, else 322 322)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = parser.parse_args(argv)
    args.checkpoint = args.checkpoint.resolve()
    args.config = args.config.resolve() if args.config else None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # DDS on loopback and a domain of its own unless the caller chose (as ``make demo`` does)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 101)))
    started = time.perf_counter()
    note = MODEL_NOTE if args.checkpoint == MODEL_CHECKPOINT.resolve() else f"{args.checkpoint.name}"
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    spec: RouteSpec = RouteSpec(**{**asdict(SHORT if args.short else FULL), "seed": args.seed})
    route = make_route(spec)
    topic = image_topic("jpeg")
    print(f"[1/5] route: {spec.map_places} mapped + {spec.novel_places} unmapped landmarks (real photos), "
          f"{len(route.map_run.views)} + {len(route.query_run.views)} frames at {spec.image_hz:g} Hz, "
          f"{spec.speed_mps:g} m/s; writing {args.storage} bags to {out}")
    bags = write_bags(route, out, args.storage)

    print(f"[2/5] building the map from {bags['map'].name}")
    extractor = load_extractor(args.checkpoint, args.config, args.image_size, args.device, batch_size=16)
    map_path = out / "map"
    build = build_demo_map(bags["map"], map_path, extractor, topic)
    calibration = choose_threshold(map_path, spec.radius_m)
    print(f"[3/5] threshold {calibration.threshold:.4f} from the map alone "
          f"({calibration.negatives} non-revisit queries, target FPR {TARGET_FPR:g})")

    print(f"[4/5] starting vpr_localize and playing {bags['query'].name} at {args.rate:g}x")
    log = out / "node.log"
    proc = start_node(args, extractor.image_size, map_path, calibration.threshold, topic, log)
    try:
        got = play_and_collect(bags["query"], lambda: proc.poll() is None, args.rate)
    except BaseException:
        stop_node(proc)
        print(f"vpr_localize output ({log}):\n{log.read_text()[-3000:]}", file=sys.stderr)
        raise
    if (code := stop_node(proc)) != 0:
        print(log.read_text()[-3000:], file=sys.stderr)
        raise RuntimeError(f"vpr_localize exited with {code}")

    from vpr_ros.maps.place_map import PlaceMap

    pm = PlaceMap.load(map_path)
    ids = pm.ids()
    map_xy = pm.positions()[ids][:, :2]
    metrics, lines = evaluate(route, map_xy, got, calibration.threshold)
    png = plot_trajectory(route, map_xy, got, metrics, lines, out / "trajectory.png", title_of(metrics, note))
    (out / "metrics.json").write_text(json.dumps(asdict(metrics), indent=1) + "\n")
    print("[5/5] results\n")
    print(summary_table(metrics, got, build, calibration, note))
    print(f"\nwrote {png}, {out / 'metrics.json'}, ground truth {out / 'frames.csv'}, node log {log} "
          f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
