"""Offline maps from real bags: keyframe gates, poses, --append, damaged bags, and the CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from vpr_ros.bags.mapping import build_map
from vpr_ros.bags.reader import read_frames
from vpr_ros.bags.writer import write_bag
from vpr_ros.cli import main
from vpr_ros.errors import BagError, MapError, ModelMismatchError
from vpr_ros.extractor import DescriptorExtractor
from vpr_ros.maps.place_map import PlaceMap
from vpr_ros.models import load_model
from vpr_ros.preprocess import load_image
from vpr_ros.types import ModelIdentity

DATA = Path(__file__).resolve().parents[2] / "vpr_ros" / "synth" / "data"
GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "salad"
CKPT = GOLDEN / "tiny_salad_state_dict.pt"
CONFIG = GOLDEN / "config.json"
MODEL_ARGS = ["--checkpoint", str(CKPT), "--config", str(CONFIG), "--image-size", "112", "112", "--device", "cpu"]
T0 = 1_700_000_000 * 10**9
SEC = 1_700_000_000
TOPIC = "/camera/image_raw"
NAMES = ("building.jpg", "graf1.jpg", "home.jpg", "fruits.jpg", "baboon.jpg", "board.jpg")


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [cv2.resize(load_image(DATA / "scenes" / n), (160, 120), interpolation=cv2.INTER_AREA) for n in NAMES]


@pytest.fixture(scope="module")
def model():
    return load_model(CKPT, config=json.loads(CONFIG.read_text()))


@pytest.fixture(scope="module")
def extractor(model) -> DescriptorExtractor:
    return DescriptorExtractor(model, (112, 112), device="cpu", batch_size=4)


def straight_poses(n: int, speed: float = 5.0) -> list[tuple[int, tuple, tuple]]:
    """Odometry at 20 Hz along x at ``speed`` m/s, from 0.1 s before T0."""
    return [(T0 + (i - 2) * 50_000_000, (speed * (i - 2) * 0.05, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)) for i in range(n)]


def route_bag(tmp_path: Path, photos, name: str = "route", n: int = 10, storage: str = "mcap", **kw) -> Path:
    """``n`` frames at 10 Hz cycling through different photos, odometry at 5 m/s (0.5 m per frame)."""
    frames = [(T0 + i * 100_000_000, photos[i % len(photos)]) for i in range(n)]
    path = tmp_path / (f"{name}.bag" if storage == "ros1" else name)
    return write_bag(path, frames, straight_poses(2 * n + 4), storage=storage, receive_delay_ns=70_000_000, **kw)


def test_map_holds_every_frame_keyed_by_header_stamp_with_pose(tmp_path, photos, extractor) -> None:
    bag = route_bag(tmp_path, photos, storage="ros1", image_format="jpeg")
    summary = build_map([bag], extractor, tmp_path / "m", image_topic=TOPIC, pose_topic="/odom", progress=False)
    assert (summary.frames_read, summary.kept, summary.bad_frames, summary.kept_without_pose) == (10, 10, 0, 0)
    assert summary.frames_per_s > 0 and "kept keyframes     10 (ids 0..9)" in summary.format()
    pm = PlaceMap.load(tmp_path / "m", ModelIdentity.of(extractor.model, (112, 112)))  # identity recorded
    places = [pm.place(i) for i in pm.ids()]
    assert [p.stamp for p in places] == [(SEC, i * 100_000_000) for i in range(10)]  # not the receive time
    np.testing.assert_allclose([p.pose.position[0] for p in places], [0.5 * i for i in range(10)], atol=1e-5)
    assert places[0].source == f"{bag.resolve()}#{TOPIC}" and places[0].frame_id == "camera"
    # the map's descriptors are the extractor's descriptors of the decoded frames
    frames = [f.rgb for f in read_frames(bag, TOPIC)]
    np.testing.assert_allclose(pm.descriptors(range(10)), extractor.describe(frames), atol=1e-6)


def test_min_period_and_min_distance_subsample(tmp_path, photos, extractor) -> None:
    bag = route_bag(tmp_path, photos)
    by_time = build_map([bag], extractor, tmp_path / "t", image_topic=TOPIC, min_period=0.25, progress=False)
    assert (by_time.kept, by_time.skipped_period) == (4, 6)  # frames 0 3 6 9
    by_distance = build_map([bag], extractor, tmp_path / "d", image_topic=TOPIC, pose_topic="/odom",
                            min_distance=1.2, progress=False)
    assert (by_distance.kept, by_distance.skipped_distance) == (4, 6)
    pm = PlaceMap.load(tmp_path / "d")
    np.testing.assert_allclose(pm.positions()[:, 0], [0.0, 1.5, 3.0, 4.5], atol=1e-5)
    # without a pose topic the distance cannot be measured: nothing is dropped, and the summary says so
    blind = build_map([bag], extractor, tmp_path / "b", image_topic=TOPIC, min_distance=1.2, progress=False)
    assert (blind.kept, blind.distance_unchecked, blind.kept_without_pose) == (10, 10, 10)
    assert "10 frames had no pose, so min-distance could not drop them" in blind.format()


def test_novelty_drops_frames_that_look_like_the_last_keyframe(tmp_path, photos, extractor) -> None:
    order = [0, 0, 0, 1, 1, 2, 0, 0]  # the robot stops in front of photo 0, then 1, ...
    bag = write_bag(tmp_path / "n", [(T0 + i * 10**8, photos[k]) for i, k in enumerate(order)])
    summary = build_map([bag], extractor, tmp_path / "m", image_topic=TOPIC, novelty=0.95, progress=False)
    assert (summary.kept, summary.skipped_novelty) == (4, 4)
    pm = PlaceMap.load(tmp_path / "m")
    assert [pm.place(i).stamp[1] // 10**8 for i in pm.ids()] == [0, 3, 5, 6]


def test_append_continues_ids_and_refuses_another_model(tmp_path, photos, extractor, model) -> None:
    first = route_bag(tmp_path, photos, "first", n=4, storage="sqlite3")
    build_map([first], extractor, tmp_path / "m", image_topic=TOPIC, progress=False)
    before = PlaceMap.load(tmp_path / "m")
    second = route_bag(tmp_path, photos[::-1], "second", n=3, storage="ros1", image_format="png")
    with pytest.raises(FileExistsError, match="pass append=True"):
        build_map([second], extractor, tmp_path / "m", image_topic=TOPIC, progress=False)
    summary = build_map([second], extractor, tmp_path / "m", image_topic=TOPIC, append=True, progress=False)
    assert (summary.first_id, summary.kept, summary.map_places) == (4, 3, 7)
    after = PlaceMap.load(tmp_path / "m")
    assert list(after.ids()) == list(range(7))
    np.testing.assert_array_equal(after.descriptors(range(4)), before.descriptors(range(4)))
    assert [after.place(i).source.split("#")[0].endswith("second.bag") for i in range(7)] == [False] * 4 + [True] * 3
    other = DescriptorExtractor(model, (126, 126), device="cpu")
    with pytest.raises(ModelMismatchError):
        build_map([second], other, tmp_path / "m", image_topic=TOPIC, append=True, progress=False)
    assert len(PlaceMap.load(tmp_path / "m")) == 7
    notes = tmp_path / "notes"  # --append to a folder that is no map must not replace it
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    with pytest.raises(MapError, match="is not a place map"):
        build_map([second], extractor, notes, image_topic=TOPIC, append=True, progress=False)
    assert (notes / "todo.txt").read_text() == "keep me"


def test_damaged_bag_while_appending_keeps_what_was_added(tmp_path, photos, extractor) -> None:
    build_map([route_bag(tmp_path, photos, "a", n=3)], extractor, tmp_path / "m", image_topic=TOPIC, progress=False)
    good = route_bag(tmp_path, photos, "b", n=5, storage="ros1")
    broken = route_bag(tmp_path, photos, "c", n=5, storage="ros1")
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    with pytest.raises(BagError, match=r"c\.bag: cannot read the bag.*\n.*saved with 8 places \(5 added") as info:
        build_map([good, broken], extractor, tmp_path / "m", image_topic=TOPIC, append=True, progress=False)
    assert info.value.summary.kept == 5
    assert len(PlaceMap.load(tmp_path / "m")) == 8


def test_absurd_odometry_is_counted_and_never_stored(tmp_path, photos, extractor) -> None:
    """Odometry of +-1e308 was interpolated to inf, build-map --append saved it, and the next load refused the
    whole map ("no finite pose"), earlier places included. Such samples are rejected and counted now."""
    build_map([route_bag(tmp_path, photos, "first", n=3)], extractor, tmp_path / "m", image_topic=TOPIC,
              pose_topic="/odom", progress=False)
    poses = straight_poses(24)
    for i in (4, 5, 9, 10):  # around frames 1 and 4: interpolating between these overflowed
        stamp, _, quat = poses[i]
        poses[i] = (stamp, ((-1) ** i * 1e308, 0.0, 0.0), quat)
    frames = [(T0 + i * 100_000_000, photos[i % len(photos)]) for i in range(8)]
    bag = write_bag(tmp_path / "hostile", frames, poses, receive_delay_ns=70_000_000)
    summary = build_map([bag], extractor, tmp_path / "m", image_topic=TOPIC, pose_topic="/odom", append=True,
                        progress=False)
    assert (summary.kept, summary.pose_samples, summary.pose_rejected) == (8, 20, 4)
    assert "(20 pose samples read, 4 rejected as not finite, out of range or without a fix)" in summary.format()
    pm = PlaceMap.load(tmp_path / "m")
    positions = pm.positions()[pm.ids()]
    assert len(pm) == 11 and np.isfinite(positions[~np.isnan(positions[:, 0])]).all()
    assert np.abs(np.nan_to_num(positions)).max() < 10


def test_navsatfix_append_shares_the_enu_origin(tmp_path, photos, extractor) -> None:
    def gps_bag(name: str, lat: float) -> Path:
        fixes = [(T0 + i * 10**8, (lat + 0.0001 * i, 10.0, 0.0), (0, 0, 0, 1)) for i in range(4)]
        return write_bag(tmp_path / name, [(T0 + i * 10**8, photos[i]) for i in range(4)], fixes,
                         pose_type="navsatfix", pose_topic="/fix")

    build_map([gps_bag("g1", 0.0)], extractor, tmp_path / "m", image_topic=TOPIC, pose_topic="/fix", progress=False)
    build_map([gps_bag("g2", 0.001)], extractor, tmp_path / "m", image_topic=TOPIC, pose_topic="/fix",
              append=True, progress=False)
    pm = PlaceMap.load(tmp_path / "m")
    north = pm.positions()[:, 1]
    np.testing.assert_allclose(north[4:] - north[:4], 110.574, atol=0.01)  # second run 0.001 deg north
    assert len({pm.place(i).pose.frame_id for i in pm.ids()}) == 1


def test_start_end_window_and_bad_options(tmp_path, photos, extractor) -> None:
    bag = route_bag(tmp_path, photos)
    # the first message is the odometry sample at T0 - 0.1 s, received 70 ms later; frame i is received
    # 0.1 * i + 0.1 s after it
    summary = build_map([bag], extractor, tmp_path / "w", image_topic=TOPIC, start=0.15, end=0.45, progress=False)
    pm = PlaceMap.load(tmp_path / "w")
    assert summary.kept == 3 and [pm.place(i).stamp for i in pm.ids()] == [(SEC, k * 10**8) for k in (1, 2, 3)]
    with pytest.raises(ValueError, match="novelty is a cosine similarity in"):
        build_map([bag], extractor, tmp_path / "x", image_topic=TOPIC, novelty=2.0)
    with pytest.raises(ValueError, match="min_period must be a finite number >= 0, got -1"):
        build_map([bag], extractor, tmp_path / "x", image_topic=TOPIC, min_period=-1)


# -- command line -------------------------------------------------------------------------------------


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_cli_build_map_info_and_query(tmp_path, photos, capsys) -> None:
    bag = route_bag(tmp_path, photos, n=12, storage="sqlite3")
    out = tmp_path / "map"
    code, text = run_cli(capsys, "build-map", "--bag", str(bag), "--image-topic", TOPIC, "--pose-topic", "/odom",
                         *MODEL_ARGS, "--out", str(out), "--min-period", "0.15")
    assert code == 0, text
    assert "frames read        12" in text and "kept keyframes     6 (ids 0..5)" in text
    assert "6 by min-period, 0 by min-distance, 0 by novelty" in text
    code, text = run_cli(capsys, "map-info", str(out))
    assert code == 0
    assert "places       6 (next id 6)" in text and "index        flat" in text
    assert "salad" in text and "input 112x112" in text and "checkpoint sha256" in text
    assert f"time span    {SEC}.000 .. {SEC + 1}.000 s (1.0 s;" in text
    assert "extent       x [0.00, 5.00]  y [0.00, 0.00]  z [0.00, 0.00]" in text
    assert f"{bag.resolve()}#{TOPIC}: 6 places" in text
    query = tmp_path / "q.png"
    cv2.imwrite(str(query), cv2.cvtColor(photos[2], cv2.COLOR_RGB2BGR))  # kept frames 2 and 8 (ids 1, 4)
    montage = tmp_path / "montage.png"
    code, text = run_cli(capsys, "query", str(out), str(query), *MODEL_ARGS[:4], "--device", "cpu", "--k", "3",
                         "--montage", str(montage))
    assert code == 0
    lines = text.splitlines()
    assert lines[0] == f"query {query}" and len(lines) == 5
    top2 = sorted(lines[1:3], key=lambda line: line.split()[2])
    assert top2[0].startswith("  #") and " id 1  score 1.0000  stamp 1700000000.200000000  pose (1.00, 0.00" in top2[0]
    assert " id 4  score 1.0000  stamp 1700000000.800000000  pose (4.00, 0.00, 0.00) yaw 0.0 deg [odom]" in top2[1]
    assert montage.is_file() and lines[-1] == f"  montage {montage}"


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, photos, capsys, caplog) -> None:
    bag = route_bag(tmp_path, photos, n=3)
    base = ["build-map", "--bag", str(bag), *MODEL_ARGS, "--out", str(tmp_path / "m")]
    with caplog.at_level(logging.ERROR, logger="vpr_ros"):
        assert main([*base, "--image-topic", "/front"]) == 2
        assert "no image topic '/front'; its topics are:" in caplog.text
        assert "/odom  [nav_msgs/msg/Odometry]" in caplog.text
        assert main([*base, "--image-topic", TOPIC]) == 0
        caplog.clear()
        assert main([*base, "--image-topic", TOPIC]) == 2
        assert "already exists; pass append=True (--append)" in caplog.text
        caplog.clear()
        other = [a if a != "112" else "126" for a in base]
        assert main([*other, "--image-topic", TOPIC, "--append"]) == 2
        assert "126" in caplog.text and "112" in caplog.text
        caplog.clear()
        bag.joinpath(f"{bag.name}.mcap").write_bytes(b"\x89MCAP0\r\n")  # truncated to its magic
        assert main([*base, "--image-topic", TOPIC, "--append"]) == 2
        assert f"{bag}: cannot read the bag" in caplog.text
    assert len(PlaceMap.load(tmp_path / "m")) == 3  # the earlier map is untouched
    assert np.isnan(PlaceMap.load(tmp_path / "m").positions()).all()  # built without --pose-topic


def test_cli_build_map_progress_bar_has_a_total(tmp_path, photos, capsys) -> None:
    bag = route_bag(tmp_path, photos, n=7)
    assert main(["build-map", "--bag", str(bag), "--image-topic", TOPIC, *MODEL_ARGS, "--out",
                 str(tmp_path / "m")]) == 0
    err = capsys.readouterr().err
    assert "7/7 [" in err and "100%" in err  # count from the bag's index: a total and an ETA


def test_cli_query_takes_frames_from_a_bag(tmp_path, photos, capsys) -> None:
    bag = route_bag(tmp_path, photos, n=12)
    out = tmp_path / "map"
    assert main(["build-map", "--bag", str(bag), "--image-topic", TOPIC, *MODEL_ARGS, "--out", str(out),
                 "--min-period", "0.15"]) == 0  # keeps frames 0, 2, 4, ... as ids 0, 1, 2, ...
    montage = tmp_path / "m.png"
    capsys.readouterr()
    code, text = run_cli(capsys, "query", str(out), "--bag", str(bag), "--topic", TOPIC, "--index", "2",
                         "--stamp", f"{SEC}.81", *MODEL_ARGS[:4], "--device", "cpu", "--k", "2", "--montage",
                         str(montage))
    assert code == 0, text
    blocks = text.split("query ")[1:]
    assert blocks[0].startswith(f"{bag.name}#{TOPIC} frame 2: stamp {SEC}.200000000")
    assert blocks[1].startswith(f"{bag.name}#{TOPIC} nearest {SEC}.810 s: stamp {SEC}.800000000")
    for block, place in zip(blocks, (1, 4), strict=True):  # frames 2 and 8 are places 1 and 4 themselves
        assert f" id {place}  score 1.0000" in block
    # one montage per query, named after --montage; every tile is the place's frame read back from the bag
    assert f"montage {tmp_path / 'm-0.png'}" in text and f"montage {tmp_path / 'm-1.png'}" in text
    assert (tmp_path / "m-0.png").is_file() and (tmp_path / "m-1.png").is_file() and not montage.exists()


def test_result_tiles_read_frames_back_also_from_a_moved_bag(tmp_path, photos) -> None:
    """`query --montage` and `visualize retrieval` share this reader: a place's frame, by its stamp."""
    from vpr_ros.cli.common import retrieval_tiles

    bag = route_bag(tmp_path, photos, n=6)
    assert main(["build-map", "--bag", str(bag), "--image-topic", TOPIC, *MODEL_ARGS, "--out",
                 str(tmp_path / "map")]) == 0
    pm = PlaceMap.load(tmp_path / "map")
    ids = pm.ids()
    tiles = retrieval_tiles(pm, np.ones(len(ids)), ids)
    assert [t.label.splitlines()[0] for t in tiles] == [f"id {i} t={SEC}.{i}00" for i in range(6)]
    assert all(t.image is not None and t.image.shape[:2] == (120, 160) for t in tiles)
    assert np.array_equal(tiles[3].image, photos[3])
    moved = tmp_path / "elsewhere" / bag.name
    moved.parent.mkdir()
    bag.rename(moved)
    assert all(t.image is None for t in retrieval_tiles(pm, np.ones(2), ids[:2]))
    assert np.array_equal(retrieval_tiles(pm, np.ones(1), ids[3:4], [moved])[0].image, photos[3])


