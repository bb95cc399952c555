"""``vpr-ros build-map``, ``map-info`` and ``query``: place maps from rosbags and what is in them."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vpr_ros.cli.arguments import (
    MAX_INDEX,
    MAX_K,
    MAX_SECONDS,
    METRES,
    SECONDS,
    SIMILARITY,
    STAMP,
    integer,
    number,
    time_window,
)
from vpr_ros.cli.common import (
    LOG,
    MAP_SIZE,
    add_model_args,
    make_extractor,
    pose_text,
    printable,
    require_files,
    retrieval_tiles,
)
from vpr_ros.errors import InputError
from vpr_ros.io.files import output_path
from vpr_ros.types import format_stamp

if TYPE_CHECKING:
    from vpr_ros.bags.reader import Frame


def cmd_build_map(args: argparse.Namespace) -> int:
    """Place map from rosbags; the bags and topics are checked before the model loads."""
    from vpr_ros.bags.bag_files import check_bag
    from vpr_ros.bags.mapping import build_map
    from vpr_ros.errors import BagError
    from vpr_ros.maps.index_kinds import IndexKind

    IndexKind.parse(args.index)
    frames = sum(check_bag(bag, args.image_topic, args.pose_topic) for bag in args.bag)
    LOG.info("%d image messages on %s in %d bag(s)", frames, args.image_topic, len(args.bag))
    extractor = make_extractor(args)
    try:
        summary = build_map(args.bag, extractor, args.out, image_topic=args.image_topic, pose_topic=args.pose_topic,
                            min_distance=args.min_distance, min_period=args.min_period, novelty=args.novelty,
                            start=args.start, end=args.end, max_pose_gap=args.max_pose_gap, index=args.index,
                            append=args.append)
    except (FileExistsError, BagError) as exc:
        if getattr(exc, "summary", None) is not None:  # a bag damaged half-way: what was saved
            print(exc.summary.format())
        LOG.error("%s", exc)
        return 2
    print(summary.format())
    return 0


def cmd_map_info(args: argparse.Namespace) -> int:
    """Manifest, counts, time span, pose extent and sources of a saved place map."""
    from collections import Counter
    from datetime import datetime, timezone

    from vpr_ros.maps.manifest import FORMAT
    from vpr_ros.maps.place_map import PlaceMap

    def show(line: str) -> None:  # a hostile or damaged string in the map (a lone surrogate, ESC) prints escaped
        print(printable(line))

    info = PlaceMap.info(args.map)  # the one reader of manifests: falls back to <map>.bak like load()
    pm = PlaceMap.load(info.path)  # the folder info chose, so both describe the same map
    ids = pm.ids()
    model = info.model
    show(f"map          {info.path}" + ("" if info.path == args.map else
                                         f" ({args.map} is missing after an interrupted save)"))
    show(f"format       {FORMAT} v{info.version}")
    show(f"places       {len(pm)} (next id {info.next_id})")
    show(f"index        {pm.kind.name} ({'trained' if pm.trained else 'exact until trained'}), {pm.dim}-d descriptors")
    if model is None:
        show("model        unknown (map saved without a model identity)")
    else:
        show(f"model        {model.arch}, input {model.image_size[0]}x{model.image_size[1]}, "
              f"checkpoint sha256 {model.checkpoint_sha256 or 'unknown'}")
    if pm.calibration is not None:
        cal = pm.calibration
        show(f"threshold    {cal['threshold']:.4f} (calibrated for a false-positive rate of {cal['target_fpr']:g})")
    if pm.enu_origin is not None:
        show("enu origin   lat {:.9f}, lon {:.9f}, alt {:.3f}".format(*pm.enu_origin))
    if len(ids) == 0:
        return 0
    stamps = pm.stamps()[ids]
    first, last = (datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds") for t in (stamps.min(),
                                                                                                 stamps.max()))
    show(f"time span    {stamps.min():.3f} .. {stamps.max():.3f} s ({stamps.max() - stamps.min():.1f} s; "
          f"{first} .. {last})")
    positions = pm.positions()[ids]
    has_pose = ~np.isnan(positions[:, 0])
    frames = Counter(pm.place(int(i)).pose.frame_id for i in ids[has_pose])
    show(f"poses        {int(has_pose.sum())} of {len(ids)} places" +
          (f" in {', '.join(f'{f} ({n})' for f, n in frames.items())}" if frames else ""))
    if has_pose.any():
        lo, hi = positions[has_pose].min(axis=0), positions[has_pose].max(axis=0)
        show("extent       " + "  ".join(f"{a} [{lo[i]:.2f}, {hi[i]:.2f}]" for i, a in enumerate("xyz")))
    for source, n in Counter(pm.place(int(i)).source for i in ids).most_common():
        show(f"source       {source or '(none)'}: {n} places")
    cameras = Counter(pm.place(int(i)).camera for i in ids)
    if set(cameras) != {""}:  # named cameras (a node with several)
        for camera, n in cameras.most_common():
            show(f"camera       {camera or '(unnamed)'}: {n} places")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Loop-closure threshold for a target false-positive rate from the map alone, stored in the map."""
    from vpr_ros.loop_closure.calibration import calibrate
    from vpr_ros.maps.locking import lock_map
    from vpr_ros.maps.place_map import PlaceMap

    with contextlib.nullcontext() if args.dry_run else lock_map(args.map):  # one writer from loading to saving
        pm = PlaceMap.load(args.map)
        cal = calibrate(pm, args.target_fpr, min_separation_s=args.min_separation, min_distance_m=args.min_distance)
        q = cal.quantiles
        print(f"threshold    {cal.threshold:.4f} for a false-positive rate of {cal.target_fpr:g}")
        print(f"from         {cal.negatives} non-revisit queries of {cal.places} places (>= {cal.min_separation_s:g} "
              f"s and >= {cal.min_distance_m:g} m apart); best non-revisit score p50 {q['p50']:.4f}, p90 "
              f"{q['p90']:.4f}, p99 {q['p99']:.4f}, max {q['max']:.4f}")
        for warning in cal.warnings:
            LOG.warning("%s", warning)
        if args.dry_run:
            return 0
        pm.calibration = cal.to_json()
        pm.save(args.map)
    print(f"stored in    {args.map} (the node uses it when its threshold parameter is not set)")
    return 0


