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
