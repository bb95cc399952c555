"""Parameters of the localization node, declared in one place with types, ranges and docs.

Startup parameters (model, map, mode...) are read once and read-only; the loop-closure gates
and keyframe period can be changed at run time and are validated by building a
:class:`LoopClosureConfig` from them (its error message becomes the rejection reason).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vpr_ros.errors import InputError
from vpr_ros.types import Pose

if TYPE_CHECKING:  # the table must stay importable without numpy or FAISS: the launch files read it
    from vpr_ros.loop_closure.policy import LoopClosureConfig

IDENTITY = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # x y z qx qy qz qw
CAMERA_PARAMS = ("image_topic", "camera_frame", "camera_pose")  # what each of several cameras sets
DEFAULT_THRESHOLD = 0.6  # without a calibration: a cosine similarity SALAD revisits usually exceed


@dataclass(frozen=True)
class Spec:
    default: Any
    description: str
    read_only: bool = False
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None


PARAMS: dict[str, Spec] = {
    # startup, read-only
    "checkpoint": Spec("", "checkpoint file (released state dict, Lightning .ckpt, or an exported .onnx)", True),
    "model_config": Spec("", "JSON with model options the checkpoint's shapes cannot tell (default: the .json "
                             "next to the checkpoint, if any)", True),
    "map": Spec("", "place map folder; localize: must exist; slam: loaded if present, else created", True),
    "mode": Spec("localize", "localize (fixed map, read-only) or slam (online map, loop closures)", True,
                 choices=("localize", "slam")),
    "image_size": Spec([0, 0], "model input [H, W], multiples of 14; [0, 0]: the size of the existing map, else "
                               "the checkpoint's .json, else 322x322", True),
    "image_topic": Spec("image", "camera topic; its /compressed sibling is subscribed too (a remap of 'image' "
                                 "moves both)", True),
    "camera_frame": Spec("", "frame of the camera for ~/global_pose; empty: the image's header.frame_id", True),
    "camera_pose": Spec(list(IDENTITY), "camera in the robot base frame [x, y, z, qx, qy, qz, qw]: where the "
                                        "camera that saw a place was, for ~/global_pose (localize mode); the "
                                        "identity only when the camera frame is base_frame", True),
    "base_frame": Spec("base_link", "the robot's base frame: ~/global_pose with an identity camera_pose is only "
                                    "published when the camera frame is this frame", True),
    "cameras": Spec([], "names of several cameras; each reads <name>.image_topic (default <name>/image), "
                        "<name>.camera_frame and <name>.camera_pose; empty: one camera on image_topic", True),
    "frame_size": Spec([480, 640], "[H, W] of the camera frames, prepared at start (on a GPU one CUDA graph is "
                                   "captured per frame size, so the first frame is not the slow one); [0, 0]: none",
                       True),
    "frame_timeout": Spec(5.0, "seconds without a frame before /diagnostics warns", range=(0.1, 3600.0)),
    "device": Spec("auto", "auto (the CUDA GPU when present), cpu or cuda", True, choices=("auto", "cpu", "cuda")),
    "precision": Spec("fp32", "backbone precision: fp32 (exact), bf16 or fp16", True,
                      choices=("fp32", "bf16", "fp16")),
    "index": Spec("flat", "index kind of a new slam map: flat, fp16, pca<N>, pca<N>ivf, ivfpq, hnsw", True),
    "reliable": Spec(False, "subscribe to images with reliable QoS instead of sensor-data (best effort)", True),
    "map_frame": Spec("map", "frame of the published poses and markers when places carry none", True),
    "pose_max_gap": Spec(0.5, "seconds: largest gap between odometry samples to interpolate a keyframe pose", True,
                         range=(0.0, 60.0)),
    # run time
    "loop_pair_period": Spec(1.0, "slam: seconds (wall clock) between two ~/loop_closure pairs; a pair that comes "
                                  "sooner is held back (LIO-SAM takes one per loopClosureFrequency tick, 1 Hz)",
                             range=(0.0, 3600.0)),
    "min_period": Spec(0.0, "seconds between keyframes (0: process every frame the model keeps up with)",
                       range=(0.0, 3600.0)),
    "threshold": Spec(float("nan"), "minimum cosine similarity of a loop-closure candidate; NaN (default): the "
                                    f"map's calibrated threshold (vpr-ros calibrate), else {DEFAULT_THRESHOLD}"),
    "top_k": Spec(5, "candidates retrieved (and verified) per query", range=(1, 100)),
    "exclude_seconds": Spec(30.0, "slam: ignore places newer than this before the query", range=(0.0, 1e6)),
    "exclude_last": Spec(50, "slam: ignore the most recent N places", range=(0, 1_000_000)),
    "consistency_k": Spec(2, "accept when k of the last n queries matched places close in time", range=(1, 100)),
    "consistency_n": Spec(3, "length of the consistency history", range=(1, 100)),
    "consistency_seconds": Spec(10.0, "how close in time consistent matches must be", range=(0.0, 1e6)),
    "verify": Spec(False, "geometric verification of candidates with patch tokens (stores 68 kB per place)"),
    "min_inliers": Spec(20, "RANSAC inliers needed when verifying", range=(4, 10_000)),
}

RUNTIME = {name for name, spec in PARAMS.items() if not spec.read_only}


def loop_closure_config(values: dict[str, Any], mode: str, calibrated: float | None = None) -> LoopClosureConfig:
    """Gates from parameter values; localize mode has no exclusion window (another run's map). A NaN
    threshold means "not set": the map's ``calibrated`` threshold, else ``DEFAULT_THRESHOLD``."""
    from vpr_ros.loop_closure.policy import LoopClosureConfig

    slam = mode == "slam"
    threshold = float(values["threshold"])
    if math.isnan(threshold):
        threshold = DEFAULT_THRESHOLD if calibrated is None else calibrated
    return LoopClosureConfig(
        threshold=threshold,
        top_k=int(values["top_k"]),
        exclude_seconds=float(values["exclude_seconds"]) if slam else None,
        exclude_last=int(values["exclude_last"]) if slam else 0,
        consistency_k=int(values["consistency_k"]),
        consistency_n=int(values["consistency_n"]),
        consistency_seconds=float(values["consistency_seconds"]),
        verify=bool(values["verify"]),
        min_inliers=int(values["min_inliers"]),
    )


@dataclass(frozen=True)
class Camera:
    """One camera of the node: its name (stored with places, "" for a single camera), topic, frame and
    mounting (camera in the robot base frame)."""

    name: str
    image_topic: str
    frame: str
    base_to_camera: Pose | None  # None: at the base


def camera_pose(name: str, values: list[float]) -> Pose | None:
    """A ``camera_pose`` parameter as a Pose (None for the identity); refuses a wrong length or a zero
    quaternion."""
    v = [float(x) for x in values]
    if len(v) != 7 or not all(math.isfinite(x) for x in v):
        raise InputError(f"{name} must be 7 finite numbers [x, y, z, qx, qy, qz, qw], got {values}")
    norm = math.sqrt(sum(q * q for q in v[3:]))
    if norm < 1e-6:
        raise InputError(f"{name} has a zero quaternion")
    if tuple(v) == IDENTITY:
        return None
    return Pose(tuple(v[:3]), tuple(q / norm for q in v[3:]), "")


def frame_size(values: list[int]) -> tuple[int, int]:
    """The ``frame_size`` parameter: ``[H, W]`` of at least 16 pixels a side and at most 8192, or [0, 0]."""
    size = tuple(int(v) for v in values)
    if size != (0, 0) and (len(size) != 2 or not all(16 <= v <= 8192 for v in size)):
        raise InputError(f"frame_size must be [H, W] between 16 and 8192 pixels, or [0, 0], got {list(values)}")
    return size  # type: ignore[return-value]


def check_camera_names(names: list[str]) -> None:
    """Camera names become parameter prefixes and are stored with places: plain and unique."""
    for name in names:
        if not name or not name.replace("_", "a").isalnum() or not name[0].isalpha():
            raise InputError(f"camera name {name!r} must start with a letter and hold only letters, digits and _")
    if len(set(names)) != len(names):
        raise InputError(f"camera names must be unique, got {names}")
