"""torch.hub entry points, offline: ``torch.hub.load(repo_dir, "dinov2_salad", source="local",
weights="dino_salad.ckpt")`` (likewise ``megaloc`` with ``model.safetensors`` and ``boq_dinov2_12288``
with ``dinov2_12288.pth``). Weights are never downloaded; without ``weights`` the model is
randomly initialised (for training from scratch or shape checks). ``config`` takes the options
shapes cannot tell, as for ``vpr_ros.models.load_model``."""

from __future__ import annotations

dependencies = ["torch", "torchvision", "timm", "safetensors"]


def _build(name: str, weights: str | None, config: dict | None):
    from vpr_ros.models import create_model, load_model

    if weights is None:
        return create_model(name)
    return load_model(weights, config=config)


def dinov2_salad(weights: str | None = None, config: dict | None = None):
    """SALAD, DINOv2 ViT-B/14, m=64 l=128 g=256: 8448-d descriptors."""
    return _build("dino_salad", weights, config)


def dinov2_salad_512_32(weights: str | None = None, config: dict | None = None):
    """SALAD, DINOv2 ViT-B/14, m=16 l=32 g=32: 544-d descriptors."""
    return _build("dino_salad_512_32", weights, config)


def dinov2_salad_2048_64(weights: str | None = None, config: dict | None = None):
    """SALAD, DINOv2 ViT-B/14, m*l=2048 g=64: 2112-d descriptors."""
    return _build("dino_salad_2048_64", weights, config)


def dinov2_a2gc(weights: str | None = None, config: dict | None = None):
    """A²GC, DINOv2 ViT-B/14, m=64 l=128 g=256: 8448-d descriptors."""
    return _build("a2gc_vitb14", weights, config)


def megaloc(weights: str | None = None, config: dict | None = None):
    """MegaLoc, DINOv2 ViT-B/14, SALAD m=64 l=256 g=256 projected to 8448-d; ``weights``: the released
    ``model.safetensors``."""
    return _build("megaloc", weights, config)


def boq_dinov2_12288(weights: str | None = None, config: dict | None = None):
    """BoQ, DINOv2 ViT-B/14, 2 blocks of 64 queries on 384 channels: 12288-d; ``weights``: the released
    ``dinov2_12288.pth``."""
    return _build("boq_dinov2_12288", weights, config)
