"""``vpr-ros`` command line: one entry point, one subcommand per task."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

LOG = logging.getLogger("vpr_ros")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Options shared by every subcommand that runs a model."""
    parser.add_argument("--checkpoint", required=True, type=Path, help="SALAD/A²GC checkpoint (.ckpt/.pt/.pth)")
    parser.add_argument("--config", type=Path,
                        help="JSON with options the checkpoint's shapes cannot tell (e.g. a reference config.json)")
    parser.add_argument("--image-size", nargs=2, type=int, default=(322, 322), metavar=("H", "W"),
                        help="input size, multiples of 14 (default: 322 322)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--batch-size", type=int, default=16)


def make_extractor(args: argparse.Namespace):
    from vpr_ros.extractor import DescriptorExtractor
    from vpr_ros.models import load_model

    config = json.loads(args.config.read_text()) if args.config else None
    model = load_model(args.checkpoint, config=config)
    LOG.info("model %s from %s", model.cfg.describe(), args.checkpoint)
    return DescriptorExtractor(model, tuple(args.image_size), args.device, args.precision, args.batch_size)


def cmd_describe(args: argparse.Namespace) -> int:
    """Describe images and save the descriptors as a float32 .npy (row i = image i)."""
    from vpr_ros.preprocess import load_image

    images, bad = [], []
    for path in args.images:
        try:
            images.append(load_image(path))
        except (OSError, ValueError) as exc:
            bad.append(f"{path}: {exc}")
    if bad:
        LOG.error("cannot read %d of %d images:\n  %s", len(bad), len(args.images), "\n  ".join(bad))
        return 2
    extractor = make_extractor(args)
    descriptors = extractor.describe(images)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:  # write aside, then rename: never a half-written file
        np.save(f, descriptors)
    tmp.replace(out)
    print(f"wrote {descriptors.shape[0]} x {descriptors.shape[1]} descriptors to {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Recall@K of a checkpoint on benchmark datasets; table on stdout, results.{csv,json,md} in --out."""
    from vpr_ros.datasets import MissingFilesError, load_dataset
    from vpr_ros.evaluation import evaluate, format_table, write_msls_predictions, write_results
    from vpr_ros.map_index import IndexKind

    if args.index is not None:
        IndexKind.parse(args.index)
    datasets, missing = [], []
    for name in args.datasets:  # every dataset is checked before the model loads
        try:
            datasets.append(load_dataset(name, args.data_root, nordland_window=args.nordland_window))
        except MissingFilesError as exc:
            missing.append(f"error: {exc}")
    if missing:
        print("\n\n".join(missing), file=sys.stderr)
        return 2
    extractor = make_extractor(args)
    results, written = [], []
    for dataset in datasets:
        result = evaluate(extractor, dataset, args.cache, ks=args.ks, index_kind=args.index)
        results.append(result)
        if dataset.positives is None:  # no ground truth (MSLS challenge): write the submission file
            path = args.out / f"{args.checkpoint.stem}.{dataset.name}.preds.txt"
            write_msls_predictions(path, dataset, result.predictions)
            written.append(path)
    meta = {"checkpoint": str(args.checkpoint), "image_size": list(args.image_size), "precision": args.precision,
            "index": args.index, "nordland_window": args.nordland_window}
    written = write_results(results, args.out, meta) + written
    print(format_table(results))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def cmd_make_eval_data(args: argparse.Namespace) -> int:
    """Generated datasets let ``vpr-ros eval`` run end to end without downloading a benchmark."""
    from vpr_ros.datasets import DATASETS, generate_dataset

    for name in args.datasets or DATASETS:
        ds = generate_dataset(name, args.out)
        print(f"{name}: {len(ds.db_images)} references, {len(ds.q_images)} queries under {ds.root}")
    return 0


def cmd_build_map(args: argparse.Namespace) -> int:
    """Place map from rosbags; the bags and topics are checked before the model loads."""
    from vpr_ros.bag_io import BagError, check_bag
    from vpr_ros.map_index import IndexKind
    from vpr_ros.mapping import build_map

    IndexKind.parse(args.index)
    frames = sum(check_bag(bag, args.image_topic, args.pose_topic) for bag in args.bag)
    LOG.info("%d image messages on %s in %d bag(s)", frames, args.image_topic, len(args.bag))
    extractor = make_extractor(args)
    try:
        summary = build_map(args.bag, extractor, args.out, image_topic=args.image_topic, pose_topic=args.pose_topic,
                            min_distance=args.min_distance, min_period=args.min_period, novelty=args.novelty,
                            start=args.start, end=args.end, max_pose_gap=args.max_pose_gap, index=args.index,
                            append=args.append)
    except FileExistsError as exc:
        LOG.error("%s", exc)
        return 2
    except BagError as exc:
        if getattr(exc, "summary", None) is not None:
            print(exc.summary.format())
        LOG.error("%s", exc)
        return 2
    print(summary.format())
    return 0


def _pose_text(pose) -> str:
    """Position, yaw about z and frame of a pose, for one line of text."""
    if pose is None:
        return "no pose"
    x, y, z, w = pose.orientation
    yaw = np.degrees(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))
    px, py, pz = pose.position
    return f"pose ({px:.2f}, {py:.2f}, {pz:.2f}) yaw {yaw:.1f} deg [{pose.frame_id}]"


