"""``vpr-ros export-onnx``: a checkpoint as an ONNX file for onnxruntime / TensorRT, checked before it is kept."""

from __future__ import annotations

import argparse
from pathlib import Path

from vpr_ros.cli.arguments import MAX_BATCH, image_side, integer
from vpr_ros.cli.common import LOG
from vpr_ros.errors import ExportError
from vpr_ros.types import MAX_IMAGE_SIDE


def parse_batch(text: str) -> int | None:
    """``dynamic`` -> None, else a positive batch size."""
    if text == "dynamic":
        return None
    try:
        return integer(1, MAX_BATCH)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 'dynamic' or an integer in 1..{MAX_BATCH}, got {text!r}") from None


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from vpr_ros.models import load_model
    from vpr_ros.models.loading import read_model_options
    from vpr_ros.models.onnx_export import check_images, check_parity, export_onnx
    from vpr_ros.preprocess import DEFAULT_IMAGE_SIZE

    options = read_model_options(args.checkpoint, args.config)
    model = load_model(args.checkpoint, config=options)
    size = tuple(args.image_size or (options or {}).get("image_size") or DEFAULT_IMAGE_SIZE)
    parity = []

    def verify(path: Path) -> None:
        parity.append(check_parity(model, path, check_images(size)))
        if not parity[-1].ok:
            raise ExportError(f"{parity[-1].describe()}; {args.out} was not written")

    info = export_onnx(model, size, args.out, fp16=args.fp16, batch=args.batch, verify=verify)
    ident = info.identity
    print(f"wrote {args.out}: {ident.arch} at {ident.image_size[0]}x{ident.image_size[1]}, {info.precision}, "
          f"batch {'dynamic' if info.batch is None else info.batch}, checkpoint sha256 "
          f"{(ident.checkpoint_sha256 or 'unknown')[:12]}")
    print(parity[-1].describe())
    LOG.info("metadata: %s", info.metadata())
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-onnx", help="export a checkpoint to ONNX (onnxruntime, TensorRT), checked against "
                                           "PyTorch")
    p.add_argument("checkpoint", type=Path, help="SALAD/A²GC/MegaLoc/BoQ checkpoint (.ckpt/.pt/.pth/.safetensors)")
    p.add_argument("--config", type=Path,
                   help="JSON with options the checkpoint's shapes cannot tell (default: the .json next to it, if any)")
    p.add_argument("--image-size", nargs=2, type=image_side, default=None, metavar=("H", "W"),
                   help=f"the one input size of the file, multiples of 14 up to {MAX_IMAGE_SIDE} (default: the "
                        "checkpoint's .json, else 322 322)")
    p.add_argument("--out", required=True, type=Path, help="the .onnx file to write")
    p.add_argument("--fp16", action="store_true", help="backbone in half precision (the aggregator stays fp32)")
    p.add_argument("--batch", type=parse_batch, default=None, metavar="dynamic|N",
                   help="batch dimension: dynamic (default) or a fixed size")
    p.set_defaults(func=cmd_export_onnx)
