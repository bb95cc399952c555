"""The demo route generator: deterministic, physically plausible, ground truth that agrees with
what the camera sees, and bags in all three formats that read back to the same frames and poses."""

from __future__ import annotations

import numpy as np
import pytest

from vpr_ros.bags.reader import read_frames
from vpr_ros.ros.player import load_bag, message_class
from vpr_ros.synth.route import SHORT, RouteSpec, image_topic, make_route, warp_params, write_bags

TINY = RouteSpec(map_places=2, revisit=(0, 1), novel_places=1, image_hz=2.0, pose_hz=10.0, image_size=(48, 64))


@pytest.fixture(scope="module")
def route():
    return make_route(SHORT)


def _speeds(run) -> tuple[np.ndarray, np.ndarray]:
    dt = np.diff(run.stamps_ns) * 1e-9
    v = np.linalg.norm(np.diff(run.positions, axis=0), axis=1) / dt
    return v, np.diff(v) / dt[1:]


def test_same_seed_same_route_other_seed_other_layout(route) -> None:
    again = make_route(SHORT)
    for name, run in route.traversals.items():
        other = again.traversals[name]
        assert np.array_equal(run.stamps_ns, other.stamps_ns) and np.array_equal(run.positions, other.positions)
        assert run.views == other.views
    run = route.query_run
    k = len(run.views) // 2
    a = route.render(run.views[k], run.camera, int(run.frame_stamps_ns[k]))
    b = again.render(run.views[k], run.camera, int(run.frame_stamps_ns[k]))
    assert a.shape == (*SHORT.image_size, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert make_route(RouteSpec(**{**SHORT.__dict__, "seed": 1})).landmarks != route.landmarks


def test_motion_is_a_plausible_drive(route) -> None:
    spec = route.spec
    for run in route.traversals.values():
        assert set(np.diff(run.stamps_ns).tolist()) <= {19_999_999, 20_000_000, 20_000_001}  # 50 Hz odometry
        assert set(np.diff(run.frame_stamps_ns).tolist()) <= {99_999_999, 100_000_000, 100_000_001}  # 10 Hz
        speed, accel = _speeds(run)
        assert speed[0] < 0.05  # from standstill
        assert 1.3 < speed.max() <= spec.speed_mps * 1.08 + 1e-6
        assert np.abs(accel).max() <= spec.accel_mps2 * 1.1
        yaw = 2 * np.arctan2(run.orientations[:, 2], run.orientations[:, 3])
        assert np.degrees(np.abs(np.angle(np.exp(1j * np.diff(yaw))))).max() < 1.0  # no heading jumps
        assert np.allclose(np.linalg.norm(run.orientations, axis=1), 1.0)
    assert _speeds(route.map_run)[0][-1] < 0.05  # the map drive stops at the end of the street
    assert route.query_run.stamps_ns[0] - route.map_run.stamps_ns[0] == 86_400 * 10**9  # the next day


def test_ground_truth_matches_what_the_camera_sees(route) -> None:
    spec, mapped = route.spec, route.map_run.positions[:, :2]
    run = route.query_run
    dist = np.array([np.linalg.norm(mapped - p, axis=1).min() for p in run.frame_positions[:, :2]])
    landmark = np.array([v.landmark for v in run.views])
    segment = run.segments
    assert {"revisit", "exit", "novel"} <= set(segment.tolist())
    # A query frame sees a mapped landmark exactly when the map was driven within the radius.
    assert np.array_equal(landmark < spec.map_places, dist <= spec.radius_m)
    assert np.all(np.abs(dist[segment == "revisit"] - spec.lateral_offset_m) < 0.2)
    assert np.all(dist[segment == "novel"] > spec.radius_m)
    first, last = spec.revisit
    assert set(landmark[segment == "revisit"].tolist()) == set(range(first, last))
    unmapped = range(spec.map_places, spec.map_places + spec.novel_places)
    assert set(landmark[segment == "novel"].tolist()) == set(unmapped)
    assert len(set(route.landmarks)) == len(route.landmarks)  # no photo stands in two places
    # Landmarks stand beside the road where their frames are taken.
    for run_ in route.traversals.values():
        for v, p in zip(run_.views, run_.frame_positions, strict=True):
            if v.segment in ("map", "revisit", "novel"):
                assert np.linalg.norm(route.landmark_positions[v.landmark] - p[:2]) < spec.spacing_m / 2 + 4.5


def test_consecutive_frames_are_nearby_viewpoints(route) -> None:
    run = route.map_run
    same, other = [], []
    for k in range(0, len(run.views) - 1, 7):
        a = warp_params(run.views[k], run.camera, k / 10, route.spec)
        b = warp_params(run.views[k + 1], run.camera, (k + 1) / 10, route.spec)
        if run.views[k].landmark == run.views[k + 1].landmark:
            assert abs(a["center"][0] - b["center"][0]) < 0.01 and abs(a["scale"] - b["scale"]) < 0.02
            img = [route.render(run.views[i], run.camera, int(run.frame_stamps_ns[i])).astype(float)
                   for i in (k, k + 1)]
            same.append(np.abs(img[0] - img[1]).mean())
    for k in range(0, len(run.views) - 80, 40):
        img = [route.render(run.views[i], run.camera, int(run.frame_stamps_ns[i])).astype(float) for i in (k, k + 80)]
        other.append(np.abs(img[0] - img[1]).mean())
    assert np.median(same) < 0.5 * np.median(other)


def test_spec_is_validated() -> None:
    with pytest.raises(ValueError, match="revisit"):
        RouteSpec(map_places=3, revisit=(2, 5))
    with pytest.raises(ValueError, match="distinct photos"):
        RouteSpec(map_places=15, revisit=(0, 5), novel_places=10)
    with pytest.raises(ValueError, match="multiple"):
        RouteSpec(image_hz=3.0, pose_hz=50.0)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3", "ros1"])
def test_bags_read_back_as_the_ground_truth(tmp_path, storage) -> None:
    from rclpy.serialization import deserialize_message

    tiny = make_route(TINY)
    bags = write_bags(tiny, tmp_path, storage)
    assert (tmp_path / "frames.csv").read_text().count("\n") == 1 + sum(len(r.views) for r in tiny.traversals.values())
    for name, run in tiny.traversals.items():
        frames = list(read_frames(bags[name], image_topic("jpeg"), pose_topic="/odom"))
        assert [f.stamp[0] * 10**9 + f.stamp[1] for f in frames] == run.frame_stamps_ns.tolist()
        assert np.allclose([f.pose.position for f in frames], run.frame_positions, atol=1e-9)
        for f, (_, rgb) in zip(frames, tiny.frames(name), strict=True):  # JPEG-close, channels in order
            assert np.abs(f.rgb.astype(int) - rgb).mean() < 6 < np.abs(f.rgb[..., ::-1].astype(int) - rgb).mean()
        # What the player publishes: ROS 2 CDR whatever the bag format, in receive order.
        messages, types = load_bag(bags[name])
        assert types == {image_topic("jpeg"): "sensor_msgs/msg/CompressedImage", "/odom": "nav_msgs/msg/Odometry"}
        assert len(messages) == len(run.views) + len(run.stamps_ns)
        assert all(a.time_ns <= b.time_ns for a, b in zip(messages, messages[1:], strict=False))
        images = [deserialize_message(m.cdr, message_class(types[m.topic])) for m in messages
                  if m.topic == image_topic("jpeg")]
        assert [i.header.stamp.sec * 10**9 + i.header.stamp.nanosec for i in images] == run.frame_stamps_ns.tolist()
        assert images[0].format == "jpeg" and images[0].header.frame_id == "camera"
