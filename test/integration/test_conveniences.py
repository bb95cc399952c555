"""One way to build a model, the map as an object, one error hierarchy."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vpr_ros.cli import main
from vpr_ros.errors import CheckpointError, InputError, MapSaveError, ModelMismatchError, VprError
from vpr_ros.extractor import load_extractor
from vpr_ros.maps.place_map import PlaceMap
from vpr_ros.preprocess import load_image
from vpr_ros.types import Pose, to_ns

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "vpr_ros" / "synth" / "data" / "models" / "demo_salad.pt"
SCENES = REPO / "vpr_ros" / "synth" / "data" / "scenes"
GOLDEN = REPO / "test" / "data" / "golden" / "salad"


@pytest.fixture(scope="module")
def demo():
    return load_extractor(DEMO, device="cpu")


def test_sidecar_json_gives_the_options_and_the_input_size(demo) -> None:
    assert demo.image_size == (112, 112) and demo.descriptor_dim == 320
    assert demo.identity.image_size == (112, 112)
    assert demo.identity.checkpoint_sha256 == demo.model.checkpoint_sha256 is not None
    assert load_extractor(DEMO, image_size=(140, 140), device="cpu").image_size == (140, 140)


def test_without_a_sidecar_the_demo_checkpoint_needs_its_config(tmp_path: Path) -> None:
    lone = tmp_path / "model.pt"
    shutil.copy(DEMO, lone)
    with pytest.raises(CheckpointError, match="num_heads"):  # 24-d heads: the shapes cannot tell
        load_extractor(lone, device="cpu")
    ext = load_extractor(lone, DEMO.with_suffix(".json"), device="cpu")
    assert ext.image_size == (112, 112)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(InputError, match="model.json"):  # the options file is at fault, not the checkpoint
        load_extractor(lone, device="cpu")


def test_describe_the_bundled_demo_checkpoint_with_no_options(tmp_path: Path, demo) -> None:
    out = tmp_path / "d.npy"
    res = subprocess.run([sys.executable, "-m", "vpr_ros.cli", "describe", str(SCENES / "building.jpg"),
                          "--checkpoint", str(DEMO.relative_to(REPO)), "--out", str(out), "--device", "cpu"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    np.testing.assert_allclose(np.load(out), demo.describe([load_image(SCENES / "building.jpg")]), atol=1e-6)


def test_cli_bad_input_is_one_line_but_a_bug_keeps_its_traceback(tmp_path: Path, monkeypatch, caplog) -> None:
    assert main(["describe", str(SCENES / "home.jpg"), "--checkpoint", str(tmp_path / "none.pt"),
                 "--out", str(tmp_path / "x.npy")]) == 2
    assert "checkpoint not found" in caplog.text

    def bug(*_args, **_kwargs):
        raise ValueError("a plain ValueError is a bug, not bad input")

    monkeypatch.setattr("vpr_ros.cli.describe.make_extractor", bug)
    with pytest.raises(ValueError, match="plain ValueError"):
        main(["describe", str(SCENES / "home.jpg"), "--checkpoint", str(DEMO), "--out", str(tmp_path / "x.npy")])


def test_map_info_exists_and_gnss_origin_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 8)).astype(np.float32)
    pm = PlaceMap.create(8)
    pm.add(x / np.linalg.norm(x, axis=1, keepdims=True), [1.0, 2.0, 3.0],
           poses=[Pose((0.0, 0.0, 0.0), frame_id="enu:1,2,3")] * 3, sources=["a.bag#/cam"] * 3)
    pm.enu_origin = (47.1, 8.5, 400.0)
    assert not PlaceMap.exists(tmp_path / "m")
    pm.save(tmp_path / "m")
    assert PlaceMap.exists(tmp_path / "m")
    info = PlaceMap.info(tmp_path / "m")
    assert (info.count, info.dim, info.next_id, info.enu_origin) == (3, 8, 3, (47.1, 8.5, 400.0))
    loaded = PlaceMap.load(tmp_path / "m")
    assert loaded.enu_origin == (47.1, 8.5, 400.0)
    assert loaded.place(2).stamp_ns == to_ns(3.0) and loaded.place(2).stamp == (3, 0)


def test_a_failed_save_raises_map_save_error_and_keeps_the_map(tmp_path: Path) -> None:
    pm = PlaceMap.create(4)
    pm.add(np.eye(4, dtype=np.float32)[:2], [1.0, 2.0])
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(MapSaveError) as err:
        pm.save(blocker / "map")  # parent is a file: the filesystem refuses
    assert isinstance(err.value, VprError) and len(pm) == 2


def test_image_size_mismatch_names_the_maps_size(tmp_path: Path, demo) -> None:
    pm = PlaceMap.create(demo.descriptor_dim, model_id=demo.identity)
    pm.save(tmp_path / "m")
    other = load_extractor(DEMO, image_size=(322, 322), device="cpu")
    with pytest.raises(ModelMismatchError, match=r"built by this checkpoint .* at input size 112x112"):
        PlaceMap.load(tmp_path / "m", other.identity)
