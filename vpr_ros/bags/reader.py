"""Camera frames and poses from rosbags (ROS 1 ``.bag``, ROS 2 sqlite3 and mcap).

Reading goes through ``rosbags.highlevel.AnyReader`` and converts every image with
:func:`vpr_ros.image_msgs.image_to_rgb`, the same path the live node uses, so an offline map sees
the pixels the node would see. Frames are keyed by ``header.stamp`` (when the camera saw the
scene), never by the bag's receive time (when the recorder got the message, milliseconds to
seconds later). Receive order and stamp order can differ, so a small reorder buffer emits frames
in stamp order.

Poses come from ``nav_msgs/Odometry``, ``geometry_msgs/PoseStamped``,
``geometry_msgs/PoseWithCovarianceStamped`` or ``sensor_msgs/NavSatFix`` (converted to metres in a
local east-north-up frame around an origin fix, :mod:`vpr_ros.bags.geodesy`) and are interpolated at
the image stamps by :class:`vpr_ros.poses.PoseBuffer`. Opening and checking a bag: :mod:`vpr_ros.bags.bag_files`;
bags to test with: :mod:`vpr_ros.bags.writer`.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.highlevel import AnyReader

from vpr_ros.bags.bag_files import IMAGE_MSGTYPES, POSE_MSGTYPES, READ_ERRORS, connections, describe_error, open_bag
from vpr_ros.bags.geodesy import enu_frame, geodetic_to_enu
from vpr_ros.errors import BadFrame, BagError, VprError
from vpr_ros.image_msgs import image_to_rgb, stamp_of
from vpr_ros.poses import PoseBuffer, pose_from_msg
from vpr_ros.types import Pose, Stamped, format_stamp, to_ns

LOG = logging.getLogger(__name__)

UNDECODABLE = "undecodable message"  # a bad-frame reason: the message itself does not deserialize
REORDER_FRAMES = 16  # image messages held back to emit them in header.stamp order


@dataclass
class Frame(Stamped):
    """One decoded camera frame: header stamp, RGB pixels, interpolated pose (None: none near)."""

    stamp_ns: int  # header.stamp, integer nanoseconds
    rgb: np.ndarray
    pose: Pose | None
    frame_id: str
    source: str  # "bag path#image topic": where the frame can be read again (a place's source)


@dataclass
class ReadStats:
    """What reading skipped, for the build summary: bad frames by reason, stamp regressions."""

    frames: int = 0
    bad: Counter = field(default_factory=Counter)
    out_of_order: int = 0
    pose_samples: int = 0
    pose_rejected: int = 0  # NavSatFix without a fix, non-finite values

    @property
    def bad_frames(self) -> int:
        return sum(self.bad.values())


def _messages(reader: AnyReader, path: Path, conns: list, start: int | None = None, stop: int | None = None,
              skipped: Callable[[], None] | None = None) -> Iterator[tuple[int, Any]]:
    """(receive ns, deserialized message) of ``conns``; a damaged bag raises BagError naming the file.

    With ``skipped``, one message that does not deserialize (a ``frame_id`` that is no UTF-8, a cut
    field) is logged, reported to ``skipped`` and passed over: the rest of the bag is still read.
    """
    try:
        for conn, received, raw in reader.messages(connections=conns, start=start, stop=stop):
            try:
                msg = reader.deserialize(raw, conn.msgtype)
            except READ_ERRORS as exc:
                if skipped is None:
                    raise
                LOG.warning("%s: undecodable %s message received at %s skipped: %s", path, conn.topic,
                            format_stamp(received), str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                skipped()
                continue
            yield received, msg
    except READ_ERRORS as exc:
        raise BagError(describe_error(path, exc)) from exc


def load_poses(
    reader: AnyReader,
    path: Path,
    topic: str,
    max_gap_s: float,
    enu_origin: tuple[float, float, float] | None = None,
    stats: ReadStats | None = None,
) -> tuple[PoseBuffer, tuple[float, float, float] | None]:
    """Every pose sample of ``topic`` in a PoseBuffer keyed by header stamp.

    NavSatFix fixes become ENU metres around ``enu_origin`` (default: the first valid fix, which
    is returned so later bags and appends share it); fixes without a fix status are dropped.
    """
    stats = stats if stats is not None else ReadStats()
    buffer = PoseBuffer(max_age_s=math.inf, max_gap_s=max_gap_s)
    def rejected() -> None:
        stats.pose_rejected += 1

    conns = connections(reader, path, topic, POSE_MSGTYPES.values(), "pose")
    for _, msg in _messages(reader, path, conns, skipped=rejected):
        try:
            if hasattr(msg, "latitude"):
                sample, enu_origin = _navsat_sample(msg, enu_origin)
                if sample is None:
                    stats.pose_rejected += 1
                    continue
            else:
                sample = pose_from_msg(msg)
            buffer.add(*sample)
            stats.pose_samples += 1
        except ValueError as exc:  # non-finite values: skip the sample, keep the rest
            LOG.debug("%s: pose sample skipped: %s", path, exc)
            stats.pose_rejected += 1
    return buffer, enu_origin


def _navsat_sample(msg: Any, origin: tuple[float, float, float] | None) -> tuple[tuple | None, Any]:
    fix = (float(msg.latitude), float(msg.longitude), float(msg.altitude))
    if int(msg.status.status) < 0 or not all(math.isfinite(v) for v in fix):  # STATUS_NO_FIX / UNKNOWN
        return None, origin
    origin = origin or fix
    sec, nsec = stamp_of(msg)
    return (to_ns((sec, nsec)), geodetic_to_enu(*fix, origin), (0.0, 0.0, 0.0, 1.0), enu_frame(origin)), origin


def _in_stamp_order(messages: Iterable[tuple[int, Any]], stats: ReadStats, window: int = REORDER_FRAMES,
                    ) -> Iterator[tuple[int, Any]]:
    """(stamp ns, message) in header.stamp order, given messages in receive order.

    A heap of ``window`` messages absorbs the usual jitter between receive and stamp order; a
    message older than one already emitted (reordered beyond the window) is counted and dropped,
    since places must be in stamp order. Messages without a usable stamp are counted as bad.
    """
    heap: list[tuple[int, int, Any]] = []
    last = None
    for seq, (_, msg) in enumerate(messages):
        try:
            stamp = to_ns(stamp_of(msg))
        except BadFrame as exc:
            stats.bad[exc.reason] += 1
            continue
        heapq.heappush(heap, (stamp, seq, msg))
        if len(heap) > window:
            last = yield from _emit(heapq.heappop(heap), last, stats)
    while heap:
        last = yield from _emit(heapq.heappop(heap), last, stats)


def _emit(item: tuple[int, int, Any], last: int | None, stats: ReadStats) -> Iterator[tuple[int, Any]]:
    stamp, _, msg = item
    if last is not None and stamp <= last:
        stats.out_of_order += 1
        return last
    yield stamp, msg
    return stamp


def read_frames(
    path: str | os.PathLike,
    image_topic: str,
    *,
    pose_topic: str | None = None,
    start: float | None = None,
    end: float | None = None,
    time_zero_ns: int | None = None,
    max_pose_gap: float = 0.5,
    enu_origin: tuple[float, float, float] | None = None,
    stats: ReadStats | None = None,
    on_origin: Callable[[tuple[float, float, float]], None] | None = None,
) -> Iterator[Frame]:
    """Decoded frames of one bag's ``image_topic`` in header.stamp order, with poses when asked.

    ``start``/``end`` are seconds after ``time_zero_ns`` (default: the bag's first message) on
    the bag's receive clock, which lets the reader seek. Bad frames are counted in ``stats`` and
    logged, not raised. ``on_origin`` learns the NavSatFix ENU origin once it is known.
    """
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    with closing(open_bag(path)) as reader:
        conns = connections(reader, path, image_topic, IMAGE_MSGTYPES, "image")
        poses = None
        if pose_topic:
            poses, enu_origin = load_poses(reader, path, pose_topic, max_pose_gap, enu_origin, stats)
            if enu_origin is not None and on_origin is not None:
                on_origin(enu_origin)
        zero = reader.start_time if time_zero_ns is None else time_zero_ns
        lo = None if start is None else zero + int(start * 1e9)
        hi = None if end is None else zero + int(end * 1e9) + 1
        source = f"{path.resolve()}#{image_topic}"
        def undecodable() -> None:  # a frame read and counted bad, like a frame that does not convert
            stats.frames += 1
            stats.bad[UNDECODABLE] += 1

        for stamp, msg in _in_stamp_order(_messages(reader, path, conns, lo, hi, undecodable), stats):
            frame = _decode(msg, stamp, poses, source, stats, path)
            if frame is not None:
                yield frame


def _decode(msg: Any, stamp: int, poses: PoseBuffer | None, source: str, stats: ReadStats,
            path: Path) -> Frame | None:
    stats.frames += 1
    try:
        rgb = image_to_rgb(msg)
    except BadFrame as exc:
        stats.bad[exc.reason] += 1
        LOG.warning("%s: bad frame at %s skipped: %s", path, format_stamp(stamp), exc)
        return None
    pose = poses.lookup(stamp) if poses is not None else None
    return Frame(stamp, rgb, pose, str(msg.header.frame_id), source)


def frame_at(path: str | os.PathLike, image_topic: str, stamp: tuple[int, int],
             window_s: float = 2.0) -> np.ndarray | None:
    """RGB of the frame stamped ``stamp`` (sec, nanosec), or None.

    Looks first within ``window_s`` of that time on the receive clock (a seek), then through the
    whole topic (bags recorded with simulated time stamp headers on another clock).
    """
    path = Path(path)
    target = to_ns(stamp)
    window = int(window_s * 1e9)
    with closing(open_bag(path)) as reader:
        conns = connections(reader, path, image_topic, IMAGE_MSGTYPES, "image")
        with suppress(BadFrame):  # a damaged frame has no image
            for lo, hi in ((target - window, target + window), (None, None)):
                for _, msg in _messages(reader, path, conns, lo, hi, skipped=lambda: None):
                    if to_ns(stamp_of(msg)) == target:
                        return image_to_rgb(msg)
    return None


def place_image(place: Any, moved_bags: Mapping[str, Path] | None = None) -> np.ndarray | None:
    """RGB of the frame a place was made from, read back through its ``source``, or None.

    ``source`` is ``"<bag path>#<image topic>"`` (maps built from bags: the frame stamped like the
    place is looked up in that bag; ``moved_bags`` maps a bag's file name to where it is now) or
    the path of an image file. Anything else (e.g. a live node's topic name) has no image.
    """
    from vpr_ros.preprocess import load_image

    bag, sep, topic = place.source.rpartition("#")
    try:
        if sep and bag and topic:
            return frame_at((moved_bags or {}).get(Path(bag).name, Path(bag)), topic, place.stamp)
        if place.source and Path(place.source).is_file():
            return load_image(place.source)
    except (VprError, OSError) as exc:
        LOG.warning("no image for place %d: %s", place.id, str(exc).splitlines()[0])
    return None
