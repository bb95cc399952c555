"""One object owns what a node reports: counters in report order (its own and those read from the frame slot),
latencies, and the health they add up to (rejected frames, failed saves, silent cameras)."""

from __future__ import annotations

import pytest

from vpr_ros.ros import node_stats
from vpr_ros.ros.frame_slot import LatestSlot
from vpr_ros.ros.node_stats import ERROR, OK, WARN, Health, NodeStats

COUNTERS = ["frames received", "frames dropped (busy)", "frames processed", "frames rejected", "poses rejected",
            "map save failures"]


def test_counters_add_up_and_keep_their_order() -> None:
    """Every frame received is dropped (busy), processed or rejected; the report lists them in the given order."""
    slot: LatestSlot[int] = LatestSlot()
    stats = NodeStats(COUNTERS, "frames processed", readers={"frames received": lambda: slot.received,
                                                             "frames dropped (busy)": lambda: slot.dropped})
    for i in range(10):
        slot.put(i)
        if i % 3 == 0:  # the worker takes every third frame: the others replace each other
            (item,) = slot.take_all()
            stats.frame(rejected=item == 6)
    slot.put(10)
    batch = slot.take_all()
    stats.frame(rejected=True, n=len(batch))
    stats.count("poses rejected", 2)
    counts = stats.counts()
    assert list(counts) == COUNTERS
    assert counts == {"frames received": 11, "frames dropped (busy)": 6, "frames processed": 3,
                      "frames rejected": 2, "poses rejected": 2, "map save failures": 0}
    assert counts["frames received"] == sum(counts[k] for k in COUNTERS[1:4])
    with pytest.raises(KeyError):
        stats.count("frames lost")  # a counter the report does not have is a bug, not a new line
    values = stats.values()
    assert list(values) == [*COUNTERS, "latency p50 ms", "latency p95 ms", "model p50 ms"]
    assert values["latency p50 ms"] == "nan"
    stats.latency.add(0.02)
    stats.model_time.add(0.01)
    assert stats.values()["latency p95 ms"] == "20.0" and stats.values()["model p50 ms"] == "10.0"


def test_health_follows_rejections_and_saves() -> None:
    stats = NodeStats(COUNTERS, "frames processed", frame_timeout=1e9)
    assert stats.status() == Health(OK, "")
    stats.frame(rejected=True, n=5)
    assert stats.status() == Health(ERROR, "all of the last 5 frames rejected")
    stats.frame(rejected=False, n=15)
    assert stats.status() == Health(WARN, "5 of the last 20 frames rejected")
    stats.frame(rejected=False, n=50)
    assert stats.status() == Health(OK, "")
    stats.saved("disk full")
    assert stats.status() == Health(ERROR, "map not saved: disk full") and stats.counts()["map save failures"] == 1
    stats.saved(None)
    assert stats.status() == Health(OK, "") and stats.counts()["map save failures"] == 1


def test_a_silent_camera_warns_while_the_other_streams(monkeypatch) -> None:
    """The frame timeout is per camera: the rear camera dying shows even though front frames arrive."""
    now = [1000.0]
    monkeypatch.setattr(node_stats.time, "monotonic", lambda: now[0])
    monitor = NodeStats(COUNTERS, "frames processed", frame_timeout=5.0,
                        sources={"front": "/front/image_raw", "rear": "/rear/image_raw"})
    monitor.received("front")
    monitor.received("rear")
    for _ in range(10):  # 10 s of front frames only
        now[0] += 1.0
        monitor.received("front")
        monitor.frame(rejected=False)
    status = monitor.status()
    assert status.level == WARN
    assert status.message == "no frame for 10 s on /rear/image_raw"
    monitor.received("rear")
    assert monitor.status() == Health(OK, "")
    now[0] += 6.0  # now both are silent: both named
    assert monitor.status().message == "no frame for 6 s on /front/image_raw; no frame for 6 s on /rear/image_raw"
