"""Pipeline health for ``/diagnostics``: the status follows what actually happens to frames and saves.

A node that rejects every frame (a model that outputs NaN, a camera sending an unsupported
encoding) or cannot save its map must not report OK. :class:`HealthMonitor` keeps the outcome of
the last ``window`` frames and the last save, and turns them into a diagnostic level and message.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

OK, WARN, ERROR = 0, 1, 2  # diagnostic_msgs/DiagnosticStatus levels


@dataclass(frozen=True)
class Health:
    level: int
    message: str


class HealthMonitor:
    """Rolling frame outcomes and the last save result -> OK / WARN / ERROR.

    ERROR: the last map save failed (until one succeeds), or every one of at least ``min_frames``
    recent frames was rejected. WARN: more than ``warn_fraction`` of the recent frames were rejected.
    """

    def __init__(self, window: int = 50, warn_fraction: float = 0.2, min_frames: int = 5) -> None:
        self._outcomes: deque[bool] = deque(maxlen=window)  # True: rejected
        self.warn_fraction, self.min_frames = warn_fraction, min_frames
        self.save_error: str | None = None
        self._lock = threading.Lock()

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
        return Health(OK, "")