def _montage_path(out: Path, i: int, n: int) -> Path:
    """``out`` for one query; ``out-0.png``, ``out-1.png``... for several."""
    return out if n == 1 else out.with_name(f"{out.stem}-{i}{out.suffix}")


STAMP_WINDOW_S = 2.0  # receive times searched around a --stamp before the whole topic is
STAMP_TOLERANCE_S = 1.0  # the nearest frame may be this far from a --stamp


def _nearest_frame(bag: Path, topic: str, stamp: float) -> Frame:
    """The frame of ``topic`` whose header stamp is nearest ``stamp`` (s), at most
    :data:`STAMP_TOLERANCE_S` away. Receive times within :data:`STAMP_WINDOW_S` are read first (a
    seek), the whole topic only if that finds none (header stamps on another clock)."""
    from vpr_ros.bags.reader import read_frames

    span = None
    for window in ({"start": stamp - STAMP_WINDOW_S, "end": stamp + STAMP_WINDOW_S, "time_zero_ns": 0}, {}):
        best, first, last = None, float("inf"), -float("inf")
        for frame in read_frames(bag, topic, **window):  # one decoded frame kept at a time
            first, last = min(first, frame.seconds), max(last, frame.seconds)
            if best is None or abs(frame.seconds - stamp) < abs(best.seconds - stamp):
                best = frame
        if best is not None and abs(best.seconds - stamp) <= STAMP_TOLERANCE_S:
            return best
        span = (first, last) if best is not None else span
    where = f"its frames are stamped {span[0]:.3f} .. {span[1]:.3f} s" if span else "it has no readable frame there"
    raise InputError(f"--stamp {stamp:.3f}: no frame of {topic} in {bag} within {STAMP_TOLERANCE_S:g} s; {where}")


