"""Which loop-closure pairs LIO-SAM gets, without ROS: at most one pair per LIO-SAM tick (that pairs name only
stamps of this run is the recognizer's rule, in test_recognizer.py); and which matches give RTAB-Map a
``global_pose`` (only with the mounting of the camera that saw the place, or a camera that is the base)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from vpr_ros.errors import InputError
from vpr_ros.loop_closure.loop_pairs import PairPacer, pair_seconds
from vpr_ros.loop_closure.matches import MatchPrior, global_pose_prior
from vpr_ros.types import Pose, ns_to_seconds, to_ns


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
    mounts = {"front": mount, "rear": None}  # the camera that saw the place gives the mounting
    assert global_pose_prior(prior, "", "front", mounts, "base_link") == (None, "no camera frame")
    assert global_pose_prior(prior, "camera_optical", "rear", mounts, "base_link") == (None, "no camera_pose")
    assert global_pose_prior(prior, "camera_optical", "other", mounts, "base_link") == (None, "no camera_pose")
    at_base, why = global_pose_prior(prior, "base_link", "rear", mounts, "base_link")
    assert why == "" and at_base.pose == prior.pose
    mounted, why = global_pose_prior(prior, "camera_optical", "front", mounts, "base_link")
    assert why == "" and mounted.pose.position == pytest.approx((1.3, 2.0, 1.2))


def test_pairs_go_out_in_seconds_as_they_always_have() -> None:
    """Pairs stay integer nanoseconds until the message; the place's stamp reads as rclcpp's Time.seconds()
    reads a stamp (the nanoseconds as a double, over 1e9), which a correctly rounded division can miss by 1 ulp."""
    current, previous = to_ns(141.0), 1_700_000_000_000_000_126
    assert ns_to_seconds(previous) != (np.array([previous]) / 1e9)[0]  # where the two readings differ
    assert pair_seconds((current, previous)) == [141.0, (np.array([previous]) / 1e9)[0]]
    assert pair_seconds((1_700_000_000_123_456_789, to_ns(5.0))) == [ns_to_seconds(1_700_000_000_123_456_789), 5.0]
