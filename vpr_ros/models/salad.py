"""SALAD aggregator (Izquierdo & Civera, CVPR 2024): optimal-transport assignment of DINOv2
patch features to clusters plus a projected global token.

Parameter names and Sequential indices follow the released checkpoints
(``token_features.{0,2}``, ``cluster_features.{0,3}``, ``score.{0,3}``, ``dust_bin``).
Shapes: B batch, C backbone width, m clusters, l cluster dim, g token dim, n = h*w patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vpr_ros.models.dinov2 import DinoV2Config
from vpr_ros.models.family import AGG_PREFIX, AggregatorConfig, Options, StateDict, dropout_layer, shape, sized_config
from vpr_ros.models.layers import sinkhorn_log_plan
from vpr_ros.models.option_checks import DROPOUT, ITERATIONS, SIZE
from vpr_ros.types import PATCH_SIZE

HIDDEN = 512  # hidden width of the three heads, fixed in the released models


@dataclass(frozen=True)
class SaladConfig(AggregatorConfig):
    """SALAD sizes; released: m=64,l=128,g=256 (8448-d), 16/32/32 (544-d), m*l=2048,g=64 (2112-d).

    Released files (and this package's exports) hold ``backbone.model.*`` and ``aggregator.*`` as
    they are; SALAD is what is left once the other families have looked at a checkpoint.
    """

    family = "salad"
    title = "SALAD"
    options = {**dict.fromkeys(("num_channels", "num_clusters", "cluster_dim", "token_dim", "hidden_dim"), SIZE),
               "dropout": DROPOUT, "sinkhorn_iters": ITERATIONS}

    num_channels: int = 768
    num_clusters: int = 64
    cluster_dim: int = 128
    token_dim: int = 256
    dropout: float = 0.3
    sinkhorn_iters: int = 3
    hidden_dim: int = HIDDEN  # width of the three heads (MegaLoc's mlp_dim)

    @property
    def descriptor_dim(self) -> int:
        return self.token_dim + self.num_clusters * self.cluster_dim

    def build(self) -> SALAD:
        return SALAD(self)

    def describe_sizes(self) -> str:
        return f"m{self.num_clusters} l{self.cluster_dim} g{self.token_dim}"

    def check_patches(self, height: int, width: int) -> None:
        """Optimal transport with a dustbin needs more patches than clusters."""
        patches = (height // PATCH_SIZE) * (width // PATCH_SIZE)
        if patches <= self.num_clusters:
            side = (int(self.num_clusters**0.5) + 1) * PATCH_SIZE
            raise ValueError(f"a {height}x{width} image gives {patches} patches, but SALAD needs more patches than "
                             f"clusters ({self.num_clusters}); use at least {side}x{side}")

    @classmethod
    def from_state_dict(cls, sd: StateDict, backbone: DinoV2Config, opts: Options) -> tuple[DinoV2Config, SaladConfig]:
        return backbone, sized_config(cls, salad_shapes(sd), opts["aggregator"], backbone.embed_dim, drop_foreign=True)


def salad_shapes(sd: StateDict, prefix: str = AGG_PREFIX) -> dict[str, int]:
    """SALAD's sizes from its heads under ``prefix`` (``hidden_dim`` last)."""
    return {
        "num_channels": shape(sd, prefix + "token_features.0.weight")[1],
        "num_clusters": shape(sd, prefix + "score.3.weight")[0],
        "cluster_dim": shape(sd, prefix + "cluster_features.3.weight")[0],
        "token_dim": shape(sd, prefix + "token_features.2.weight")[0],
        "hidden_dim": shape(sd, prefix + "token_features.0.weight")[0],
    }


def conv_head(in_ch: int, out_ch: int, dropout: float | nn.Module, hidden: int = HIDDEN) -> nn.Sequential:
    """1x1 conv -> dropout -> ReLU -> 1x1 conv (indices 0 and 3 hold the weights)."""
    drop = dropout if isinstance(dropout, nn.Module) else dropout_layer(dropout)
    return nn.Sequential(nn.Conv2d(in_ch, hidden, 1), drop, nn.ReLU(), nn.Conv2d(hidden, out_ch, 1))


def token_head(in_ch: int, out_dim: int, hidden: int = HIDDEN) -> nn.Sequential:
    """Linear -> ReLU -> Linear for the global (CLS) token."""
    return nn.Sequential(nn.Linear(in_ch, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


def aggregate_descriptor(
    local: torch.Tensor, plan: torch.Tensor, token: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool local features by assignment and build the final descriptor.

    Args:
        local: ``[B, l, n]`` local features; plan: ``[B, m, n]`` assignment (no dustbin);
        token: ``[B, g]`` projected global token.

    Returns:
        ``(descriptor [B, g + l*m], pooled [B, l, m])``. The cluster block is flattened
        feature-major (index ``c*m + k``) after a per-cluster L2 norm, the token block comes
        first, and the whole vector is L2-normalised.
    """
    pooled = torch.bmm(local, plan.transpose(1, 2))  # [B, l, m]
    clusters = F.normalize(pooled, p=2, dim=1).flatten(1)
    desc = torch.cat([F.normalize(token, p=2, dim=-1), clusters], dim=-1)
    return F.normalize(desc, p=2, dim=-1), pooled


class SALAD(nn.Module):
    """SALAD aggregator: ``((feature_map [B,C,h,w], token [B,C])) -> descriptor [B, g + m*l]``."""

    def __init__(self, cfg: SaladConfig = SaladConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_features = token_head(cfg.num_channels, cfg.token_dim, cfg.hidden_dim)
        self.cluster_features = conv_head(cfg.num_channels, cfg.cluster_dim, cfg.dropout, cfg.hidden_dim)
        self.score = conv_head(cfg.num_channels, cfg.num_clusters, cfg.dropout, cfg.hidden_dim)
        self.dust_bin = nn.Parameter(torch.tensor(1.0))

    def log_assignment(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Log transport plan with the dustbin row: ``[B, m + 1, n]``."""
        scores = self.score(feature_map).flatten(2)
        return sinkhorn_log_plan(scores, self.dust_bin, self.cfg.sinkhorn_iters)

    def forward(self, x: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        feature_map, token = x
        local = self.cluster_features(feature_map).flatten(2)
        plan = self.log_assignment(feature_map)[:, :-1].exp()
        descriptor, _ = aggregate_descriptor(local, plan, self.token_features(token))
        return descriptor
