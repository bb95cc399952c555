"""What the node publishes about a decision, built without ROS: the ``~/matches`` JSON record and
the pose prior (pose of the accepted place with its covariance) behind ``~/match_pose``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from vpr_ros.loop_closure.policy import Decision, LoopClosureConfig
from vpr_ros.types import NS_PER_S, Pose, ns_to_pair

MATCHES_SCHEMA = {"schema": "vpr_ros/matches", "version": 1}
MIN_POSITION_STD_M = 0.5  # places are keyframes apart: a match is never more precise than this
HEADING_STD_RAD = math.pi / 4  # a place says little about heading


def _stamp(ns: int) -> dict[str, int]:
    return dict(zip(("sec", "nanosec"), ns_to_pair(ns), strict=True))


def matches_record(decision: Decision, frame_id: str, camera: str, map_size: int) -> dict:
    """The ``~/matches`` record (schema ``vpr_ros/matches`` v1): every candidate with score, stamp,
    pose, camera and verification inliers, which one was accepted, and why not when none was."""
    accepted_id = decision.accepted.id if decision.accepted else None
    candidates = []
    for c in decision.candidates:
        place = c.place
        pose = None if place.pose is None else {
            "position": list(place.pose.position), "orientation": list(place.pose.orientation),
            "frame_id": place.pose.frame_id}
        candidates.append({"id": c.id, "score": round(c.score, 6), "stamp": _stamp(place.stamp_ns), "pose": pose,
                           "camera": place.camera, "inliers": c.inliers, "accepted": c.id == accepted_id})
    return {**MATCHES_SCHEMA, "query": {"stamp": _stamp(decision.stamp_ns), "frame_id": frame_id, "camera": camera},
            "candidates": candidates, "accepted_id": accepted_id, "reason": decision.reason, "map_size": map_size}


@dataclass(frozen=True)
class MatchPrior:
    """Where the accepted place was, as a pose with a 6x6 covariance (x, y, z, roll, pitch, yaw)."""

    pose: Pose
    covariance: np.ndarray


def match_prior(decision: Decision, config: LoopClosureConfig) -> MatchPrior | None:
    """Pose prior of the accepted place, or None (nothing accepted, or the place has no pose). The position
    covariance is the spread of the candidates that agree with it (above the threshold, within
    ``consistency_seconds``) plus ``MIN_POSITION_STD_M`` per axis; orientation gets ``HEADING_STD_RAD``."""
    accepted = decision.accepted
    if accepted is None or accepted.place.pose is None:
        return None
    window = config.consistency_seconds * NS_PER_S
    close = [c.place.pose for c in decision.candidates
             if c.score >= config.threshold and abs(c.place.stamp_ns - accepted.place.stamp_ns) <= window]
    pts = np.array([p.position for p in close if p is not None], dtype=np.float64).reshape(-1, 3)
    cov = np.cov(pts.T) if len(pts) > 1 else np.zeros((3, 3))
    full = np.zeros((6, 6))
    full[:3, :3] = cov + np.eye(3) * MIN_POSITION_STD_M**2
    full[3:, 3:] = np.eye(3) * HEADING_STD_RAD**2
    return MatchPrior(accepted.place.pose, full)


def camera_prior(prior: MatchPrior, base_to_camera: Pose | None) -> MatchPrior:
    """The prior as the pose of the camera that saw the place (``base_to_camera``: in the base frame; None: at
    the base): places store the base's odometry pose, RTAB-Map's ``global_pose`` wants the sensor's. The query
    camera stands where the place's camera stood, so the covariance (in the map frame) is kept."""
    if base_to_camera is None:
        return prior
    base = Rotation.from_quat(prior.pose.orientation)
    offset = Rotation.from_quat(base_to_camera.orientation)
    position = np.asarray(prior.pose.position) + base.apply(np.asarray(base_to_camera.position, np.float64))
    pose = Pose(tuple(float(v) for v in position), tuple(float(v) for v in (base * offset).as_quat()),
                prior.pose.frame_id)
    return MatchPrior(pose, prior.covariance)


def global_pose_prior(prior: MatchPrior, frame_id: str, seen_by: str, mounts: Mapping[str, Pose | None],
                      base_frame: str) -> tuple[MatchPrior | None, str]:
    """The prior for RTAB-Map's ``global_pose`` (of the sensor ``frame_id``), or None and why not: without a frame
    there is nothing to name, and without the mounting (``mounts``: camera name -> pose in the base frame) of the
    camera ``seen_by`` that saw the place, its base pose would pass for the camera's (unless that is the base)."""
    base_to_camera = mounts.get(seen_by)
    if not frame_id:
        return None, "no camera frame"
    if base_to_camera is None and frame_id != base_frame:
        return None, "no camera_pose"
    return camera_prior(prior, base_to_camera), ""
