"""The bag player publishes a recorded topic under another name when asked (``--remap FROM:=TO``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pytest

from vpr_ros.bags.writer import write_bag
from vpr_ros.ros.player import RELIABLE, BagPlayer, load_bag, main, parse_remap
from vpr_ros.ros.testing import Image, SingleThreadedExecutor, rclpy  # the harness sets the DDS environment first

T0 = 1_700_000_000 * 10**9


@pytest.fixture()
def bag(tmp_path: Path) -> Path:
    frames = [(T0 + i * 50_000_000, np.full((8, 12, 3), 40 * i, np.uint8)) for i in range(4)]
    return write_bag(tmp_path / "run", frames, [(T0, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0))])


def test_remap_option_is_checked_before_anything_is_published(bag: Path, capsys) -> None:
    assert parse_remap("/camera/image_raw:=/front/image_raw") == ("/camera/image_raw", "/front/image_raw")
    for bad in ("/camera/image_raw", ":=/front", "/a:=", "/a:=/b:=/c"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected FROM:=TO"):
            parse_remap(bad)
    assert main([str(bag), "--remap", "/cam:=/front", "--no-wait"]) == 2
    assert f"error: --remap: {bag} has no played topic /cam; its topics: /camera/image_raw, /odom" in (
        capsys.readouterr().err)


def test_remapped_topic_carries_the_recorded_frames(bag: Path) -> None:
    messages, types = load_bag(bag)
    context = rclpy.Context()  # its own, whatever other tests in this process have initialised
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("player_remap_test", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        received: list[Image] = []
        node.create_subscription(Image, "/front/image_raw", received.append, RELIABLE)
        player = BagPlayer(node, messages, types, rate=20.0, remap={"/camera/image_raw": "/front/image_raw"})
        assert player.publishers["/camera/image_raw"].topic_name == "/front/image_raw"
        assert player.publishers["/odom"].topic_name == "/odom"
        assert player.wait_for_subscribers(executor, timeout=20.0)
        stats = player.play(executor)
        end = time.monotonic() + 10.0
        while len(received) < 4 and time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        assert stats.published == {"/camera/image_raw": 4, "/odom": 1}
        assert [m.header.stamp.nanosec for m in received] == [i * 50_000_000 for i in range(4)]
        assert [int(m.data[0]) for m in received] == [0, 40, 80, 120]
        executor.remove_node(node)
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