def _stamp_text(stamp: tuple[int, int]) -> str:
    return f"{stamp[0]}.{stamp[1]:09d}"


def cmd_map_info(args: argparse.Namespace) -> int:
    """Manifest, counts, time span, pose extent and sources of a saved place map."""
    from collections import Counter
    from datetime import datetime, timezone

    from vpr_ros.place_map import MANIFEST, PlaceMap

    pm = PlaceMap.load(args.map)
    manifest = json.loads((Path(args.map) / MANIFEST).read_text())
    ids = pm.ids()
    model = pm.model_id
    print(f"map          {args.map}")
    print(f"format       {manifest['format']} v{manifest['version']}")
    print(f"places       {len(pm)} (next id {manifest['next_id']})")
    print(f"index        {pm.kind.name} ({'trained' if pm.trained else 'exact until trained'}), {pm.dim}-d descriptors")
    if model is None:
        print("model        unknown (map saved without a model identity)")
    else:
        print(f"model        {model.arch}, input {model.image_size[0]}x{model.image_size[1]}, "
              f"checkpoint sha256 {model.checkpoint_sha256 or 'unknown'}")
    if len(ids) == 0:
        return 0
    stamps = pm.stamps()[ids]
    first, last = (datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds") for t in (stamps.min(),
                                                                                                 stamps.max()))
    print(f"time span    {stamps.min():.3f} .. {stamps.max():.3f} s ({stamps.max() - stamps.min():.1f} s; "
          f"{first} .. {last})")
    positions = pm.positions()[ids]
    has_pose = ~np.isnan(positions[:, 0])
    frames = Counter(pm.place(int(i)).pose.frame_id for i in ids[has_pose])
    print(f"poses        {int(has_pose.sum())} of {len(ids)} places" +
          (f" in {', '.join(f'{f} ({n})' for f, n in frames.items())}" if frames else ""))
    if has_pose.any():
        lo, hi = positions[has_pose].min(axis=0), positions[has_pose].max(axis=0)
        print("extent       " + "  ".join(f"{a} [{lo[i]:.2f}, {hi[i]:.2f}]" for i, a in enumerate("xyz")))
    for source, n in Counter(pm.place(int(i)).source for i in ids).most_common():
        print(f"source       {source or '(none)'}: {n} places")
    return 0


def _candidate_image(place, bags: dict[str, Path]):
    """The place's frame read back from its source bag (or the --bag of that name), else None."""
    from vpr_ros.bag_io import BagError, frame_at

    path, _, topic = place.source.rpartition("#")
    if not path or not topic:
        return None
    bag = bags.get(Path(path).name, Path(path))
    try:
        return frame_at(bag, topic, place.stamp)
    except (BagError, FileNotFoundError) as exc:
        LOG.warning("no image for place %d: %s", place.id, str(exc).splitlines()[0])
        return None


def _montage_path(out: Path, i: int, n: int) -> Path:
    return out if n == 1 else out.with_name(f"{out.stem}-{i}{out.suffix}")


def _map_image_size(path: Path) -> tuple[int, int]:
    """Input size recorded in a map's manifest (322x322 when it has none); load() checks the rest."""
    from vpr_ros.place_map import MANIFEST

    try:
        model = json.loads((Path(path) / MANIFEST).read_text()).get("model") or {}
        return tuple(model.get("image_size") or (322, 322))
    except (OSError, json.JSONDecodeError, AttributeError):
        return (322, 322)


def cmd_query(args: argparse.Namespace) -> int:
    """Top-k places of each query image, with scores, stamps and poses; optional montage PNG."""
    from vpr_ros.place_map import ModelIdentity, PlaceMap
    from vpr_ros.preprocess import load_image

    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    images = [load_image(p) for p in args.images]
    if args.image_size is None:  # describe queries at the size the map was built with
        args.image_size = _map_image_size(args.map)
    extractor = make_extractor(args)
    pm = PlaceMap.load(args.map, ModelIdentity.of(extractor.model, extractor.image_size))
    scores, ids = pm.search(extractor.describe(images), args.k)
    bags = {b.name: b for b in args.bag or []}
    for qi, path in enumerate(args.images):
        print(f"query {path}")
        places = [(float(s), pm.place(int(i))) for s, i in zip(scores[qi], ids[qi], strict=True) if i >= 0]
        for rank, (score, place) in enumerate(places, 1):
            print(f"  #{rank} id {place.id}  score {score:.4f}  stamp {_stamp_text(place.stamp)}  "
                  f"{_pose_text(place.pose)}")
        if args.montage:
            from vpr_ros.visualize import RetrievalTile, plot_retrieval

            tiles = [RetrievalTile(_candidate_image(p, bags), f"id {p.id} t={_stamp_text(p.stamp)}\n"
                                   f"{_pose_text(p.pose).split(' [')[0]}", s) for s, p in places]
            out = plot_retrieval(images[qi], tiles, _montage_path(args.montage, qi, len(args.images)),
                                 f"{path.name}: top-{len(tiles)} places")
            print(f"  montage {out}")
    return 0


