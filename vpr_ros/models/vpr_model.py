"""The place-recognition model: DINOv2 backbone + aggregator -> unit-norm global descriptor.

Four aggregator families: SALAD, A²GC, MegaLoc (SALAD + projection) and BoQ (learned queries).
Attribute names (``backbone.model.*``, ``aggregator.*``) are those of the released SALAD
checkpoints, so ``load_state_dict(strict=True)`` works on them without renaming; MegaLoc and BoQ
files name the backbone differently and are mapped by ``loading.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from vpr_ros.models.a2gc import A2GC, A2GCConfig
from vpr_ros.models.boq import BoQ, BoQConfig
from vpr_ros.models.dinov2 import PATCH_SIZE, DinoV2Backbone, DinoV2Config
from vpr_ros.models.megaloc import MegaLocAggregator, MegaLocConfig, patch_multiple_size, resize_to_patch_multiple
from vpr_ros.models.salad import SALAD, SaladConfig

AggregatorName = Literal["salad", "a2gc", "megaloc", "boq"]
AggregatorConfig = SaladConfig | A2GCConfig | MegaLocConfig | BoQConfig

# config class -> (family name, aggregator module)
FAMILIES: dict[type, tuple[str, type[nn.Module]]] = {
    SaladConfig: ("salad", SALAD),
    A2GCConfig: ("a2gc", A2GC),
    MegaLocConfig: ("megaloc", MegaLocAggregator),
    BoQConfig: ("boq", BoQ),
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a model before its weights are loaded."""

    backbone: DinoV2Config = field(default_factory=DinoV2Config)
    aggregator: AggregatorConfig = field(default_factory=SaladConfig)

    @property
    def arch(self) -> AggregatorName:
        """The model family: ``salad``, ``a2gc``, ``megaloc`` or ``boq``."""
        return FAMILIES[type(self.aggregator)][0]

    @property
    def descriptor_dim(self) -> int:
        return self.aggregator.descriptor_dim

    def describe(self) -> str:
        """Short human-readable identity that starts with the family, e.g. ``salad/vit768x12 m64
        l128 g256 (8448-d)``, ``megaloc/vit768x12 m64 l256 g256 h512 (8448-d)``, ``boq/vit768x12
        c384 q64x2 r32 (12288-d)``. Place maps record it as their model identity."""
        b, a = self.backbone, self.aggregator
        ffn = "-swiglu" if b.ffn == "swiglu" else ""
        if isinstance(a, BoQConfig):
            sizes = f"c{a.proj_channels} q{a.num_queries}x{a.num_layers} r{a.row_dim}"
        else:
            sizes = f"m{a.num_clusters} l{a.cluster_dim} g{a.token_dim}"
            sizes += f" h{a.mlp_dim}" if isinstance(a, MegaLocConfig) else ""
        return f"{self.arch}/vit{b.embed_dim}x{b.depth}{ffn} {sizes} ({self.descriptor_dim}-d)"


class VPRModel(nn.Module):
    """``images [B,3,H,W] (ImageNet-normalised) -> descriptors [B, D]``.

    H and W must be multiples of 14, except for MegaLoc, which resizes other sizes itself.
    """

    def __init__(self, cfg: ModelConfig = ModelConfig(), init_weights: bool = True) -> None:
        super().__init__()
        if cfg.aggregator.num_channels != cfg.backbone.embed_dim:
            raise ValueError(
                f"aggregator expects {cfg.aggregator.num_channels} channels but the backbone "
                f"width is {cfg.backbone.embed_dim}"
            )
        self.cfg = cfg
        self.backbone = DinoV2Backbone(cfg.backbone, init_weights=init_weights)
        self.aggregator = FAMILIES[type(cfg.aggregator)][1](cfg.aggregator)
        self.checkpoint_sha256: str | None = None  # set by load_model for map manifests

    @property
    def descriptor_dim(self) -> int:
        return self.cfg.descriptor_dim

    def check_input(self, images: torch.Tensor) -> None:
        """Raise a clear ``ValueError`` for inputs the model cannot take."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if self.cfg.arch == "megaloc":
            h, w = patch_multiple_size(h, w)  # the size forward_features resizes to
        if h % PATCH_SIZE or w % PATCH_SIZE:
            raise ValueError(
                f"image sides must be multiples of {PATCH_SIZE}, got {h}x{w} "
                f"(e.g. 322x322 = 23x23 patches)"
            )
        if self.cfg.arch not in ("salad", "megaloc"):
            return
        patches, clusters = (h // PATCH_SIZE) * (w // PATCH_SIZE), self.cfg.aggregator.num_clusters
        if patches <= clusters:
            side = (int(clusters**0.5) + 1) * PATCH_SIZE
            raise ValueError(
                f"a {h}x{w} image gives {patches} patches, but SALAD needs more patches than "
                f"clusters ({clusters}); use at least {side}x{side}"
            )

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone outputs: patch map ``[B, C, h, w]`` and CLS token ``[B, C]`` (before the final
        LayerNorm for BoQ). MegaLoc first resizes sides that are not multiples of 14."""
        self.check_input(images)
        if self.cfg.arch == "megaloc":
            images = resize_to_patch_multiple(images)
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm float32 descriptors ``[B, D]``."""
        return self.aggregator(self.forward_features(images)).float()
