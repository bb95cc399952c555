"""The aggregator families (:data:`FAMILIES`) and the named architectures: the released SALAD,
MegaLoc and BoQ models and the A²GC ViT-B configuration.

A name fixes the architecture and the evaluation settings; weights always come from a file on
disk (nothing is downloaded at run time). The node parameter, map manifests and training
configs refer to models by these names.
"""

from __future__ import annotations

from dataclasses import dataclass

from vpr_ros.errors import InputError
from vpr_ros.models.a2gc import A2GCConfig
from vpr_ros.models.boq import BoQConfig
from vpr_ros.models.dinov2 import dinov2_config
from vpr_ros.models.family import AggregatorConfig
from vpr_ros.models.megaloc import MegaLocConfig
from vpr_ros.models.salad import SaladConfig
from vpr_ros.models.vpr_model import ModelConfig, VPRModel

# The aggregator families, from the most general: a checkpoint belongs to the last one that
# recognises it (A²GC refines SALAD; MegaLoc and BoQ have keys of their own).
FAMILIES: tuple[type[AggregatorConfig], ...] = (SaladConfig, A2GCConfig, MegaLocConfig, BoQConfig)


@dataclass(frozen=True)
class ModelSpec:
    """A named architecture and where its released weights come from."""

    name: str
    config: ModelConfig
    weights_file: str | None
    image_size: tuple[int, int] = (322, 322)
    note: str = ""

    @property
    def descriptor_dim(self) -> int:
        return self.config.descriptor_dim


_RELEASES = "https://github.com/serizba/salad/releases/download/v1.0.0/"


def _salad(backbone: str, clusters: int, dim: int, token: int) -> ModelConfig:
    bb = dinov2_config(backbone)
    agg = SaladConfig(num_channels=bb.embed_dim, num_clusters=clusters, cluster_dim=dim, token_dim=token)
    return ModelConfig(bb, agg)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec("dino_salad", _salad("dinov2_vitb14", 64, 128, 256), _RELEASES + "dino_salad.ckpt"),
        ModelSpec("dino_salad_512_32", _salad("dinov2_vitb14", 16, 32, 32), "dino_salad_512_32.ckpt"),
        ModelSpec("dino_salad_2048_64", _salad("dinov2_vitb14", 32, 64, 64), "dino_salad_2048_64.ckpt",
                  note="m x l = 2048; the split is read from the checkpoint when loading"),
        ModelSpec("a2gc_vitb14", ModelConfig(dinov2_config("dinov2_vitb14"), A2GCConfig(num_channels=768)), None,
                  note="no trained A²GC checkpoint is published"),
        ModelSpec("megaloc", ModelConfig(dinov2_config("dinov2_vitb14", mask_token=False), MegaLocConfig()),
                  "https://huggingface.co/gberton/MegaLoc (model.safetensors)",
                  note="SALAD m=64 l=256 g=256 (16640-d) projected to 8448; other input sizes are resized "
                       "to multiples of 14"),
        ModelSpec("boq_dinov2_12288",
                  ModelConfig(dinov2_config("dinov2_vitb14", norm_layer=False, num_trainable_blocks=2), BoQConfig()),
                  "https://github.com/amaralibey/Bag-of-Queries/releases/download/v1.0/dinov2_12288.pth",
                  note="BoQ on the last block's patch tokens without the final LayerNorm; trained at 280x280"),
    ]
}


def get_spec(name: str) -> ModelSpec:
    """Spec of a registered model; the error lists the known names."""
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]


def create_model(name: str, init_weights: bool = True) -> VPRModel:
    """A randomly initialised model of a registered architecture (for training or tests)."""
    return VPRModel(get_spec(name).config, init_weights=init_weights).eval()
