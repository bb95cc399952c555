"""Pose of a camera frame from a stream of odometry or pose messages, looked up by image stamp.

Odometry rarely shares the camera's stamps, so a keyframe's pose is interpolated between the two
samples around it (position linearly, orientation by slerp). A gap longer than ``max_gap_s`` gives
no pose (interpolating would invent motion); a stamp just beyond a sample (the newest odometry often
lags the image) takes that sample within ``max_gap_s / 2``.

A sample that is not finite or further than :data:`MAX_POSITION_M` from its frame's origin is an
InputError: interpolating between such numbers (±1e308) overflowed to inf and poisoned the place map.
Between bounded samples every interpolated pose is bounded and finite too.
"""

from __future__ import annotations

import bisect
import math
import threading
from typing import Any, NamedTuple

import numpy as np

from vpr_ros.errors import InputError
from vpr_ros.types import NS_PER_S, Pose, to_ns

_NLERP_DOT = 0.9995  # above this cosine, slerp's sin(theta) is too small to divide by safely
MAX_POSITION_M = 1e9  # a million km: far beyond ECEF, UTM or any local frame; larger is damage, not motion


class _Sample(NamedTuple):
    position: np.ndarray  # (3,) float64
    orientation: np.ndarray  # (4,) unit quaternion xyzw
    frame_id: str


def slerp(q0: np.ndarray, q1: np.ndarray, t: float) -> np.ndarray:
    """Unit quaternion (xyzw) a fraction ``t`` of the shortest rotation from ``q0`` to ``q1`` (``q1`` is flipped
    when ``-q1`` is the short way); nearly equal quaternions are normalised-lerped (slerp would divide by ~0)."""
    q0 = np.asarray(q0, np.float64)
    q1 = np.asarray(q1, np.float64)
    dot = float(q0 @ q1)
    if dot < 0.0:
        q1, dot = -q1, -dot
    if dot > _NLERP_DOT:
        q = q0 + t * (q1 - q0)
    else:
        theta = math.acos(min(dot, 1.0))
        q = (math.sin((1.0 - t) * theta) * q0 + math.sin(t * theta) * q1) / math.sin(theta)
    return q / np.linalg.norm(q)


class PoseBuffer:
    """Time-sorted pose samples of the last ``max_age_s`` seconds, keyed by integer nanoseconds; thread-safe.
    Samples may arrive out of order (several publishers, bag playback); one of a buffered stamp replaces it."""

    def __init__(self, max_age_s: float = 60.0, max_gap_s: float = 0.5) -> None:
        if not max_age_s > 0 or not max_gap_s > 0:
            raise InputError(f"max_age_s and max_gap_s must be positive, got {max_age_s}, {max_gap_s}")
        self.max_age_ns = max_age_s * NS_PER_S  # inf keeps every sample
        self.max_gap_ns = max_gap_s * NS_PER_S
        self._stamps: list[int] = []
        self._samples: list[_Sample] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._stamps)

    def span(self) -> tuple[int, int] | None:
        """(oldest, newest) buffered stamp, or None when empty."""
        with self._lock:
            return (self._stamps[0], self._stamps[-1]) if self._stamps else None

    def add(self, stamp_ns: int, position: Any, orientation: Any, frame_id: str) -> None:
        """Buffer one sample; ``orientation`` is a quaternion (x, y, z, w), normalised here."""
        pos = np.asarray(position, np.float64).reshape(-1)
        quat = np.asarray(orientation, np.float64).reshape(-1)
        if not isinstance(stamp_ns, (int, np.integer)):
            raise InputError(f"stamp must be integer nanoseconds, got {stamp_ns!r}")
        stamp_ns = int(stamp_ns)
        if pos.shape != (3,) or not np.isfinite(pos).all():
            raise InputError(f"position must be 3 finite numbers, got {position!r}")
        if np.abs(pos).max() > MAX_POSITION_M:
            raise InputError(f"position {position!r} is more than {MAX_POSITION_M:g} m from the origin of its frame")
        with np.errstate(over="ignore"):  # components of 1e308 overflow to an inf norm: refused below
            norm = float(np.linalg.norm(quat)) if quat.shape == (4,) else 0.0
        if not (math.isfinite(norm) and norm > 1e-9):
            raise InputError(f"orientation must be a non-zero finite quaternion (x, y, z, w), got {orientation!r}")
        sample = _Sample(pos, quat / norm, str(frame_id))
        with self._lock:
            i = bisect.bisect_left(self._stamps, stamp_ns)
            if i < len(self._stamps) and self._stamps[i] == stamp_ns:
                self._samples[i] = sample
            else:
                self._stamps.insert(i, stamp_ns)
                self._samples.insert(i, sample)
            old = bisect.bisect_left(self._stamps, self._stamps[-1] - self.max_age_ns)
            if old:
                del self._stamps[:old], self._samples[:old]

    def lookup(self, stamp_ns: int) -> Pose | None:
        """Pose at ``stamp_ns`` (interpolated, or the nearest sample within max_gap_s / 2), else None."""
        with self._lock:
            stamps, samples = self._stamps, self._samples
            i = bisect.bisect_left(stamps, stamp_ns)
            if i < len(stamps) and stamps[i] == stamp_ns:
                return _pose(samples[i])
            before = i - 1 if i > 0 else None
            after = i if i < len(stamps) else None
            if before is not None and after is not None:
                a, b = samples[before], samples[after]
                gap = stamps[after] - stamps[before]
                if gap <= self.max_gap_ns and a.frame_id == b.frame_id:
                    t = (stamp_ns - stamps[before]) / gap
                    return Pose(_tuple(a.position + t * (b.position - a.position)),
                                _tuple(slerp(a.orientation, b.orientation, t)), a.frame_id)
            # outside the range, across a long gap or a frame change: only a close sample will do
            near = [j for j in (before, after) if j is not None and abs(stamps[j] - stamp_ns) <= self.max_gap_ns / 2]
            if not near:
                return None
            return _pose(samples[min(near, key=lambda j: abs(stamps[j] - stamp_ns))])


def _tuple(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _pose(sample: _Sample) -> Pose:
    return Pose(_tuple(sample.position), _tuple(sample.orientation), sample.frame_id)


def pose_from_msg(msg: Any) -> tuple[int, np.ndarray, np.ndarray, str]:
    """(stamp in ns, position (3,), orientation xyzw (4,), header frame_id) of a nav_msgs/Odometry,
    geometry_msgs/PoseWithCovarianceStamped (``msg.pose.pose``) or PoseStamped (``msg.pose``), rclpy or rosbags."""
    try:
        pose = msg.pose.pose if hasattr(msg.pose, "pose") else msg.pose
        p, q = pose.position, pose.orientation
        stamp = msg.header.stamp
        return (
            to_ns((stamp.sec, stamp.nanosec)),
            np.array([p.x, p.y, p.z], np.float64),
            np.array([q.x, q.y, q.z, q.w], np.float64),
            str(msg.header.frame_id),
        )
    except AttributeError as exc:
        raise InputError(f"{type(msg).__name__} carries no stamped pose: {exc}") from exc
