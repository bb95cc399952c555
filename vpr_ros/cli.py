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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vpr-ros", description="Visual place recognition tools")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("describe", help="compute global descriptors of images")
    p.add_argument("images", nargs="+", type=Path)
    add_model_args(p)
    p.add_argument("--out", required=True, type=Path, help="output .npy file")
    p.set_defaults(func=cmd_describe)
    return parser


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
