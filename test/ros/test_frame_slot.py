"""LatestSlot keeps the worker on the newest frame with no backlog; LatencyStats stays bounded."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from vpr_ros.ros.frame_slot import LatencyStats, LatestSlot


def test_fast_producer_slow_consumer_gets_newest_without_backlog() -> None:
    slot: LatestSlot[int] = LatestSlot()
    n = 20_000
    last_put = -1  # written by the producer after each put completes
    taken: list[int] = []
    errors: list[BaseException] = []
    max_pending = 0

    def produce() -> None:
        nonlocal last_put, max_pending
        for i in range(n):
            slot.put(i)
            last_put = i
            max_pending = max(max_pending, slot.pending)
            if i % 500 == 0:
                time.sleep(0.001)  # let the consumer in now and then

    def consume() -> None:
        try:
            while True:
                floor = last_put  # anything put before this take started is no newer than what we get
                item = slot.take(timeout=0.2)
                if item is None:
                    return
                assert item >= floor
                assert not taken or item > taken[-1]
                taken.append(item)
                time.sleep(0.002)  # the slow descriptor model
        except BaseException as exc:  # reported to the main thread
            errors.append(exc)

    consumer = threading.Thread(target=consume)
    consumer.start()
    produce()
    consumer.join(timeout=10)
    assert not consumer.is_alive() and not errors
    assert taken[-1] == n - 1  # after the producer stops, the worker ends on the very last frame
    assert max_pending <= 1
    assert slot.received == n and slot.taken == len(taken)
    assert slot.dropped == slot.received - slot.taken - slot.pending
    assert slot.dropped > n // 2  # the producer really was faster


def test_put_reports_replacement() -> None:
    slot: LatestSlot[str] = LatestSlot()
    assert slot.put("a") is False
    assert slot.put("b") is True
    assert slot.take(0) == "b"
    assert slot.take(0) is None
    assert (slot.received, slot.dropped, slot.taken, slot.pending) == (2, 1, 1, 0)


def test_take_times_out() -> None:
    slot: LatestSlot[int] = LatestSlot()
    start = time.monotonic()
    assert slot.take(timeout=0.05) is None
    assert 0.04 <= time.monotonic() - start < 1.0


def test_close_wakes_a_blocked_take_and_ends_the_slot() -> None:
    slot: LatestSlot[int] = LatestSlot()
    result: list[int | None] = []
    taker = threading.Thread(target=lambda: result.append(slot.take(timeout=None)))
    taker.start()
    time.sleep(0.05)
    assert taker.is_alive()  # really blocked
    slot.close()
    taker.join(timeout=2)
    assert not taker.is_alive() and result == [None]
    assert slot.put(1) is False and slot.take(0) is None and slot.received == 0 and slot.closed


def test_item_pending_at_close_counts_as_dropped() -> None:
    slot: LatestSlot[int] = LatestSlot()
    slot.put(1)
    slot.close()
    assert slot.take(0) is None
    assert (slot.received, slot.dropped, slot.taken, slot.pending) == (1, 1, 0, 0)


def test_latency_percentiles_on_known_data() -> None:
    stats = LatencyStats()
    assert math.isnan(stats.percentile(50)) and stats.count == 0
    for ms in range(1, 101):
        stats.add(ms / 1000)
    assert stats.percentile(0) == pytest.approx(0.001)
    assert stats.percentile(50) == pytest.approx(0.0505)
    assert stats.percentile(90) == pytest.approx(0.0901)
    assert stats.percentile(100) == pytest.approx(0.100)
    with pytest.raises(ValueError):
        stats.percentile(101)
    with pytest.raises(ValueError):
        stats.add(math.nan)


def test_latency_window_is_bounded() -> None:
    stats = LatencyStats(window=10)
    for v in range(1000):
        stats.add(float(v))
    assert stats.count == 1000 and len(stats) == 10
    assert (stats.percentile(0), stats.percentile(100)) == (990.0, 999.0)
    assert stats._values.nbytes == 10 * 8  # the ring buffer never grows


def test_latency_stats_across_threads() -> None:
    stats = LatencyStats(window=500)
    values = np.random.default_rng(3).uniform(0.01, 0.02, 4000)
    threads = [threading.Thread(target=lambda part=part: [stats.add(v) for v in part])
               for part in np.array_split(values, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stats.count == 4000 and len(stats) == 500
    assert 0.01 <= stats.percentile(1) <= stats.percentile(99) <= 0.02


def test_one_slot_per_camera_and_take_all_returns_each_newest() -> None:
    """A newer frame replaces only its own camera's pending frame; take_all hands over one per camera."""
    slot: LatestSlot[str] = LatestSlot()
    assert slot.put("f1", key="front") is False
    assert slot.put("r1", key="rear") is False
    assert slot.put("f2", key="front") is True  # replaces f1, not r1
    assert slot.pending == 2
    assert slot.take_all(0) == ["f2", "r1"]
    assert (slot.received, slot.taken, slot.dropped, slot.pending) == (3, 2, 1, 0)
    assert slot.take_all(0.01) == []
    slot.put("r2", key="rear")
    slot.close()
    assert slot.take_all() == [] and slot.dropped == 2
