"""MegaLoc aggregator (Berton & Masone, 2025): SALAD aggregation followed by one linear projection.

MegaLoc is a DINOv2 ViT-B/14 trained on several localisation datasets at once. Its aggregator is
SALAD with a configurable head width (``mlp_dim``) and wider clusters (m=64, l=256, g=256: a
16640-d SALAD vector), projected to ``feat_dim`` = 8448 by ``linear`` and L2-normalised again.
Parameter names follow the released ``model.safetensors`` (``aggregator.agg.*``,
``aggregator.linear``); its ViT is written out as ``backbone.*`` (no ``mask_token`` in the file,
none in the model), which the loader maps to ``backbone.model.*``.

The SALAD part is this package's :class:`~vpr_ros.models.salad.SALAD`, unchanged. The reference
solver squeezes its logsumexp results, which only changes tensor shapes at batch 1 and is then
undone by broadcasting; the values are those of the shape-stable solver used here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn

from vpr_ros.models.dinov2 import DinoV2Config
from vpr_ros.models.family import AGG_PREFIX, AggregatorConfig, Options, StateDict, shape, sized_config
from vpr_ros.models.option_checks import SIZE
from vpr_ros.models.salad import HIDDEN, SALAD, SaladConfig, salad_shapes
from vpr_ros.types import PATCH_SIZE


def patch_multiple_size(height: int, width: int) -> tuple[int, int]:
    """The input size MegaLoc resizes to: each side rounded to the nearest multiple of 14
    (Python rounding, ties to even, as the reference does)."""
    h, w = round(height / PATCH_SIZE) * PATCH_SIZE, round(width / PATCH_SIZE) * PATCH_SIZE
    if not h or not w:
        raise ValueError(f"a {height}x{width} image is too small for MegaLoc: each side must be at least "
                         f"{PATCH_SIZE // 2 + 1} px (it is resized to a multiple of {PATCH_SIZE})")
    return h, w


def resize_to_patch_multiple(images: torch.Tensor) -> torch.Tensor:
    """MegaLoc's input rule: normalised images whose sides are not multiples of 14 are resized
    (bilinear, antialiased, on the normalised tensor) to :func:`patch_multiple_size`."""
    height, width = images.shape[-2:]
    if height % PATCH_SIZE == 0 and width % PATCH_SIZE == 0:
        return images
    return TF.resize(images, list(patch_multiple_size(height, width)), antialias=True)


@dataclass(frozen=True)
class MegaLocConfig(AggregatorConfig):
    """MegaLoc sizes; released: m=64, l=256, g=256, mlp_dim=512, 16640 -> 8448."""

    family = "megaloc"
    title = "MegaLoc"
    backbone_prefix = "backbone."
    keeps_mask_token = False
    options = {**SaladConfig.options, "mlp_dim": SIZE, "feat_dim": SIZE}
    reference_kwargs = "megaloc_kwargs"
    marks = ("linear.weight", "agg.")

    num_channels: int = 768
    num_clusters: int = 64
    cluster_dim: int = 256
    token_dim: int = 256
    mlp_dim: int = HIDDEN
    feat_dim: int = 8448
    dropout: float = 0.3
    sinkhorn_iters: int = 3

    input_size = staticmethod(patch_multiple_size)
    fit_input = staticmethod(resize_to_patch_multiple)
    check_patches = SaladConfig.check_patches

    @property
    def descriptor_dim(self) -> int:
        return self.feat_dim

    def build(self) -> MegaLocAggregator:
        return MegaLocAggregator(self)

    def describe_sizes(self) -> str:
        return f"m{self.num_clusters} l{self.cluster_dim} g{self.token_dim} h{self.mlp_dim}"

    @classmethod
    def from_state_dict(cls, sd: StateDict, backbone: DinoV2Config, opts: Options
                        ) -> tuple[DinoV2Config, MegaLocConfig]:
        """SALAD sizes (with the head width ``mlp_dim``) and the projection from the shapes."""
        feat_dim, heads = shape(sd, AGG_PREFIX + "linear.weight")[0], salad_shapes(sd, AGG_PREFIX + "agg.")
        shapes = {"num_channels": heads["num_channels"], "mlp_dim": heads["hidden_dim"],
                  **{k: heads[k] for k in ("num_clusters", "cluster_dim", "token_dim")}, "feat_dim": feat_dim}
        return backbone, sized_config(cls, shapes, opts["aggregator"], backbone.embed_dim)


class MegaLocAggregator(nn.Module):
    """``((feature_map [B,C,h,w], token [B,C])) -> descriptor [B, feat_dim]`` (unit norm)."""

    def __init__(self, cfg: MegaLocConfig = MegaLocConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.agg = SALAD(SaladConfig(cfg.num_channels, cfg.num_clusters, cfg.cluster_dim, cfg.token_dim, cfg.dropout,
                                     cfg.sinkhorn_iters, hidden_dim=cfg.mlp_dim))
        self.linear = nn.Linear(self.agg.cfg.descriptor_dim, cfg.feat_dim)

    def log_assignment(self, feature_map: torch.Tensor) -> torch.Tensor:
        """SALAD's log transport plan with the dustbin row: ``[B, m + 1, n]``."""
        return self.agg.log_assignment(feature_map)

    def forward(self, x: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.normalize(self.linear(self.agg(x)), p=2, dim=-1)
