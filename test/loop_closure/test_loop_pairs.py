"""Which loop-closure pairs LIO-SAM gets, without ROS: only stamps of this run (a place loaded from another
run's map would become LIO-SAM's keyframe 0), at most one pair per LIO-SAM tick; and which matches give
RTAB-Map a ``global_pose`` (only with the camera's mounting, or a camera that is the base)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from support import liosam_keyframes

from vpr_ros.errors import InputError
from vpr_ros.extractor import load_extractor
from vpr_ros.loop_closure.loop_pairs import PairPacer
from vpr_ros.loop_closure.matches import MatchPrior, global_pose_prior
from vpr_ros.loop_closure.policy import LoopClosureConfig
from vpr_ros.loop_closure.recognizer import PlaceRecognizer
from vpr_ros.maps.place_map import PlaceMap
from vpr_ros.preprocess import load_image
from vpr_ros.types import Pose, to_ns

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "vpr_ros" / "synth" / "data" / "models" / "demo_salad.pt"
SCENES = REPO / "vpr_ros" / "synth" / "data" / "scenes"


@pytest.fixture(scope="module")
def demo():
    return load_extractor(DEMO, device="cpu")


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {n: load_image(SCENES / f"{n}.jpg") for n in ("building", "graf1", "home", "fruits", "apple")}


def test_slam_pairs_name_only_places_of_this_run(tmp_path: Path, demo, photos) -> None:
    """A slam run on a map of an earlier run: a revisit of a loaded place is accepted (and reported) but
    makes no pair; a revisit of a place of this run makes [t_current, t_previous], and LIO-SAM's rule maps
    both stamps onto the right keyframes of this run."""
    old = PlaceMap.create(demo.descriptor_dim, model_id=demo.identity)
    old.add(demo.describe([photos["building"], photos["graf1"]]), [(5, 0), (6, 0)])
    old.save(tmp_path / "old.map")
    pm = PlaceMap.load(tmp_path / "old.map", model_id=demo.identity)
    config = LoopClosureConfig(threshold=0.9, consistency_k=1, exclude_seconds=30.0, exclude_last=0)
    rec = PlaceRecognizer(demo, pm, config, "slam")
    assert rec.first_own_id == 2
    run = [(100.0, "home"), (101.0, "fruits"), (102.0, "apple"), (140.0, "building"), (141.0, "home")]
    outcomes = [rec.process(photos[name], to_ns(t)) for t, name in run]
    assert [o.decision.accepted is not None for o in outcomes] == [False, False, False, True, True]
    assert outcomes[3].decision.accepted.id == 0 and outcomes[3].loop_pair is None  # loaded: keyframe 0 for LIO-SAM
    assert outcomes[4].decision.accepted.id == 2 and outcomes[4].loop_pair == (141.0, 100.0)
    keyframes = [t for t, _ in run]  # keyframes of this run, one per frame here
    assert liosam_keyframes(list(outcomes[4].loop_pair), keyframes) == (4, 0)
    # what the same rule makes of a loaded place's stamp: keyframe 0, i.e. the wrong place
    assert liosam_keyframes([140.0, 5.0], keyframes) == (3, 0) and run[0][1] != "building"


def test_localize_mode_makes_no_pairs(tmp_path: Path, demo, photos) -> None:
    pm = PlaceMap.create(demo.descriptor_dim, model_id=demo.identity)
    pm.add(demo.describe([photos["building"]]), [(5, 0)])
    rec = PlaceRecognizer(demo, pm, LoopClosureConfig(threshold=0.9, consistency_k=1, exclude_seconds=None,
                                                      exclude_last=0), "localize")
    out = rec.process(photos["building"], to_ns(500.0))
    assert out.decision.accepted is not None and out.loop_pair is None


def test_pacer_sends_at_most_one_pair_per_tick() -> None:
    pacer = PairPacer(1.0)
    assert pacer.offer((10.0, 1.0), now=100.0) == (10.0, 1.0)
    assert pacer.offer((10.2, 1.1), now=100.2) is None  # held back
    assert pacer.due(100.5) is None
    assert pacer.offer((10.4, 1.2), now=100.4) is None  # replaces the held one
    assert pacer.due(101.0) == (10.4, 1.2)  # the newest held pair, once the tick has come
    assert pacer.due(101.5) is None and pacer.offer((11.0, 2.0), now=101.5) is None
    assert pacer.due(102.0) == (11.0, 2.0)
    assert (pacer.held_back, pacer.superseded) == (3, 1)
    assert pacer.offer((20.0, 3.0), now=110.0) == (20.0, 3.0)  # long after: straight through
    free = PairPacer(0.0)
    assert all(free.offer((t, 0.0), now=5.0) == (t, 0.0) for t in (1.0, 2.0, 3.0))
    for bad in (-1.0, math.nan):
        with pytest.raises(InputError, match="period"):
            PairPacer(bad)


def test_global_pose_needs_the_mounting_or_a_camera_at_the_base() -> None:
    cov = np.diag([0.25, 0.25, 0.25, 0.6, 0.6, 0.6])
    prior = MatchPrior(Pose((1.0, 2.0, 0.0), (0.0, 0.0, 0.0, 1.0), "map"), cov)
    mount = Pose((0.3, 0.0, 1.2), tuple(Rotation.from_euler("y", 90, degrees=True).as_quat()), "")
    assert global_pose_prior(prior, "", mount, "base_link") == (None, "no camera frame")
    assert global_pose_prior(prior, "camera_optical", None, "base_link") == (None, "no camera_pose")
    at_base, why = global_pose_prior(prior, "base_link", None, "base_link")
    assert why == "" and at_base.pose == prior.pose
    mounted, why = global_pose_prior(prior, "camera_optical", mount, "base_link")
    assert why == "" and mounted.pose.position == pytest.approx((1.3, 2.0, 1.2))
