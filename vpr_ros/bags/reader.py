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
the image stamps by :class:`vpr_ros.bags.poses.PoseBuffer`. Bags to test with: :mod:`vpr_ros.bags.writer`.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import queue
import sqlite3
import struct
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.rosbag1 import ReaderError as Rosbag1ReaderError
from rosbags.rosbag2 import ReaderError as Rosbag2ReaderError
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, TypesysError, get_typestore
from rosbags.typesys.store import Typestore

from vpr_ros.bags.geodesy import enu_frame, geodetic_to_enu
from vpr_ros.bags.poses import PoseBuffer, pose_from_msg
from vpr_ros.errors import BadFrame, BagError, InputError, MissingFileError, VprError
from vpr_ros.image_msgs import image_to_rgb, stamp_of
from vpr_ros.io.files import file_kind
from vpr_ros.types import Pose, Stamped, format_stamp, ns_to_seconds, to_ns

LOG = logging.getLogger(__name__)

try:  # rosbags reads sqlite3 bags through apsw when it is installed
    import apsw

    _APSW_ERRORS: tuple[type[BaseException], ...] = (apsw.Error,)
except ImportError:
    _APSW_ERRORS = ()

Storage = Literal["mcap", "sqlite3", "ros1"]
ImageFormat = Literal["raw", "jpeg", "png"]
PoseType = Literal["odometry", "pose_stamped", "pose_cov", "navsatfix"]

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
NAVSATFIX = "sensor_msgs/msg/NavSatFix"
POSE_MSGTYPES = {
    "odometry": "nav_msgs/msg/Odometry",
    "pose_stamped": "geometry_msgs/msg/PoseStamped",
    "pose_cov": "geometry_msgs/msg/PoseWithCovarianceStamped",
    "navsatfix": NAVSATFIX,
}
IMAGE_MSGTYPES = frozenset({IMAGE, COMPRESSED})
STORAGES: tuple[str, ...] = ("mcap", "sqlite3", "ros1")
RAW_ENCODINGS: tuple[str, ...] = ("rgb8", "bgr8", "mono8", "mono16")

# What rosbags' backends raise on a damaged or truncated bag (found by corrupting and truncating bags
# of each storage): reported as a damaged bag naming the file. Anything else is a bug and propagates.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    AnyReaderError, Rosbag1ReaderError, Rosbag2ReaderError, SerdeError, TypesysError, sqlite3.DatabaseError,
    struct.error, OverflowError, AssertionError, EOFError, KeyError, IndexError, TypeError, ValueError, OSError,
    *_APSW_ERRORS,
)

UNDECODABLE = "undecodable message"  # a bad-frame reason: the message itself does not deserialize
REORDER_FRAMES = 16  # image messages held back to emit them in header.stamp order


@cache
def typestore(storage: str) -> Typestore:
    """Message types of ROS 1 (Noetic) or ROS 2 (Kilted) bags."""
    return get_typestore(Stores.ROS1_NOETIC if storage == "ros1" else Stores.ROS2_KILTED)


# -- reading -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicSummary:
    name: str
    msgtype: str
    count: int


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


