"""Export a descriptor model to ONNX for onnxruntime / TensorRT (Jetson-class GPUs) and check it.

The exported graph takes ImageNet-normalised float32 images ``[B, 3, H, W]`` at one fixed size and
returns the unit-norm float32 descriptors ``[B, D]`` and the patch map ``[B, C, h, w]`` (for
geometric verification). The optimal-transport iterations are plain Python loops of a fixed
count, so the exporter unrolls them: the file holds no Loop / If / Scan node, which TensorRT and
other embedded runtimes need. With ``fp16`` the backbone runs in half precision and the
aggregator in float32, as in :class:`vpr_ros.extractor.DescriptorExtractor`.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vpr_ros.errors import InputError
from vpr_ros.io.files import atomic_output, output_path
from vpr_ros.models.onnx_model import INPUT, OUTPUTS, OnnxInfo, OnnxModel
from vpr_ros.models.vpr_model import VPRModel
from vpr_ros.preprocess import check_image_size, preprocess_exact
from vpr_ros.types import ModelIdentity

LOG = logging.getLogger(__name__)

OPSET = 18
DYNAMIC_OPS = frozenset({"Loop", "If", "Scan", "SequenceMap"})
FP32_MAX_ABS = 1e-4  # parity of an fp32 export with the PyTorch model
FP16_MIN_COSINE = 0.9995  # parity of an fp16 export with the fp32 PyTorch model
PROTOBUF_LIMIT = 2**31 - 1  # one .onnx file holds at most 2 GB; larger weights go to a .data file beside it


class ExportGraph(nn.Module):
    """What the exported file computes: ``images -> (descriptor, patch map)``."""

    def __init__(self, model: VPRModel, fp16: bool = False) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).float() if fp16 else model  # a half backbone must not change the caller's
        self.fp16 = fp16
        if fp16:
            self.model.backbone.half()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.describe(images.half() if self.fp16 else images)


@dataclass(frozen=True)
class Parity:
    """Exported file against the fp32 PyTorch model on the same inputs."""

    precision: str
    images: int
    max_abs: float
    min_cosine: float

    @property
    def ok(self) -> bool:
        if self.precision == "fp32":
            return self.max_abs <= FP32_MAX_ABS
        return self.min_cosine >= FP16_MIN_COSINE

    def describe(self) -> str:
        goal = f"max abs <= {FP32_MAX_ABS:g}" if self.precision == "fp32" else f"cosine >= {FP16_MIN_COSINE}"
        return (f"{self.precision} export vs PyTorch fp32 on {self.images} images: max abs {self.max_abs:.2e}, "
                f"min cosine {self.min_cosine:.6f} ({'passes' if self.ok else 'FAILS'} {goal})")


def export_onnx(model: VPRModel, image_size: Sequence[int], out: str | os.PathLike, fp16: bool = False,
                batch: int | None = None, opset: int = OPSET,
                verify: Callable[[Path], None] | None = None) -> OnnxInfo:
    """Write ``model`` at ``image_size`` to ``out`` (atomically) with its identity in the metadata.

    ``batch`` None exports a dynamic batch dimension, an int a fixed one (what some TensorRT
    setups prefer). ``verify`` is called with the finished file before it takes the name ``out``;
    what it raises leaves ``out`` as it was. Returns the metadata written.
    """
    size = check_image_size(image_size)
    if batch is not None and batch < 1:
        raise InputError(f"batch must be >= 1 or dynamic, got {batch}")
    model.check_input(torch.empty(1, 3, *size, device="meta"))
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise InputError(f"the output file must end in .onnx, got {out}")
    for target in (out, out.with_name(out.name + ".data")):  # a folder or a device is never replaced
        output_path(target)
    if model.training or next(model.parameters()).dtype != torch.float32:
        raise InputError("export a float32 model in eval mode (as load_model returns it)")
    graph = ExportGraph(model, fp16)
    device = next(model.parameters()).device
    example = torch.zeros(batch or 2, 3, *size, device=device)  # 2, not 1: a batch of 1 would be specialised
    dynamic = None if batch is not None else {"images": {0: torch.export.Dim("batch", min=1, max=4096)}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing chatter
        program = torch.onnx.export(graph, (example,), dynamo=True, input_names=[INPUT], output_names=list(OUTPUTS),
                                    dynamic_shapes=dynamic, opset_version=opset, optimize=True, verbose=False)
    ops = {node.op_type for node in program.model_proto.graph.node}
    if ops & DYNAMIC_OPS:  # would not run on TensorRT; a model change that brings them in must be caught
        raise RuntimeError(f"the exported graph holds dynamic control flow {sorted(ops & DYNAMIC_OPS)}")
    identity = ModelIdentity.of(model, size)
    info = OnnxInfo(identity, model.cfg.arch, "fp16" if fp16 else "fp32", batch)
    program.model.metadata_props.update(info.metadata())
    weights = sum(p.numel() * p.element_size() for p in graph.parameters())
    if weights >= PROTOBUF_LIMIT:
        LOG.info("weights of %.1f GB go to %s beside the model", weights / 1e9, out.name + ".data")
    with atomic_output(out) as tmp:
        data = tmp.with_name(tmp.name + ".data")
        try:
            program.save(tmp, external_data=weights >= PROTOBUF_LIMIT)
            if verify is not None:
                verify(tmp)
            if data.exists():
                _relink_external_data(tmp, data, out)
        finally:
            data.unlink(missing_ok=True)
    return info


def _relink_external_data(tmp: Path, data: Path, out: Path) -> None:
    """Point the model's external tensors at ``<out>.data`` and move the data file there."""
    import onnx

    proto = onnx.load(tmp, load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = out.name + ".data"
    onnx.save(proto, tmp)
    data.replace(out.with_name(out.name + ".data"))


def check_images(image_size: Sequence[int], count: int = 4) -> torch.Tensor:
    """Real photographs shipped with the package, preprocessed at ``image_size``: what the export is
    checked on when no other images are given."""
    scenes = sorted((Path(__file__).resolve().parents[1] / "synth" / "data" / "scenes").glob("*.jpg"))[:count]
    if not scenes:
        raise InputError("the bundled check photographs are missing from this installation")
    return preprocess_exact([str(p) for p in scenes], check_image_size(image_size))


def check_parity(model: VPRModel, path: str | os.PathLike, images: torch.Tensor) -> Parity:
    """Run the exported file with onnxruntime on the CPU and compare with the fp32 PyTorch model."""
    onnx_model = OnnxModel(path, "cpu")
    with torch.no_grad():
        reference = F.normalize(model(images.float().to(next(model.parameters()).device)), dim=-1).cpu().numpy()
    got, _ = onnx_model.run(images.numpy())
    cosine = np.sum(got.astype(np.float64) * reference, axis=1)
    return Parity(onnx_model.precision, len(images), float(np.abs(got - reference).max()), float(cosine.min()))
