"""Loop-closure pairs ``[t_current, t_previous]`` for LIO-SAM, only when LIO-SAM can use them.

LIO-SAM (``mapOptmization.cpp``, ``loopInfoHandler`` and ``detectLoopClosureExternal``) turns a pair
into keyframes by time alone: the current keyframe is the *oldest keyframe at or after* ``t_current``
(else its newest), the previous one the *newest keyframe at or before* ``t_previous`` (else keyframe
0), with no tolerance. A stamp it never saw, such as a place of another run's map, therefore becomes
keyframe 0 and still gets an ICP attempt against the wrong place: pairs are only made of stamps of this
run. It keeps a queue of the newest 5 pairs and takes one per ``loopClosureFrequency`` tick (1 Hz by
default, a wall-clock rate): :class:`PairPacer` holds pairs back so that at most one is sent per tick.
"""

from __future__ import annotations

from vpr_ros.errors import InputError
from vpr_ros.types import ns_to_seconds

LIO_SAM_TICK_S = 1.0  # 1 / loopClosureFrequency of LIO-SAM's default params.yaml


class PairPacer:
    """At most one pair per ``period`` seconds (wall clock); a pair that comes too soon is held back
    and sent when the period has passed, unless a newer pair replaces it first (``superseded``)."""

    def __init__(self, period: float = LIO_SAM_TICK_S) -> None:
        self.configure(period)
        self._last_sent: float | None = None
        self._held: tuple[int, int] | None = None
        self.held_back = self.superseded = 0

    def configure(self, period: float) -> None:
        if not period >= 0.0:  # also refuses NaN
            raise InputError(f"the loop-closure pair period must be >= 0 s, got {period}")
        self.period = float(period)

    def offer(self, pair: tuple[int, int], now: float) -> tuple[int, int] | None:
        """The pair to send now (``pair``, or None when it is held back)."""
        if self._last_sent is None or now - self._last_sent >= self.period:
            self._held = None
            self._last_sent = now
            return pair
        if self._held is not None:
            self.superseded += 1
        self._held = pair
        self.held_back += 1
        return None

    def due(self, now: float) -> tuple[int, int] | None:
        """A held pair whose turn has come (call this periodically), else None."""
        if self._held is None or self._last_sent is None or now - self._last_sent < self.period:
            return None
        pair, self._held, self._last_sent = self._held, None, now
        return pair


def pair_seconds(pair: tuple[int, int]) -> list[float]:
    """``[t_current, t_previous]`` as ``~/loop_closure`` carries them: the query's stamp correctly rounded, the
    place's as its nanoseconds in a double over 1e9 (how rclcpp's ``Time.seconds()`` and the map's stamps read)."""
    return [ns_to_seconds(pair[0]), pair[1] / 1e9]
