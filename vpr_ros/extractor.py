"""Batched descriptor extraction: images in, unit-norm float32 numpy descriptors out.

The backbone may run under bf16/fp16 autocast for speed; the aggregator (optimal transport
with logsumexp, small) always runs in float32, because its log-domain normalisation loses
most of its precision in 16-bit floats for little gain in time.

Three modes run that same computation (docs/gpu.md):

* ``standard``: eager PyTorch.
* ``latency``, for a live camera: on a CUDA GPU the whole path of a frame (uint8 upload, resize,
  normalise, backbone, aggregator, download) is captured once per frame shape in one CUDA graph
  and replayed; the backbone is compiled first. It gives what the eager ``fast``-resize path gives
  in the same precision; on the CPU it is that eager path.
* ``throughput``, for maps, evaluation and bags: compiled backbone, the fastest attention kernel
  for the GPU, and page-locked, double-buffered uploads that overlap decoding with compute. On
  the CPU it is the standard path.

A model exported by ``vpr-ros export-onnx`` runs through onnxruntime instead (any mode).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.nn.attention import SDPBackend, sdpa_kernel

from vpr_ros.errors import InputError, MissingFileError, ModelOutputError
from vpr_ros.io.files import file_kind
from vpr_ros.models import VPRModel, load_model
from vpr_ros.models.loading import parse_config
from vpr_ros.models.onnx_model import OnnxModel, is_onnx_file
from vpr_ros.preprocess import (
    DEFAULT_IMAGE_SIZE,
    check_image_size,
    imagenet_stats,
    load_image,
    preprocess_exact,
    preprocess_fast,
    resize_normalize,
    to_rgb,
)
from vpr_ros.types import ModelIdentity

LOG = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "fp16"]
Mode = Literal["standard", "latency", "throughput"]
Attention = Literal["auto", "cudnn", "flash", "efficient", "math"]
MODES: tuple[str, ...] = ("standard", "latency", "throughput")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
ATTENTION: tuple[str, ...] = ("auto", *_BACKENDS)
MAX_GRAPHS = 4  # captured shapes kept per extractor; the least recently used one goes first
MAX_OPTIONS_BYTES = 1 << 20  # a model options file is a few hundred bytes; a larger one is another file


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


def _to_array(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    return load_image(image)


def _rgb(image) -> np.ndarray:
    """Any accepted image as contiguous RGB uint8 ``(H, W, 3)``."""
    return to_rgb(image, "rgb") if isinstance(image, np.ndarray) else _to_array(image)


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
    return [_BACKENDS[attention], *(b for name, b in _BACKENDS.items() if name != attention)]


@dataclass
class Features:
    """Output of :meth:`DescriptorExtractor.extract`."""

    descriptors: np.ndarray  # [B, D] float32, unit norm
    patch_tokens: np.ndarray | None = None  # [B, h, w, C] float32, the tokens the aggregator takes


class _Graph:
    """A step over static tensors, captured once in a CUDA graph and then replayed."""

    def __init__(self, step: Callable[[], Any], buffers: dict[str, torch.Tensor], device: torch.device,
                 warmup: int = 3) -> None:
        self.buffers = buffers
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # compilation, kernel plans and the allocator settle before capture
            for _ in range(warmup):
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = step()

    def replay(self) -> Any:
        self.graph.replay()
        return self.outputs


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

    def __init__(
        self,
        model: VPRModel | OnnxModel,
        image_size: Sequence[int] = DEFAULT_IMAGE_SIZE,
        device: str | torch.device | None = "auto",
        precision: Precision = "fp32",
        batch_size: int = 16,
        resize: Literal["exact", "fast"] | None = None,
        compile: bool | None = None,
        mode: Mode = "standard",
        attention: Attention = "auto",
    ) -> None:
        if precision not in ("fp32", *_DTYPES):
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
        self.image_size = check_image_size(image_size)
        self.batch_size = batch_size
        self.resize = resize
        self.mode: str = mode
        self.onnx = isinstance(model, OnnxModel)
        if self.onnx:
            if self.image_size != model.image_size:
                (h, w), (qh, qw) = model.image_size, self.image_size
                raise InputError(f"{model.path.name} was exported for {h}x{w} images, not {qh}x{qw}; export "
                                 "again with vpr-ros export-onnx --image-size for another size")
            if precision not in ("fp32", model.precision):
                LOG.info("%s runs in the precision it was exported in (%s)", model.path.name, model.precision)
            self.device = torch.device("cpu")  # tensors in and out; onnxruntime places the work itself
            self.precision: str = model.precision
            self.model: Any = model
            compile = False
        else:
            self.device = resolve_device(device)
            self.precision = precision
            self.model = model.to(self.device).eval()
        model.check_input(torch.empty(1, 3, *self.image_size, device="meta"))
        cuda = self.device.type == "cuda"
        self.compiled = bool(cuda and mode != "standard" if compile is None else compile)
        self._features: Callable | None = None
        if not self.onnx:
            # static shapes: the fast modes keep their batch shapes fixed (graphs per shape, padded last batch)
            self._features = (torch.compile(model.forward_features, dynamic=False) if self.compiled
                              else model.forward_features)
        self._compile_checked = not self.compiled
        self._sdpa = sdpa_order(attention, mode, self.device)
        self._graphed = cuda and mode == "latency" and not self.onnx
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self._mean, self._std = imagenet_stats(self.device)

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
        if self.onnx:
            return "onnxruntime " + ", ".join(p.removesuffix("ExecutionProvider") for p in self.model.providers)
        return f"{self.device} ({self.mode}{', compiled' if self.compiled else ''})"

    def preprocess(self, images: Sequence) -> torch.Tensor:
        """Images (paths, RGB uint8 arrays, PIL images) -> normalised batch on the device."""
        if self.resize == "fast":
            arrays = [i if isinstance(i, np.ndarray) else _to_array(i) for i in images]
            return preprocess_fast(arrays, self.image_size, self.device)
        return preprocess_exact(images, self.image_size).to(self.device, non_blocking=True)

    def use_standard_path(self) -> None:
        """Leave the compiled / CUDA-graph paths for eager ``standard`` mode on the same device: what a
        live node does when its fast path cannot be built, rather than failing every frame."""
        self.mode, self._graphed = "standard", False
        self._graphs.clear()
        if self.compiled:
            self._features, self.compiled = self.model.forward_features, False
        self._compile_checked = True
        self._sdpa = sdpa_order("auto", "standard", self.device)

    # -- the computation -------------------------------------------------------------------------

    def _backbone(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._compile_checked:
            return self._features(batch)
        try:  # the first call compiles: a platform without a working compiler falls back to eager
            out = self._features(batch)
        except Exception as exc:  # noqa: BLE001 - inductor / triton raise many kinds
            LOG.warning("torch.compile failed (%s: %s); running the backbone eagerly", type(exc).__name__,
                        str(exc).strip().splitlines()[0] if str(exc).strip() else "")
            self._features, self.compiled = self.model.forward_features, False
            out = self._features(batch)
        self._compile_checked = True
        return out

    def _compute(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised batch -> (descriptors [B, D] float32, patch map [B, C, h, w] float32)."""
        dtype = _DTYPES.get(self.precision)
        attention = sdpa_kernel(self._sdpa, set_priority=True) if self._sdpa else contextlib.nullcontext()
        # no autocast weight cache: each weight is used once per forward, and a CUDA graph must not keep one
        with attention, torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None,
                                       cache_enabled=False):
            feature_map, token = self._backbone(batch)
        feature_map, token = feature_map.float(), token.float()
        return F.normalize(self.model.aggregator((feature_map, token)).float(), dim=-1), feature_map

    def _frame_path(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 frames ``[B, H, W, 3]`` on the device -> what :meth:`_compute` returns."""
        return self._compute(resize_normalize(frames.permute(0, 3, 1, 2), self.image_size, self._mean, self._std))

    def _graph(self, key: tuple, build: Callable[[], tuple[Callable[[], Any], dict[str, torch.Tensor]]]) -> _Graph:
        graph = self._graphs.pop(key, None)
        if graph is None:
            step, buffers = build()
            try:
                graph = _Graph(step, buffers, self.device)
            except RuntimeError as exc:  # a host-device copy or a sync inside the model: a bug, say so loudly
                raise RuntimeError(f"capturing the latency path {key} in a CUDA graph failed: {exc}") from exc
            while len(self._graphs) >= MAX_GRAPHS:
                self._graphs.popitem(last=False)
        self._graphs[key] = graph
        return graph

    def _batch_graph(self, shape: tuple[int, ...]) -> _Graph:
        def build() -> tuple[Callable[[], Any], dict[str, torch.Tensor]]:
            buffers = {"images": torch.zeros(shape, device=self.device)}
            return lambda: self._compute(buffers["images"]), buffers

        return self._graph(("batch", shape), build)

    def _frames_graph(self, shape: tuple[int, ...], tokens: bool) -> _Graph:
        def build() -> tuple[Callable[[], Any], dict[str, torch.Tensor]]:
            buffers = {"host_in": torch.zeros(shape, dtype=torch.uint8).pin_memory(),
                       "frames": torch.zeros(shape, dtype=torch.uint8, device=self.device)}

            def step() -> None:
                buffers["frames"].copy_(buffers["host_in"], non_blocking=True)
                desc, fmap = self._frame_path(buffers["frames"])
                outs = {"desc": desc, "tokens": fmap.permute(0, 2, 3, 1)} if tokens else {"desc": desc}
                for name, value in outs.items():
                    if name not in buffers:  # first warm-up run, before capture: page-locked outputs
                        buffers[name] = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
                    buffers[name].copy_(value, non_blocking=True)

            return step, buffers

        return self._graph(("frames", shape, tokens), build)

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor, patch_tokens: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalised batch -> (descriptors [B, D] float32, optional patch map [B, C, h, w])."""
        self.model.check_input(batch)
        if self.onnx:
            desc, fmap = self.model.run(batch.cpu().numpy(), patch_tokens)
            return torch.from_numpy(desc), (None if fmap is None else torch.from_numpy(fmap))
        if self._graphed:
            graph = self._batch_graph(tuple(batch.shape))
            graph.buffers["images"].copy_(batch)
            desc, fmap = graph.replay()
            return desc.clone(), (fmap.clone() if patch_tokens else None)
        desc, fmap = self._compute(batch)
        return desc, (fmap if patch_tokens else None)

    @torch.inference_mode()
    def describe_frames(self, frames: np.ndarray, patch_tokens: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """RGB uint8 frames ``[B, H, W, 3]`` -> (descriptors [B, D], optional patch tokens [B, h, w, C]).

        The ``fast`` resize path; in latency mode on a GPU one CUDA-graph replay per call.
        """
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise InputError(f"expected RGB uint8 frames [B, H, W, 3], got {frames.dtype} {frames.shape}")
        if self.onnx:
            desc, fmap = self.forward(preprocess_fast(frames, self.image_size), patch_tokens)
            return desc.numpy(), (None if fmap is None else fmap.permute(0, 2, 3, 1).numpy())
        if not self._graphed:
            desc, fmap = self._frame_path(torch.from_numpy(np.ascontiguousarray(frames)).to(self.device))
            tokens = fmap.permute(0, 2, 3, 1).cpu().numpy() if patch_tokens else None
            return desc.cpu().numpy(), tokens
        graph = self._frames_graph(frames.shape, patch_tokens)
        buffers = graph.buffers
        buffers["host_in"].numpy()[...] = frames
        graph.replay()
        torch.cuda.current_stream(self.device).synchronize()
        return buffers["desc"].numpy().copy(), (buffers["tokens"].numpy().copy() if patch_tokens else None)

    # -- batches of images -------------------------------------------------------------------------

    def _describe_chunk(self, chunk: Sequence, patch_tokens: bool) -> tuple[np.ndarray, np.ndarray | None]:
        if self.mode == "latency":
            arrays = [_rgb(i) for i in chunk]
            if all(a.shape == arrays[0].shape for a in arrays):
                return self.describe_frames(np.stack(arrays), patch_tokens)
            batch = preprocess_fast(arrays, self.image_size, self.device)
        else:
            batch = self.preprocess(chunk)
        desc, fmap = self.forward(batch, patch_tokens)
        return desc.cpu().numpy(), (None if fmap is None else fmap.permute(0, 2, 3, 1).cpu().numpy())

    def _host_batch(self, chunk: Sequence) -> torch.Tensor:
        """A chunk decoded and prepared on the CPU, page-locked for an asynchronous upload: uint8
        frames ``[B, H, W, 3]`` for the fast resize (4x less to move), else the exact input."""
        if self.resize == "fast":
            arrays = [_rgb(i) for i in chunk]
            if all(a.shape == arrays[0].shape for a in arrays):
                return torch.from_numpy(np.stack(arrays)).pin_memory()
            return preprocess_fast(arrays, self.image_size).pin_memory()
        return preprocess_exact(chunk, self.image_size).pin_memory()

    def _pipelined(self, images: Sequence, patch_tokens: bool) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Throughput mode on a GPU: while batch i computes, batch i+1 uploads from page-locked memory
        on a side stream and batch i+2 is decoded by a worker thread; results come back the same way."""
        chunks = [images[s : s + self.batch_size] for s in range(0, len(images), self.batch_size)]
        compute = torch.cuda.current_stream(self.device)
        upload = torch.cuda.Stream(self.device)
        with ThreadPoolExecutor(1, thread_name_prefix="vpr_decode") as pool:
            ahead = pool.submit(self._host_batch, chunks[0])
            waiting = None
            for i in range(len(chunks)):
                host = ahead.result()
                if i + 1 < len(chunks):
                    ahead = pool.submit(self._host_batch, chunks[i + 1])
                with torch.cuda.stream(upload):
                    batch = host.to(self.device, non_blocking=True)
                compute.wait_stream(upload)
                batch.record_stream(compute)
                if batch.dtype == torch.uint8:
                    batch = resize_normalize(batch.permute(0, 3, 1, 2), self.image_size, self._mean, self._std)
                n = len(batch)
                if n < self.batch_size:  # pad the last batch: one compiled shape for the whole run
                    batch = torch.cat([batch, batch.new_zeros(self.batch_size - n, *batch.shape[1:])])
                desc, fmap = self.forward(batch, patch_tokens)
                outs = [desc[:n]] if fmap is None else [desc[:n], fmap[:n].permute(0, 2, 3, 1)]
                pinned = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in outs]
                for dst, src in zip(pinned, outs, strict=True):
                    dst.copy_(src, non_blocking=True)
                done = torch.cuda.Event()
                done.record(compute)
                if waiting is not None:  # batch i-1's results, while batch i is still computing
                    yield _collect(*waiting)
                waiting = (done, pinned)
            yield _collect(*waiting)

    def extract(self, images: Sequence, patch_tokens: bool = False) -> Features:
        """Describe images in batches; optionally also return the patch tokens."""
        if len(images) == 0:
            dim = self.descriptor_dim
            return Features(np.zeros((0, dim), np.float32), None)
        if self.mode == "throughput" and self.device.type == "cuda" and not self.onnx:
            results = self._pipelined(images, patch_tokens)
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


def _collect(done: torch.cuda.Event, pinned: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray | None]:
    done.synchronize()
    return pinned[0].numpy(), (pinned[1].numpy() if len(pinned) > 1 else None)


def sidecar_path(checkpoint: str | os.PathLike) -> Path:
    """The ``.json`` that training's export writes next to a checkpoint (``model.pt`` -> ``model.json``)."""
    return Path(checkpoint).with_suffix(".json")


Source = str | os.PathLike | Mapping[str, Any]


def read_model_options(checkpoint: Source, config: Source | None = None) -> dict[str, Any] | None:
    """Model options for ``checkpoint``: ``config`` (a JSON file or a dict) when given, else the
    checkpoint's sidecar ``.json`` when there is one, else None (shapes alone decide).

    Every option is checked for type and range (:func:`vpr_ros.models.loading.parse_config`): a bad
    one is an InputError naming the file, the field and what it accepts.
    """
    if isinstance(config, Mapping):
        parse_config(config)
        return dict(config)
    if config is None and isinstance(checkpoint, Mapping):
        return None  # an in-memory state dict has no sidecar
    path = Path(config) if config is not None else sidecar_path(checkpoint)
    if config is None and not path.is_file():
        return None
    if not path.exists():
        raise MissingFileError(f"model config not found: {path}")
    if not path.is_file():  # a FIFO would block the read forever
        raise InputError(f"model config {path} is {file_kind(path.stat().st_mode)}, not a JSON file")
    if path.stat().st_size > MAX_OPTIONS_BYTES:
        raise InputError(f"model config {path} is {path.stat().st_size:,} bytes; model options take a few hundred "
                         f"(at most {MAX_OPTIONS_BYTES:,}): is it the right file?")
    try:
        options = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # ValueError: bad JSON, a number of 5000 digits
        raise InputError(f"model config {path} is not readable JSON: {exc}") from exc
    except RecursionError as exc:
        raise InputError(f"model config {path} nests arrays or objects too deeply to be model options") from exc
    if not isinstance(options, dict):
        raise InputError(f"model config {path} must hold a JSON object of model options, got "
                         f"{type(options).__name__}")
    parse_config(options, f"model config {path}")  # every field checked here, naming this file
    return options


def load_extractor(
    checkpoint: Source,
    config: Source | None = None,
    image_size: Sequence[int] | None = None,
    device: str | torch.device | None = "auto",
    precision: Precision = "fp32",
    batch_size: int = 16,
    resize: Literal["exact", "fast"] | None = None,
    compile: bool | None = None,
    mode: Mode = "standard",
    attention: Attention = "auto",
) -> DescriptorExtractor:
    """The one way to turn a checkpoint into a ready extractor (CLI, node, demo and benchmarks).

    ``checkpoint`` is a file (or an in-memory state dict). Model options come from ``config`` or
    the checkpoint's sidecar ``.json`` (see :func:`read_model_options`); the input size from
    ``image_size``, else the options' ``image_size``, else SALAD's 322x322. An ``.onnx`` file
    written by ``vpr-ros export-onnx`` carries its options and size and runs through onnxruntime.
    """
    if is_onnx_file(checkpoint):
        if config is not None:
            LOG.warning("model options %s are not used: %s carries its own", config, checkpoint)
        model = OnnxModel(checkpoint, None if device is None else str(device))
        LOG.info("model %s from %s at %sx%s on %s", model.cfg.describe(), checkpoint, *model.image_size,
                 ", ".join(model.providers))
        return DescriptorExtractor(model, tuple(image_size or model.image_size), device, precision, batch_size,
                                   resize, compile, mode, attention)
    options = read_model_options(checkpoint, config)
    model = load_model(checkpoint, config=options)
    size = image_size or (options or {}).get("image_size") or DEFAULT_IMAGE_SIZE  # checked by read_model_options
    where = "a state dict" if isinstance(checkpoint, Mapping) else checkpoint
    LOG.info("model %s from %s at %sx%s", model.cfg.describe(), where, *size)
    return DescriptorExtractor(model, tuple(int(s) for s in size), device, precision, batch_size, resize, compile,
                               mode, attention)
