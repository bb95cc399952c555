"""Shared model pieces: position-embedding resampling and optimal-transport solvers."""

from vpr_ros.models.layers.optimal_transport import asymmetric_ot_log_plan, sinkhorn_log_plan
from vpr_ros.models.layers.pos_embed import resample_dinov2_pos_embed

__all__ = ["asymmetric_ot_log_plan", "resample_dinov2_pos_embed", "sinkhorn_log_plan"]
