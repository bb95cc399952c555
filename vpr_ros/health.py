"""Pipeline health for ``/diagnostics``: the status follows what actually happens to frames and saves.

A node that rejects every frame (a model that outputs NaN, a camera sending an unsupported
encoding) or cannot save its map must not report OK. :class:`HealthMonitor` keeps the outcome of
the last ``window`` frames and the last save, and turns them into a diagnostic level and message.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

OK, WARN, ERROR = 0, 1, 2  # diagnostic_msgs/DiagnosticStatus levels


@dataclass(frozen=True)
class Health:
    level: int
    message: str


class HealthMonitor:
    """Rolling frame outcomes and the last save result -> OK / WARN / ERROR.

    ERROR: the last map save failed (until one succeeds), or every one of at least ``min_frames``
    recent frames was rejected. WARN: more than ``warn_fraction`` of the recent frames were rejected,
    or no frame arrived for ``frame_timeout`` seconds from one of the ``sources`` (a camera name ->
    what to call it in the message, e.g. its topics; a plain string: one unnamed camera). Each camera
    is watched on its own, so a dead rear camera shows while the front one streams.
    """

    def __init__(self, window: int = 50, warn_fraction: float = 0.2, min_frames: int = 5,
                 frame_timeout: float = 5.0, sources: str | Mapping[str, str] = "the camera") -> None:
        self._outcomes: deque[bool] = deque(maxlen=window)  # True: rejected
        self.warn_fraction, self.min_frames = warn_fraction, min_frames
        self.frame_timeout = frame_timeout
        self.sources = {"": sources} if isinstance(sources, str) else dict(sources)
        self.save_error: str | None = None
        self._last_frame: dict[str, float | None] = dict.fromkeys(self.sources)
        self._started = time.monotonic()
        self._lock = threading.Lock()

    def received(self, source: str = "") -> None:
        """A frame arrived from ``source`` (whatever becomes of it)."""
        with self._lock:
            self._last_frame[source] = time.monotonic()

    def frame(self, rejected: bool) -> None:
        with self._lock:
            self._outcomes.append(rejected)

    def saved(self, error: str | None) -> None:
        """Record a save: None when it succeeded, else why it failed."""
        with self._lock:
            self.save_error = error

    def status(self) -> Health:
        with self._lock:
            outcomes, save_error = list(self._outcomes), self.save_error
        if save_error:
            return Health(ERROR, f"map not saved: {save_error}")
        bad = sum(outcomes)
        if len(outcomes) >= self.min_frames and bad == len(outcomes):
            return Health(ERROR, f"all of the last {len(outcomes)} frames rejected")
        if outcomes and bad / len(outcomes) > self.warn_fraction:
            return Health(WARN, f"{bad} of the last {len(outcomes)} frames rejected")
        with self._lock:
            now, last = time.monotonic(), dict(self._last_frame)
        silent = [f"{'no frame yet' if t is None else 'no frame'} for {now - (t or self._started):.0f} s on "
                  f"{self.sources.get(name, name)}" for name, t in last.items()
                  if now - (t or self._started) > self.frame_timeout]
        if silent:
            return Health(WARN, "; ".join(silent))
        return Health(OK, "")
