"""The command-line walk every model family must pass unchanged: build a map from a bag, query it with
one of its own frames, describe images; shared by the MegaLoc and BoQ golden tests."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from vpr_ros.bags.writer import write_bag
from vpr_ros.cli import main
from vpr_ros.extractor import DescriptorExtractor
from vpr_ros.maps.place_map import PlaceMap
from vpr_ros.models import VPRModel
from vpr_ros.preprocess import load_image
from vpr_ros.types import ModelIdentity

SCENES = Path(__file__).resolve().parents[1] / "vpr_ros" / "synth" / "data" / "scenes"
NAMES = ("building.jpg", "graf1.jpg", "home.jpg", "fruits.jpg", "baboon.jpg", "board.jpg")


def build_query_describe(model: VPRModel, weights: Path, config: Path, tmp_path: Path, capsys,
                         query_index: int) -> tuple[list[str], Path, ModelIdentity]:
    """Run build-map, query and describe at 112x112 on the CPU; returns the model arguments, the query
    image (frame ``query_index`` of the bag, lossless) and the identity the map recorded."""
    photos = [cv2.resize(load_image(SCENES / n), (160, 120), interpolation=cv2.INTER_AREA) for n in NAMES]
    t0 = 1_700_000_000 * 10**9
    bag = write_bag(tmp_path / "drive", [(t0 + i * 10**8, p) for i, p in enumerate(photos)],
                    [(t0 + (i - 2) * 5 * 10**7, (0.25 * (i - 2), 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)) for i in range(16)])
    model_args = ["--checkpoint", str(weights), "--config", str(config), "--image-size", "112", "112",
                  "--device", "cpu"]
    assert main(["build-map", "--bag", str(bag), "--image-topic", "/camera/image_raw", "--pose-topic", "/odom",
                 *model_args, "--out", str(tmp_path / "m")]) == 0
    identity = PlaceMap.info(tmp_path / "m").model
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["model"]["arch"] == identity.arch

    query = tmp_path / "query.png"
    cv2.imwrite(str(query), cv2.cvtColor(photos[query_index], cv2.COLOR_RGB2BGR))
    capsys.readouterr()
    assert main(["query", str(tmp_path / "m"), str(query), *model_args, "--k", "2"]) == 0
    assert f"#1 id {query_index}  score 1.0000" in capsys.readouterr().out

    assert main(["describe", str(query), str(SCENES / "graf1.jpg"), *model_args, "--out", str(tmp_path / "d.npy")]) == 0
    want = DescriptorExtractor(model, (112, 112), device="cpu").describe([str(query), str(SCENES / "graf1.jpg")])
    np.testing.assert_allclose(np.load(tmp_path / "d.npy"), want, rtol=0, atol=1e-6)
    return model_args, query, identity