def _frames_at(bag: Path, topic: str, indices: Sequence[int]) -> dict[int, Frame]:
    """The ``indices``-th frames of ``topic`` (0-based, header-stamp order), reading no further than needed."""
    from vpr_ros.bags.bag_files import check_bag
    from vpr_ros.bags.reader import read_frames

    count = check_bag(bag, topic)  # the topic and its type, from the index only
    wanted = set(indices)
    if bad := sorted(i for i in wanted if not 0 <= i < count):
        raise InputError(f"--index {' '.join(map(str, bad))}: {bag} has {count} messages on {topic} "
                         f"(indices 0..{count - 1})")
    found: dict[int, Frame] = {}
    for i, frame in enumerate(read_frames(bag, topic)):
        if i in wanted:
            found[i] = frame
            if len(found) == len(wanted):
                break
    if missing := sorted(wanted - set(found)):  # damaged frames are skipped, so fewer frames than messages
        raise InputError(f"--index {' '.join(map(str, missing))}: {bag} has fewer readable frames on {topic}")
    return found


def bag_queries(bag: Path, topic: str, stamps: Sequence[float] = (),
                indices: Sequence[int] = ()) -> list[tuple[str, str, np.ndarray]]:
    """(label, short title, RGB) of query frames picked from a bag: the ``indices``-th frames of
    ``topic``, then the frames stamped nearest ``stamps`` (seconds)."""
    by_index = _frames_at(bag, topic, indices) if indices else {}
    picked = [(f"frame {i}", by_index[i]) for i in indices]
    picked += [(f"nearest {s:.3f} s", _nearest_frame(bag, topic, s)) for s in stamps]
    return [(f"{bag.name}#{topic} {pick}: stamp {format_stamp(f.stamp_ns)}", f"{bag.name} t={f.seconds:.3f}", f.rgb)
            for pick, f in picked]


