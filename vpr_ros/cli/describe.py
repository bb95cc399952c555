"""``vpr-ros describe``: global descriptors of image files as a float32 ``.npy``."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vpr_ros.cli.common import LOG, add_model_args, make_extractor
from vpr_ros.io.files import output_path, write_atomic


def cmd_describe(args: argparse.Namespace) -> int:
    """Describe images and save the descriptors as a float32 .npy (row i = image i)."""
    from vpr_ros.preprocess import load_image

    out = output_path(args.out)  # refused before anything slow: a folder, a device, a FIFO
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

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would add .npy to the temporary name
            np.save(f, descriptors)

    write_atomic(out, save)
    print(f"wrote {descriptors.shape[0]} x {descriptors.shape[1]} descriptors to {args.out}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("describe", help="compute global descriptors of images")
    p.add_argument("images", nargs="+", type=Path)
    add_model_args(p)
    p.add_argument("--out", required=True, type=Path, help="output .npy file")
    p.set_defaults(func=cmd_describe)
