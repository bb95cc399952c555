"""Settings the node finds itself, as a real process over real DDS: the model's .json, the map's
input size and calibrated threshold, the compressed topic following a remap of the raw one, and a
warning when no frame arrives."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from vpr_ros.cli import main
from vpr_ros.extractor import load_extractor
from vpr_ros.maps.place_map import PlaceMap
from vpr_ros.preprocess import load_image
from vpr_ros.ros.testing import Client, jpeg_msg, start_node, stop_node
from vpr_ros.types import Pose

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "test" / "data" / "golden" / "salad"
PHOTOS = sorted((REPO / "vpr_ros" / "synth" / "data" / "scenes").glob("*.jpg"))
WARN = b"\x01"


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [load_image(p) for p in PHOTOS]


def test_the_node_finds_its_settings(tmp_path: Path, photos) -> None:
    ckpt = tmp_path / "tiny.pt"  # a checkpoint with its .json beside it, as training exports them
    shutil.copy(GOLDEN / "tiny_salad_state_dict.pt", ckpt)
    shutil.copy(GOLDEN / "config.json", ckpt.with_suffix(".json"))
    ext = load_extractor(ckpt, image_size=(126, 126), device="cpu")  # neither 322 nor anything in the .json
    pm = PlaceMap.create(ext.descriptor_dim, model_id=ext.identity)
    pm.add(ext.describe(photos), [100.0 * (i + 1) for i in range(len(photos))],
           poses=[Pose((10.0 * i, 0.0, 0.0)) for i in range(len(photos))])
    pm.save(tmp_path / "m")
    assert main(["calibrate", str(tmp_path / "m"), "--target-fpr", "0.05"]) == 0
    calibrated = PlaceMap.info(tmp_path / "m").calibration["threshold"]

    # no model_config, no image_size, no threshold; only the raw topic remapped
    proc = start_node({"checkpoint": str(ckpt), "map": str(tmp_path / "m"), "device": "cpu", "reliable": True,
                       "frame_timeout": 1.0, "consistency_k": 1}, ["-r", "image:=/set/cam", "-r", "__ns:=/set"])
    client = Client(ns="/set", image_topic="/set/cam")
    try:
        client.wait_ready(proc)
        ours = lambda: [s for d in client.diagnostics for s in d.status if s.name.startswith(client.base + ":")]  # noqa: E731
        assert client.spin_until(lambda: bool(ours()) and ours()[-1].level == WARN, 10)
        assert "no frame yet" in ours()[-1].message and "/set/cam/compressed" in ours()[-1].message
        m = client.send_and_wait(jpeg_msg(photos[3], (50, 0)))  # compressed, on the remapped raw topic's sibling
        assert m["candidates"][0]["id"] == 3
        accepted = m["accepted_id"] is not None
        assert accepted == (m["candidates"][0]["score"] >= calibrated)
    finally:
        client.close()
        started = time.monotonic()
        code, out = stop_node(proc)  # SIGINT, as ros2 launch sends it (and escalates after 5 s)
        stopped_in = time.monotonic() - started
    assert code == 0, out
    assert stopped_in < 1.0, f"SIGINT took {stopped_in:.2f} s"
    assert f"threshold {calibrated:.4f} (calibrated)" in out, out
    assert "listening on /set/cam and /set/cam/compressed" in out
