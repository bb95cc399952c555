"""Standard VPR benchmark layouts: load them, and generate small ones from the bundled photos.

Layout rule: every dataset lives in one folder ``<data_root>/<Folder>/`` that holds the images
exactly as downloaded *and* the metadata files (``.npy`` lists / ground truth) next to them.
Image paths in the metadata are relative to that folder. (The SALAD / gsv-cities code keeps the
``.npy`` files in its own ``datasets/<Folder>/`` directory and the images elsewhere; copy the
``.npy`` files into the image folder. OpenVPRLab keeps them together, as here.)

=================  ===================  ====================================================
name               folder               files
=================  ===================  ====================================================
pitts30k_test      ``Pittsburgh/``      ``pitts30k_test_{dbImages,qImages,gt}.npy`` or
                                        ``datasets/pitts30k_test.mat``; ``000/...`` images,
                                        ``queries_real/000/...``
pitts30k_val       ``Pittsburgh/``      same with ``pitts30k_val`` (the in-training validation set)
pitts250k_test     ``Pittsburgh/``      same with ``pitts250k_test``
msls_val           ``msls/``            ``msls_val_{dbImages,qImages,qIdx,pIdx}.npy``,
                                        ``train_val/<city>/{database,query}/images/*.jpg``
msls_challenge     ``msls/``            ``msls_test_{dbImages,qImages}.npy``,
                                        ``test/<city>/{database,query}/images/*.jpg``
nordland           ``Nordland/``        ``Nordland_{dbImages,qImages}.npy``, ``ref/``, ``query/``
sped               ``SPED/``            ``SPED_{dbImages,qImages,gt}.npy``, ``ref/``, ``query/``
sfxl               ``sf_xl/test/``      ``database/`` and ``queries/`` with
                                        ``@utm_east@utm_north@...@.jpg`` file names
=================  ===================  ====================================================

Where the names come from:

* ``msls_val_*``, ``msls_test_*``, ``Nordland_*``, ``SPED_*``, ``pitts*_{dbImages,qImages,gt}``:
  SALAD ``dataloaders/val/*Dataset.py`` (same files as gsv-cities ``datasets/``); MSLS queries are
  ``qImages[qIdx]`` and ``pIdx`` is per selected query (SALAD ``MapillaryDataset.py``); MSLS image
  paths ``train_val/<city>/...`` / ``test/<city>/...`` follow the Mapillary SLS download.
* ``datasets/pitts*.mat`` with ``dbStruct`` fields ``whichSet, dbImage, utmDb, qImage, utmQ, numDb,
  numQ, posDistThr, posDistSqThr, nonTrivPosDistSqThr`` and queries under ``queries_real/``:
  gsv-cities ``dataloaders/PittsburgDataset.py`` (NetVLAD release); positives = radius search of
  ``utmQ`` in ``utmDb`` with radius ``posDistThr`` (25 m).
* SF-XL: VPR-methods-evaluation ``test_dataset.py``: images found by sorted recursive glob of
  ``*.jpg`` (or listed in ``<folder>_images_paths.txt``), UTM from ``path.split("@")[1:3]``,
  positives within 25 m.
* Nordland positives (query i <-> references ``10i-w .. 10i+w``, clipped) and SPED identity ground
  truth are the conventions given for this project; ``Nordland_gt.npy`` is written by the
  generator for compatibility but the loader computes the window itself (``nordland_window``).

Object ``.npy`` files (ragged ground truth) are pickles; they are read with a restricted
unpickler that only rebuilds numpy arrays, so a crafted file cannot run code.
"""

from __future__ import annotations

import io
import pickle
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from vpr_ros.views import random_view

DATASETS = ("pitts30k_test", "pitts30k_val", "pitts250k_test", "msls_val", "msls_challenge", "nordland", "sped", "sfxl")

SCENES_DIR = Path(__file__).resolve().parent / "data" / "scenes"
POS_DIST_THR = 25.0  # metres, Pittsburgh posDistThr and VPR-methods-evaluation default
NORDLAND_STRIDE = 10  # references are sampled 10x denser than queries

