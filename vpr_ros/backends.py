"""What runs the network for :class:`~vpr_ros.extractor.DescriptorExtractor`: :class:`TorchBackend`, or an
exported :class:`~vpr_ros.models.onnx_model.OnnxModel` through onnxruntime."""

from __future__ import annotations

import contextlib
import logging
from typing import Protocol

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from vpr_ros.models import VPRModel

LOG = logging.getLogger(__name__)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
Output = tuple[torch.Tensor, torch.Tensor | None]  # unit-norm float32 descriptors [B, D], patch map [B, C, h, w]


class Backend(Protocol):
    """Runs normalised batches ``[B, 3, H, W]`` on :attr:`device`, where its results come back too."""

    device: torch.device
    precision: str
    compiled: bool

    def label(self, mode: str) -> str: ...  # where the model runs, for logs

    def infer(self, batch: torch.Tensor, patch_tokens: bool) -> Output: ...  # the patch map only when asked

    def use_eager(self, sdpa: list[SDPBackend] | None) -> None: ...  # leave any compiled path


class TorchBackend:
    """A :class:`VPRModel` in PyTorch: the backbone, compiled or eager, under ``bf16``/``fp16`` autocast and
    with the attention kernels ``sdpa`` tried in that order; a compiler that fails leaves it eager."""

    def __init__(self, model: VPRModel, device: torch.device, precision: str, compiled: bool,
                 sdpa: list[SDPBackend] | None) -> None:
        self.model = model.to(device).eval()
        self.device, self.precision, self.compiled, self._sdpa = device, precision, compiled, sdpa
        # static shapes: the fast modes keep their batch shapes fixed (graphs per shape, padded last batch)
        self._features = torch.compile(model.forward_features, dynamic=False) if compiled else model.forward_features
        self._checked = not compiled

    def label(self, mode: str) -> str:
        return f"{self.device} ({mode}{', compiled' if self.compiled else ''})"

    def use_eager(self, sdpa: list[SDPBackend] | None) -> None:
        self._features, self.compiled, self._checked, self._sdpa = self.model.forward_features, False, True, sdpa

    def infer(self, batch: torch.Tensor, patch_tokens: bool) -> Output:
        desc, fmap = self.model.describe(batch, self._backbone)
        return desc, (fmap if patch_tokens else None)

    def _backbone(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = DTYPES.get(self.precision)
        attention = sdpa_kernel(self._sdpa, set_priority=True) if self._sdpa else contextlib.nullcontext()
        # no autocast weight cache: each weight is used once per forward, and a CUDA graph must not keep one
        with attention, torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None,
                                       cache_enabled=False):
            if not self._checked:
                try:  # the first call compiles: a platform without a working compiler falls back to eager
                    out = self._features(batch)
                    self._checked = True
                    return out
                except Exception as exc:  # noqa: BLE001 - inductor / triton raise many kinds
                    LOG.warning("torch.compile failed (%s: %s); running the backbone eagerly", type(exc).__name__,
                                str(exc).strip().splitlines()[0] if str(exc).strip() else "")
                    self.use_eager(self._sdpa)
            return self._features(batch)
