"""Model options shared by the benchmark scripts: a checkpoint through ``load_extractor``, or, with
none given, a registry architecture with random weights (speed and memory do not depend on them)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vpr_ros.cli.common import add_model_args as cli_model_args
from vpr_ros.extractor import DescriptorExtractor, load_extractor
from vpr_ros.models import create_model


def add_model_args(parser: argparse.ArgumentParser, image_size: Sequence[int]) -> None:
    """The command line's model options, with ``--model`` for random weights when no checkpoint is given."""
    cli_model_args(parser, " ".join(map(str, image_size)), required=False)
    parser.add_argument("--model", default="dino_salad", help="registry architecture when no --checkpoint")
    parser.set_defaults(image_size=list(image_size))


def make_extractor(args: argparse.Namespace, device: str = "auto", precision: str = "fp32", batch_size: int = 16,
                   compile: bool = False) -> DescriptorExtractor:
    """The extractor the benchmark measures, built the way the CLI and the node build theirs."""
    if not args.checkpoint and not hasattr(args, "random_weights"):  # one set of weights for every run
        args.random_weights = create_model(args.model).state_dict()
    source = args.checkpoint or args.random_weights
    return load_extractor(source, args.config, args.image_size, device, precision, batch_size, compile=compile)


def model_label(args: argparse.Namespace) -> str:
    """What the report names: the checkpoint, or the architecture with random weights."""
    return str(args.checkpoint) if args.checkpoint else f"{args.model} (random weights)"
