"""What a node reports in ``/diagnostics``: its counters, its latencies and the health they add up to.

A node that rejects every frame (a model that outputs NaN, an unsupported encoding) or cannot save its
map must not report OK. Counts other parts of the node keep (the frame slot's, the keyframe gate's, the
pair pacer's) are read at their place in the report (``readers``): one object owns the report and its order.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from vpr_ros.ros.frame_slot import LatencyStats

OK, WARN, ERROR = 0, 1, 2  # diagnostic_msgs/DiagnosticStatus levels
REJECTED = "frames rejected"
SAVE_FAILURES = "map save failures"


@dataclass(frozen=True)
class Health:
    level: int
    message: str


class NodeStats:
    """Counters (in report order), latencies and health of one node; thread-safe.

    Every frame the worker takes ends as ``done`` (e.g. "frames processed") or as rejected
    (:meth:`frame`). Health: ERROR when the last map save failed (until one succeeds), or every one of
    at least ``min_frames`` recent frames was rejected; WARN when more than ``warn_fraction`` of the
    recent frames were rejected, or no frame arrived for ``frame_timeout`` seconds from one of the
    ``sources`` (a camera name -> what to call it in the message, e.g. its topics; a plain string: one
    unnamed camera). Each camera is watched on its own, so a dead rear camera shows while the front
    one streams.
    """

    def __init__(self, counters: Sequence[str], done: str, frame_timeout: float = 5.0,
                 sources: str | Mapping[str, str] = "the camera", readers: Mapping[str, Callable[[], int]] = {},
                 window: int = 50, warn_fraction: float = 0.2, min_frames: int = 5) -> None:
        self._counts: dict[str, int] = dict.fromkeys(counters, 0)
        self._readers = dict(readers)  # counter -> the count its owner keeps
        self.done, self.frame_timeout = done, frame_timeout
        self.warn_fraction, self.min_frames = warn_fraction, min_frames
        self.latency, self.model_time = LatencyStats(), LatencyStats()  # frame received -> published; the model's share
        self._outcomes: deque[bool] = deque(maxlen=window)  # True: rejected
        self.sources = {"": sources} if isinstance(sources, str) else dict(sources)
        self.save_error: str | None = None
        self._last_frame: dict[str, float | None] = dict.fromkeys(self.sources)
        self._started = time.monotonic()
        self._lock = threading.Lock()

    def count(self, counter: str, n: int = 1) -> None:
        with self._lock:
            self._counts[counter] += n  # KeyError for a counter the report does not have

    def received(self, source: str = "") -> None:
        """A frame arrived from ``source`` (whatever becomes of it)."""
        with self._lock:
            self._last_frame[source] = time.monotonic()

    def frame(self, rejected: bool, n: int = 1) -> None:
        """``n`` frames ended: rejected, or ``done``."""
        with self._lock:
            self._counts[REJECTED if rejected else self.done] += n
            self._outcomes.extend([rejected] * n)

    def saved(self, error: str | None) -> None:
        """Record a save: None when it succeeded, else why it failed (counted)."""
        with self._lock:
            self.save_error = error
            if error:
                self._counts[SAVE_FAILURES] += 1

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {name: self._readers[name]() if name in self._readers else n for name, n in self._counts.items()}

    def values(self) -> dict[str, int | str]:
        """The ``/diagnostics`` values: every counter, then the latencies."""
        return {**self.counts(), "latency p50 ms": f"{1000 * self.latency.percentile(50):.1f}",
                "latency p95 ms": f"{1000 * self.latency.percentile(95):.1f}",
                "model p50 ms": f"{1000 * self.model_time.percentile(50):.1f}"}

    def status(self) -> Health:
        with self._lock:
            outcomes, save_error = list(self._outcomes), self.save_error
            now, last = time.monotonic(), dict(self._last_frame)
        if save_error:
            return Health(ERROR, f"map not saved: {save_error}")
        bad = sum(outcomes)
        if len(outcomes) >= self.min_frames and bad == len(outcomes):
            return Health(ERROR, f"all of the last {len(outcomes)} frames rejected")
        if outcomes and bad / len(outcomes) > self.warn_fraction:
            return Health(WARN, f"{bad} of the last {len(outcomes)} frames rejected")
        silent = [f"{'no frame yet' if t is None else 'no frame'} for {now - (t or self._started):.0f} s on "
                  f"{self.sources.get(name, name)}" for name, t in last.items()
                  if now - (t or self._started) > self.frame_timeout]
        if silent:
            return Health(WARN, "; ".join(silent))
        return Health(OK, "")
