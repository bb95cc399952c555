"""Standing adversarial suite for bags: generated damaged bags of every storage (truncated at many
offsets, bytes flipped) and topics of the wrong type, read the way ``build-map`` reads them.

For every input: frames that decode, or :class:`BagError` naming the file; never another exception.
Building a map from a damaged bag with ``--append`` never loses the map that was there.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from vpr_ros.bags.bag_files import check_bag
from vpr_ros.bags.reader import UNDECODABLE, ReadStats, read_frames
from vpr_ros.bags.writer import write_bag
from vpr_ros.cli import main
from vpr_ros.errors import BagError
from vpr_ros.maps.place_map import PlaceMap

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "vpr_ros" / "synth" / "data" / "models" / "demo_salad.pt"
TOPIC, ODOM = "/camera/image_raw", "/odom"
STORAGES = ("mcap", "sqlite3", "ros1")
T0 = 1_700_000_000 * 10**9


def _write(folder: Path, storage: str, frames: int = 12) -> Path:
    rng = np.random.default_rng(7)
    images = [(T0 + i * 100_000_000, rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)) for i in range(frames)]
    poses = [(T0 + i * 50_000_000, (0.1 * i, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)) for i in range(2 * frames)]
    path = folder / ("drive.bag" if storage == "ros1" else "drive")
    write_bag(path, images, poses, storage=storage, image_topic=TOPIC, pose_topic=ODOM, image_format="jpeg")
    return path


def _data_file(bag: Path) -> Path:
    return bag if bag.is_file() else next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))


def _damaged(src: Path, dst_root: Path, rng: np.random.Generator, n: int) -> list[Path]:
    """``n`` copies of ``src``: half truncated at random offsets, half with random bytes flipped."""
    out = []
    for k in range(n):
        dst = dst_root / f"{k}" / src.name
        dst.parent.mkdir(parents=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
        target = _data_file(dst)
        data = bytearray(target.read_bytes())
        if k % 2:
            data = data[: int(rng.integers(0, len(data)))]
        else:
            for _ in range(int(rng.integers(1, 30))):
                data[int(rng.integers(0, len(data)))] ^= int(rng.integers(1, 256))
        target.write_bytes(bytes(data))
        out.append(dst)
    return out


@pytest.mark.parametrize("storage", STORAGES)
def test_damaged_bags_give_frames_or_a_bag_error(tmp_path: Path, storage: str) -> None:
    started = time.monotonic()
    src = _write(tmp_path / "src", storage)
    rng = np.random.default_rng({"mcap": 1, "sqlite3": 2, "ros1": 3}[storage])
    read = refused = 0
    for bag in _damaged(src, tmp_path / "bad", rng, 40):
        try:
            check_bag(bag, TOPIC, ODOM)
            frames = list(read_frames(bag, TOPIC, pose_topic=ODOM))
        except BagError as exc:
            assert bag.name in str(exc) or str(bag.parent) in str(exc), exc
            refused += 1
            continue
        assert all(f.rgb.dtype == np.uint8 and f.rgb.shape[2] == 3 for f in frames)
        read += 1
    print(f"\n{storage}: 40 damaged bags, {read} read (damage outside the frames), {refused} refused, "
          f"{time.monotonic() - started:.1f} s")
    assert read + refused == 40 and refused > 0


@pytest.mark.parametrize("storage", STORAGES)
def test_topics_of_the_wrong_type_are_refused_before_reading(tmp_path: Path, storage: str) -> None:
    bag = _write(tmp_path, storage, frames=3)
    for image_topic, pose_topic in ((ODOM, None), (TOPIC, TOPIC), ("/nope", None), (TOPIC, "/nope")):
        with pytest.raises(BagError, match="topic"):
            check_bag(bag, image_topic, pose_topic)
        with pytest.raises(BagError):
            list(read_frames(bag, image_topic, pose_topic=pose_topic))


def test_append_from_a_damaged_bag_keeps_the_map(tmp_path: Path) -> None:
    good = _write(tmp_path / "good", "mcap")
    out = tmp_path / "street.map"
    base = ["build-map", "--image-topic", TOPIC, "--pose-topic", ODOM, "--checkpoint", str(DEMO),
            "--device", "cpu", "--out", str(out)]
    assert main([*base, "--bag", str(good)]) == 0
    before = len(PlaceMap.load(out))
    rng = np.random.default_rng(11)
    for bad in _damaged(good, tmp_path / "bad", rng, 6):
        code = main([*base, "--bag", str(bad), "--append"])
        assert code in (0, 2)
        after = len(PlaceMap.load(out))  # always loadable, never fewer places
        assert after >= before
        before = after


def _undecodable_frame_id(bag: Path, row: int) -> None:
    """Make the ``row``-th image message's frame_id bytes that are no UTF-8 (sqlite3 storage: no checksums)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(_data_file(bag))) as db, db:
        rows = db.execute("SELECT m.id, m.data FROM messages m JOIN topics t ON t.id = m.topic_id "
                          "WHERE t.name = ? ORDER BY m.timestamp", (TOPIC,)).fetchall()
        msg_id, data = rows[row]
        assert data.count(b"camera_frame_0001") == 1
        db.execute("UPDATE messages SET data = ? WHERE id = ?",
                   (data.replace(b"camera_frame_0001", b"\xff\xfe" + b"x" * 15), msg_id))