_FOLDERS = {
    "pitts30k_test": "Pittsburgh",
    "pitts30k_val": "Pittsburgh",
    "pitts250k_test": "Pittsburgh",
    "msls_val": "msls",
    "msls_challenge": "msls",
    "nordland": "Nordland",
    "sped": "SPED",
    "sfxl": "sf_xl/test",
}

_LAYOUTS = {
    "pitts30k_test": """\
<data_root>/Pittsburgh/
├── pitts30k_test_dbImages.npy     # str paths, e.g. 000/000000_pitch1_yaw1.jpg
├── pitts30k_test_qImages.npy      # str paths, e.g. queries_real/000/000000_pitch1_yaw1.jpg
├── pitts30k_test_gt.npy           # object array: per query int64 db indices (25 m)
├── datasets/pitts30k_test.mat     # alternative to the three .npy: NetVLAD dbStruct
├── 000/ ... 010/                  # database images
└── queries_real/000/ ...          # query images""",
    "msls_val": """\
<data_root>/msls/
├── msls_val_dbImages.npy          # str paths, e.g. train_val/cph/database/images/<key>.jpg
├── msls_val_qImages.npy           # str paths, e.g. train_val/cph/query/images/<key>.jpg
├── msls_val_qIdx.npy              # int indices into qImages: the evaluated queries
├── msls_val_pIdx.npy              # object array: per evaluated query int64 db indices
└── train_val/{cph,sf}/{database,query}/images/*.jpg""",
    "msls_challenge": """\
<data_root>/msls/
├── msls_test_dbImages.npy         # str paths, e.g. test/<city>/database/images/<key>.jpg
├── msls_test_qImages.npy          # str paths, e.g. test/<city>/query/images/<key>.jpg
└── test/<city>/{database,query}/images/*.jpg   # no ground truth (challenge server)""",
    "nordland": """\
<data_root>/Nordland/
├── Nordland_dbImages.npy          # str paths ref/NNNNNNN.jpg (10x denser than queries)
├── Nordland_qImages.npy           # str paths query/NNNNNNN.jpg
├── ref/0000000.jpg ...
└── query/0000000.jpg ...""",
    "sped": """\
<data_root>/SPED/
├── SPED_dbImages.npy              # str paths ref/NNNNNNN.jpg
├── SPED_qImages.npy               # str paths query/NNNNNNN.jpg
├── SPED_gt.npy                    # int64 [N, 1]: gt[i] = [i]
├── ref/0000000.jpg ...
└── query/0000000.jpg ...""",
    "sfxl": """\
<data_root>/sf_xl/test/
├── database/@<utm_east>@<utm_north>@...@.jpg   # any depth, sorted recursive glob
├── queries/@<utm_east>@<utm_north>@...@.jpg
└── (optional) database_images_paths.txt, queries_images_paths.txt""",
}
_LAYOUTS["pitts250k_test"] = _LAYOUTS["pitts30k_test"].replace("pitts30k", "pitts250k")
_LAYOUTS["pitts30k_val"] = _LAYOUTS["pitts30k_test"].replace("pitts30k_test", "pitts30k_val")


class MissingFilesError(FileNotFoundError):
    """A dataset folder lacks files; the message lists them and shows the expected layout."""

    def __init__(self, name: str, missing: Sequence[Path | str], note: str = "") -> None:
        self.name = name
        self.missing = [str(m) for m in missing]
        shown = self.missing[:20]
        more = len(self.missing) - len(shown)
        lines = [f"dataset {name!r}: {len(self.missing)} missing file(s):"]
        lines += [f"  {m}" for m in shown]
        if more:
            lines.append(f"  ... and {more} more")
        if note:
            lines.append(note)
        lines += ["expected layout:", _LAYOUTS[name]]
        super().__init__("\n".join(lines))


@dataclass
class EvalDataset:
    """References then queries (model input order) plus per-query positives."""

    name: str
    root: Path
    db_images: list[str]
    q_images: list[str]
    positives: list[np.ndarray] | None

    def db_paths(self) -> list[Path]:
        """Absolute paths of the references, in file order."""
        return [self.root / p for p in self.db_images]

    def q_paths(self) -> list[Path]:
        """Absolute paths of the queries, in file order."""
        return [self.root / p for p in self.q_images]


