"""A²GC aggregator: SALAD's heads plus an asymmetric optimal-transport solver and a
geometric-constraint term that biases each cluster towards image regions.

This reproduces the published reference with its two repairs (see the README): the score of
cluster j at patch p is ``S_f[j,p] + lambda * <geo_proj(xy_p), cluster_geo[j]>`` where
``xy_p`` are the patch's normalised grid coordinates. ``geo_lambda`` is a plain float (not a
parameter, not in the checkpoint), as in the reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vpr_ros.models.dinov2 import DinoV2Config
from vpr_ros.models.family import AGG_PREFIX, AggregatorConfig, Options, StateDict, dropout_layer, shape, sized_config
from vpr_ros.models.layers import asymmetric_ot_log_plan
from vpr_ros.models.option_checks import BOOL, ITERATIONS, SIZE, float_range, is_number, one_of
from vpr_ros.models.salad import SaladConfig, aggregate_descriptor, conv_head, salad_shapes, token_head


@dataclass(frozen=True)
class A2GCConfig(AggregatorConfig):
    """A²GC sizes and solver settings (defaults are the reference's VPR configuration).

    Checkpoints hold SALAD's keys plus ``aggregator.cluster_geo`` (its width is ``geo_dim``);
    without the geometric term only A²GC options in the config tell it from SALAD.
    """

    family = "a2gc"
    title = "A²GC"
    options = {**SaladConfig.options, "geo_dim": SIZE, "ot_iters": ITERATIONS, "use_geometric_ot": BOOL,
               **dict.fromkeys(("ot_reg", "ot_temperature"), float_range(0, 1000, lo_open=True)),
               "geo_lambda": float_range(0, 1000),
               # reference settings this package reads but only has one implementation of
               "assignment_mode": one_of("asymmetric_ot"), "sinkhorn_reg": one_of(1.0, 1),
               "hidden_width": one_of(512), "gumbel_tau": ((lambda v: v is None or is_number(v)), "null or a number")}
    renames = {"contrastive_ot_iters": "ot_iters", "contrastive_ot_reg": "ot_reg",
               "contrastive_ot_temp": "ot_temperature"}
    reference_only = frozenset(("assignment_mode", "gumbel_tau", "hidden_width", "sinkhorn_reg"))
    marks = ("cluster_geo",)

    num_channels: int = 768
    num_clusters: int = 64
    cluster_dim: int = 128
    token_dim: int = 256
    dropout: float = 0.3
    ot_iters: int = 3
    ot_reg: float = 1.0
    ot_temperature: float = 1.0
    use_geometric_ot: bool = True
    geo_dim: int = 16
    geo_lambda: float = 0.15

    descriptor_dim = SaladConfig.descriptor_dim  # SALAD's heads, so SALAD's sizes
    describe_sizes = SaladConfig.describe_sizes

    def build(self) -> A2GC:
        return A2GC(self)

    @classmethod
    def recognises(cls, sd: StateDict, user: Mapping[str, Any]) -> bool:
        own = cls.__dataclass_fields__.keys() - SaladConfig.__dataclass_fields__.keys()
        return super().recognises(sd, user) or bool(own & user.keys())  # options only A²GC has

    @classmethod
    def from_state_dict(cls, sd: StateDict, backbone: DinoV2Config, opts: Options) -> tuple[DinoV2Config, A2GCConfig]:
        shapes = salad_shapes(sd)
        del shapes["hidden_dim"]  # A²GC keeps the released 512
        if AGG_PREFIX + "cluster_geo" in sd:
            shapes["geo_dim"] = shape(sd, AGG_PREFIX + "cluster_geo")[1]
        return backbone, sized_config(cls, shapes, opts["aggregator"], backbone.embed_dim, drop_foreign=True)


def grid_coordinates(h: int, w: int, device=None, dtype=None) -> torch.Tensor:
    """``[2, h, w]``: channel 0 = x in [-1, 1] along the width, channel 1 = y along the height."""
    ys = torch.linspace(-1.0, 1.0, h, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=device, dtype=dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy])


class A2GC(nn.Module):
    """A²GC aggregator: ``((feature_map, token), mask=None) -> descriptor [B, g + m*l]``."""

    def __init__(self, cfg: A2GCConfig = A2GCConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        drop = dropout_layer(cfg.dropout)  # one dropout module shared by both heads, as in the reference
        self.token_features = token_head(cfg.num_channels, cfg.token_dim)
        self.cluster_features = conv_head(cfg.num_channels, cfg.cluster_dim, drop)
        self.score = conv_head(cfg.num_channels, cfg.num_clusters, drop)
        self.dust_bin = nn.Parameter(torch.tensor(1.0))
        if cfg.use_geometric_ot:
            self.geo_proj = nn.Conv2d(2, cfg.geo_dim, 1)
            self.cluster_geo = nn.Parameter(torch.randn(cfg.num_clusters, cfg.geo_dim) * 0.02)

    def geo_scores(self, h: int, w: int, batch: int = 1) -> torch.Tensor:
        """Geometric compatibility ``[B, m, h*w]`` of every cluster with every grid position."""
        ref = self.cluster_geo
        coords = grid_coordinates(h, w, ref.device, ref.dtype).unsqueeze(0)
        emb = self.geo_proj(coords).flatten(2)  # [1, geo_dim, n]
        return torch.matmul(ref, emb).expand(batch, -1, -1)

    def scores(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Total cluster scores ``[B, m, n]``: features plus the weighted geometric term."""
        b, _, h, w = feature_map.shape
        s = self.score(feature_map).flatten(2)
        if self.cfg.use_geometric_ot:
            s = s + self.cfg.geo_lambda * self.geo_scores(h, w, b).to(s.dtype)
        return s

    def log_assignment(self, feature_map: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Log transport plan with the dustbin row (not rescaled): ``[B, m + 1, n]``."""
        c = self.cfg
        return asymmetric_ot_log_plan(self.scores(feature_map), self.dust_bin, c.ot_iters, c.ot_reg, c.ot_temperature,
                                      mask)

    def forward(self, x: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
        feature_map, token = x
        local = self.cluster_features(feature_map).flatten(2)
        plan = self.log_assignment(feature_map, mask)[:, :-1].exp()
        descriptor, _ = aggregate_descriptor(local, plan, self.token_features(token))
        return descriptor
