"""What every node of the package that describes frames does at start: read the model parameters
and load the extractor the same way (device, precision, GPU latency mode), or fail with one line."""

from __future__ import annotations

from collections.abc import Sequence

from vpr_ros.extractor import DescriptorExtractor, load_extractor, resolve_device
from vpr_ros.models.onnx_model import is_onnx_file


class StartupError(RuntimeError):
    """A configuration the node cannot run with (reported as one fatal line)."""


def image_size_param(values: Sequence[int]) -> tuple[int, int] | None:
    """The ``image_size`` parameter: ``[H, W]``, or None for ``[0, 0]`` (not set)."""
    size = tuple(int(s) for s in values)
    if len(size) != 2:
        raise StartupError(f"image_size must be [H, W], got {list(size)}")
    return None if size == (0, 0) else size  # type: ignore[return-value]


def node_extractor(checkpoint: str, model_config: str, image_size: tuple[int, int] | None, device: str,
                   precision: str, batch_size: int = 1) -> DescriptorExtractor:
    """The extractor a node runs: on a CUDA device each frame is one CUDA-graph replay of upload, resize,
    model and download (``latency`` mode, docs/gpu.md); elsewhere the standard path. Not yet warmed up:
    the node does that on its worker thread (:class:`vpr_ros.ros.node_shell.Describer`)."""
    if not checkpoint:
        raise StartupError("parameter 'checkpoint' is empty: set it to a checkpoint file (SALAD, A²GC, MegaLoc, "
                           "BoQ, or an exported .onnx)")
    gpu = not is_onnx_file(checkpoint) and resolve_device(device).type == "cuda"
    return load_extractor(checkpoint, model_config or None, image_size, device, precision,
                          batch_size=batch_size, mode="latency" if gpu else "standard")
