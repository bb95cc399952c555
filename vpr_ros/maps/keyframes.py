"""Which frames become places: the keyframe gates shared by offline map building and the live node.

1. ``min_period`` / ``min_distance`` subsample the stream before inference (they cost nothing): a
   frame passes when it is at least that many seconds / metres from the previous frame that passed.
   A frame without a position passes the distance gate (counted as ``distance_unchecked``). A stamp
   jump backwards (a bag played again) counts by its size, so the gate reopens instead of closing.
2. ``novelty`` drops a frame whose descriptor's cosine similarity to the last kept keyframe is above
   the threshold (the robot stood still, or the view did not change).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from vpr_ros.errors import InputError
from vpr_ros.types import NS_PER_S


class KeyframeSelector:
    """The two keyframe gates; ``skipped`` counts drops by gate (``period``, ``distance``, ``novelty``)
    and frames the distance gate could not check (``distance_unchecked``)."""

    def __init__(self, min_period: float = 0.0, min_distance: float = 0.0, novelty: float | None = None) -> None:
        self.skipped: Counter[str] = Counter()
        self._last_stamp: int | None = None  # nanoseconds
        self._last_position: np.ndarray | None = None
        self._last_descriptor: np.ndarray | None = None
        self.configure(min_period, min_distance, novelty)

    def configure(self, min_period: float, min_distance: float = 0.0, novelty: float | None = None) -> None:
        """Change the gates (e.g. a node parameter set at run time); what passed so far is kept."""
        for name, value in (("min_period", min_period), ("min_distance", min_distance)):
            if not (math.isfinite(value) and value >= 0):
                raise InputError(f"{name} must be a finite number >= 0, got {value}")
        if novelty is not None and not -1.0 <= novelty <= 1.0:
            raise InputError(f"novelty is a cosine similarity in [-1, 1], got {novelty}")
        self.min_period, self.min_distance, self.novelty = float(min_period), float(min_distance), novelty

    def reset(self) -> None:
        """Forget the last keyframe (the next frame passes); the counters stay."""
        self._last_stamp = self._last_position = self._last_descriptor = None

    def sample(self, stamp_ns: int, position: np.ndarray | None = None) -> bool:
        """Whether a frame stamped ``stamp_ns`` (and at ``position``, if known) passes the time and distance gates."""
        if self._last_stamp is not None and abs(stamp_ns - self._last_stamp) < self.min_period * NS_PER_S:
            self.skipped["period"] += 1
            return False
        if self.min_distance > 0:
            if position is None:
                self.skipped["distance_unchecked"] += 1
            else:
                position = np.asarray(position, np.float64)
                last = self._last_position
                if last is not None and np.linalg.norm(position - last) < self.min_distance:
                    self.skipped["distance"] += 1
                    return False
                self._last_position = position
        self._last_stamp = stamp_ns
        return True

    def novel(self, descriptor: np.ndarray) -> bool:
        """Whether ``descriptor`` differs enough from the last kept keyframe's; keeps it if so."""
        if self.novelty is not None and self._last_descriptor is not None:
            if float(descriptor @ self._last_descriptor) > self.novelty:
                self.skipped["novelty"] += 1
                return False
        self._last_descriptor = descriptor
        return True