def test_one_undecodable_frame_id_is_counted_and_skipped(tmp_path: Path, caplog) -> None:
    """It used to refuse the whole bag as damaged: one message lost, the other 11 mapped."""
    rng = np.random.default_rng(8)
    images = [(T0 + i * 100_000_000, rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)) for i in range(12)]
    bag = write_bag(tmp_path / "drive", images, storage="sqlite3", image_topic=TOPIC, image_format="jpeg",
                    frame_id="camera_frame_0001")
    _undecodable_frame_id(bag, 5)
    stats = ReadStats()
    frames = list(read_frames(bag, TOPIC, stats=stats))
    assert len(frames) == 11 and stats.frames == 12 and stats.bad == {UNDECODABLE: 1}
    assert T0 + 5 * 100_000_000 not in {f.stamp_ns for f in frames}
    assert "undecodable /camera/image_raw message" in caplog.text
    out = tmp_path / "map"
    assert main(["build-map", "--bag", str(bag), "--image-topic", TOPIC, "--checkpoint", str(DEMO), "--device",
                 "cpu", "--out", str(out)]) == 0
    assert len(PlaceMap.load(out)) == 11


@pytest.mark.parametrize(("make", "why"), [
    (lambda p: p.mkdir(), "a folder without metadata.yaml"),
    (lambda p: (p.mkdir(), (p / "notes.txt").write_text("x")), "a folder without metadata.yaml"),
    (lambda p: p.with_suffix(".txt").write_text("x") and None, "no bag file name ends in '.txt'"),
    (lambda p: p.with_suffix(".bag").write_text("<html>"), "it does not start like a ROS 1 bag"),
    (lambda p: p.with_suffix(".mcap").write_bytes(b""), "the file is empty"),
    (lambda p: p.with_suffix(".db3").write_bytes(b"PK\x03\x04" + bytes(100)), "it does not start like a SQLite"),
])
def test_what_is_no_bag_is_called_so(tmp_path: Path, make, why: str) -> None:
    make(tmp_path / "x")
    path = next(tmp_path.iterdir())
    with pytest.raises(BagError, match="is not a bag") as info:
        check_bag(path, TOPIC)
    assert why in str(info.value) and "damaged or truncated" not in str(info.value)


def test_a_bag_folder_without_metadata_points_at_its_data_file(tmp_path: Path) -> None:
    bag = _write(tmp_path, "mcap", frames=2)
    (bag / "metadata.yaml").unlink()
    with pytest.raises(BagError, match=r"it holds drive\.mcap: pass that file"):
        check_bag(bag, TOPIC)
    assert check_bag(next(bag.glob("*.mcap")), TOPIC) == 2
