"""Place-recognition models: DINOv2 backbones with SALAD or A²GC aggregation.

``load_model(path)`` is the usual entry point; it builds the architecture from the
checkpoint's tensor shapes and loads it strictly.
"""

from vpr_ros.models.a2gc import A2GC, A2GCConfig
from vpr_ros.models.dinov2 import DINOV2_ARCHS, DinoV2Backbone, DinoV2Config, dinov2_config
from vpr_ros.models.loading import (
    CheckpointError,
    infer_config,
    load_backbone_weights,
    load_model,
    read_checkpoint,
)
from vpr_ros.models.registry import MODELS, ModelSpec, create_model, get_spec
from vpr_ros.models.salad import SALAD, SaladConfig
from vpr_ros.models.vpr_model import ModelConfig, VPRModel

__all__ = [
    "A2GC", "A2GCConfig", "CheckpointError", "DINOV2_ARCHS", "DinoV2Backbone", "DinoV2Config",
    "MODELS", "ModelConfig", "ModelSpec", "SALAD", "SaladConfig", "VPRModel", "create_model",
    "dinov2_config", "get_spec", "infer_config", "load_backbone_weights", "load_model",
    "read_checkpoint",
]
