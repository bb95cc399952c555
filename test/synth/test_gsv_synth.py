"""vpr_ros.synth.gsv: GSV-Cities layout and names exactly, determinism, and validation views of the same places."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from vpr_ros.evaluation.datasets import GSV_COLUMNS, load_dataset
from vpr_ros.synth.gsv import (
    SKIMAGE_PHOTOS,
    main,
    make_gsv_dataset,
    make_val_views,
    place_regions,
    skimage_photos,
)

CITIES = ("Alphaville", "Betacity")
PER_PHOTO, PER_PLACE, SIZE, SEED = 3, 4, 64, 5


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    named = dict(skimage_photos())
    return [named["astronaut"], named["coffee"], named["camera"]]  # square, wide, greyscale source


@pytest.fixture(scope="module")
def gsv_root(photos: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gsv")
    out = make_gsv_dataset(
        photos, root, cities=CITIES, places_per_photo=PER_PHOTO, images_per_place=PER_PLACE, image_size=SIZE,
        seed=SEED,
    )  # fmt: skip
    assert out == root
    return root


def _rows(root: Path, city: str) -> list[dict[str, str]]:
    with (root / "Dataframes" / f"{city}.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == GSV_COLUMNS
        return list(reader)


def _name(row: dict[str, str]) -> str:
    """The GSV-Cities loader's rule, rebuilt here from the CSV text on purpose (not imported)."""
    pl_id = str(int(row["place_id"]) % 10**5).zfill(7)
    year, month = str(int(row["year"])).zfill(4), str(int(row["month"])).zfill(2)
    northdeg = str(int(row["northdeg"])).zfill(3)
    lat, lon = str(float(row["lat"])), str(float(row["lon"]))
    return f"{row['city_id']}_{pl_id}_{year}_{month}_{northdeg}_{lat}_{lon}_{row['panoid']}.jpg"


def test_columns_names_and_files_follow_gsv_cities(gsv_root: Path) -> None:
    assert sorted(p.name for p in (gsv_root / "Dataframes").iterdir()) == sorted(f"{c}.csv" for c in CITIES)
    assert sorted(p.name for p in (gsv_root / "Images").iterdir()) == sorted(CITIES)
    for city in CITIES:
        rows = _rows(gsv_root, city)
        names = [_name(r) for r in rows]
        assert len(set(names)) == len(names)
        assert sorted(names) == sorted(p.name for p in (gsv_root / "Images" / city).iterdir())  # nothing else
        for r in rows:
            assert r["city_id"] == city
            assert re.fullmatch(r"[A-Za-z0-9_-]{22}", r["panoid"])
            assert 2000 <= int(r["year"]) <= 2030 and 1 <= int(r["month"]) <= 12 and 0 <= int(r["northdeg"]) < 360
            assert r["lat"] == repr(float(r["lat"])) and r["lon"] == repr(float(r["lon"]))  # shortest float text
            assert -90 < float(r["lat"]) < 90 and -180 < float(r["lon"]) < 180
        with Image.open(gsv_root / "Images" / city / names[0]) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (SIZE, SIZE)


def test_places_per_city_and_images_per_place(gsv_root: Path) -> None:
    # photos split in order: 2 photos -> Alphaville, 1 -> Betacity
    for city, n_photos in zip(CITIES, (2, 1), strict=True):
        ids = [int(r["place_id"]) for r in _rows(gsv_root, city)]
        assert sorted(set(ids)) == list(range(n_photos * PER_PHOTO))
        assert all(ids.count(p) == PER_PLACE for p in set(ids))  # >= GSV-Cities' min_img_per_place (4)


def test_images_of_a_place_share_a_position_and_differ_as_views(gsv_root: Path) -> None:
    rows = _rows(gsv_root, CITIES[0])
    by_place: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_place.setdefault(r["place_id"], []).append(r)
    pos = {p: np.array([[float(r["lat"]), float(r["lon"])] for r in rs]) for p, rs in by_place.items()}
    for p, xy in pos.items():
        assert np.ptp(xy, axis=0).max() < 2e-4  # within ~20 m
        others = [q for q in pos if q != p]
        assert min(np.abs(pos[q].mean(0) - xy.mean(0)).max() for q in others) > 1e-3  # other places ~100 m+
    imgs = [np.asarray(Image.open(gsv_root / "Images" / CITIES[0] / _name(r))) for r in by_place["0"]]
    assert all(not np.array_equal(imgs[0], im) for im in imgs[1:])


def test_same_seed_same_bytes_other_seed_other_data(photos: list[np.ndarray], gsv_root: Path, tmp_path: Path) -> None:
    again = make_gsv_dataset(
        photos, tmp_path / "a", cities=CITIES, places_per_photo=PER_PHOTO, images_per_place=PER_PLACE,
        image_size=SIZE, seed=SEED,
    )  # fmt: skip
    files = sorted(p.relative_to(gsv_root) for p in gsv_root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((gsv_root / f).read_bytes() == (again / f).read_bytes() for f in files)
    other = make_gsv_dataset(photos[:1], tmp_path / "b", places_per_photo=PER_PHOTO, image_size=SIZE, seed=SEED + 1)
    mine = make_gsv_dataset(photos[:1], tmp_path / "c", places_per_photo=PER_PHOTO, image_size=SIZE, seed=SEED)
    assert (other / "Dataframes/Synthtown.csv").read_text() != (mine / "Dataframes/Synthtown.csv").read_text()


def _tiny(img: np.ndarray) -> np.ndarray:
    """A 16x16 zero-mean grey thumbnail: crude, but enough to tell these places apart."""
    g = cv2.resize(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32), (16, 16), interpolation=cv2.INTER_AREA)
    g = g.ravel() - g.mean()
    return g / (np.linalg.norm(g) + 1e-6)


