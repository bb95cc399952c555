"""DINOv2 ViT backbones (S/B/L/g, patch 14) on timm, laid out like the released checkpoints.

The timm ``VisionTransformer`` provides the blocks, SDPA attention and MLPs. This file adds
what DINOv2 checkpoints need on top: the (unused) ``mask_token`` so released files load
strictly, the SwiGLU FFN of ViT-g under its original key names (``mlp.w12``/``mlp.w3``),
the exact DINOv2 position-embedding resampling, and the wrapper that returns the CLS token and
the patch map after the final LayerNorm (SALAD, A²GC, MegaLoc) or before it (BoQ).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vpr_ros.models.layers import resample_dinov2_pos_embed
from vpr_ros.types import PATCH_SIZE

HEAD_DIM = 64  # every DINOv2 size uses 64-d heads: heads = width / 64


@dataclass(frozen=True)
class DinoV2Config:
    """Architecture numbers of a DINOv2 ViT (the checkpoint supplies the weights)."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    ffn: Literal["mlp", "swiglu"] = "mlp"
    img_size: int = 518  # pos_embed grid = img_size / 14 = 37
    num_trainable_blocks: int = 4
    norm_layer: bool = True  # False: the last block's tokens without the final LayerNorm (BoQ)
    mask_token: bool = True  # False: no (unused) mask_token tensor, as in MegaLoc's release
    # Training from scratch: patch/position embeddings and CLS token get gradients too (every
    # block must then be trainable). Fine-tuning DINOv2 keeps them frozen, as SALAD does.
    train_embeddings: bool = False


DINOV2_ARCHS: dict[str, DinoV2Config] = {
    "dinov2_vits14": DinoV2Config(embed_dim=384, depth=12, num_heads=6),
    "dinov2_vitb14": DinoV2Config(embed_dim=768, depth=12, num_heads=12),
    "dinov2_vitl14": DinoV2Config(embed_dim=1024, depth=24, num_heads=16),
    "dinov2_vitg14": DinoV2Config(embed_dim=1536, depth=40, num_heads=24, ffn="swiglu"),
}


def dinov2_config(name: str, **overrides) -> DinoV2Config:
    """Config of a named DINOv2 size; the error lists the known names."""
    if name not in DINOV2_ARCHS:
        raise ValueError(f"unknown DINOv2 backbone {name!r}; known: {', '.join(DINOV2_ARCHS)}")
    return DinoV2Config(**{**DINOV2_ARCHS[name].__dict__, **overrides})


class SwiGLUFFN(nn.Module):
    """DINOv2's fused SwiGLU feed-forward (ViT-g), with the original parameter names."""

    def __init__(self, in_features: int, hidden_features: int, bias: bool = True, **_: object) -> None:
        super().__init__()
        hidden = (int(hidden_features * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(in_features, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, in_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class DinoVisionTransformer(VisionTransformer):
    """timm ViT with DINOv2's key layout and DINOv2's position resampling."""

    def __init__(self, cfg: DinoV2Config, init_weights: bool = True) -> None:
        super().__init__(img_size=cfg.img_size, patch_size=PATCH_SIZE, num_classes=0, global_pool="token",
                         embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=4.0,
                         qkv_bias=True, init_values=1.0, dynamic_img_size=True,
                         norm_layer=partial(nn.LayerNorm, eps=1e-6), act_layer=nn.GELU,
                         mlp_layer=SwiGLUFFN if cfg.ffn == "swiglu" else Mlp,
                         weight_init="" if init_weights else "skip")
        # Unused at inference, but part of the official DINOv2 checkpoints (not of MegaLoc's).
        self.mask_token = nn.Parameter(torch.zeros(1, cfg.embed_dim)) if cfg.mask_token else None

    def prepare_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch-embed, prepend CLS, add the resampled position table: ``[B, 1 + h*w, C]``."""
        _, _, height, width = images.shape
        if height % PATCH_SIZE or width % PATCH_SIZE:
            raise ValueError(f"image sides must be multiples of {PATCH_SIZE}, got {height}x{width}; "
                             f"resize to e.g. {_nearest(height)}x{_nearest(width)}")
        x = self.patch_embed(images)  # [B, h, w, C] (dynamic size => NHWC)
        b, h, w, c = x.shape
        x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, h * w, c)], dim=1)
        return x + resample_dinov2_pos_embed(self.pos_embed, (h, w)).to(x.dtype)


def _nearest(side: int) -> int:
    return max(PATCH_SIZE, round(side / PATCH_SIZE) * PATCH_SIZE)


class DinoV2Backbone(nn.Module):
    """Backbone wrapper of every aggregator: ``images -> (patch map [B,C,h,w], CLS [B,C])``.

    The parameters that ``cfg`` says do not train are frozen at construction (see
    :meth:`freeze_untrained`), so every user of the model, not only the training code, gets the
    same split; at inference this changes nothing.
    """

    def __init__(self, cfg: DinoV2Config, init_weights: bool = True) -> None:
        super().__init__()
        if cfg.num_trainable_blocks < 0:
            raise ValueError(f"num_trainable_blocks must be >= 0, got {cfg.num_trainable_blocks}")
        if cfg.train_embeddings and cfg.num_trainable_blocks < cfg.depth:
            raise ValueError(
                f"train_embeddings needs every block trainable (num_trainable_blocks >= depth {cfg.depth}), "
                f"got num_trainable_blocks={cfg.num_trainable_blocks}"
            )
        self.cfg = cfg
        self.model = DinoVisionTransformer(cfg, init_weights=init_weights)
        self.freeze_untrained()

    def frozen_parameters(self) -> list[nn.Parameter]:
        """What does not train: the unused mask token (and final LayerNorm without ``norm_layer``),
        the patch/position embeddings and CLS token (unless ``train_embeddings``) and the first
        ``depth - num_trainable_blocks`` blocks."""
        vit = self.model
        frozen = [vit.mask_token] if vit.mask_token is not None else []
        if not self.cfg.norm_layer:  # in the released files, but no output depends on it
            frozen += vit.norm.parameters()
        if not self.cfg.train_embeddings:
            frozen += [vit.cls_token, vit.pos_embed, *vit.patch_embed.parameters()]
        for block in vit.blocks[: max(0, len(vit.blocks) - self.cfg.num_trainable_blocks)]:
            frozen += block.parameters()
        return frozen

    def freeze_untrained(self) -> None:
        """``requires_grad=False`` on :meth:`frozen_parameters`: the optimizer then skips them, DDP
        finds no unused parameters, and as images do not require gradients no activations of the
        frozen prefix are kept for backward (the memory a ``no_grad`` prefix would save)."""
        for p in self.frozen_parameters():
            p.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the patch map ``[B, C, H/14, W/14]`` and the CLS token ``[B, C]``."""
        b, _, height, width = images.shape
        vit = self.model
        x = vit.prepare_tokens(images)
        for block in vit.blocks:
            x = block(x)
        if self.cfg.norm_layer:
            x = vit.norm(x)
        h, w = height // PATCH_SIZE, width // PATCH_SIZE
        token = x[:, 0]
        feature_map = x[:, 1:].reshape(b, h, w, -1).permute(0, 3, 1, 2)
        return feature_map, token