def test_cli_query_checks_its_inputs_before_the_model(tmp_path, photos, capsys, caplog) -> None:
    bag = route_bag(tmp_path, photos, n=4)
    out = tmp_path / "map"
    assert main(["build-map", "--bag", str(bag), "--image-topic", TOPIC, *MODEL_ARGS, "--out", str(out)]) == 0
    no_model = ["--checkpoint", str(tmp_path / "no_such.ckpt")]  # loading it would fail: these must fail first
    cases = {
        ("some_frame.jpg",): "image file not found: some_frame.jpg",
        ("--bag", str(tmp_path / "nope"), "--topic", TOPIC, "--index", "0"): f"bag file not found: {tmp_path}/nope",
        ("--bag", str(bag), "--topic", TOPIC, "--index", "4"): f"--index 4: {bag} has 4 messages on {TOPIC}",
        ("--bag", str(bag), "--topic", "/front", "--index", "0"): "no image topic '/front'",
        ("--bag", str(bag), "--topic", TOPIC, "--stamp", "5"): "--stamp 5.000: no frame of",
        ("--bag", str(bag), "--index", "0"): "picked with all of --bag B --topic T",
        (): "nothing to query",
    }
    for argv, message in cases.items():
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="vpr_ros"):
            assert main(["query", str(out), *argv, *no_model]) == 2, argv
        assert message in caplog.text, (argv, caplog.text)
    with pytest.raises(SystemExit):
        main(["query", "--help"])
    assert "(default: the map's input size)" in " ".join(capsys.readouterr().out.split())


def test_a_missing_query_image_fails_before_torch_is_even_imported(tmp_path) -> None:
    import subprocess
    import sys

    code = ("import sys\nfrom vpr_ros.cli import main\n"
            "rc = main(['query', 'street.map', 'some_frame.jpg', '--checkpoint', 'model.pt'])\n"
            "print(rc, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["2", "False"], proc.stderr
    assert "image file not found: some_frame.jpg" in proc.stderr
