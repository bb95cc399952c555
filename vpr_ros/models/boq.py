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
Every attention has heads of 64 channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vpr_ros.models.dinov2 import HEAD_DIM


@dataclass(frozen=True)
class BoQConfig:
    """BoQ sizes; released DINOv2 model: 768 -> 384 channels, 2 blocks of 64 queries, 32 rows."""

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

    @property
    def descriptor_dim(self) -> int:
        return self.cfg.descriptor_dim

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
