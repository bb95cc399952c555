"""Batched descriptor extraction: images in, unit-norm float32 numpy descriptors out.

The backbone may run under bf16/fp16 autocast for speed; the aggregator (optimal transport
with logsumexp, small) always runs in float32, because its log-domain normalisation loses
most of its precision in 16-bit floats for little gain in time.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vpr_ros.errors import CheckpointError, InputError, MissingFileError, ModelOutputError
from vpr_ros.models import VPRModel, load_model
from vpr_ros.preprocess import (
    DEFAULT_IMAGE_SIZE,
    check_image_size,
    load_image,
    preprocess_exact,
    preprocess_fast,
)
from vpr_ros.types import ModelIdentity

LOG = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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


@dataclass
class Features:
    """Output of :meth:`DescriptorExtractor.extract`."""

    descriptors: np.ndarray  # [B, D] float32, unit norm
    patch_tokens: np.ndarray | None = None  # [B, h, w, C] float32 (after the final LayerNorm)


class DescriptorExtractor:
    """Runs a :class:`VPRModel` on batches of images.

    Args:
        model: a loaded model (see :func:`vpr_ros.models.load_model`).
        image_size: (H, W), multiples of 14; 322x322 is SALAD's evaluation size.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``...
        precision: ``fp32`` (exact), ``bf16`` or ``fp16`` autocast for the backbone.
        batch_size: images per forward pass.
        resize: ``exact`` = the official PIL transform on the CPU; ``fast`` = antialiased
            torch resize on ``device`` (max deviation ~0.01 in normalised units).
        compile: wrap the backbone in ``torch.compile`` (pays off for long runs on a GPU).
    """

    def __init__(
        self,
        model: VPRModel,
        image_size: Sequence[int] = DEFAULT_IMAGE_SIZE,
        device: str | torch.device | None = "auto",
        precision: Precision = "fp32",
        batch_size: int = 16,
        resize: Literal["exact", "fast"] = "exact",
        compile: bool = False,
    ) -> None:
        if precision not in ("fp32", *_DTYPES):
            raise InputError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
        if resize not in ("exact", "fast"):
            raise InputError(f"resize must be 'exact' or 'fast', got {resize!r}")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.image_size = check_image_size(image_size)
        self.device = resolve_device(device)
        self.precision = precision
        self.batch_size = batch_size
        self.resize = resize
        self.model = model.to(self.device).eval()
        model.check_input(torch.empty(1, 3, *self.image_size, device="meta"))
        self._backbone = torch.compile(model.backbone) if compile else model.backbone

    @property
    def descriptor_dim(self) -> int:
        return self.model.descriptor_dim

    @property
    def identity(self) -> ModelIdentity:
        """What a place map records and checks: architecture, input size, checkpoint hash."""
        return ModelIdentity.of(self.model, self.image_size)

    def preprocess(self, images: Sequence) -> torch.Tensor:
        """Images (paths, RGB uint8 arrays, PIL images) -> normalised batch on the device."""
        if self.resize == "fast":
            arrays = [i if isinstance(i, np.ndarray) else _to_array(i) for i in images]
            return preprocess_fast(arrays, self.image_size, self.device)
        return preprocess_exact(images, self.image_size).to(self.device, non_blocking=True)

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor, patch_tokens: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalised batch -> (descriptors [B, D] float32, optional patch map [B, C, h, w])."""
        self.model.check_input(batch)
        dtype = _DTYPES.get(self.precision)
        with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            feature_map, token = self._backbone(batch)
        feature_map, token = feature_map.float(), token.float()
        desc = F.normalize(self.model.aggregator((feature_map, token)).float(), dim=-1)
        return desc, (feature_map if patch_tokens else None)

    def extract(self, images: Sequence, patch_tokens: bool = False) -> Features:
        """Describe images in batches; optionally also return the patch tokens."""
        if len(images) == 0:
            dim = self.descriptor_dim
            return Features(np.zeros((0, dim), np.float32), None)
        descs, tokens = [], []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            desc, fmap = self.forward(self.preprocess(chunk), patch_tokens)
            desc = desc.cpu().numpy()
            bad = np.flatnonzero(~np.isfinite(desc).all(axis=1))
            if len(bad):  # never hand on a NaN: maps, caches and outputs would keep it
                raise ModelOutputError(f"the model produced non-finite descriptors for image(s) "
                                       f"{[start + int(i) for i in bad[:10]]} of this batch; check the checkpoint")
            descs.append(desc)
            if fmap is not None:
                tokens.append(fmap.permute(0, 2, 3, 1).cpu().numpy())
        return Features(np.concatenate(descs), np.concatenate(tokens) if patch_tokens else None)

    def describe(self, images: Sequence) -> np.ndarray:
        """Unit-norm float32 descriptors ``[len(images), D]``."""
        return self.extract(images).descriptors

    def warmup(self, iterations: int = 2) -> None:
        """Run dummy batches so that kernel selection / compilation happens before real data."""
        dummy = torch.zeros(self.batch_size, 3, *self.image_size, device=self.device)
        for _ in range(iterations):
            self.forward(dummy)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def sidecar_path(checkpoint: str | os.PathLike) -> Path:
    """The ``.json`` that training's export writes next to a checkpoint (``model.pt`` -> ``model.json``)."""
    return Path(checkpoint).with_suffix(".json")


Source = str | os.PathLike | Mapping[str, Any]


def read_model_options(checkpoint: Source, config: Source | None = None) -> dict[str, Any] | None:
    """Model options for ``checkpoint``: ``config`` (a JSON file or a dict) when given, else the
    checkpoint's sidecar ``.json`` when there is one, else None (shapes alone decide)."""
    if isinstance(config, Mapping):
        return dict(config)
    if config is None and isinstance(checkpoint, Mapping):
        return None  # an in-memory state dict has no sidecar
    path = Path(config) if config is not None else sidecar_path(checkpoint)
    if config is None and not path.is_file():
        return None
    try:
        options = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise MissingFileError(f"model config not found: {path}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable JSON model config: {exc}") from exc
    if not isinstance(options, dict):
        raise CheckpointError(f"{path} must hold a JSON object of model options, got {type(options).__name__}")
    return options


def load_extractor(
    checkpoint: Source,
    config: Source | None = None,
    image_size: Sequence[int] | None = None,
    device: str | torch.device | None = "auto",
    precision: Precision = "fp32",
    batch_size: int = 16,
    resize: Literal["exact", "fast"] = "exact",
    compile: bool = False,
) -> DescriptorExtractor:
    """The one way to turn a checkpoint into a ready extractor (CLI, node, demo and benchmarks).

    ``checkpoint`` is a file (or an in-memory state dict). Model options come from ``config`` or
    the checkpoint's sidecar ``.json`` (see :func:`read_model_options`); the input size from
    ``image_size``, else the options' ``image_size``, else SALAD's 322x322.
    """
    options = read_model_options(checkpoint, config)
    model = load_model(checkpoint, config=options)
    size = image_size or (options or {}).get("image_size") or DEFAULT_IMAGE_SIZE
    where = "a state dict" if isinstance(checkpoint, Mapping) else checkpoint
    LOG.info("model %s from %s at %sx%s", model.cfg.describe(), where, *size)
    return DescriptorExtractor(model, tuple(int(s) for s in size), device, precision, batch_size, resize, compile)
