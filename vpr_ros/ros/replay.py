"""Play a bag to a running ``vpr_localize`` node over DDS and record what it answers.

Used by the demo (and its tests) to drive the node in another process the way a robot would:
real rclpy publishers, the node's real topics, DDS on whatever the environment allows.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.executors import Executor, SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from vpr_ros.ros.player import IMAGE_TYPES, BagPlayer, load_bag

NODE = "/vpr_localize"


@dataclass
class Collected:
    """What the node said while traversal 2 played, and what the player sent."""

    matches: list[dict] = field(default_factory=list)
    poses: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (query stamp ns, matched position)
    diagnostics: dict[str, str] = field(default_factory=dict)  # the node's latest report
    reports: int = 0
    frames_sent: int = 0
    play_seconds: float = 0.0
    node_log: str = ""


def play_and_collect(bag: Path, alive: Callable[[], bool], rate: float, timeout: float = 120.0) -> Collected:
    """Play ``bag`` to the node and record its answers until it has handled every frame (one
    thread: the executor is spun between the player's messages). ``alive`` says whether the node's
    process still runs, so a node that died ends the wait at once."""
    messages, types = load_bag(bag)
    got = Collected()
    context = rclpy.Context()  # its own context: callers (tests) may have rclpy running already
    rclpy.init(context=context)
    node = rclpy.create_node(f"vpr_demo_{os.getpid()}", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)  # keep every answer
        subs = [
            node.create_subscription(String, f"{NODE}/matches", lambda m: got.matches.append(json.loads(m.data)), qos),
            node.create_subscription(PoseWithCovarianceStamped, f"{NODE}/match_pose", lambda m: got.poses.append(
                (m.header.stamp.sec * 10**9 + m.header.stamp.nanosec,
                 np.array([m.pose.pose.position.x, m.pose.pose.position.y, m.pose.pose.position.z]))), qos),
        ]
        node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: _keep_diagnostics(m, got), 10)
        player = BagPlayer(node, messages, types, rate)
        if not player.wait_for_subscribers(executor, timeout=timeout, alive=alive) or not spin_until(
                executor, lambda: all(s.get_publisher_count() > 0 for s in subs), 30.0, alive):
            raise RuntimeError("the node did not come up (see its log)")
        stats = player.play(executor)
        got.frames_sent = sum(n for t, n in stats.published.items() if types[t] in IMAGE_TYPES)
        got.play_seconds = stats.seconds
        reports = got.reports
        # Done when a diagnostics report sent after the last frame accounts for every frame received.
        spin_until(executor, lambda: got.reports > reports + 1 and _idle(got.diagnostics), 60.0, alive)
    finally:
        executor.remove_node(node)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    return got


def _keep_diagnostics(msg, got: Collected) -> None:
    for status in msg.status:
        if status.name.startswith(NODE + ":"):
            got.diagnostics = {kv.key: kv.value for kv in status.values}
            got.reports += 1


def spin_until(executor: Executor, cond: Callable[[], bool], timeout: float = 30.0,
               alive: Callable[[], bool] = lambda: True) -> bool:
    """Spin ``executor`` until ``cond()`` holds, ``timeout`` s have passed or ``alive()`` fails; the last ``cond()``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and alive():
        if cond():
            return True
        executor.spin_once(timeout_sec=0.05)
    return cond()


def _idle(diagnostics: dict[str, str]) -> bool:
    """Every frame the node received is described, skipped, rejected or dropped: none in flight."""
    try:
        done = sum(int(diagnostics[k]) for k in ("frames processed", "frames skipped (keyframe period)",
                                                 "frames rejected", "frames dropped (busy)"))
        return done == int(diagnostics["frames received"])
    except (KeyError, ValueError):
        return False


