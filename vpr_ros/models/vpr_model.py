"""The place-recognition model: DINOv2 backbone + aggregator -> unit-norm global descriptor.

Four aggregator families: SALAD, A²GC, MegaLoc (SALAD + projection) and BoQ (learned queries).
Attribute names (``backbone.model.*``, ``aggregator.*``) are those of the released SALAD
checkpoints, so ``load_state_dict(strict=True)`` works on them without renaming; MegaLoc and BoQ
files name the backbone differently and are mapped by ``loading.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vpr_ros.models.dinov2 import PATCH_SIZE, DinoV2Backbone, DinoV2Config
from vpr_ros.models.family import AggregatorConfig
from vpr_ros.models.salad import SaladConfig


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a model before its weights are loaded."""

    backbone: DinoV2Config = field(default_factory=DinoV2Config)
    aggregator: AggregatorConfig = field(default_factory=SaladConfig)

    @property
    def arch(self) -> str:
        """The model family: ``salad``, ``a2gc``, ``megaloc`` or ``boq``."""
        return self.aggregator.family

    @property
    def descriptor_dim(self) -> int:
        return self.aggregator.descriptor_dim

    def describe(self) -> str:
        """Short human-readable identity that starts with the family, e.g. ``salad/vit768x12 m64
        l128 g256 (8448-d)``, ``megaloc/vit768x12 m64 l256 g256 h512 (8448-d)``, ``boq/vit768x12
        c384 q64x2 r32 (12288-d)``. Place maps record it as their model identity."""
        b = self.backbone
        ffn = "-swiglu" if b.ffn == "swiglu" else ""
        sizes = self.aggregator.describe_sizes()
        return f"{self.arch}/vit{b.embed_dim}x{b.depth}{ffn} {sizes} ({self.descriptor_dim}-d)"


class VPRModel(nn.Module):
    """``images [B,3,H,W] (ImageNet-normalised) -> descriptors [B, D]``.

    H and W must be multiples of 14, except for MegaLoc, which resizes other sizes itself.
    """

    def __init__(self, cfg: ModelConfig = ModelConfig(), init_weights: bool = True) -> None:
        super().__init__()
        if cfg.aggregator.num_channels != cfg.backbone.embed_dim:
            raise ValueError(f"aggregator expects {cfg.aggregator.num_channels} channels but the backbone "
                             f"width is {cfg.backbone.embed_dim}")
        self.cfg = cfg
        self.backbone = DinoV2Backbone(cfg.backbone, init_weights=init_weights)
        self.aggregator = cfg.aggregator.build()
        self.checkpoint_sha256: str | None = None  # set by load_model for map manifests

    @property
    def descriptor_dim(self) -> int:
        return self.cfg.descriptor_dim

    def check_input(self, images: torch.Tensor) -> None:
        """Raise a clear ``ValueError`` for inputs the model cannot take."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(images.shape)}")
        h, w = self.cfg.aggregator.input_size(*images.shape[-2:])  # the size forward_features runs at
        if h % PATCH_SIZE or w % PATCH_SIZE:
            raise ValueError(f"image sides must be multiples of {PATCH_SIZE}, got {h}x{w} "
                             f"(e.g. 322x322 = 23x23 patches)")
        self.cfg.aggregator.check_patches(h, w)

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone outputs: patch map ``[B, C, h, w]`` and CLS token ``[B, C]`` (before the final
        LayerNorm for BoQ). MegaLoc first resizes sides that are not multiples of 14."""
        self.check_input(images)
        return self.backbone(self.cfg.aggregator.fit_input(images))

    def describe(self, images: torch.Tensor, backbone: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference: unit-norm float32 descriptors ``[B, D]`` and the float32 patch map ``[B, C, h, w]``. The
        aggregator runs in float32 whatever ``backbone`` (:meth:`forward_features`, compiled or under autocast)
        ran in: its log-domain optimal transport loses most of its precision in 16-bit floats."""
        feature_map, token = (backbone or self.forward_features)(images)
        feature_map, token = feature_map.float(), token.float()
        return F.normalize(self.aggregator((feature_map, token)).float(), dim=-1), feature_map

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm float32 descriptors ``[B, D]``; under training's autocast the aggregator runs in it too."""
        return self.aggregator(self.forward_features(images)).float()
