"""Batched descriptor extraction: images in, unit-norm float32 numpy descriptors out.

Three modes run the same computation (docs/gpu.md): ``standard``, eager PyTorch; ``latency``, for a live
camera, one CUDA graph per frame shape on a GPU (:mod:`vpr_ros.cuda_graphs`), else the eager ``fast``-resize
path; ``throughput``, for maps, evaluation and bags, decoding and uploads overlapped with compute on a GPU
(:mod:`vpr_ros.pipeline`), else the standard path. The network runs through a :class:`~vpr_ros.backends.Backend`:
PyTorch (:meth:`VPRModel.describe`) or, for a ``vpr-ros export-onnx`` file, onnxruntime (any mode).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.nn.attention import SDPBackend

from vpr_ros.backends import Backend, TorchBackend
from vpr_ros.cuda_graphs import GraphRunner
from vpr_ros.errors import InputError, ModelOutputError
from vpr_ros.models import VPRModel, load_model
from vpr_ros.models.loading import Source, read_model_options
from vpr_ros.models.onnx_model import OnnxModel, is_onnx_file
from vpr_ros.pipeline import decode, pipelined
from vpr_ros.preprocess import DEFAULT_IMAGE_SIZE, check_image_size, preprocess_exact, preprocess_fast
from vpr_ros.types import ModelIdentity

LOG = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "fp16"]
Mode = Literal["standard", "latency", "throughput"]
Attention = Literal["auto", "cudnn", "flash", "efficient", "math"]
MODES: tuple[str, ...] = ("standard", "latency", "throughput")
_KERNELS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
ATTENTION: tuple[str, ...] = ("auto", *_KERNELS)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None -> the CUDA GPU when there is one, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but no CUDA GPU is available; use 'cpu' or 'auto'")
    return device


def device_label(device: torch.device) -> str:
    """What benchmark reports name: the GPU model, or the CPU thread count torch uses."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"


def sdpa_order(attention: str, mode: str, device: torch.device) -> list[SDPBackend] | None:
    """Attention kernels to try, first choice first; None leaves PyTorch's own choice.

    ``auto`` puts cuDNN first in the fast modes on Hopper and newer GPUs, where it measured fastest
    (batch 256 on an H200: cuDNN 2,696, flash 2,592, memory-efficient 2,367, math 874 img/s); a
    named kernel goes first and the others stay as fallbacks for inputs it cannot take.
    """
    if device.type != "cuda":
        return None
    if attention == "auto":
        if mode == "standard" or torch.cuda.get_device_capability(device) < (9, 0):
            return None
        attention = "cudnn"
    return [_KERNELS[attention], *(b for name, b in _KERNELS.items() if name != attention)]


@dataclass
class Features:
    """Output of :meth:`DescriptorExtractor.extract`."""

    descriptors: np.ndarray  # [B, D] float32, unit norm
    patch_tokens: np.ndarray | None = None  # [B, h, w, C] float32, the tokens the aggregator takes


