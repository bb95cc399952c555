"""The place-recognition model: DINOv2 backbone + aggregator -> unit-norm global descriptor.

Attribute names (``backbone.model.*``, ``aggregator.*``) are those of the released
checkpoints, so ``load_state_dict(strict=True)`` works on them without renaming.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from vpr_ros.models.a2gc import A2GC, A2GCConfig
from vpr_ros.models.dinov2 import PATCH_SIZE, DinoV2Backbone, DinoV2Config
from vpr_ros.models.salad import SALAD, SaladConfig

AggregatorName = Literal["salad", "a2gc"]


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a model before its weights are loaded."""

    backbone: DinoV2Config = field(default_factory=DinoV2Config)
    aggregator: SaladConfig | A2GCConfig = field(default_factory=SaladConfig)

    @property
    def arch(self) -> AggregatorName:
        return "a2gc" if isinstance(self.aggregator, A2GCConfig) else "salad"

    @property
    def descriptor_dim(self) -> int:
        return self.aggregator.descriptor_dim

    def describe(self) -> str:
        """Short human-readable identity, e.g. ``salad/vit768x12 m64 l128 g256``."""
        b, a = self.backbone, self.aggregator
        ffn = "-swiglu" if b.ffn == "swiglu" else ""
        return (
            f"{self.arch}/vit{b.embed_dim}x{b.depth}{ffn} "
            f"m{a.num_clusters} l{a.cluster_dim} g{a.token_dim} ({self.descriptor_dim}-d)"
        )


class VPRModel(nn.Module):
    """``images [B,3,H,W] (ImageNet-normalised, H and W multiples of 14) -> descriptors [B, D]``."""

    def __init__(self, cfg: ModelConfig = ModelConfig(), init_weights: bool = True) -> None:
        super().__init__()
        if cfg.aggregator.num_channels != cfg.backbone.embed_dim:
            raise ValueError(
                f"aggregator expects {cfg.aggregator.num_channels} channels but the backbone "
                f"width is {cfg.backbone.embed_dim}"
            )
        self.cfg = cfg
        self.backbone = DinoV2Backbone(cfg.backbone, init_weights=init_weights)
        agg_cls = A2GC if cfg.arch == "a2gc" else SALAD
        self.aggregator = agg_cls(cfg.aggregator)
        self.checkpoint_sha256: str | None = None  # set by load_model for map manifests

    @property
    def descriptor_dim(self) -> int:
        return self.cfg.descriptor_dim

    def check_input(self, images: torch.Tensor) -> None:
        """Raise a clear ``ValueError`` for inputs the model cannot take."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % PATCH_SIZE or w % PATCH_SIZE:
            raise ValueError(
                f"image sides must be multiples of {PATCH_SIZE}, got {h}x{w} "
                f"(e.g. 322x322 = 23x23 patches)"
            )
        patches, clusters = (h // PATCH_SIZE) * (w // PATCH_SIZE), self.cfg.aggregator.num_clusters
        if self.cfg.arch == "salad" and patches <= clusters:
            side = (int(clusters**0.5) + 1) * PATCH_SIZE
            raise ValueError(
                f"a {h}x{w} image gives {patches} patches, but SALAD needs more patches than "
                f"clusters ({clusters}); use at least {side}x{side}"
            )

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone outputs: patch map ``[B, C, h, w]`` and CLS token ``[B, C]``."""
        self.check_input(images)
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm float32 descriptors ``[B, D]``."""
        return self.aggregator(self.forward_features(images)).float()
