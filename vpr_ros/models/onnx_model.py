"""Run a model exported by ``vpr-ros export-onnx`` with onnxruntime (embedded GPUs, no PyTorch model).

The file carries the model identity in its metadata (architecture, input size, descriptor size,
checkpoint sha256), so place maps accept it exactly where they accept the PyTorch model it came
from. Execution providers are tried in the order TensorRT, CUDA, CPU, as far as the installed
onnxruntime offers them (``onnxruntime`` on PyPI is CPU-only; ``onnxruntime-gpu`` or a Jetson
build adds the others).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vpr_ros.errors import CheckpointError, InputError, MissingFileError
from vpr_ros.types import ModelIdentity

FORMAT = "vpr_ros.onnx/1"
INPUT = "images"
OUTPUTS = ("descriptor", "patch_tokens")
META_FORMAT = "vpr_ros.format"
META_ARCH = "vpr_ros.arch"
META_FAMILY = "vpr_ros.family"
META_IMAGE_SIZE = "vpr_ros.image_size"
META_DIM = "vpr_ros.descriptor_dim"
META_SHA = "vpr_ros.checkpoint_sha256"
META_PRECISION = "vpr_ros.precision"
META_BATCH = "vpr_ros.batch"
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = PROVIDER_ORDER[:2]


def is_onnx_file(source: object) -> bool:
    """Whether a checkpoint argument names an ONNX file (by its ``.onnx`` suffix)."""
    return isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() == ".onnx"


@dataclass(frozen=True)
class OnnxModelConfig:
    """Stands in for :class:`vpr_ros.models.ModelConfig` where only the identity is known."""

    name: str  # ModelConfig.describe() of the exported model
    arch: str  # the family: salad, a2gc, ...

    def describe(self) -> str:
        return self.name


@dataclass(frozen=True)
class OnnxInfo:
    """What the metadata of an exported file says."""

    identity: ModelIdentity
    family: str
    precision: str  # fp32 or fp16 (the backbone's; the aggregator runs in fp32)
    batch: int | None  # fixed batch size, None = any

    def metadata(self) -> dict[str, str]:
        """The ``metadata_props`` written into the file."""
        ident = self.identity
        return {
            META_FORMAT: FORMAT,
            META_ARCH: ident.arch,
            META_FAMILY: self.family,
            META_IMAGE_SIZE: f"{ident.image_size[0]}x{ident.image_size[1]}",
            META_DIM: str(ident.descriptor_dim),
            META_SHA: ident.checkpoint_sha256 or "",
            META_PRECISION: self.precision,
            META_BATCH: "dynamic" if self.batch is None else str(self.batch),
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str], where: str) -> OnnxInfo:
        if meta.get(META_FORMAT) != FORMAT:
            raise CheckpointError(f"{where} was not written by vpr-ros export-onnx (no {META_FORMAT}={FORMAT} "
                                  "in its metadata); export the checkpoint with vpr-ros export-onnx")
        try:
            h, w = (int(v) for v in meta[META_IMAGE_SIZE].split("x"))
            dim = int(meta[META_DIM])
            batch = None if meta[META_BATCH] == "dynamic" else int(meta[META_BATCH])
            identity = ModelIdentity(meta[META_ARCH], (h, w), dim, meta[META_SHA] or None)
            info = cls(identity, meta[META_FAMILY], meta[META_PRECISION], batch)
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{where} has damaged vpr_ros metadata ({type(exc).__name__}: {exc})") from exc
        if info.precision not in ("fp32", "fp16"):
            raise CheckpointError(f"{where} has precision {info.precision!r} in its metadata, expected fp32 or fp16")
        return info


def choose_providers(device: str | None, available: list[str]) -> list[str]:
    """Execution providers for ``device``: ``cpu`` -> CPU only; ``auto`` -> TensorRT, CUDA, CPU as
    available; ``cuda``/``cuda:N`` -> the same but refused when no GPU provider is installed."""
    wanted = str(device or "auto")
    if wanted == "cpu":
        return ["CPUExecutionProvider"]
    if wanted != "auto" and not wanted.startswith("cuda"):
        raise InputError(f"device must be auto, cpu, cuda or cuda:N for an ONNX model, got {wanted!r}")
    chosen = [p for p in PROVIDER_ORDER if p in available]
    if wanted != "auto" and not any(p in GPU_PROVIDERS for p in chosen):
        raise InputError(f"device {wanted!r} requested, but this onnxruntime offers only {available}; install "
                         "onnxruntime-gpu (or the TensorRT build for Jetson) or use device 'cpu' / 'auto'")
    return chosen or ["CPUExecutionProvider"]


def _provider_options(providers: list[str], device: str | None, fp16: bool) -> list[dict[str, Any]]:
    index = str(device).split(":", 1)[1] if str(device).startswith("cuda:") else "0"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vpr_ros" / "tensorrt"
    options: dict[str, dict[str, Any]] = {
        # the engine is built once per model and GPU, then read back at the next start
        "TensorrtExecutionProvider": {"device_id": index, "trt_fp16_enable": fp16,
                                      "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)},
        "CUDAExecutionProvider": {"device_id": index},
    }
    return [options.get(p, {}) for p in providers]


class OnnxModel:
    """An exported descriptor model: ``images [B, 3, H, W] float32 -> (descriptors, patch map)``.

    Offers what the map identity reads from a :class:`vpr_ros.models.VPRModel` (``cfg.describe()``,
    ``descriptor_dim``, ``checkpoint_sha256``, ``check_input``) and is a :class:`vpr_ros.backends.Backend`.
    """

    device = torch.device("cpu")  # tensors in and out; onnxruntime places the work itself
    compiled = False

    def __init__(self, path: str | os.PathLike, device: str | None = "auto") -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise InputError("running an .onnx model needs onnxruntime: pip install onnxruntime "
                             "(onnxruntime-gpu for CUDA / TensorRT)") from exc
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingFileError(f"ONNX model not found: {self.path}")
        providers = choose_providers(device, ort.get_available_providers())
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about provider fallbacks go to our log, not stderr
        gpu = any(p in GPU_PROVIDERS for p in providers)
        try:
            # On a GPU the metadata is read first from a CPU session: the TensorRT options depend on the
            # precision, and a foreign file never gets an engine built for it.
            session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            self.info = OnnxInfo.from_metadata(dict(session.get_modelmeta().custom_metadata_map), str(self.path))
            if gpu:
                del session
                session = ort.InferenceSession(
                    str(self.path), options, providers=providers,
                    provider_options=_provider_options(providers, device, self.info.precision == "fp16"))
        except CheckpointError:
            raise
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidProtobuf / InvalidGraph types
            raise CheckpointError(f"{self.path} is not a usable ONNX model: {str(exc).strip().splitlines()[0]}") \
                from exc
        self.session, self.identity, self.precision = session, self.info.identity, self.info.precision
        self.image_size, self.descriptor_dim = self.identity.image_size, self.identity.descriptor_dim
        self.checkpoint_sha256 = self.identity.checkpoint_sha256
        self.cfg = OnnxModelConfig(self.identity.arch, self.info.family)
        self.providers: list[str] = self.session.get_providers()

    @property
    def aggregator(self) -> Any:
        raise InputError(f"{self.path.name} is an ONNX export: its aggregator cannot be run on its own; "
                         "use the PyTorch checkpoint for this")

    def check_input(self, images: Any) -> None:
        """Raise ``ValueError`` for inputs the exported graph cannot take (its size is fixed)."""
        shape = tuple(images.shape)
        if len(shape) != 4 or shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got shape {shape}")
        if shape[2:] != self.image_size:
            h, w = self.image_size
            raise ValueError(f"{self.path.name} was exported for {h}x{w} images, got {shape[2]}x{shape[3]}; "
                             "export again with --image-size for another size")

    def run(self, images: np.ndarray, patch_tokens: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Descriptors ``[B, D]`` and, if asked, the patch map ``[B, C, h, w]`` (float32)."""
        self.check_input(images)
        images = np.ascontiguousarray(images, dtype=np.float32)
        names = list(OUTPUTS if patch_tokens else OUTPUTS[:1])
        fixed = self.info.batch
        if fixed is None:
            outs = self.session.run(names, {INPUT: images})
            return outs[0], (outs[1] if patch_tokens else None)
        parts: list[list[np.ndarray]] = [[] for _ in names]
        for start in range(0, len(images), fixed):  # a fixed-batch file: pad the last slice
            chunk = images[start : start + fixed]
            n = len(chunk)
            if n < fixed:
                chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), np.float32)])
            for acc, out in zip(parts, self.session.run(names, {INPUT: chunk}), strict=True):
                acc.append(out[:n])
        outs = [np.concatenate(p) for p in parts]
        return outs[0], (outs[1] if patch_tokens else None)

    def label(self, mode: str) -> str:
        return "onnxruntime " + ", ".join(p.removesuffix("ExecutionProvider") for p in self.providers)

    def infer(self, batch: torch.Tensor, patch_tokens: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        desc, fmap = self.run(batch.cpu().numpy(), patch_tokens)
        return torch.from_numpy(desc), (None if fmap is None else torch.from_numpy(fmap))

    def use_eager(self, sdpa: object) -> None:
        """Nothing to leave: an export has no compiled or captured path."""
