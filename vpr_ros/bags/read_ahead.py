"""Reading ahead: an iterator run in a background thread, so decoding overlaps with inference."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from vpr_ros.errors import InputError

_DONE = object()


class ReadAhead:
    """Runs an iterator in a background thread, ``depth`` items ahead of the consumer.

    Decoding (JPEG, colour conversion, deserialisation) then overlaps with batched inference,
    which releases the GIL. An exception in the producer is re-raised in the consumer; closing
    (or leaving the ``with`` block) stops the producer at its next item.
    """

    def __init__(self, items: Iterable[Any], depth: int = 64) -> None:
        if depth < 1:
            raise InputError(f"depth must be >= 1, got {depth}")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items,), name="bag-read-ahead", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, items: Iterable[Any]) -> None:
        try:
            for item in items:
                if not self._put((item, None)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put((_DONE, exc))
            return
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a generator: run its cleanup (closing its bag) in this thread
                close()
        self._put((_DONE, None))

    def __iter__(self) -> Iterator[Any]:
        while True:
            item, exc = self._queue.get()
            if item is _DONE:
                if exc is not None:
                    raise exc
                return
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
