"""Standing adversarial suite for bags: generated damaged bags of every storage (truncated at many
offsets, bytes flipped) and topics of the wrong type, read the way ``build-map`` reads them.

For every input: frames that decode, or :class:`BagError` naming the file; never another exception.
Building a map from a damaged bag with ``--append`` never loses the map that was there.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from vpr_ros.bags.reader import check_bag, read_frames
from vpr_ros.bags.writer import write_bag
from vpr_ros.cli import main
from vpr_ros.errors import BagError
from vpr_ros.maps.place_map import PlaceMap

REPO = Path(__file__).resolve().parents[1]
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
