"""Play a bag over DDS with real rclpy publishers, as ``ros2 bag play`` would, from Python.

Used by the demo to feed the localization node, and usable on its own::

    python -m vpr_ros.ros.player demo_out/traversal2 --rate 2
    python -m vpr_ros.ros.player BAG --remap /camera/image_raw/compressed:=/front/image_raw/compressed

Messages go out on their recorded topics at their recorded (receive) times, scaled by ``rate``.
ROS 2 bags are published as the CDR bytes they hold; ROS 1 bags are converted to CDR first. The
player waits until the image topic has a subscriber matched, because anything published
before DDS has matched a reader is lost for that reader; with reliable QoS on both sides nothing
is lost after that.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rclpy.executors import Executor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from vpr_ros.bags.bag_files import format_topics, list_topics, open_bag, typestore
from vpr_ros.cli.arguments import number
from vpr_ros.errors import BagError, VprError

LOG = logging.getLogger(__name__)

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
MAX_RATE = 1000.0  # playback speed factors above this publish as fast as the machine can anyway
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


@dataclass
class Recorded:
    """One message ready to publish: receive time (ns) in the bag, topic, CDR bytes."""

    time_ns: int
    topic: str
    cdr: bytes


@dataclass
class PlayStats:
    published: dict[str, int]
    seconds: float  # wall time of the playback
    late_s: float  # worst lag behind the schedule (a sign the machine could not keep up)


# The message packages this project depends on (package.xml). A bag names its own types, so only
# these may be imported: a crafted type name must not choose which Python module gets imported.
MESSAGE_PACKAGES = frozenset({"builtin_interfaces", "std_msgs", "sensor_msgs", "geometry_msgs", "nav_msgs",
                              "visualization_msgs", "diagnostic_msgs"})
_MSGTYPE = re.compile(r"([a-z][a-z0-9_]*)/msg/([A-Z][A-Za-z0-9]*)")


def message_class(msgtype: str) -> type:
    """The rclpy class of a ``pkg/msg/Name`` type from one of :data:`MESSAGE_PACKAGES`."""
    match = _MSGTYPE.fullmatch(msgtype)
    if match is None or match[1] not in MESSAGE_PACKAGES:
        raise BagError(f"message type {msgtype!r} is not one the player publishes (packages: "
                       f"{', '.join(sorted(MESSAGE_PACKAGES))})")
    cls = getattr(importlib.import_module(f"{match[1]}.msg"), match[2], None)
    if not isinstance(cls, type):
        raise BagError(f"message type {msgtype!r} does not exist in {match[1]}")
    return cls


def playable(msgtype: str) -> bool:
    try:
        message_class(msgtype)
    except BagError:
        return False
    return True


def load_bag(path: str | Path, topics: Sequence[str] | None = None) -> tuple[list[Recorded], dict[str, str]]:
    """All messages of ``topics`` (default: every topic) in receive order, as CDR, and each
    topic's type. Loaded up front so that disk reads never delay the schedule."""
    reader = open_bag(path)
    ros2 = typestore("mcap")  # ROS 2 (Kilted) types
    try:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        if topics is not None and (missing := set(topics) - {c.topic for c in conns}):
            raise BagError(f"{path} has no topic {', '.join(sorted(missing))}")
        skipped = sorted({f"{c.topic} [{c.msgtype}]" for c in conns if not playable(c.msgtype)})
        if skipped and topics is not None:
            raise BagError(f"{path}: cannot publish {', '.join(skipped)}")
        if skipped:
            LOG.warning("%s: not publishing %s (not a message package this player knows)", path, ", ".join(skipped))
        conns = [c for c in conns if playable(c.msgtype)]
        if not conns:  # rosbags reads every connection when given none: nothing would have a publisher
            raise BagError(f"{path}: nothing to play, no topic has a message type the player publishes; its topics:\n"
                           f"{format_topics(list_topics(path))}")
        types = {c.topic: c.msgtype for c in conns}
        out = []
        for conn, t, raw in reader.messages(connections=conns):
            if not reader.is2:  # ROS 1 serialisation: re-serialise the message as ROS 2 CDR
                raw = ros2.serialize_cdr(reader.deserialize(raw, conn.msgtype), conn.msgtype)
            out.append(Recorded(t, conn.topic, bytes(raw)))
    finally:
        reader.close()
    return out, types