def _describe_error(path: Path, exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{path}: cannot read the bag, it is damaged or truncated ({type(exc).__name__}: {text})"


# The first bytes of each storage's files: a file without them is no bag at all, not a damaged one.
_MAGIC = {".bag": (b"#ROSBAG V2.0\n", "ROS 1 bag"), ".mcap": (b"\x89MCAP0\r\n", "MCAP file"),
          ".db3": (b"SQLite format 3\x00", "SQLite database")}
_BAG_KINDS = "a ROS 1 .bag file, a ROS 2 bag folder (with metadata.yaml) or an .mcap / .db3 file"


def _not_a_bag(path: Path) -> str | None:
    """Why ``path`` is no bag at all (a folder without metadata.yaml, a FIFO, another kind of file), or None."""
    if path.is_dir():
        if (path / "metadata.yaml").is_file():
            return None
        inside = sorted(p.name for p in path.iterdir() if p.suffix in (".mcap", ".db3"))[:3]
        hint = f"; it holds {', '.join(inside)}: pass that file" if inside else ""
        return f"a folder without metadata.yaml{hint} (expected {_BAG_KINDS})"
    if not path.is_file():  # a FIFO would block the read forever
        return f"it is {file_kind(path.stat().st_mode)} (expected {_BAG_KINDS})"
    if path.suffix not in _MAGIC:
        return f"no bag file name ends in {path.suffix or 'nothing'!r} (expected {_BAG_KINDS})"
    magic, kind = _MAGIC[path.suffix]
    with path.open("rb") as f:
        head = f.read(len(magic))
    if not head:
        return "the file is empty (0 bytes)"
    if head != magic:
        return f"it does not start like a {kind} (first bytes {head!r})"
    return None


def open_bag(path: str | os.PathLike) -> AnyReader:
    """An open AnyReader for one bag (``.bag`` file, ROS 2 folder, ``.mcap`` or ``.db3`` file).

    Raises FileNotFoundError for a missing path and :class:`BagError`, naming the file, for one
    that is not a readable bag. The caller closes the reader.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"no bag at {path}")
    if (why := _not_a_bag(path)) is not None:
        raise BagError(f"{path} is not a bag: {why}")
    try:
        reader = AnyReader([path], default_typestore=typestore("ros1" if path.suffix == ".bag" else "mcap"))
        reader.open()
    except _READ_ERRORS as exc:
        raise BagError(_describe_error(path, exc)) from exc
    return reader


def list_topics(path: str | os.PathLike) -> list[TopicSummary]:
    """Topics of a bag with their message type and count, sorted by name."""
    reader = open_bag(path)
    try:
        return _topics(reader)
    finally:
        reader.close()


def _topics(reader: AnyReader) -> list[TopicSummary]:
    return [TopicSummary(name, info.msgtype or "?", info.msgcount) for name, info in sorted(reader.topics.items())]


def format_topics(topics: Sequence[TopicSummary]) -> str:
    return "\n".join(f"  {t.name}  [{t.msgtype}]  {t.count} messages" for t in topics) or "  (no topics)"


def _connections(reader: AnyReader, path: Path, topic: str, accepted: Iterable[str], what: str) -> list:
    """Connections of ``topic``; a missing topic or wrong type raises BagError listing what the bag has."""
    accepted = sorted(accepted)
    conns = [c for c in reader.connections if c.topic == topic]
    if not conns:
        raise BagError(f"{path} has no {what} topic {topic!r}; its topics are:\n{format_topics(_topics(reader))}")
    wrong = sorted({c.msgtype for c in conns} - set(accepted))
    if wrong:
        raise BagError(f"{path}: topic {topic!r} carries {', '.join(wrong)}; a {what} topic must carry "
                       f"{' or '.join(accepted)}")
    return conns


def check_bag(path: str | os.PathLike, image_topic: str, pose_topic: str | None = None) -> int:
    """Check that a bag opens and has the topics with usable types; returns its image message count.

    Cheap (reads only the index), so a command can refuse bad input before loading a model.
    """
    path = Path(path)
    reader = open_bag(path)
    try:
        conns = _connections(reader, path, image_topic, IMAGE_MSGTYPES, "image")
        if pose_topic:
            _connections(reader, path, pose_topic, POSE_MSGTYPES.values(), "pose")
        return sum(c.msgcount for c in conns)
    finally:
        reader.close()


def recording_start(paths: Sequence[str | os.PathLike]) -> int:
    """Receive time (ns) of the earliest message in any of ``paths``: time zero of ``start``/``end``."""
    starts = []
    for path in paths:
        reader = open_bag(path)
        try:
            starts.append(reader.start_time)
        finally:
            reader.close()
    return min(starts)


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
            except _READ_ERRORS as exc:
                if skipped is None:
                    raise
                LOG.warning("%s: undecodable %s message received at %s skipped: %s", path, conn.topic,
                            format_stamp(received), str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                skipped()
                continue
            yield received, msg
    except _READ_ERRORS as exc:
        raise BagError(_describe_error(path, exc)) from exc


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

    conns = _connections(reader, path, topic, POSE_MSGTYPES.values(), "pose")
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
    return (sec + nsec * 1e-9, geodetic_to_enu(*fix, origin), (0.0, 0.0, 0.0, 1.0), enu_frame(origin)), origin


def _stamp_ns(msg: Any) -> int:
    return to_ns(stamp_of(msg))


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
            stamp = _stamp_ns(msg)
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
    reader = open_bag(path)
    try:
        conns = _connections(reader, path, image_topic, IMAGE_MSGTYPES, "image")
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
    finally:
        reader.close()


def _decode(msg: Any, stamp: int, poses: PoseBuffer | None, source: str, stats: ReadStats,
            path: Path) -> Frame | None:
    stats.frames += 1
    try:
        rgb = image_to_rgb(msg)
    except BadFrame as exc:
        stats.bad[exc.reason] += 1
        LOG.warning("%s: bad frame at %s skipped: %s", path, format_stamp(stamp), exc)
        return None
    pose = poses.lookup(ns_to_seconds(stamp)) if poses is not None else None
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
    reader = open_bag(path)
    try:
        conns = _connections(reader, path, image_topic, IMAGE_MSGTYPES, "image")
        for lo, hi in ((target - window, target + window), (None, None)):
            for _, msg in _messages(reader, path, conns, lo, hi, skipped=lambda: None):
                if _stamp_ns(msg) == target:
                    return image_to_rgb(msg)
    except BadFrame:
        return None
    finally:
        reader.close()
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


# -- reading ahead -----------------------------------------------------------------------------------


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