def add_bag_parsers(sub: argparse._SubParsersAction) -> None:
    """``build-map``, ``map-info`` and ``query``: place maps from rosbags and what is in them."""
    p = sub.add_parser("build-map", help="build a place map from rosbags (ROS 1 .bag, ROS 2 sqlite3/mcap)")
    p.add_argument("--bag", action="append", required=True, type=Path, metavar="PATH",
                   help="bag file or ROS 2 bag folder; repeat for several bags, read in the order given")
    p.add_argument("--image-topic", required=True, help="sensor_msgs/Image or CompressedImage topic")
    p.add_argument("--pose-topic", help="nav_msgs/Odometry, geometry_msgs/PoseStamped, "
                                        "PoseWithCovarianceStamped or sensor_msgs/NavSatFix (local ENU metres)")
    add_model_args(p)
    p.add_argument("--out", required=True, type=Path, help="place map folder to write")
    p.add_argument("--index", default="flat", help="index kind: flat fp16 pca<N> ivfpq pca<N>ivf hnsw (default flat)")
    p.add_argument("--min-distance", type=float, default=0.0, metavar="M",
                   help="metres between keyframes (frames without a pose are not dropped by it)")
    p.add_argument("--min-period", type=float, default=0.0, metavar="S", help="seconds between keyframes")
    p.add_argument("--novelty", type=float, metavar="SIM",
                   help="skip a frame whose cosine similarity to the last keyframe is above SIM (e.g. 0.9)")
    p.add_argument("--start", type=float, metavar="S", help="seconds after the recording's first message")
    p.add_argument("--end", type=float, metavar="S", help="seconds after the recording's first message")
    p.add_argument("--max-pose-gap", type=float, default=0.5, metavar="S",
                   help="no pose is interpolated across pose samples further apart than this (default 0.5)")
    p.add_argument("--append", action="store_true", help="add to an existing map built by the same model")
    p.set_defaults(func=cmd_build_map)
    p = sub.add_parser("map-info", help="what a place map holds: model, counts, time span, pose extent")
    p.add_argument("map", type=Path)
    p.set_defaults(func=cmd_map_info)
    p = sub.add_parser("query", help="top-k places of a place map for query images")
    p.add_argument("map", type=Path)
    p.add_argument("images", nargs="+", type=Path)
    add_model_args(p)
    p.set_defaults(image_size=None)  # default: the map's input size
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--montage", type=Path, metavar="PNG",
                   help="write the query and its candidates (frames read back from the source bags)")
    p.add_argument("--bag", action="append", type=Path, metavar="PATH",
                   help="where a source bag is now, if it moved (matched by file name)")
    p.set_defaults(func=cmd_query)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vpr-ros", description="Visual place recognition tools")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("describe", help="compute global descriptors of images")
    p.add_argument("images", nargs="+", type=Path)
    add_model_args(p)
    p.add_argument("--out", required=True, type=Path, help="output .npy file")
    p.set_defaults(func=cmd_describe)
    add_eval_parser(sub)
    add_bag_parsers(sub)
    p = sub.add_parser("make-eval-data", help="write small datasets in every benchmark layout from the bundled photos")
    p.add_argument("out", type=Path, help="data root to write (one sub-folder per dataset)")
    p.add_argument("--datasets", nargs="+", default=None, metavar="NAME")
    p.set_defaults(func=cmd_make_eval_data)
    from vpr_ros.visualize import add_visualize_parser

    add_visualize_parser(sub, add_model_args)
    return parser


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="Recall@K on benchmark datasets (Pitts30k/250k, MSLS, Nordland, SPED, SF-XL)")
    add_model_args(p)
    p.add_argument("--datasets", nargs="+", required=True, metavar="NAME",
                   help="pitts30k_test pitts250k_test msls_val msls_challenge nordland sped sfxl")
    p.add_argument("--data-root", required=True, type=Path, help="folder holding one sub-folder per dataset")
    p.add_argument("--index", help="also measure recall with this place-map index kind (fp16, pca256, ivfpq, hnsw...)")
    p.add_argument("--ks", nargs="+", type=int, default=[1, 5, 10, 15, 20, 25],
                   help="K values (default: 1 5 10 15 20 25)")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "vpr_ros" / "descriptors",
                   help="descriptor cache folder (resumable; default: ~/.cache/vpr_ros/descriptors)")
    p.add_argument("--out", type=Path, default=Path("eval_out"), help="results folder (default: eval_out)")
    p.add_argument("--nordland-window", type=int, default=1, choices=(1, 10),
                   help="Nordland positives: same frame (1) or +-10 frames (10)")
    p.set_defaults(func=cmd_eval)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:  # bad input: one clear line, no traceback
        LOG.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
