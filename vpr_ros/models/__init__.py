"""Place-recognition models: DINOv2 backbones with SALAD, A²GC, MegaLoc or BoQ aggregation.

``load_model(path)`` is the usual entry point; it recognises the family from the checkpoint's
keys, builds the architecture from its tensor shapes and loads it strictly.
"""

from vpr_ros.io.checkpoints import read_checkpoint
from vpr_ros.models.a2gc import A2GC, A2GCConfig
from vpr_ros.models.boq import BoQ, BoQConfig
from vpr_ros.models.dinov2 import DINOV2_ARCHS, DinoV2Backbone, DinoV2Config, dinov2_config
from vpr_ros.models.loading import (
    CheckpointError,
    canonical_state_dict,
    infer_config,
    load_backbone_weights,
    load_model,
    model_family,
)
from vpr_ros.models.megaloc import MegaLocAggregator, MegaLocConfig
from vpr_ros.models.registry import MODELS, ModelSpec, create_model, get_spec
from vpr_ros.models.salad import SALAD, SaladConfig
from vpr_ros.models.vpr_model import ModelConfig, VPRModel

__all__ = [
    "A2GC", "A2GCConfig", "BoQ", "BoQConfig", "CheckpointError", "DINOV2_ARCHS", "DinoV2Backbone",
    "DinoV2Config", "MODELS", "MegaLocAggregator", "MegaLocConfig", "ModelConfig", "ModelSpec", "SALAD",
    "SaladConfig", "VPRModel", "canonical_state_dict", "create_model", "dinov2_config", "get_spec",
    "infer_config", "load_backbone_weights", "load_model", "model_family", "read_checkpoint",
]