def test_val_views_are_new_views_of_the_training_places(
    photos: list[np.ndarray], gsv_root: Path, tmp_path: Path
) -> None:
    out = make_val_views(photos, tmp_path, places_per_photo=PER_PHOTO, image_size=SIZE, seed=SEED + 1)
    assert out == tmp_path
    ds = load_dataset("sped", tmp_path)
    n = len(photos) * PER_PHOTO
    assert len(ds.db_images) == len(ds.q_images) == n
    assert [p.tolist() for p in ds.positives] == [[i] for i in range(n)]

    # training place k (cities in order, place_id ascending) must be validation place k
    train, labels, offset = [], [], 0
    for city in CITIES:
        rows = _rows(gsv_root, city)
        for r in rows:
            train.append(_tiny(np.asarray(Image.open(gsv_root / "Images" / city / _name(r)))))
            labels.append(offset + int(r["place_id"]))
        offset += len({r["place_id"] for r in rows})
    train_d, labels = np.stack(train), np.array(labels)
    val_paths = ds.db_paths() + ds.q_paths()
    val = np.stack([_tiny(np.asarray(Image.open(p))) for p in val_paths])
    truth = np.concatenate([np.arange(n), np.arange(n)])
    sims = val @ train_d.T
    place_sim = np.stack([sims[:, labels == k].mean(1) for k in range(n)], axis=1)
    assert (place_sim.argmax(1) == truth).mean() >= 0.5  # chance is 1/9; 2/3 with these seeds
    assert (place_sim.argmax(1) == np.roll(truth, 1)).mean() < 0.2  # misaligned places would fail
    with Image.open(val_paths[0]) as im:
        assert im.size == (SIZE, SIZE)
    train_bytes = {p.read_bytes() for p in (gsv_root / "Images").rglob("*.jpg")}
    assert not any(p.read_bytes() in train_bytes for p in val_paths)


def test_val_views_in_other_layouts(photos: list[np.ndarray], tmp_path: Path) -> None:
    make_val_views(photos[:1], tmp_path, places_per_photo=4, image_size=32, name="nordland")
    ds = load_dataset("nordland", tmp_path)
    assert len(ds.q_images) == 4 and len(ds.db_images) == 40
    make_val_views(photos[:1], tmp_path, places_per_photo=4, image_size=32, name="msls_val")
    assert len(load_dataset("msls_val", tmp_path).q_images) == 2  # two places kept as unmatched queries


def test_place_regions_tile_the_photo_without_overlap() -> None:
    centres, size = place_regions((512, 512), 4)
    assert sorted(centres) == [(0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)] and size == 0.5
    centres, size = place_regions((400, 1200), 3)  # a wide photo: one row of three
    assert centres == [(1 / 6, 0.5), (0.5, 0.5), (5 / 6, 0.5)] and size == 1.0
    centres, size = place_regions((300, 300), 3)  # 2 x 2 grid, three cells used
    assert len(set(centres)) == 3 and size == 0.5


def test_skimage_photos_are_rgb_photos() -> None:
    named = skimage_photos()
    assert [n for n, _ in named] == list(SKIMAGE_PHOTOS)
    assert all(a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 and min(a.shape[:2]) >= 150 for _, a in named)


def test_bad_arguments(photos: list[np.ndarray], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cities"):
        make_gsv_dataset(photos[:1], tmp_path, cities=("A", "B"))
    with pytest.raises(ValueError, match="city names"):
        make_gsv_dataset(photos[:1], tmp_path, cities=("New_York",))
    with pytest.raises(ValueError, match="images_per_place"):
        make_gsv_dataset(photos[:1], tmp_path, images_per_place=1)
    with pytest.raises(ValueError, match="no photos"):
        make_gsv_dataset([], tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        make_val_views(photos[:1], tmp_path, name="tokyo247")


def test_cli_writes_training_and_validation_sets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "photos"
    src.mkdir()
    named = dict(skimage_photos())
    for name in ("chelsea", "rocket"):
        Image.fromarray(named[name]).save(src / f"{name}.jpg")
    rc = main([str(tmp_path / "gsv"), "--source", str(src), "--places-per-photo", "2", "--images-per-place", "3",
               "--image-size", "48", "--val", str(tmp_path / "val")])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "Synthtown: 4 places, 12 images from chelsea, rocket" in out
    assert "wrote 4 places, 12 images, 1 cities" in out
    assert len(_rows(tmp_path / "gsv", "Synthtown")) == 12
    assert len(load_dataset("sped", tmp_path / "val").q_images) == 4
