"""DINOv2 position-embedding resampling, reproduced exactly.

DINOv2 resizes its learned position table with a *scale factor* of (h + 0.1) / grid (bicubic,
no antialiasing). PyTorch then samples source coordinates from the scale factor itself, not
from the output/input size ratio, so a size-based resize (timm's ``resample_abs_pos_embed``)
moves released descriptors by 1e-2..1e-1. This module is the one place that does it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

INTERPOLATE_OFFSET = 0.1


def resample_dinov2_pos_embed(
    pos_embed: torch.Tensor, grid_hw: tuple[int, int], num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Return the position table for an ``h x w`` patch grid.

    Args:
        pos_embed: learned table ``[1, prefix + G*G, C]`` for a square ``G x G`` grid.
        grid_hw: target patch grid ``(h, w)``.
        num_prefix_tokens: leading rows (CLS) that are kept as they are.

    Returns:
        ``[1, prefix + h*w, C]`` in the dtype of ``pos_embed``; the resampling itself runs in
        float32 as the reference does.
    """
    h, w = grid_hw
    prefix, patch_pos = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n0 = patch_pos.shape[1]
    grid = int(math.isqrt(n0))
    if grid * grid != n0:
        raise ValueError(f"pos_embed holds {n0} patch positions, which is not a square grid")
    if h == grid and w == grid:
        return pos_embed
    dim = patch_pos.shape[-1]
    table = patch_pos.float().reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
    scale = ((h + INTERPOLATE_OFFSET) / grid, (w + INTERPOLATE_OFFSET) / grid)
    table = F.interpolate(table, scale_factor=scale, mode="bicubic", align_corners=False, antialias=False)
    if table.shape[-2:] != (h, w):  # floor(grid * scale) must give the grid back
        raise RuntimeError(f"position resampling produced {tuple(table.shape[-2:])}, expected {(h, w)}")
    table = table.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(pos_embed.dtype)
    return torch.cat([prefix, table], dim=1)
