"""Bag files before any frame is read: the storages and message types this package reads and writes,
refusing what is no bag (by its first bytes) apart from a damaged one, opening a bag, its topics and
the connections of one topic, all with errors that name the file."""

from __future__ import annotations

import os
import sqlite3
import struct
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.rosbag1 import ReaderError as Rosbag1ReaderError
from rosbags.rosbag2 import ReaderError as Rosbag2ReaderError
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, TypesysError, get_typestore
from rosbags.typesys.store import Typestore

from vpr_ros.errors import BagError, MissingFileError
from vpr_ros.io.files import file_kind

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
READ_ERRORS: tuple[type[BaseException], ...] = (
    AnyReaderError, Rosbag1ReaderError, Rosbag2ReaderError, SerdeError, TypesysError, sqlite3.DatabaseError,
    struct.error, OverflowError, AssertionError, EOFError, KeyError, IndexError, TypeError, ValueError, OSError,
    *_APSW_ERRORS,
)

@cache
def typestore(storage: str) -> Typestore:
    """Message types of ROS 1 (Noetic) or ROS 2 (Kilted) bags."""
    return get_typestore(Stores.ROS1_NOETIC if storage == "ros1" else Stores.ROS2_KILTED)


@dataclass(frozen=True)
class TopicSummary:
    name: str
    msgtype: str
    count: int


def describe_error(path: Path, exc: BaseException) -> str:
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
    except READ_ERRORS as exc:
        raise BagError(describe_error(path, exc)) from exc
    return reader


def list_topics(path: str | os.PathLike) -> list[TopicSummary]:
    """Topics of a bag with their message type and count, sorted by name."""
    with closing(open_bag(path)) as reader:
        return _topics(reader)


def _topics(reader: AnyReader) -> list[TopicSummary]:
    return [TopicSummary(name, info.msgtype or "?", info.msgcount) for name, info in sorted(reader.topics.items())]


def format_topics(topics: Sequence[TopicSummary]) -> str:
    return "\n".join(f"  {t.name}  [{t.msgtype}]  {t.count} messages" for t in topics) or "  (no topics)"


def connections(reader: AnyReader, path: Path, topic: str, accepted: Iterable[str], what: str) -> list:
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
    with closing(open_bag(path)) as reader:
        conns = connections(reader, path, image_topic, IMAGE_MSGTYPES, "image")
        if pose_topic:
            connections(reader, path, pose_topic, POSE_MSGTYPES.values(), "pose")
        return sum(c.msgcount for c in conns)


def recording_start(paths: Sequence[str | os.PathLike]) -> int:
    """Receive time (ns) of the earliest message in any of ``paths``: time zero of ``start``/``end``."""
    starts = []
    for path in paths:
        with closing(open_bag(path)) as reader:
            starts.append(reader.start_time)
    return min(starts)
