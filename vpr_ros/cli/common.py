"""What the subcommands share: the model options, the extractor built from them, input checks and
the result tiles of a place map query.

Heavy modules (torch, matplotlib) are imported inside the functions, so a command refuses a
missing input file in a fraction of a second instead of after loading them.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vpr_ros.cli.arguments import MAX_BATCH, device, image_side, integer
from vpr_ros.errors import InputError, MissingFileError
from vpr_ros.io.files import file_kind
from vpr_ros.types import MAX_IMAGE_SIDE

if TYPE_CHECKING:
    from vpr_ros.extractor import DescriptorExtractor
    from vpr_ros.maps.place_map import PlaceMap
    from vpr_ros.plotting.retrieval import RetrievalTile
    from vpr_ros.types import Pose

LOG = logging.getLogger("vpr_ros")
CHECKPOINT_SIZE = "the checkpoint's .json, else 322 322"
MAP_SIZE = "the map's input size"


def add_model_args(parser: argparse.ArgumentParser, size_default: str = CHECKPOINT_SIZE, required: bool = True) -> None:
    """Options shared by every command that runs a model (the benchmarks too, where ``--checkpoint`` is
    optional); ``size_default`` says where the input size comes from when ``--image-size`` is not given."""
    parser.add_argument("--checkpoint", required=required, type=Path,
                        help="SALAD/A²GC/MegaLoc/BoQ checkpoint (.ckpt/.pt/.pth/.safetensors), or an .onnx export")
    parser.add_argument("--config", type=Path,
                        help="JSON with options the checkpoint's shapes cannot tell (e.g. a reference config.json); "
                             "default: the .json next to the checkpoint, if any")
    parser.add_argument("--image-size", nargs=2, type=image_side, default=None, metavar=("H", "W"),
                        help=f"input size, multiples of 14 up to {MAX_IMAGE_SIDE} (default: {size_default})")
    parser.add_argument("--device", default="auto", type=device,
                        help="auto (CUDA if available), cpu, cuda, cuda:N")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--batch-size", type=integer(1, MAX_BATCH), default=16, help=f"1..{MAX_BATCH} (default 16)")
    parser.add_argument("--mode", default="standard", choices=("standard", "latency", "throughput"),
                        help="throughput: compiled backbone and overlapped uploads on a GPU (docs/gpu.md)")


def make_extractor(args: argparse.Namespace) -> DescriptorExtractor:
    """The extractor the model options describe (see :func:`vpr_ros.extractor.load_extractor`)."""
    from vpr_ros.extractor import load_extractor

    return load_extractor(args.checkpoint, args.config, args.image_size, args.device, args.precision,
                          args.batch_size, mode=getattr(args, "mode", "standard"))


def require_files(paths: Iterable[Path], what: str = "image", folders: bool = False) -> None:
    """Refuse missing inputs, all of them in one message, before anything slow starts; and inputs that
    are not regular files (a FIFO would block the read forever), or folders too unless ``folders``."""
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise MissingFileError(f"{what} file{'s' if len(missing) > 1 else ''} not found: {', '.join(missing)}")
    for path in paths:
        if not (path.is_file() or (folders and path.is_dir())):
            accepted = "a file or a folder" if folders else "a regular file"
            raise InputError(f"{what} {path} is {file_kind(path.stat().st_mode)}, not {accepted}")


def printable(text: object) -> str:
    """``text`` safe to print as one line: lone surrogates (undecodable bytes), control characters
    (newlines, terminal escapes) and other unprintable characters appear escaped (``\\udc80``, ``\\x1b``),
    so a damaged or hostile string read from a map can neither crash the output nor rewrite it."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def yaw_degrees(orientation: Sequence[float]) -> float:
    """Heading about z of a quaternion (x, y, z, w), in degrees."""
    x, y, z, w = orientation
    return float(np.degrees(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))))


def pose_text(pose: Pose | None) -> str:
    """Position, yaw about z and frame of a pose, for one line of text."""
    if pose is None:
        return "no pose"
    px, py, pz = pose.position
    return f"pose ({px:.2f}, {py:.2f}, {pz:.2f}) yaw {yaw_degrees(pose.orientation):.1f} deg [{pose.frame_id}]"


def retrieval_tiles(pm: PlaceMap, scores: np.ndarray, ids: np.ndarray, bags: Sequence[Path] = (),
                    positives: set[int] | None = None) -> list[RetrievalTile]:
    """One tile per result of one query (``scores``/``ids``: a row of :meth:`PlaceMap.search`); each image is
    read back by :func:`vpr_ros.bags.reader.place_image`, ``bags`` being where moved source bags are now."""
    from vpr_ros.bags.reader import place_image
    from vpr_ros.plotting.retrieval import RetrievalTile, thumbnail

    moved = {Path(b).name: Path(b) for b in bags}
    tiles = []
    for score, pid in zip(np.ravel(scores), np.ravel(ids), strict=True):
        if pid < 0:
            continue
        place = pm.place(int(pid))
        label = f"id {place.id} t={place.seconds:.3f}"
        if place.pose is not None:
            x, y, _ = place.pose.position
            label += f"\nx {x:.1f} y {y:.1f} yaw {yaw_degrees(place.pose.orientation):.0f}°"
        tiles.append(RetrievalTile(thumbnail(place_image(place, moved)), label, float(score),
                                   None if positives is None else int(pid) in positives))
    return tiles