def _numpy(desc: torch.Tensor, fmap: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(descriptors, patch map ``[B, C, h, w]``) -> numpy (descriptors, patch tokens ``[B, h, w, C]``)."""
    return desc.cpu().numpy(), (None if fmap is None else fmap.permute(0, 2, 3, 1).cpu().numpy())


class DescriptorExtractor:
    """Runs a :class:`VPRModel` (or an exported :class:`OnnxModel`) on batches of images.

    Args:
        model: a loaded model (see :func:`vpr_ros.models.load_model`) or an ONNX export.
        image_size: (H, W), multiples of 14; 322x322 is SALAD's evaluation size.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``...
        precision: ``fp32`` (exact), ``bf16`` or ``fp16`` autocast for the backbone.
        batch_size: images per forward pass.
        resize: ``exact`` = the official PIL transform on the CPU; ``fast`` = antialiased
            torch resize on ``device`` (max deviation ~0.01 in normalised units). Default:
            ``fast`` in latency mode, else ``exact``.
        compile: wrap the backbone in ``torch.compile``. Default: on a CUDA GPU in the latency and
            throughput modes.
        mode: ``standard``, ``latency`` or ``throughput`` (see the module docstring).
        attention: SDPA kernel: ``auto``, ``cudnn``, ``flash``, ``efficient`` or ``math`` (CUDA only).
    """

    def __init__(self, model: VPRModel | OnnxModel, image_size: Sequence[int] = DEFAULT_IMAGE_SIZE,
                 device: str | torch.device | None = "auto", precision: Precision = "fp32", batch_size: int = 16,
                 resize: Literal["exact", "fast"] | None = None, compile: bool | None = None,
                 mode: Mode = "standard", attention: Attention = "auto") -> None:
        if precision not in ("fp32", "bf16", "fp16"):
            raise InputError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if attention not in ATTENTION:
            raise InputError(f"attention must be one of {', '.join(ATTENTION)}, got {attention!r}")
        resize = resize or ("fast" if mode == "latency" else "exact")
        if resize not in ("exact", "fast"):
            raise InputError(f"resize must be 'exact' or 'fast', got {resize!r}")
        if mode == "latency" and resize != "fast":
            raise InputError("latency mode resizes frames on the device: use resize 'fast'")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.image_size, self.batch_size, self.resize = check_image_size(image_size), batch_size, resize
        self.mode: str = mode
        self.onnx = isinstance(model, OnnxModel)
        if isinstance(model, OnnxModel):
            if self.image_size != model.image_size:
                (h, w), (qh, qw) = model.image_size, self.image_size
                raise InputError(f"{model.path.name} was exported for {h}x{w} images, not {qh}x{qw}; export "
                                 "again with vpr-ros export-onnx --image-size for another size")
            if precision not in ("fp32", model.precision):
                LOG.info("%s runs in the precision it was exported in (%s)", model.path.name, model.precision)
            self.runner: Backend = model
        else:
            where = resolve_device(device)
            compiled = bool(where.type == "cuda" and mode != "standard" if compile is None else compile)
            self.runner = TorchBackend(model, where, precision, compiled, sdpa_order(attention, mode, where))
        self.model: Any = model
        self.device, self.precision = self.runner.device, self.runner.precision
        self.model.check_input(torch.empty(1, 3, *self.image_size, device="meta"))
        graphed = self.device.type == "cuda" and mode == "latency"
        self._graphs = GraphRunner(self.runner.infer, self.device, self.image_size) if graphed else None

    @property
    def compiled(self) -> bool:
        """Whether the backbone runs compiled (false again after a compiler failure)."""
        return self.runner.compiled

    @property
    def descriptor_dim(self) -> int:
        return self.model.descriptor_dim

    @property
    def identity(self) -> ModelIdentity:
        """What a place map records and checks: architecture, input size, checkpoint hash."""
        return ModelIdentity.of(self.model, self.image_size)

    @property
    def backend(self) -> str:
        """Where the model runs, for logs: the device, or the onnxruntime execution providers."""
        return self.runner.label(self.mode)

    def preprocess(self, images: Sequence) -> torch.Tensor:
        """Images (paths, RGB uint8 arrays, PIL images) -> normalised batch on the device."""
        if self.resize == "fast":
            return preprocess_fast(decode(images), self.image_size, self.device)
        return preprocess_exact(images, self.image_size).to(self.device, non_blocking=True)

    def use_standard_path(self) -> None:
        """Leave the compiled / CUDA-graph paths for eager ``standard`` mode on the same device: what a
        live node does when its fast path cannot be built, rather than failing every frame."""
        self.mode, self._graphs = "standard", None
        self.runner.use_eager(sdpa_order("auto", "standard", self.device))

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor, patch_tokens: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalised batch -> (descriptors [B, D] float32, optional patch map [B, C, h, w])."""
        self.model.check_input(batch)
        if self._graphs is not None:
            return self._graphs.forward(batch, patch_tokens)
        return self.runner.infer(batch, patch_tokens)

    @torch.inference_mode()
    def describe_frames(self, frames: np.ndarray, patch_tokens: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """RGB uint8 frames ``[B, H, W, 3]`` -> (descriptors [B, D], optional patch tokens [B, h, w, C]).

        The ``fast`` resize path; in latency mode on a GPU one CUDA-graph replay per call.
        """
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise InputError(f"expected RGB uint8 frames [B, H, W, 3], got {frames.dtype} {frames.shape}")
        if self._graphs is not None:
            return self._graphs.describe_frames(frames, patch_tokens)
        return _numpy(*self.forward(preprocess_fast(frames, self.image_size, self.device), patch_tokens))

    def _describe_chunk(self, chunk: Sequence, patch_tokens: bool) -> tuple[np.ndarray, np.ndarray | None]:
        if self.mode == "latency":  # resize "fast"
            chunk = decode(chunk)
            if all(a.shape == chunk[0].shape for a in chunk):
                return self.describe_frames(np.stack(chunk), patch_tokens)
        return _numpy(*self.forward(self.preprocess(chunk), patch_tokens))

    def extract(self, images: Sequence, patch_tokens: bool = False) -> Features:
        """Describe images in batches; optionally also return the patch tokens."""
        if len(images) == 0:
            return Features(np.zeros((0, self.descriptor_dim), np.float32), None)
        if self.mode == "throughput" and self.device.type == "cuda":
            results = pipelined(self, images, patch_tokens)
        else:
            results = (self._describe_chunk(images[s : s + self.batch_size], patch_tokens)
                       for s in range(0, len(images), self.batch_size))
        descs, tokens, start = [], [], 0
        for desc, fmap in results:
            bad = np.flatnonzero(~np.isfinite(desc).all(axis=1))
            if len(bad):  # never hand on a NaN: maps, caches and outputs would keep it
                raise ModelOutputError(f"the model produced non-finite descriptors for image(s) "
                                       f"{[start + int(i) for i in bad[:10]]} of this batch; check the checkpoint")
            descs.append(desc)
            if fmap is not None:
                tokens.append(fmap)
            start += len(desc)
        return Features(np.concatenate(descs), np.concatenate(tokens) if patch_tokens else None)

    def describe(self, images: Sequence) -> np.ndarray:
        """Unit-norm float32 descriptors ``[len(images), D]``."""
        return self.extract(images).descriptors

    def warmup(self, iterations: int = 2, frame_size: Sequence[int] | None = None) -> None:
        """Run dummy batches so that kernel selection, compilation and (latency mode) graph capture
        happen before real data; ``frame_size`` (H, W) also prepares single camera frames of that size."""
        dummy = torch.zeros(self.batch_size, 3, *self.image_size, device=self.device)
        for _ in range(iterations):
            self.forward(dummy)
            if frame_size is not None:
                self.describe_frames(np.zeros((1, *frame_size, 3), np.uint8))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def load_extractor(checkpoint: Source, config: Source | None = None, image_size: Sequence[int] | None = None,
                   device: str | torch.device | None = "auto", precision: Precision = "fp32", batch_size: int = 16,
                   resize: Literal["exact", "fast"] | None = None, compile: bool | None = None,
                   mode: Mode = "standard", attention: Attention = "auto") -> DescriptorExtractor:
    """The one way to turn a checkpoint into a ready extractor (CLI, node, demo and benchmarks).

    ``checkpoint`` is a file (or an in-memory state dict). Model options come from ``config`` or
    the checkpoint's sidecar ``.json`` (see :func:`read_model_options`); the input size from
    ``image_size``, else the options' ``image_size``, else SALAD's 322x322. An ``.onnx`` file
    written by ``vpr-ros export-onnx`` carries its options and size and runs through onnxruntime.
    """
    if is_onnx_file(checkpoint):
        if config is not None:
            LOG.warning("model options %s are not used: %s carries its own", config, checkpoint)
        model: VPRModel | OnnxModel = OnnxModel(checkpoint, None if device is None else str(device))
        size, runs = tuple(image_size or model.image_size), " on " + ", ".join(model.providers)
    else:
        options = read_model_options(checkpoint, config)
        model = load_model(checkpoint, config=options)
        size = image_size or (options or {}).get("image_size") or DEFAULT_IMAGE_SIZE  # checked by read_model_options
        size, runs = tuple(int(s) for s in size), ""
    where = "a state dict" if isinstance(checkpoint, Mapping) else checkpoint
    LOG.info("model %s from %s at %sx%s%s", model.cfg.describe(), where, *size, runs)
    return DescriptorExtractor(model, size, device, precision, batch_size, resize, compile, mode, attention)
