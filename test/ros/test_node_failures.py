"""The node under failures, as a real process over real DDS: a full disk, frames that are all
rejected, hostile bag types for the player, a model that outputs NaN."""

from __future__ import annotations

import json
import resource
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from sensor_msgs.msg import Image
from support import TINY_NODE

from vpr_ros.errors import BagError, ModelOutputError
from vpr_ros.extractor import DescriptorExtractor
from vpr_ros.maps.place_map import PlaceMap
from vpr_ros.models import load_model
from vpr_ros.preprocess import load_image
from vpr_ros.ros import player
from vpr_ros.ros.testing import Client, image_msg, odom_msg, start_node, stop_node

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "test" / "data" / "golden" / "salad"
CKPT, CONFIG = GOLDEN / "tiny_salad_state_dict.pt", GOLDEN / "config.json"
PHOTOS = sorted((REPO / "vpr_ros" / "synth" / "data" / "scenes").glob("*.jpg"))
BASE = TINY_NODE
FILE_LIMIT = 32 * 1024  # bytes: the node's files may not grow past this while the "disk" is full
ERROR = b"\x02"


def _full_disk() -> None:
    """In the node's process: files cannot grow past FILE_LIMIT (EFBIG, as on a full disk); the
    hard limit stays open so the test can lift the soft one later, as freeing space would."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, resource.RLIM_INFINITY))


def _free_disk(pid: int) -> None:
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def _statuses(client: Client) -> list:
    return [s for d in client.diagnostics for s in d.status if s.name.startswith(client.base + ":")]


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [load_image(p) for p in PHOTOS]


def test_a_full_disk_keeps_the_slam_node_and_its_places(tmp_path, photos) -> None:
    path = tmp_path / "online.map"
    proc = start_node({**BASE, "mode": "slam", "map": str(path)}, ["-r", "image:=/full/cam", "-r", "__ns:=/full",
                                                                   "--disable-external-lib-logs"],
                      preexec_fn=_full_disk)
    client = Client(ns="/full", image_topic="/full/cam", odom_topic="/full/odom")
    try:
        client.wait_ready(proc)
        assert client.spin_until(lambda: client.odom.get_subscription_count() > 0, 30)
        for bad in (odom_msg((5, 0), float("nan")), odom_msg((6, 0), float("inf"))):
            client.odom.publish(bad)  # a broken odometry sample is dropped, never a crash
        assert client.spin_until(lambda: int(client.diag_values().get("poses rejected", 0)) == 2, 10)
        places = 64  # 160-d float descriptors: 40 kB of index, more than the "disk" takes
        for k in range(places):
            client.send_and_wait(image_msg(photos[k % len(photos)], (100 + k, 0)))
        res = client.call(client.save)
        assert not res.success and "intact" in res.message, res.message
        assert proc.poll() is None, "the node died on a failed save"
        assert client.spin_until(lambda: bool(_statuses(client)) and _statuses(client)[-1].level == ERROR, 5)
        assert "map not saved" in _statuses(client)[-1].message
        assert not PlaceMap.exists(path)
        client.send_and_wait(image_msg(photos[0], (200, 0)))  # still serving
        _free_disk(proc.pid)  # space is back: the next save writes every place
        res = client.call(client.save)
        assert res.success, res.message
        assert len(PlaceMap.load(path)) == places + 1
        assert client.spin_until(lambda: _statuses(client)[-1].level != ERROR, 5)
        client.send_and_wait(image_msg(photos[1], (201, 0)))
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (FILE_LIMIT, resource.RLIM_INFINITY))  # full again
    finally:
        client.close()
        code, out = stop_node(proc, signal.SIGINT)
    # Shutdown could not save to the map path: the places go to a rescue folder, or the node says
    # plainly that it could not save them; either way a non-zero exit and no traceback.
    assert code == 1, out
    assert "Traceback" not in out
    assert "saved to" in out or "could not be saved anywhere" in out
    assert len(PlaceMap.load(path)) == places + 1  # the last good save is untouched


def test_diagnostics_follow_the_reject_rate(tmp_path, photos) -> None:
    pm_path = tmp_path / "m"
    model = load_model(CKPT, config=json.loads(CONFIG.read_text()))
    ext = DescriptorExtractor(model, (112, 112), "cpu")
    pm = PlaceMap.create(ext.descriptor_dim, model_id=ext.identity)
    pm.add(ext.describe(photos[:3]), [1.0, 2.0, 3.0])
    pm.save(pm_path)
    proc = start_node({**BASE, "map": str(pm_path)}, ["-r", "image:=/rej/cam", "-r", "__ns:=/rej"])
    client = Client(ns="/rej", image_topic="/rej/cam")
    try:
        client.wait_ready(proc)
        bad = Image(height=4, width=4, encoding="rgb8", step=12, data=bytes(10))  # data too short
        for n in range(1, 9):  # one at a time: the latest-frame slot would drop frames sent faster
            client.image.publish(bad)
            assert client.spin_until(lambda n=n: int(client.diag_values().get("frames rejected", 0)) >= n, 10)
        assert client.spin_until(lambda: _statuses(client)[-1].level == ERROR, 5)
        assert "frames rejected" in _statuses(client)[-1].message
        for k in range(50):  # a healthy stream again: the status recovers
            client.send_and_wait(image_msg(photos[k % 3], (10 + k, 0)))
        assert client.spin_until(lambda: _statuses(client)[-1].level == b"\x00", 5), _statuses(client)[-1]
    finally:
        client.close()
        code, out = stop_node(proc)
    assert code == 0, out


def test_the_player_imports_only_known_message_packages(monkeypatch) -> None:
    imported: list[str] = []
    real = player.importlib.import_module
    monkeypatch.setattr(player.importlib, "import_module", lambda name: imported.append(name) or real(name))
    for hostile in ("os/msg/system", "subprocess/msg/Popen", "evil_pkg/msg/Thing", "sensor_msgs/msg/../../os",
                    "tf2_msgs/msg/TFMessage", "sensor_msgs/msg/NoSuchType"):
        with pytest.raises(BagError):
            player.message_class(hostile)
    assert imported == ["sensor_msgs.msg"]  # only for the one known package, to find no such type
    assert player.message_class("sensor_msgs/msg/Image").__name__ == "Image"


def test_a_model_that_outputs_nan_never_hands_on_a_descriptor(photos) -> None:
    model = load_model(CKPT, config=json.loads(CONFIG.read_text()))
    with torch.no_grad():
        model.aggregator.token_features[0].weight.fill_(float("nan"))
    ext = DescriptorExtractor(model, (112, 112), "cpu", batch_size=2)
    with pytest.raises(ModelOutputError, match=r"image\(s\) \[0, 1\]"):
        ext.describe(photos[:3])

