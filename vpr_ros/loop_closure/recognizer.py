"""The node's work without ROS: keyframe gate, descriptor, loop-closure decision, slam map upkeep.

:class:`PlaceRecognizer` takes decoded frames with their stamps and returns everything the node
publishes; the ROS node only converts messages, runs this on its worker thread and publishes.
In ``localize`` mode the map is fixed (another run's map: no exclusion window); in ``slam`` mode
every described frame is queried first and then added as a place, with the odometry pose
interpolated at its stamp.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

from vpr_ros.bags.poses import PoseBuffer
from vpr_ros.errors import InputError
from vpr_ros.extractor import DescriptorExtractor
from vpr_ros.loop_closure.matches import MatchPrior, match_prior, matches_record
from vpr_ros.loop_closure.policy import Decision, LoopClosureConfig, LoopClosureDetector
from vpr_ros.loop_closure.verification import compress_tokens
from vpr_ros.maps.keyframes import KeyframeSelector
from vpr_ros.maps.place_map import PlaceMap
from vpr_ros.types import Pose, ns_to_pair, ns_to_seconds

Mode = Literal["localize", "slam"]


@dataclass
class Outcome:
    """What one described frame produced."""

    decision: Decision
    record: dict  # the ~/matches JSON record
    prior: MatchPrior | None  # pose prior of the accepted place
    current: Pose | None  # slam: the frame's own interpolated odometry pose
    added_id: int | None  # slam: the place id the frame was stored under
    model_seconds: float


class PlaceRecognizer:
    """Frames in, decisions out, for one camera stream against one place map."""

    def __init__(self, extractor: DescriptorExtractor, place_map: PlaceMap, config: LoopClosureConfig,
                 mode: Mode = "localize", min_period: float = 0.0, pose_max_gap: float = 0.5) -> None:
        if mode not in ("localize", "slam"):
            raise InputError(f"mode must be localize or slam, got {mode!r}")
        self.extractor, self.map, self.mode = extractor, place_map, mode
        self.detector = LoopClosureDetector(place_map, config)
        self.keyframes = KeyframeSelector(min_period)
        self.poses = PoseBuffer(max_gap_s=pose_max_gap)

    @property
    def config(self) -> LoopClosureConfig:
        return self.detector.config

    def configure(self, config: LoopClosureConfig, min_period: float) -> None:
        """Run-time changes of the gates (node parameters)."""
        self.keyframes.configure(min_period)
        self.detector.set_config(config)

    def reset(self) -> None:
        """Forget the consistency history and the keyframe timer; the map stays."""
        self.detector.reset()
        self.keyframes.reset()

    def wants(self, stamp_ns: int) -> bool:
        """Keyframe gate, checked before a frame is decoded (skipped frames cost nothing)."""
        return self.keyframes.sample(ns_to_seconds(stamp_ns))

    def process(self, rgb: np.ndarray, stamp_ns: int, frame_id: str = "", source: str = "") -> Outcome:
        """Describe one frame, decide, and in slam mode add it to the map (after querying)."""
        verify = self.config.verify  # also decides whether slam keyframes keep their tokens
        started = time.monotonic()
        feats = self.extractor.extract([rgb], patch_tokens=verify)
        model_seconds = time.monotonic() - started
        desc = feats.descriptors[0]
        local = compress_tokens(feats.patch_tokens[0], self.extractor.image_size) if verify else None
        stamp = ns_to_seconds(stamp_ns)
        decision = self.detector.process(desc, stamp, local)
        record = matches_record(decision, self.map, stamp_ns, frame_id)
        prior = match_prior(decision, self.map, self.config)
        current, added = None, None
        if self.mode == "slam":
            current = self.poses.lookup(stamp)
            added = int(self.map.add(desc[None], [ns_to_pair(stamp_ns)], poses=[current],
                                     frame_ids=[frame_id], sources=[source],
                                     local_features=[local.to_bytes() if local is not None else None])[0])
        return Outcome(decision, record, prior, current, added, model_seconds)
