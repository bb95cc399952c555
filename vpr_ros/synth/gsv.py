"""GSV-Cities-format training data (and matching validation views) generated from ordinary photos.

Real GSV-Cities is ~530k street-view images; tests and the project's small demo model need the
same *format* with a few hundred images. Each photo is cut into a grid of non-overlapping regions;
each region is one place, and its images are ``vpr_ros.synth.views.random_view`` revisits of it
(framing, roll, perspective, light). The files follow the GSV-Cities layout exactly, so any
GSV-Cities loader reads them::

    <root>/Dataframes/<City>.csv    place_id,year,month,northdeg,city_id,lat,lon,panoid
    <root>/Images/<City>/<City>_<place_id % 1e5, 7 digits>_<year>_<month>_<northdeg>_<lat>_<lon>_<panoid>.jpg

(year 4 digits, month 2, northdeg 3, zero-padded; lat/lon as ``str(float)``; panoid 22 characters
of ``[A-Za-z0-9_-]``.) ``make_val_views`` writes new views of the same places in a benchmark layout
of ``vpr_ros.evaluation.datasets`` (SPED by default), so recall can be measured while training.

Photo sources: ``skimage_photos()`` (bundled with scikit-image; what the demo model trains on, so
it never sees the demo route's photos), ``scene_photos()`` (this package's bundled scenes, used by
the demo route) and ``folder_photos(dir)``.

    python -m vpr_ros.synth.gsv OUT_ROOT [--source skimage|scenes|DIR] [--cities NAME ...]
        [--places-per-photo N] [--images-per-place N] [--image-size N] [--seed S] [--val OUT_VAL_ROOT]
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from vpr_ros.evaluation.datasets import DATASET_SPECS, DATASETS, GSV_COLUMNS, gsv_image_name
from vpr_ros.synth.eval_data import _key, write_dataset
from vpr_ros.synth.route import SCENES, landmark_photos
from vpr_ros.synth.views import random_view

MAX_PHOTO_SIDE = 1024  # larger photos are downscaled once: views are small, and sampling stays fast
VIEW_SCALE = (0.55, 0.9)  # view window as a fraction of the place's region

# scikit-image's bundled photographs (no download needed). Left out: cat (= chelsea), the right
# motorcycle image (same scene as the left), the uniform textures brick, grass and gravel (their
# regions cannot be told apart, so they would be distinct places with the same look), and the
# synthetic, binary or tiny images (horse, logo, colorwheel, checkerboard, binary_blobs,
# shepp_logan_phantom, microaneurysms, lfw_subset).
SKIMAGE_PHOTOS = (
    "astronaut", "camera", "cell", "chelsea", "clock", "coffee", "coins", "hubble_deep_field",
    "immunohistochemistry", "moon", "motorcycle_left", "page", "retina", "rocket", "text",
)  # fmt: skip


def _rgb(arr: np.ndarray) -> np.ndarray:
    """Any 2-D/3-D image array as HxWx3 uint8 (grey replicated, alpha dropped, floats taken as 0..1)."""
    a = np.asarray(arr)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = np.clip(np.rint(a.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"not an image array: shape {a.shape}")
    return np.ascontiguousarray(a[:, :, :3])


def skimage_photos() -> list[tuple[str, np.ndarray]]:
    """The photographs bundled with scikit-image (``SKIMAGE_PHOTOS``) as (name, HxWx3 uint8)."""
    from skimage import data

    return [(name, _rgb(data.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(data, name)()))
            for name in SKIMAGE_PHOTOS]


def scene_photos() -> list[tuple[str, np.ndarray]]:
    """This package's bundled scenes (:func:`vpr_ros.synth.route.landmark_photos`) at full resolution."""
    return [(name, _load(SCENES / f"{name}.jpg")) for name in landmark_photos()]


