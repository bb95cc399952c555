"""Bag-of-Queries aggregator (Ali-bey et al., CVPR 2024): learned queries that cross-attend to
the backbone's patch tokens.

Input: the DINOv2 patch map of the last block *without* the final LayerNorm (the CLS token is not
used). A 3x3 conv projects it to ``proj_channels``; each BoQ block refines the tokens with a
post-norm transformer encoder layer and lets its learned queries (after a self-attention step
among themselves) read them by cross-attention. The query outputs of all blocks are stacked and a
linear layer mixes them along the query axis down to ``row_dim`` rows per channel:
descriptor = ``proj_channels * row_dim`` (384 x 32 = 12288 for the released DINOv2 model).

Built from torch's own ``TransformerEncoderLayer`` and ``MultiheadAttention`` (SDPA inside), so
parameter names are those of the released ``dinov2_12288.pth`` (``aggregator.proj_c``,
``aggregator.boqs.N.{encoder,queries,self_attn,norm_q,cross_attn,norm_out}``, ``aggregator.fc``).
Every attention has heads of 64 channels. The release keeps its ViT under ``backbone.dino.*``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vpr_ros.models.dinov2 import HEAD_DIM, DinoV2Config
from vpr_ros.models.family import AGG_PREFIX, AggregatorConfig, Options, StateDict, block_count, shape, sized_config
from vpr_ros.models.option_checks import SIZE, int_range


@dataclass(frozen=True)
class BoQConfig(AggregatorConfig):
    """BoQ sizes; released DINOv2 model: 768 -> 384 channels, 2 blocks of 64 queries, 32 rows."""

    family = "boq"
    title = "BoQ"
    backbone_prefix = "backbone.dino."
    options = {**dict.fromkeys(("num_channels", "proj_channels", "num_queries", "row_dim"), SIZE),
               "num_layers": int_range(1, 64)}
    renames = {"in_channels": "num_channels"}  # BoQ's constructor
    reference_kwargs = "boq_kwargs"
    marks = ("proj_c.weight", "boqs.")

    num_channels: int = 768
    proj_channels: int = 384
    num_queries: int = 64
    num_layers: int = 2
    row_dim: int = 32

    @property
    def num_heads(self) -> int:
        return self.proj_channels // HEAD_DIM

    @property
    def descriptor_dim(self) -> int:
        return self.proj_channels * self.row_dim

    def build(self) -> BoQ:
        return BoQ(self)

    def describe_sizes(self) -> str:
        return f"c{self.proj_channels} q{self.num_queries}x{self.num_layers} r{self.row_dim}"

    @classmethod
    def from_state_dict(cls, sd: StateDict, backbone: DinoV2Config, opts: Options) -> tuple[DinoV2Config, BoQConfig]:
        """Channels, queries, blocks and rows from the shapes; the backbone hands over the last
        block's tokens without the final LayerNorm, and (as in BoQ's training) its last 2 blocks train."""
        proj = shape(sd, AGG_PREFIX + "proj_c.weight")
        layers = block_count(sd, AGG_PREFIX + "boqs.", "BoQ checkpoint")
        shapes = {"num_channels": proj[1], "proj_channels": proj[0],
                  "num_queries": shape(sd, AGG_PREFIX + "boqs.0.queries")[1], "num_layers": layers,
                  "row_dim": shape(sd, AGG_PREFIX + "fc.weight")[0]}
        trainable = opts["backbone"].get("num_trainable_blocks", 2)
        backbone = dataclasses.replace(backbone, norm_layer=False, num_trainable_blocks=trainable)
        return backbone, sized_config(cls, shapes, opts["aggregator"], backbone.embed_dim)


class BoQBlock(nn.Module):
    """Encoder layer over the tokens, then the block's queries read them by cross-attention."""

    def __init__(self, dim: int, num_queries: int, num_heads: int) -> None:
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(dim, num_heads, dim_feedforward=4 * dim, dropout=0.0,
                                                  batch_first=True)
        self.queries = nn.Parameter(torch.randn(1, num_queries, dim))
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_q = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, need_weights: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``x [B, n, C]`` -> (refined tokens [B, n, C], query outputs [B, Q, C], head-averaged
        cross-attention [B, Q, n] when ``need_weights``)."""
        x = self.encoder(x)
        # The queries do not depend on the image: their self-attention step runs once, not per image.
        q = self.queries
        q = self.norm_q(q + self.self_attn(q, q, q, need_weights=False)[0])
        q = q.expand(x.shape[0], -1, -1)
        out, attn = self.cross_attn(q, x, x, need_weights=need_weights)
        return x, self.norm_out(out), attn


class BoQ(nn.Module):
    """``((feature_map [B,C,h,w], token)) -> descriptor [B, proj_channels * row_dim]`` (unit norm)."""

    def __init__(self, cfg: BoQConfig = BoQConfig()) -> None:
        super().__init__()
        if cfg.proj_channels % HEAD_DIM or cfg.proj_channels < HEAD_DIM:
            raise ValueError(f"BoQ proj_channels must be a positive multiple of {HEAD_DIM} (heads of "
                             f"{HEAD_DIM} channels), got {cfg.proj_channels}")
        self.cfg = cfg
        self.proj_c = nn.Conv2d(cfg.num_channels, cfg.proj_channels, kernel_size=3, padding=1)
        self.norm_input = nn.LayerNorm(cfg.proj_channels)
        self.boqs = nn.ModuleList(
            BoQBlock(cfg.proj_channels, cfg.num_queries, cfg.num_heads) for _ in range(cfg.num_layers))
        self.fc = nn.Linear(cfg.num_layers * cfg.num_queries, cfg.row_dim)

    def forward_with_attention(self, feature_map: torch.Tensor, need_weights: bool = True
                               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Descriptor ``[B, D]`` and, per block, the head-averaged cross-attention of its queries
        over the patches ``[B, Q, h*w]`` (row-major patch order; empty list without ``need_weights``)."""
        x = self.norm_input(self.proj_c(feature_map).flatten(2).transpose(1, 2))  # [B, n, C']
        outs, maps = [], []
        for block in self.boqs:
            x, out, attn = block(x, need_weights)
            outs.append(out)
            if attn is not None:
                maps.append(attn)
        rows = self.fc(torch.cat(outs, dim=1).transpose(1, 2))  # [B, C', row_dim]
        return F.normalize(rows.flatten(1), p=2, dim=-1), maps

    def forward(self, x: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        feature_map, _ = x  # BoQ does not use the CLS token
        return self.forward_with_attention(feature_map, need_weights=False)[0]