class BagPlayer:
    """Publishes a loaded bag from ``node``; the caller's executor is spun between messages, so
    the same thread can also run subscriptions that collect answers. ``remap`` maps a recorded
    topic to the topic it is published on."""

    def __init__(self, node: Node, messages: list[Recorded], types: dict[str, str], rate: float = 1.0,
                 qos: QoSProfile = RELIABLE, remap: dict[str, str] | None = None) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.messages, self.types, self.rate = messages, types, rate
        self.publishers = {topic: node.create_publisher(message_class(t), (remap or {}).get(topic, topic), qos)
                           for topic, t in types.items()}

    def wait_for_subscribers(self, executor: Executor, topics: Sequence[str] | None = None, timeout: float = 60.0,
                             alive: Callable[[], bool] = lambda: True) -> bool:
        """Until each of ``topics`` (default: the image topics, else all) has a matched subscriber;
        False on timeout or when not ``alive()`` (e.g. the node's process exited)."""
        if topics is None:
            topics = [t for t, ty in self.types.items() if ty in IMAGE_TYPES] or list(self.types)
        end = time.monotonic() + timeout
        while time.monotonic() < end and alive():
            if all(self.publishers[t].get_subscription_count() > 0 for t in topics):
                return True
            executor.spin_once(timeout_sec=0.05)
        return False

    def play(self, executor: Executor, on_message: Callable[[Recorded], None] | None = None) -> PlayStats:
        """Publish every message at its scheduled time; ``on_message`` sees each one sent."""
        counts = dict.fromkeys(self.publishers, 0)
        if not self.messages:
            return PlayStats(counts, 0.0, 0.0)
        t0_bag, t0 = self.messages[0].time_ns, time.monotonic()
        late = 0.0
        for msg in self.messages:
            due = t0 + (msg.time_ns - t0_bag) * 1e-9 / self.rate
            while (wait := due - time.monotonic()) > 0:
                executor.spin_once(timeout_sec=min(wait, 0.05))
            late = max(late, time.monotonic() - due)
            self.publishers[msg.topic].publish(msg.cdr)
            counts[msg.topic] += 1
            if on_message is not None:
                on_message(msg)
        return PlayStats(counts, time.monotonic() - t0, late)


def parse_remap(text: str) -> tuple[str, str]:
    """``FROM:=TO`` (as ``ros2 bag play --remap`` takes it) as a pair of topic names."""
    old, sep, new = text.partition(":=")
    if not sep or not old or not new or ":=" in new:
        raise argparse.ArgumentTypeError(f"expected FROM:=TO, e.g. /camera/image_raw:=/front/image_raw; got {text!r}")
    return old, new


def main(argv: list[str] | None = None) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bag", type=Path)
    parser.add_argument("--rate", type=number(0, MAX_RATE, lo_open=True), default=1.0,
                        help=f"playback speed factor, up to {MAX_RATE:g} (default 1)")
    parser.add_argument("--topics", nargs="*", help="topics to play (default: all)")
    parser.add_argument("--remap", action="append", type=parse_remap, default=[], metavar="FROM:=TO",
                        help="publish the bag's topic FROM on topic TO instead; repeatable")
    parser.add_argument("--no-wait", action="store_true", help="start without waiting for subscribers")
    args = parser.parse_args(argv)
    remap = dict(args.remap)
    try:
        messages, types = load_bag(args.bag, args.topics)
        if unknown := sorted(set(remap) - set(types)):
            raise BagError(f"--remap: {args.bag} has no played topic {', '.join(unknown)}; its topics: "
                           f"{', '.join(sorted(types))}")
    except VprError as exc:  # a missing or damaged bag, an unknown topic: one line, exit 2
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rclpy.init()
    node = rclpy.create_node("vpr_bag_player")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        player = BagPlayer(node, messages, types, args.rate, remap=remap)
        if not args.no_wait:
            print("waiting for a subscriber to the image topic ...")
            player.wait_for_subscribers(executor, timeout=float("inf"))
        stats = player.play(executor)
        published = {remap.get(topic, topic): n for topic, n in stats.published.items()}
        print(f"published {published} in {stats.seconds:.1f} s (worst lag {stats.late_s * 1000:.0f} ms)")
    except KeyboardInterrupt:
        pass
    finally:
        executor.remove_node(node)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