# --------------------------------------------------------------------------- helpers


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a .npy file")
        return super().find_class(module, name)


def _load_npy(path: Path) -> np.ndarray:
    """np.load that accepts pickled object arrays only when they hold plain numpy data."""
    with path.open("rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        if not dtype.hasobject:
            f.seek(0)
            return np.load(f, allow_pickle=False)
        arr = _NumpyOnlyUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{path}: pickled payload is not a numpy array")
    return arr


def _str_list(arr: np.ndarray) -> list[str]:
    return [str(x) for x in np.asarray(arr).reshape(-1)]


def _positives_list(gt: np.ndarray | Sequence) -> list[np.ndarray]:
    return [np.asarray(row, dtype=np.int64).reshape(-1) for row in gt]


def _object_array(rows: Sequence[np.ndarray]) -> np.ndarray:
    out = np.empty(len(rows), dtype=object)
    for i, r in enumerate(rows):
        out[i] = np.asarray(r, dtype=np.int64)
    return out


def radius_positives(db_utm: np.ndarray, q_utm: np.ndarray, radius: float = POS_DIST_THR) -> list[np.ndarray]:
    """Per query, sorted int64 indices of the references within ``radius`` (inclusive) metres."""
    db = np.asarray(db_utm, dtype=np.float64).reshape(-1, 2)
    q = np.asarray(q_utm, dtype=np.float64).reshape(-1, 2)
    out: list[np.ndarray] = []
    chunk = max(1, 2**22 // max(len(db), 1))
    r2 = radius * radius
    for s in range(0, len(q), chunk):
        d2 = ((q[s : s + chunk, None, :] - db[None, :, :]) ** 2).sum(-1)
        out.extend(np.flatnonzero(row <= r2).astype(np.int64) for row in d2)
    return out


def nordland_positives(n_db: int, n_q: int, window: int = 1) -> list[np.ndarray]:
    """Query i matches references ``10i-window .. 10i+window`` clipped to ``[0, n_db)``."""
    out = []
    for i in range(n_q):
        c = NORDLAND_STRIDE * i
        out.append(np.arange(max(c - window, 0), min(c + window, n_db - 1) + 1, dtype=np.int64))
    return out


def _utm_from_name(path: str) -> tuple[float, float]:
    parts = Path(path).name.split("@")
    try:
        return float(parts[1]), float(parts[2])
    except (IndexError, ValueError):
        raise ValueError(f"{path}: SF-XL file names must look like @utm_east@utm_north@...@.jpg") from None


def _require(name: str, root: Path, rel: Sequence[str], note: str = "") -> None:
    missing = [root / r for r in rel if not (root / r).is_file()]
    if missing:
        raise MissingFilesError(name, missing, note)


def _check_images(ds: EvalDataset) -> EvalDataset:
    missing = [p for p in ds.db_paths() + ds.q_paths() if not p.is_file()]
    if missing:
        raise MissingFilesError(ds.name, missing, "(image files listed in the metadata)")
    return ds


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of: {', '.join(DATASETS)}")


# --------------------------------------------------------------------------- loading


def pittsburgh_from_mat(name: str, data_root: Path) -> EvalDataset:
    """Pittsburgh test set from the NetVLAD ``datasets/<name>.mat`` dbStruct (radius search on UTM)."""
    from scipy.io import loadmat

    root = Path(data_root) / _FOLDERS[name]
    mat_rel = f"datasets/{name}.mat"
    _require(name, root, [mat_rel])
    s = loadmat(root / mat_rel)["dbStruct"][0, 0]

    def cells(key: str) -> list[str]:
        return [str(np.asarray(c).reshape(-1)[0]) for c in np.asarray(s[key]).reshape(-1)]

    utm_db = np.asarray(s["utmDb"], dtype=np.float64)
    utm_q = np.asarray(s["utmQ"], dtype=np.float64)
    thr = float(np.asarray(s["posDistThr"]).reshape(-1)[0])
    ds = EvalDataset(
        name=name,
        root=root,
        db_images=cells("dbImage"),
        q_images=["queries_real/" + q for q in cells("qImage")],
        positives=radius_positives(utm_db.T, utm_q.T, thr),  # utm* are stored 2 x N
    )
    return _check_images(ds)


def _list_folder(root: Path, folder: str) -> list[str]:
    listing = root / f"{folder}_images_paths.txt"
    if listing.is_file():
        names = [ln.strip() for ln in listing.read_text().splitlines() if ln.strip()]
        return [f"{folder}/{n}" for n in names]
    return sorted(p.relative_to(root).as_posix() for p in (root / folder).rglob("*.jpg"))


def _lists_and_gt(name: str, root: Path, files: list[str]) -> EvalDataset:
    """The common layout: reference list, query list, ground-truth array (in that order)."""
    db, q, gt = (_load_npy(root / f) for f in files)
    return EvalDataset(name, root, _str_list(db), _str_list(q), _positives_list(gt))


def load_dataset(name: str, data_root: Path, nordland_window: int = 1) -> EvalDataset:
    """Read dataset ``name`` from ``<data_root>/<Folder>/`` (see the module docstring)."""
    _check_name(name)
    root = Path(data_root) / _FOLDERS[name]

    if name.startswith("pitts"):
        files = [f"{name}_dbImages.npy", f"{name}_qImages.npy", f"{name}_gt.npy"]
        have_npy = all((root / f).is_file() for f in files)
        if not have_npy and (root / f"datasets/{name}.mat").is_file():
            return pittsburgh_from_mat(name, data_root)
        _require(name, root, files, f"(or provide datasets/{name}.mat instead of the three .npy files)")
        ds = _lists_and_gt(name, root, files)
    elif name == "msls_val":
        files = ["msls_val_dbImages.npy", "msls_val_qImages.npy", "msls_val_qIdx.npy", "msls_val_pIdx.npy"]
        _require(name, root, files)
        q_all = _str_list(_load_npy(root / files[1]))
        q_idx = np.asarray(_load_npy(root / files[2]), dtype=np.int64).reshape(-1)
        ds = EvalDataset(
            name,
            root,
            _str_list(_load_npy(root / files[0])),
            [q_all[i] for i in q_idx],
            _positives_list(_load_npy(root / files[3])),
        )
    elif name == "msls_challenge":
        files = ["msls_test_dbImages.npy", "msls_test_qImages.npy"]
        _require(name, root, files)
        ds = EvalDataset(name, root, _str_list(_load_npy(root / files[0])), _str_list(_load_npy(root / files[1])), None)
    elif name == "nordland":
        files = ["Nordland_dbImages.npy", "Nordland_qImages.npy"]
        _require(name, root, files)
        db = _str_list(_load_npy(root / files[0]))
        q = _str_list(_load_npy(root / files[1]))
        ds = EvalDataset(name, root, db, q, nordland_positives(len(db), len(q), nordland_window))
    elif name == "sped":
        files = ["SPED_dbImages.npy", "SPED_qImages.npy", "SPED_gt.npy"]
        _require(name, root, files)
        ds = _lists_and_gt(name, root, files)
    else:  # sfxl
        missing = [root / f for f in ("database", "queries") if not (root / f).is_dir()]
        if missing:
            raise MissingFilesError(name, missing)
        db = _list_folder(root, "database")
        q = _list_folder(root, "queries")
        empty = [root / f for f, lst in (("database", db), ("queries", q)) if not lst]
        if empty:
            raise MissingFilesError(name, [f"{p}/*.jpg" for p in empty], "(folder has no .jpg images)")
        db_utm = np.array([_utm_from_name(p) for p in db])
        q_utm = np.array([_utm_from_name(p) for p in q])
        ds = EvalDataset(name, root, db, q, radius_positives(db_utm, q_utm, POS_DIST_THR))

    if ds.positives is not None and len(ds.positives) != len(ds.q_images):
        raise ValueError(f"{name}: {len(ds.positives)} ground-truth rows for {len(ds.q_images)} queries")
    return _check_images(ds)


# --------------------------------------------------------------------------- generation

_MAX_SIDE = 224  # generated images stay small


# second photo of each revisit pair (vpr_ros/data/scenes/README.md): not a distinct place
_REVISIT_PARTNERS = frozenset({"Blender_Suzanne2", "aloeR", "basketball2", "graf3"})


@lru_cache(maxsize=1)
def _scene_photos() -> tuple[tuple[str, Image.Image], ...]:
    """One photo per distinct scene (revisit pairs are collapsed), downscaled to <= 320 px."""
    out = []
    for p in sorted(SCENES_DIR.glob("*.jpg")):
        if p.stem in _REVISIT_PARTNERS:
            continue
        img = Image.open(p).convert("RGB")
        img.thumbnail((320, 320))
        out.append((p.stem, img))
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


class _Writer:
    """Saves a fresh view of place ``place`` at ``root / rel`` (JPEG) and returns ``rel``."""

    def __init__(self, root: Path, view: Callable[[int], np.ndarray | Image.Image]) -> None:
        self.root, self.view = root, view

    def __call__(self, rel: str, place: int) -> str:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img = self.view(place)
        (Image.fromarray(img) if isinstance(img, np.ndarray) else img).save(path, quality=85)
        return rel


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
    root = Path(out_root) / _FOLDERS[name]
    root.mkdir(parents=True, exist_ok=True)
    put = _Writer(root, view)

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
        q_idx = np.array([q_all.index(x) for x in q], dtype=np.int64)
        save("msls_val_dbImages.npy", np.array(db))
        save("msls_val_qImages.npy", np.array(q_all))
        save("msls_val_qIdx.npy", q_idx)
        save("msls_val_pIdx.npy", _object_array(gt))
    elif name == "msls_challenge":
        db, q = [], []
        for p in range(n_places):
            city = ("kampala", "stockholm")[p % 2]
            db.append(put(f"test/{city}/database/images/{_key(rng)}.jpg", p))
            q.append(put(f"test/{city}/query/images/{_key(rng)}.jpg", p))
        save("msls_test_dbImages.npy", np.array(db))
        save("msls_test_qImages.npy", np.array(q))
    elif name == "nordland":
        n_db = NORDLAND_STRIDE * n_places
        # reference frame j shows the place whose query frame is nearest (j / 10 rounded)
        db = [
            put(f"ref/{j:07d}.jpg", min((j + NORDLAND_STRIDE // 2) // NORDLAND_STRIDE, n_places - 1))
            for j in range(n_db)
        ]
        q = [put(f"query/{i:07d}.jpg", i) for i in range(n_places)]
        save("Nordland_dbImages.npy", np.array(db))
        save("Nordland_qImages.npy", np.array(q))
        save("Nordland_gt.npy", _object_array(nordland_positives(n_db, n_places, 1)))
    elif name == "sped":
        db = [put(f"ref/{i:07d}.jpg", i) for i in range(n_places)]
        q = [put(f"query/{i:07d}.jpg", i) for i in range(n_places)]
        save("SPED_dbImages.npy", np.array(db))
        save("SPED_qImages.npy", np.array(q))
        save("SPED_gt.npy", np.arange(n_places, dtype=np.int64)[:, None])
    else:  # sfxl: places 100 m apart; db views and queries within 8 m per axis of the place (< 23 m apart)
        for p in range(n_places):
            east, north = 549000.0 + 100.0 * p, 4180000.0 + 30.0 * (p % 3)
            for _ in range(2):
                e, n = east + rng.uniform(-8, 8), north + rng.uniform(-8, 8)
                put(f"database/{_sfxl_name(e, n, rng)}", p)
            e, n = east + rng.uniform(-8, 8), north + rng.uniform(-8, 8)
            put(f"queries/{_sfxl_name(e, n, rng)}", p)
    return load_dataset(name, out_root)


def _sfxl_name(east: float, north: float, rng: np.random.Generator) -> str:
    # @utm_east@utm_north@zone_number@zone_letter@lat@lon@pano_id@tile@heading@pitch@roll@height@timestamp@note@.jpg
    heading = int(rng.integers(0, 360))
    return f"@{east:.2f}@{north:.2f}@10@S@@@{_key(rng)[:12]}@@{heading:03d}@@@@@@.jpg"


def _gen_pittsburgh(
    name: str,
    root: Path,
    put: _Writer,
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

    def cell(items: list[str]) -> np.ndarray:
        c = np.empty((len(items), 1), dtype=object)
        for i, s in enumerate(items):
            c[i, 0] = s
        return c

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
