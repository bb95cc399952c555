"""Small datasets in every benchmark layout of :mod:`vpr_ros.evaluation.datasets`, from the bundled photos.

They let ``vpr-ros eval`` and the training validation run end to end without downloading a
benchmark: each place is one bundled photo, references and queries are different random views.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from vpr_ros.evaluation.datasets import (
    DATASET_SPECS,
    NORDLAND_STRIDE,
    POS_DIST_THR,
    EvalDataset,
    _check_name,
    _object_array,
    load_dataset,
    nordland_positives,
)
from vpr_ros.synth.route import SCENES, landmark_photos
from vpr_ros.synth.views import random_view

_MAX_SIDE = 224  # generated images stay small
_LIST_PREFIX = {"msls_val": "msls_val", "msls_challenge": "msls_test", "nordland": "Nordland", "sped": "SPED"}


@lru_cache(maxsize=1)
def _scene_photos() -> tuple[tuple[str, Image.Image], ...]:
    """One photo per distinct scene (:func:`vpr_ros.synth.route.landmark_photos`), downscaled to <= 320 px."""
    out = []
    for name in landmark_photos():
        img = Image.open(SCENES / f"{name}.jpg").convert("RGB")
        img.thumbnail((320, 320))
        out.append((name, img))
    return tuple(out)


def _view(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Another view of the same place: a mild ``random_view`` (framing, roll, perspective, light).

    Mild on purpose: the evaluation tests expect views of one photo to stay near each other even for
    an untrained model. The longer side is 160..224 px and the photo's aspect is kept.
    """
    w, h = img.size
    side = int(rng.integers(160, _MAX_SIDE + 1))
    out = (side, max(1, round(side * w / h))) if h >= w else (max(1, round(side * h / w)), side)
    arr = random_view(
        np.asarray(img), rng, out, scale=(0.75, 0.92), max_rotation_deg=5.0, max_tilt=0.08, max_shift=0.08,
        photometric_strength=0.4,
    )
    return Image.fromarray(arr)


def _key(rng: np.random.Generator) -> str:
    alphabet = np.array(list(string.ascii_letters + string.digits + "-_"))
    return "".join(rng.choice(alphabet, 22))


def generate_dataset(name: str, out_root: Path, seed: int = 0, n_places: int = 12) -> EvalDataset:
    """Write a small dataset in the on-disk layout of ``name`` under ``out_root``; return it loaded.

    Each place is one bundled photo; references and queries are different random views of it.
    """
    _check_name(name)
    rng = np.random.default_rng(seed)
    photos = _scene_photos()
    spare = 2 if name == "msls_val" else 0  # msls_val: queries outside qIdx show unseen photos
    if not 1 <= n_places <= len(photos) - spare:
        raise ValueError(f"n_places must be in [1, {len(photos) - spare}] for {name}")
    order = rng.permutation(len(photos))
    places = [photos[i][1] for i in order]
    return write_dataset(name, out_root, n_places, lambda p: _view(places[p], rng), rng)


