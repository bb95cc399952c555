"""What every model-running subcommand shares: the model options and the extractor built from them."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vpr_ros.extractor import DescriptorExtractor, load_extractor

LOG = logging.getLogger("vpr_ros")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Options shared by every subcommand that runs a model."""
    parser.add_argument("--checkpoint", required=True, type=Path, help="SALAD/A²GC checkpoint (.ckpt/.pt/.pth)")
    parser.add_argument("--config", type=Path,
                        help="JSON with options the checkpoint's shapes cannot tell (e.g. a reference config.json); "
                             "default: the .json next to the checkpoint, if any")
    parser.add_argument("--image-size", nargs=2, type=int, default=None, metavar=("H", "W"),
                        help="input size, multiples of 14 (default: the checkpoint's .json, else 322 322)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--batch-size", type=int, default=16)


def make_extractor(args: argparse.Namespace) -> DescriptorExtractor:
    """The extractor the model options describe (see :func:`vpr_ros.extractor.load_extractor`)."""
    return load_extractor(args.checkpoint, args.config, args.image_size, args.device, args.precision,
                          args.batch_size)
