"""Hand-over between camera callbacks and a slower descriptor worker: keep only the newest frame of each camera.

A queue would let the worker fall further behind the camera with every frame; for place
recognition an old frame is worth less than the current one, so the slot holds at most one item
and a new frame replaces (drops) the one still waiting. :class:`LatencyStats` keeps a bounded
window of latencies for the node's periodic report.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

import numpy as np

T = TypeVar("T")


def _locked(name: str, lock: str = "_cond") -> property:
    """The attribute ``name``, read under the lock held in the attribute ``lock``."""

    def read(owner: Any) -> Any:
        with getattr(owner, lock):
            return getattr(owner, name)

    return property(read)


class LatestSlot(Generic[T]):
    """Mailbox of one item per key (per camera): ``put`` never blocks, ``take_all`` waits for the newest
    item of every key that has one, so a worker describes all cameras' latest frames in one batch.

    Counters (over all keys) obey ``dropped == received - taken - pending`` at all times (items still
    pending at ``close`` count as dropped). Puts after ``close`` are ignored and not counted.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: dict[Hashable, T] = {}
        self._closed = False
        self._received = 0
        self._dropped = 0
        self._taken = 0

    def put(self, item: T, key: Hashable = "") -> bool:
        """Offer ``item`` under ``key``; True if it replaced a pending item of that key (that one is dropped)."""
        with self._cond:
            if self._closed:
                return False
            replaced = key in self._items
            self._received += 1
            self._dropped += replaced
            self._items[key] = item
            self._cond.notify()
            return replaced

    def take_all(self, timeout: float | None = None) -> list[T]:
        """The pending items of every key, oldest key first, waiting up to ``timeout`` s (None: forever)
        for one; an empty list on timeout or close."""
        with self._cond:
            self._cond.wait_for(lambda: bool(self._items) or self._closed, timeout)
            if self._closed:
                return []
            items = list(self._items.values())
            self._items.clear()
            self._taken += len(items)
            return items

    def take(self, timeout: float | None = None) -> T | None:
        """One pending item (the oldest key's), waiting up to ``timeout`` s; None on timeout or close."""
        with self._cond:
            self._cond.wait_for(lambda: bool(self._items) or self._closed, timeout)
            if self._closed or not self._items:
                return None
            self._taken += 1
            return self._items.pop(next(iter(self._items)))

    def close(self) -> None:
        """Wake every waiting take; from now on takes return nothing and puts are ignored."""
        with self._cond:
            if not self._closed:
                self._closed = True
                self._dropped += len(self._items)
                self._items.clear()
            self._cond.notify_all()

    closed = _locked("_closed")
    received = _locked("_received")
    dropped = _locked("_dropped")
    taken = _locked("_taken")

    @property
    def pending(self) -> int:
        """How many items wait to be taken (at most one per key)."""
        with self._cond:
            return len(self._items)


class LatencyStats:
    """Latencies (seconds in, seconds out) over the last ``window`` samples, in a ring buffer."""

    def __init__(self, window: int = 1000) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self._values = np.zeros(int(window), np.float64)
        self._count = 0
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        """Record one latency; negative values (clock skew between machines) are kept as they are."""
        seconds = float(seconds)
        if not math.isfinite(seconds):
            raise ValueError(f"latency must be finite, got {seconds}")
        with self._lock:
            self._values[self._count % len(self._values)] = seconds
            self._count += 1

    count = _locked("_count", "_lock")  # samples added since creation (the window holds the last ``window``)

    def __len__(self) -> int:
        with self._lock:
            return min(self._count, len(self._values))

    def percentile(self, p: float) -> float:
        """The ``p``-th percentile (0-100, linear interpolation) in seconds; NaN when empty."""
        if not 0.0 <= p <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {p}")
        with self._lock:
            window = self._values[: min(self._count, len(self._values))].copy()
        return float(np.percentile(window, p)) if window.size else math.nan
