"""The model's ``ModelConfig`` from the LightningModule's hyperparameters.

Its own module because both ``module`` (to build the model) and ``export`` (to describe a
checkpoint from its saved hyperparameters) need it, and neither should import the other for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from vpr_ros.models import DinoV2Config, ModelConfig, dinov2_config, get_spec

Overrides = Mapping[str, int | float | str | bool]


def build_model_config(
    model: str = "dino_salad",
    backbone_arch: str | None = None,
    backbone: Overrides | None = None,
    aggregator: Overrides | None = None,
    num_trainable_blocks: int = 4,
    train_embeddings: bool = False,
    **_: Any,
) -> ModelConfig:
    """Registry architecture ``model``, optionally on another DINOv2 size and with field overrides.

    The aggregator's input width always follows the backbone width, and another DINOv2 size keeps
    what the family needs from its backbone (BoQ: no final LayerNorm; MegaLoc: no mask token).
    Extra keyword arguments (the module's other hyperparameters) are ignored, so
    ``build_model_config(**hparams)`` works.
    """
    base = get_spec(model).config
    family = {"norm_layer": base.backbone.norm_layer, "mask_token": base.backbone.mask_token}
    bb = dinov2_config(backbone_arch, **family) if backbone_arch else base.backbone
    bb = dataclasses.replace(bb, **_checked(DinoV2Config, backbone, "backbone"),
                             num_trainable_blocks=num_trainable_blocks, train_embeddings=train_embeddings)
    agg_cls = type(base.aggregator)
    agg = dataclasses.replace(base.aggregator, **_checked(agg_cls, aggregator, "aggregator"), num_channels=bb.embed_dim)
    return ModelConfig(bb, agg)


def _checked(cls: type, overrides: Overrides | None, what: str) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(cls)} - {"num_channels", "num_trainable_blocks", "train_embeddings"}
    unknown = sorted(set(overrides or {}) - fields)
    if unknown:
        raise ValueError(f"unknown {what} option(s) {unknown} for {cls.__name__}; known: {sorted(fields)}")
    return dict(overrides or {})
