"""The node's work without ROS: keyframe gate, descriptor, loop-closure decision, slam map upkeep.

:class:`PlaceRecognizer` takes decoded frames with their integer-nanosecond stamps and returns everything
the node publishes; the node only converts messages, runs this on its worker thread and publishes. In
``localize`` mode the map is fixed (another run's map: no exclusion window); in ``slam`` mode every
described frame is queried, then added as a place with the odometry pose interpolated at its stamp.
Only there does an accepted match become a loop-closure pair (:attr:`Outcome.loop_pair`), and only with
a place of this run, the only keyframes a consumer such as LIO-SAM knows (:mod:`vpr_ros.loop_closure.loop_pairs`).

Several cameras share one map, each with its own keyframe gate and consistency history (a match is
confirmed by the same camera's next frames); waiting frames of all cameras are described in one batch,
and a place one camera saw may close a loop for another.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from vpr_ros.errors import InputError
from vpr_ros.extractor import DescriptorExtractor, Features
from vpr_ros.loop_closure.matches import MatchPrior, match_prior, matches_record
from vpr_ros.loop_closure.policy import Decision, LoopClosureConfig, LoopClosureDetector
from vpr_ros.loop_closure.verification import compress_tokens
from vpr_ros.maps.keyframes import KeyframeSelector
from vpr_ros.maps.place_map import PlaceMap
from vpr_ros.poses import PoseBuffer
from vpr_ros.types import Pose, ns_to_pair

Mode = Literal["localize", "slam"]


@dataclass(frozen=True)
class CameraFrame:
    """One decoded frame as the recognizer takes it."""

    rgb: np.ndarray
    stamp_ns: int  # header.stamp, integer nanoseconds
    frame_id: str = ""  # the camera's frame (header.frame_id, or the configured one)
    source: str = ""  # where it came from (the topic), stored with the place
    camera: str = ""  # camera name; "" for a single camera


@dataclass
class Outcome:
    """What one described frame produced."""

    frame: CameraFrame
    decision: Decision
    record: dict  # the ~/matches JSON record
    prior: MatchPrior | None  # pose prior of the accepted place
    current: Pose | None  # slam: the frame's own interpolated odometry pose
    added_id: int | None  # slam: the place id the frame was stored under
    model_seconds: float  # the model's time for the whole batch the frame was described in
    loop_pair: tuple[int, int] | None = None  # slam: [t_current, t_previous] (ns) when both are of this run


class _Camera:
    """Per-camera state: keyframe gate and consistency history."""

    def __init__(self, place_map: PlaceMap, config: LoopClosureConfig, min_period: float) -> None:
        self.keyframes = KeyframeSelector(min_period)
        self.detector = LoopClosureDetector(place_map, config)


class PlaceRecognizer:
    """Frames in, decisions out, for one or more camera streams against one place map."""

    def __init__(self, extractor: DescriptorExtractor, place_map: PlaceMap, config: LoopClosureConfig,
                 mode: Mode = "localize", min_period: float = 0.0, pose_max_gap: float = 0.5) -> None:
        if mode not in ("localize", "slam"):
            raise InputError(f"mode must be localize or slam, got {mode!r}")
        self.extractor, self.map, self.mode = extractor, place_map, mode
        self._cameras: dict[str, _Camera] = {}
        self.configure(config, min_period)  # validates min_period now rather than at the first frame
        self.poses = PoseBuffer(max_gap_s=pose_max_gap)
        # ids are never reused: every place with an id from here on was added in this run
        self.first_own_id = int(place_map.ids().max()) + 1 if len(place_map) else 0

    @property
    def config(self) -> LoopClosureConfig:
        return self._config

    @property
    def skipped(self) -> Counter[str]:
        """Frames the keyframe gates dropped, by gate, over all cameras."""
        return sum((c.keyframes.skipped for c in self._cameras.values()), Counter())

    def _camera(self, name: str) -> _Camera:
        if name not in self._cameras:
            self._cameras[name] = _Camera(self.map, self._config, self._min_period)
        return self._cameras[name]

    def configure(self, config: LoopClosureConfig, min_period: float) -> None:
        """Run-time changes of the gates (node parameters), for every camera."""
        KeyframeSelector(min_period)
        self._config, self._min_period = config, min_period
        for cam in self._cameras.values():
            cam.keyframes.configure(min_period)
            cam.detector.set_config(config)

    def reset(self) -> None:
        """Forget the consistency histories and the keyframe timers; the map stays."""
        for cam in self._cameras.values():
            cam.detector.reset()
            cam.keyframes.reset()

    def wants(self, stamp_ns: int, camera: str = "") -> bool:
        """Keyframe gate of ``camera``, checked before a frame is decoded (skipped frames cost nothing)."""
        return self._camera(camera).keyframes.sample(stamp_ns)

    def process(self, rgb: np.ndarray, stamp_ns: int, frame_id: str = "", source: str = "",
                camera: str = "") -> Outcome:
        """Describe one frame, decide, and in slam mode add it to the map (after querying)."""
        return self.process_batch([CameraFrame(rgb, stamp_ns, frame_id, source, camera)])[0]

    def process_batch(self, frames: list[CameraFrame],
                      run_model: Callable[[Callable[[], Features]], Features] | None = None) -> list[Outcome]:
        """Describe frames (one per camera, typically) in one batch; then per frame, in order: decide
        against the map, and in slam mode add it. All frames are queried before any is added, so
        frames of one batch never match each other. ``run_model`` runs the model call (a node passes
        its GPU fast-path guard, which covers the model and nothing else)."""
        if not frames:
            return []
        verify = self.config.verify  # also decides whether slam keyframes keep their tokens
        started = time.monotonic()

        def model() -> Features:
            return self.extractor.extract([f.rgb for f in frames], patch_tokens=verify)

        feats = run_model(model) if run_model else model()
        model_seconds = time.monotonic() - started
        outcomes, tokens = [], []
        for i, frame in enumerate(frames):
            desc = feats.descriptors[i]
            local = compress_tokens(feats.patch_tokens[i], self.extractor.image_size) if verify else None
            tokens.append(None if local is None else local.to_bytes())
            decision = self._camera(frame.camera).detector.process(desc, frame.stamp_ns, local)
            record = matches_record(decision, frame.frame_id, frame.camera, len(self.map))
            prior = match_prior(decision, self.config)
            accepted = decision.accepted
            pair = None
            if self.mode == "slam" and accepted is not None and accepted.id >= self.first_own_id:
                pair = (frame.stamp_ns, accepted.place.stamp_ns)
            outcomes.append(Outcome(frame, decision, record, prior, None, None, model_seconds, pair))
        if self.mode == "slam":
            for out in outcomes:
                out.current = self.poses.lookup(out.frame.stamp_ns)
            ids = self.map.add(feats.descriptors, [ns_to_pair(o.frame.stamp_ns) for o in outcomes],
                               poses=[o.current for o in outcomes], frame_ids=[f.frame_id for f in frames],
                               sources=[f.source for f in frames], local_features=tokens,
                               cameras=[f.camera for f in frames])
            for out, pid in zip(outcomes, ids, strict=True):
                out.added_id = int(pid)
        return outcomes