def folder_photos(folder: Path) -> list[tuple[str, np.ndarray]]:
    """Every .jpg/.jpeg/.png directly in ``folder``, sorted by name."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        raise FileNotFoundError(f"no .jpg/.jpeg/.png photos in {folder}")
    return [(p.stem, _load(p)) for p in paths]


def _load(photo: Path | str | np.ndarray) -> np.ndarray:
    """A photo as RGB uint8 with its longer side at most ``MAX_PHOTO_SIDE``."""
    if isinstance(photo, np.ndarray):
        img = _rgb(photo)
    else:
        with Image.open(photo) as im:
            img = np.asarray(im.convert("RGB"))
    h, w = img.shape[:2]
    if max(h, w) > MAX_PHOTO_SIDE:
        f = MAX_PHOTO_SIDE / max(h, w)
        img = cv2.resize(img, (max(2, round(w * f)), max(2, round(h * f))), interpolation=cv2.INTER_AREA)
    return img


def place_regions(shape: tuple[int, ...], n: int) -> tuple[list[tuple[float, float]], float]:
    """Centres (normalised x, y) of ``n`` places in a photo of ``shape``, and their region size.

    The photo is divided into the rows x cols grid with the largest square cells that holds ``n``
    (cells picked evenly when the grid has more), so regions do not overlap. The size is the
    cell side as a fraction of the photo's shorter side (``warp_view``'s ``scale``). Depends only
    on the shape, so training and validation views agree on where each place is.
    """
    if n < 1:
        raise ValueError(f"places per photo must be >= 1, got {n}")
    h, w = shape[:2]
    # per row count: (cell side, fewer unused cells, rows); the largest wins
    cell, _, rows = max((min(w / math.ceil(n / r), h / r), -r * math.ceil(n / r), r) for r in range(1, n + 1))
    cols = math.ceil(n / rows)
    cells = np.rint(np.linspace(0, rows * cols - 1, n)).astype(int)
    centres = [((c % cols + 0.5) / cols, (c // cols + 0.5) / rows) for c in cells.tolist()]
    return centres, cell / min(h, w)


def _places(imgs: Sequence[np.ndarray], places_per_photo: int) -> list[tuple[int, tuple[float, float], float]]:
    """(photo index, centre, region scale) of every place, photo by photo."""
    out = []
    for i, img in enumerate(imgs):
        centres, size = place_regions(img.shape, places_per_photo)
        out += [(i, c, size) for c in centres]
    return out


def _place_view(
    img: np.ndarray, centre: tuple[float, float], size: float, rng: np.random.Generator, side: int
) -> np.ndarray:
    lo, hi = VIEW_SCALE
    return random_view(img, rng, (side, side), scale=(lo * size, hi * size), center=centre)


def _check_common(photos: Sequence, places_per_photo: int, image_size: int) -> None:
    if not photos:
        raise ValueError("no photos given")
    if places_per_photo < 1:
        raise ValueError(f"places_per_photo must be >= 1, got {places_per_photo}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")


def make_gsv_dataset(
    photos: Sequence[Path | np.ndarray],
    root: Path,
    *,
    cities: Sequence[str] = ("Synthtown",),
    places_per_photo: int = 4,
    images_per_place: int = 4,
    image_size: int = 160,
    seed: int = 0,
) -> Path:
    """Write a GSV-Cities-format dataset of ``places_per_photo`` places per photo under ``root``.

    Photos are split in order into ``len(cities)`` contiguous groups, one city each; place ids
    count from 0 within a city. Every place gets ``images_per_place`` square ``image_size`` views
    (GSV-Cities loaders keep places with at least 4 images by default), a GPS position ~200 m from
    its neighbours with a few metres of jitter per image, and random year, month, heading and
    panoid. The same arguments give byte-identical files. Returns ``root``.
    """
    _check_common(photos, places_per_photo, image_size)
    if images_per_place < 2:
        raise ValueError(f"images_per_place must be >= 2 (a place needs a positive pair), got {images_per_place}")
    cities = list(cities)
    if not cities or len(cities) > len(photos):
        raise ValueError(f"need 1 to {len(photos)} cities (one group of photos each), got {len(cities)}")
    for c in cities:
        if not c.isalnum() or not c.isascii():
            raise ValueError(f"city names must be ASCII letters/digits (they are part of file names): {c!r}")
    if len(set(cities)) != len(cities):
        raise ValueError(f"duplicate city names: {cities}")
    if places_per_photo * math.ceil(len(photos) / len(cities)) >= 10**5:
        raise ValueError("GSV-Cities file names keep place_id % 1e5: at most 99999 places per city")

    rng = np.random.default_rng(seed)
    imgs = [_load(p) for p in photos]
    root = Path(root)
    (root / "Dataframes").mkdir(parents=True, exist_ok=True)
    groups = np.array_split(np.arange(len(imgs)), len(cities))
    for city, group in zip(cities, groups, strict=True):
        lat0, lon0 = float(rng.uniform(-45.0, 60.0)), float(rng.uniform(-120.0, 150.0))
        folder = root / "Images" / city
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        places = _places([imgs[i] for i in group], places_per_photo)
        for place_id, (i, centre, size) in enumerate(places):
            # places on a 10-wide grid ~220 m apart; images of a place within ~10 m of it
            plat = lat0 + 0.002 * (place_id // 10)
            plon = lon0 + 0.002 * (place_id % 10)
            for _ in range(images_per_place):
                row = {
                    "place_id": place_id,
                    "year": int(rng.integers(2007, 2023)),
                    "month": int(rng.integers(1, 13)),
                    "northdeg": int(rng.integers(0, 360)),
                    "city_id": city,
                    "lat": round(plat + float(rng.uniform(-9e-5, 9e-5)), 6),
                    "lon": round(plon + float(rng.uniform(-9e-5, 9e-5)), 6),
                    "panoid": _key(rng),
                }
                view = _place_view(imgs[group[i]], centre, size, rng, image_size)
                Image.fromarray(view).save(folder / gsv_image_name(row), quality=90)
                rows.append(row)
        with (root / "Dataframes" / f"{city}.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=GSV_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    return root


def make_val_views(
    photos: Sequence[Path | np.ndarray],
    root: Path,
    *,
    places_per_photo: int = 4,
    image_size: int = 160,
    seed: int = 1,
    name: str = "sped",
) -> Path:
    """New views of the places ``make_gsv_dataset`` makes from the same photos, in benchmark layout ``name``.

    Place ``i`` is the i-th place in training order (cities in order, ``place_id`` ascending). With a
    seed other than the training one the views are new, so this measures recognising a place from
    an unseen viewpoint. The files go under ``root/<Folder>/`` (e.g. ``root/SPED/``) and
    ``vpr_ros.evaluation.datasets.load_dataset(name, root)`` reads them; for ``msls_val`` the last two places
    only appear as the listed-but-unevaluated queries. Returns ``root``.
    """
    _check_common(photos, places_per_photo, image_size)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset layout {name!r}; expected one of: {', '.join(DATASETS)}")
    imgs = [_load(p) for p in photos]
    places = _places(imgs, places_per_photo)
    n_places = len(places) - (2 if name == "msls_val" else 0)
    if n_places < 1:
        raise ValueError(f"{name} needs more places than {len(places)}")
    rng = np.random.default_rng(seed)

    def view(p: int) -> np.ndarray:
        i, centre, size = places[p]
        return _place_view(imgs[i], centre, size, rng, image_size)

    write_dataset(name, root, n_places, view, rng)
    return Path(root)


def _source(spec: str) -> list[tuple[str, np.ndarray]]:
    if spec == "skimage":
        return skimage_photos()
    if spec == "scenes":
        return scene_photos()
    if not Path(spec).is_dir():
        raise SystemExit(f"--source must be 'skimage', 'scenes' or a folder of photos, got {spec!r}")
    return folder_photos(Path(spec))


def generate(
    root: Path,
    val_root: Path | None = None,
    *,
    source: str = "skimage",
    places_per_photo: int = 4,
    images_per_place: int = 4,
    image_size: int = 160,
    seed: int = 0,
) -> None:
    """Training set (and SPED validation views) written aside and renamed: a crash leaves no half set."""
    photos = [img for _, img in _source(source)]
    for out, write in ((root, lambda d: make_gsv_dataset(photos, d, places_per_photo=places_per_photo,
                                                          images_per_place=images_per_place,
                                                          image_size=image_size, seed=seed)),
                       (val_root, lambda d: make_val_views(photos, d, places_per_photo=places_per_photo,
                                                           image_size=image_size, seed=seed + 1))):
        if out is None or out.exists():
            continue
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        write(tmp)
        tmp.rename(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m vpr_ros.synth.gsv", description=__doc__.split("\n\n")[0])
    ap.add_argument("out_root", type=Path, help="dataset root (gets Dataframes/ and Images/)")
    ap.add_argument("--source", default="skimage", help="skimage (default), scenes, or a folder of photos")
    ap.add_argument("--cities", nargs="+", default=["Synthtown"], help="city names; photos are split among them")
    ap.add_argument("--places-per-photo", type=int, default=4)
    ap.add_argument("--images-per-place", type=int, default=4)
    ap.add_argument("--image-size", type=int, default=160)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val", type=Path, metavar="OUT_VAL_ROOT", help="also write SPED-layout validation views here")
    args = ap.parse_args(argv)

    named = _source(args.source)
    photos = [img for _, img in named]
    try:
        make_gsv_dataset(
            photos, args.out_root, cities=args.cities, places_per_photo=args.places_per_photo,
            images_per_place=args.images_per_place, image_size=args.image_size, seed=args.seed,
        )  # fmt: skip
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n_places = 0
    for city, group in zip(args.cities, np.array_split(np.arange(len(named)), len(args.cities)), strict=True):
        with (args.out_root / "Dataframes" / f"{city}.csv").open(newline="") as f:
            ids = [int(r["place_id"]) for r in csv.DictReader(f)]
        n_places += len(set(ids))
        print(f"{city}: {len(set(ids))} places, {len(ids)} images from {', '.join(named[i][0] for i in group)}")
    total = n_places * args.images_per_place
    print(f"wrote {n_places} places, {total} images, {len(args.cities)} cities to {args.out_root}")
    if args.val is not None:
        make_val_views(
            photos, args.val, places_per_photo=args.places_per_photo, image_size=args.image_size, seed=args.seed + 1
        )
        print(f"wrote validation views of the same {n_places} places (sped: {n_places} references, "
              f"{n_places} queries) to {args.val / DATASET_SPECS['sped'].folder}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