def cmd_query(args: argparse.Namespace) -> int:
    """Top-k places of each query (image files, bag frames), with scores, stamps and poses; optional montage PNG.

    Every input is read before the model loads, so a wrong path, topic or index fails at once.
    """
    from vpr_ros.maps.place_map import PlaceMap

    from_bag = bool(args.stamp or args.index)
    if from_bag != bool(args.topic) or (from_bag and not args.bag):
        raise InputError("frames of a bag are picked with all of --bag B --topic T and --stamp S or --index N")
    if not args.images and not from_bag:
        raise InputError("nothing to query: give image files, or --bag B --topic T with --stamp S or --index N")
    require_files(args.images)
    require_files(args.bag or [], "bag", folders=True)
    n_queries = len(args.images) + len(args.stamp or ()) + len(args.index or ())
    for i in range(n_queries if args.montage else 0):  # a folder or a device is refused before the model loads
        output_path(_montage_path(args.montage, i, n_queries))
    info = PlaceMap.info(args.map)  # falls back to <map>.bak like load(), so the size below is the map's
    picked = bag_queries(args.bag[0], args.topic, args.stamp or (), args.index or ()) if from_bag else []
    from vpr_ros.preprocess import load_image  # imports torch: after the cheap checks

    queries = [(str(p), p.name, load_image(p)) for p in args.images] + picked
    args.image_size = PlaceMap.input_size(info.path, args.image_size)  # queries at the size the map was built with
    extractor = make_extractor(args)
    pm = PlaceMap.load(info.path, extractor.identity)
    scores, ids = pm.search(extractor.describe([rgb for *_, rgb in queries]), args.k)
    for qi, (name, title, rgb) in enumerate(queries):
        print(f"query {name}")
        for rank, (score, pid) in enumerate(((s, i) for s, i in zip(scores[qi], ids[qi], strict=True) if i >= 0), 1):
            place = pm.place(int(pid))
            print(f"  #{rank} id {place.id}  score {score:.4f}  stamp {format_stamp(place.stamp_ns)}  "
                  f"{pose_text(place.pose)}")
        if args.montage:
            from vpr_ros.plotting.retrieval import plot_retrieval, thumbnail

            tiles = retrieval_tiles(pm, scores[qi], ids[qi], args.bag or [])
            out = plot_retrieval(thumbnail(rgb, 512), tiles, _montage_path(args.montage, qi, len(queries)),
                                 f"{title}: top-{len(tiles)} places")
            print(f"  montage {out}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-map", help="build a place map from rosbags (ROS 1 .bag, ROS 2 sqlite3/mcap)")
    p.add_argument("--bag", action="append", required=True, type=Path, metavar="PATH",
                   help="bag file or ROS 2 bag folder; repeat for several bags, read in the order given")
    p.add_argument("--image-topic", required=True, help="sensor_msgs/Image or CompressedImage topic")
    p.add_argument("--pose-topic", help="nav_msgs/Odometry, geometry_msgs/PoseStamped, "
                                        "PoseWithCovarianceStamped or sensor_msgs/NavSatFix (local ENU metres)")
    add_model_args(p)
    p.add_argument("--out", required=True, type=Path, help="place map folder to write")
    p.add_argument("--index", default="flat", help="index kind: flat fp16 pca<N> ivfpq pca<N>ivf hnsw (default flat)")
    p.add_argument("--min-distance", type=METRES, default=0.0, metavar="M",
                   help="metres between keyframes (frames without a pose are not dropped by it)")
    p.add_argument("--min-period", type=SECONDS, default=0.0, metavar="S", help="seconds between keyframes")
    p.add_argument("--novelty", type=SIMILARITY, metavar="SIM",
                   help="skip a frame whose cosine similarity to the last keyframe is above SIM (e.g. 0.9)")
    p.add_argument("--start", type=SECONDS, metavar="S", help="seconds after the recording's first message")
    p.add_argument("--end", type=SECONDS, metavar="S", help="seconds after the recording's first message")
    p.add_argument("--max-pose-gap", type=number(0, MAX_SECONDS, lo_open=True), default=0.5, metavar="S",
                   help="no pose is interpolated across pose samples further apart than this (default 0.5)")
    p.add_argument("--append", action="store_true", help="add to an existing map built by the same model")
    p.add_check(time_window("--start", "--end"))
    p.set_defaults(func=cmd_build_map)
    p = sub.add_parser("map-info", help="what a place map holds: model, counts, time span, pose extent")
    p.add_argument("map", type=Path)
    p.set_defaults(func=cmd_map_info)
    p = sub.add_parser("calibrate", help="loop-closure threshold for a target false-positive rate, stored in the map")
    p.add_argument("map", type=Path)
    p.add_argument("--target-fpr", type=number(0, 1, lo_open=True, hi_open=True), default=0.01, metavar="RATE",
                   help="share of non-revisit queries allowed a candidate above the threshold (default 0.01)")
    p.add_argument("--min-separation", type=SECONDS, default=60.0, metavar="S",
                   help="places at least this many seconds apart are non-revisits (default 60)")
    p.add_argument("--min-distance", type=METRES, default=30.0, metavar="M",
                   help="... and, when both have poses, at least this many metres apart (default 30)")
    p.add_argument("--dry-run", action="store_true", help="print the threshold without storing it")
    p.set_defaults(func=cmd_calibrate)
    p = sub.add_parser("query", help="top-k places of a place map for query images or frames of a bag",
                       description="Top-k places of a place map for each query: image files, and/or frames of "
                                   "a bag picked with --bag B --topic T and --stamp S or --index N.")
    p.add_argument("map", type=Path)
    p.add_argument("images", nargs="*", type=Path, help="query image files")
    add_model_args(p, MAP_SIZE)
    p.add_argument("--k", type=integer(1, MAX_K), default=5, help=f"results per query, 1..{MAX_K} (default 5)")
    p.add_argument("--montage", type=Path, metavar="PNG",
                   help="write the query and its candidates (frames read back from the source bags); with "
                        "several queries one file per query: PNG's name with -0, -1, ... before the suffix")
    p.add_argument("--bag", action="append", type=Path, metavar="PATH",
                   help="a bag to read frames from: query frames (the first --bag, with --topic) and the map's "
                        "own frames when a source bag has moved (matched by file name); repeatable")
    p.add_argument("--topic", help="image topic of the query frames in the first --bag")
    p.add_argument("--stamp", type=STAMP, nargs="+", metavar="S",
                   help="query with the frames whose header stamps are nearest these (seconds, e.g. 1700000002.9)")
    p.add_argument("--index", type=integer(0, MAX_INDEX), nargs="+", metavar="N",
                   help="query with these frames of --topic (0-based, in header-stamp order)")
    p.set_defaults(func=cmd_query)