def write_dataset(
    name: str,
    out_root: Path,
    n_places: int,
    view: Callable[[int], np.ndarray | Image.Image],
    rng: np.random.Generator,
) -> EvalDataset:
    """Write ``name``'s on-disk layout under ``out_root`` from views of ``n_places`` places; return it loaded.

    ``view(p)`` must return a new RGB image (uint8 array or PIL) of place ``p`` on every call:
    references and queries of a place are separate calls. ``msls_val`` also asks for places
    ``n_places`` and ``n_places + 1`` (listed queries that ``qIdx`` leaves out, so they must show
    places with no reference). ``rng`` draws the file keys and coordinates. Used by
    ``generate_dataset`` and by generators of held-out evaluation sets from other photos.
    """
    _check_name(name)
    if n_places < 1:
        raise ValueError(f"n_places must be >= 1, got {n_places}")
    spare = 2 if name == "msls_val" else 0
    root = Path(out_root) / DATASET_SPECS[name].folder
    root.mkdir(parents=True, exist_ok=True)

    def put(rel: str, place: int) -> str:
        """Save a fresh view of ``place`` at ``root / rel`` (JPEG) and return ``rel``."""
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img = view(place)
        (Image.fromarray(img) if isinstance(img, np.ndarray) else img).save(path, quality=85)
        return rel

    def save(fname: str, arr: np.ndarray) -> None:
        np.save(root / fname, arr, allow_pickle=arr.dtype.hasobject)

    if name.startswith("pitts"):
        _gen_pittsburgh(name, root, put, save, n_places, rng)
    elif name == "msls_val":
        db, q, gt = [], [], []
        for p in range(n_places):
            city = ("cph", "sf")[p % 2]
            first = len(db)
            db += [put(f"train_val/{city}/database/images/{_key(rng)}.jpg", p) for _ in range(2)]
            gt.append(np.arange(first, len(db), dtype=np.int64))
            q.append(put(f"train_val/{city}/query/images/{_key(rng)}.jpg", p))
        # two queries without a counterpart in the database, left out by qIdx (like 747 -> 740)
        extra = [put(f"train_val/sf/query/images/{_key(rng)}.jpg", n_places + k) for k in range(spare)]
        q_all = q[:1] + extra[:1] + q[1:] + extra[1:]
        save("msls_val_qIdx.npy", np.array([q_all.index(x) for x in q], dtype=np.int64))
        save("msls_val_pIdx.npy", _object_array(gt))
        q = q_all
    elif name == "msls_challenge":
        db, q = [], []
        for p in range(n_places):
            city = ("kampala", "stockholm")[p % 2]
            db.append(put(f"test/{city}/database/images/{_key(rng)}.jpg", p))
            q.append(put(f"test/{city}/query/images/{_key(rng)}.jpg", p))
    elif name == "nordland":
        n_db = NORDLAND_STRIDE * n_places
        # reference frame j shows the place whose query frame is nearest (j / 10 rounded)
        db = [
            put(f"ref/{j:07d}.jpg", min((j + NORDLAND_STRIDE // 2) // NORDLAND_STRIDE, n_places - 1))
            for j in range(n_db)
        ]
        q = [put(f"query/{i:07d}.jpg", i) for i in range(n_places)]
        save("Nordland_gt.npy", _object_array(nordland_positives(n_db, n_places, 1)))
    elif name == "sped":
        db = [put(f"ref/{i:07d}.jpg", i) for i in range(n_places)]
        q = [put(f"query/{i:07d}.jpg", i) for i in range(n_places)]
        save("SPED_gt.npy", np.arange(n_places, dtype=np.int64)[:, None])
    else:  # sfxl: places 100 m apart; db views and queries within 8 m per axis of the place (< 23 m apart)
        for p in range(n_places):
            east, north = 549000.0 + 100.0 * p, 4180000.0 + 30.0 * (p % 3)
            for _ in range(2):
                e, n = east + rng.uniform(-8, 8), north + rng.uniform(-8, 8)
                put(f"database/{_sfxl_name(e, n, rng)}", p)
            e, n = east + rng.uniform(-8, 8), north + rng.uniform(-8, 8)
            put(f"queries/{_sfxl_name(e, n, rng)}", p)
    if prefix := _LIST_PREFIX.get(name):
        save(f"{prefix}_dbImages.npy", np.array(db))
        save(f"{prefix}_qImages.npy", np.array(q))
    return load_dataset(name, out_root)


def _sfxl_name(east: float, north: float, rng: np.random.Generator) -> str:
    # @utm_east@utm_north@zone_number@zone_letter@lat@lon@pano_id@tile@heading@pitch@roll@height@timestamp@note@.jpg
    heading = int(rng.integers(0, 360))
    return f"@{east:.2f}@{north:.2f}@10@S@@@{_key(rng)[:12]}@@{heading:03d}@@@@@@.jpg"


def _gen_pittsburgh(
    name: str,
    root: Path,
    put: Callable[[str, int], str],
    save: Callable[[str, np.ndarray], None],
    n_places: int,
    rng: np.random.Generator,
) -> None:
    """Pittsburgh: db ``000/PPPPPP_pitch1_yawK.jpg``, queries under ``queries_real/``, npy + .mat."""
    from scipy.io import savemat

    db, q, utm_db, utm_q, gt = [], [], [], [], []
    for p in range(n_places):
        centre = np.array([584000.0 + 100.0 * p, 4477000.0 + 40.0 * (p % 2)])
        first = len(db)
        for yaw in (1, 2):
            db.append(put(f"{p // 1000:03d}/{p:06d}_pitch1_yaw{yaw}.jpg", p))
            utm_db.append(centre + rng.uniform(-8, 8, 2))
        gt.append(np.arange(first, len(db), dtype=np.int64))  # same place < 23 m; others >= 84 m
        q.append(put(f"queries_real/{p // 1000:03d}/{p:06d}_pitch2_yaw{int(rng.integers(1, 13))}.jpg", p))
        utm_q.append(centre + rng.uniform(-8, 8, 2))
    save(f"{name}_dbImages.npy", np.array(db))
    save(f"{name}_qImages.npy", np.array(q))
    save(f"{name}_gt.npy", _object_array(gt))

    def cell(items: list[str]) -> np.ndarray:  # a MATLAB cell column of strings
        return np.array(items, dtype=object).reshape(-1, 1)

    (root / "datasets").mkdir(exist_ok=True)
    struct = {
        "whichSet": "test",
        "dbImage": cell(db),
        "utmDb": np.array(utm_db).T,
        "qImage": cell([s.removeprefix("queries_real/") for s in q]),
        "utmQ": np.array(utm_q).T,
        "numDb": float(len(db)),
        "numQ": float(len(q)),
        "posDistThr": POS_DIST_THR,
        "posDistSqThr": POS_DIST_THR**2,
        "nonTrivPosDistSqThr": 100.0,
    }
    savemat(root / "datasets" / f"{name}.mat", {"dbStruct": struct})
