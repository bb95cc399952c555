"""Node start-up refuses a bad configuration with one FATAL line that names the parameter and what it
accepts, and exits 1: wrong types and ranges from ``-p`` or a params file, a params file rcl cannot parse,
text that is not valid UTF-8 in a map, a map another process is writing. And the model runtime the nodes
share (:class:`vpr_ros.ros.node_shell.Describer`) says what it is doing in ``/diagnostics``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rclpy
from support import read_manifest, resign, write_manifest

from vpr_ros.extractor import load_extractor
from vpr_ros.fast_path import DeviceFailure
from vpr_ros.maps.place_map import PlaceMap
from vpr_ros.ros.node_shell import Describer
from vpr_ros.ros.node_stats import ERROR, OK, WARN, Health
from vpr_ros.ros.testing import start_node, stop_node

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "vpr_ros" / "synth" / "data" / "models" / "demo_salad.pt"
BASE = {"checkpoint": str(DEMO), "device": "cpu"}


def fatal_exit(proc, timeout: float = 60.0) -> str:
    """The one FATAL line of a node that must refuse to start (exit 1, no traceback)."""
    try:
        code = proc.wait(timeout=timeout)
    finally:
        _, out = stop_node(proc)
    fatal = [line for line in out.splitlines() if "FATAL" in line]
    assert code == 1 and len(fatal) == 1 and "Traceback" not in out, out
    return fatal[0]


@pytest.mark.parametrize(("params", "words"), [
    ({"threshold": "abc"}, ["'threshold'", "a number written with a decimal point"]),
    ({"top_k": -1}, ["'top_k'", "an integer in [1, 100]"]),
    ({"image_size": "'112'"}, ["'image_size'", "a list of integers"]),
    ({"cameras": 5}, ["'cameras'", "a list of strings"]),
    ({"camera_pose": [0, 0, 0, 0, 0, 0, 1]}, ["'camera_pose'", "decimal points (1.0, not 1)"]),
    ({"camera_pose": [0.0] * 7}, ["camera_pose has a zero quaternion"]),
    ({"frame_size": [1, 2]}, ["frame_size must be [H, W] between 16 and 8192"]),
])
def test_a_bad_parameter_is_one_fatal_line(params, words) -> None:
    line = fatal_exit(start_node({**BASE, **params}))
    assert all(w in line for w in words), line


def test_a_params_file_rcl_cannot_parse(tmp_path: Path) -> None:
    yaml = tmp_path / "aliases.yaml"
    yaml.write_text("/**:\n  ros__parameters:\n    base: &t 0.5\n    threshold: *t\n")
    assert "aliasing" in fatal_exit(start_node(BASE, params_file=yaml))


def test_undecodable_text_in_a_map_is_printed_escaped(tmp_path: Path) -> None:
    demo = load_extractor(DEMO, device="cpu")
    pm = PlaceMap.create(demo.descriptor_dim, model_id=demo.identity)
    pm.add(demo.describe([np.zeros((64, 64, 3), np.uint8)]), [(1, 0)])
    path = tmp_path / "m.map"
    pm.save(path)
    manifest = read_manifest(path)
    manifest["model"]["arch"] = "evil\ud800name"  # a lone surrogate: valid JSON, not encodable as UTF-8
    write_manifest(path, manifest)
    resign(path)
    assert "evil\\ud800name" in fatal_exit(start_node({**BASE, "map": str(path)}))


def test_a_map_another_process_writes_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "held.map"
    with PlaceMap.lock(path):  # another writer, e.g. build-map --append, holds the map
        line = fatal_exit(start_node({**BASE, "mode": "slam", "map": str(path)}))
    assert str(os.getpid()) in line and "held.map" in line


@pytest.fixture()
def node():
    context = rclpy.Context()
    rclpy.init(context=context)
    n = rclpy.create_node("describer_test", context=context)
    yield n
    n.destroy_node()
    context.try_shutdown()


def test_the_describer_reports_warm_up_fallback_and_a_failed_device(node) -> None:
    ext = load_extractor(DEMO, device="cpu", batch_size=2)
    describer = Describer(node, ext, (480, 640), cameras=2)
    assert describer.health(Health(OK, "")) == Health(OK, "warming up")
    assert describer.values()["warm-up s"] == "running"
    assert describer.warm_up() and describer.warmup_seconds is not None
    assert describer.health(Health(OK, "")) == Health(OK, "")
    assert float(describer.values()["warm-up s"]) >= 0.0

    def capture_fails():
        if describer.guard.fast:
            raise RuntimeError("capturing the latency path ('frames', (1, 480, 640, 3), False) in a CUDA graph failed")
        return "answered"

    ext.mode = "latency"  # as a node on a GPU runs it
    assert describer.run(capture_fails) == "answered"
    health = describer.health(Health(OK, ""))
    assert health.level == WARN and "GPU fast path failed (RuntimeError: capturing the latency path" in health.message

    def device_fails():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(DeviceFailure):
        describer.run(device_fails)
    assert not node.context.ok()  # the node shuts down: spin returns and the process exits 1
    assert describer.health(Health(OK, "")).level == ERROR
