"""GSV-Cities training data and the Lightning DataModule (training places + validation sets).

GSV-Cities layout: ``<root>/Dataframes/<City>.csv`` (columns ``place_id, year, month,
northdeg, city_id, lat, lon, panoid``) and ``<root>/Images/<city_id>/<name>.jpg`` with the name
built by :func:`vpr_ros.evaluation.datasets.gsv_image_name`. One dataset item is one place:
``img_per_place`` of its images drawn without replacement, so a batch of P places holds
P x img_per_place images with the place id as label, which is what the multi-similarity miner needs.

The place order follows the reference: each city's rows shuffled, cities concatenated in list
order with ``i * 100000`` added to the i-th city's place ids, places with fewer than
``min_img_per_place`` images dropped, no further shuffling by the loader. Unlike the reference the
shuffle is seeded with ``(seed, epoch)``, so every DDP rank sees the same order and takes its
own share of it.

Validation sets are read with :func:`vpr_ros.evaluation.datasets.load_dataset` (standard benchmark layouts).
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torchvision.transforms as T
from PIL import Image
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from vpr_ros.evaluation.datasets import GSV_COLUMNS, EvalDataset, gsv_image_name, load_dataset
from vpr_ros.preprocess import IMAGENET_MEAN, IMAGENET_STD, check_image_size, load_image, preprocess_exact

LOG = logging.getLogger(__name__)

GSV_CITIES: tuple[str, ...] = (
    "Bangkok", "BuenosAires", "LosAngeles", "MexicoCity", "OSL", "Rome", "Barcelona", "Chicago",
    "Madrid", "Miami", "Phoenix", "TRT", "Boston", "Lisbon", "Medellin", "Minneapolis", "PRG",
    "WashingtonDC", "Brussels", "London", "Melbourne", "Osaka", "PRS",
)
CITY_ID_OFFSET = 100_000  # the i-th city's place ids are shifted by i * 100000
PAPER_VAL_SETS: tuple[str, ...] = ("pitts30k_val", "pitts30k_test", "msls_val")

_LAYOUT_HINT = (
    "expected GSV-Cities layout: <root>/Dataframes/<City>.csv with columns "
    + ", ".join(GSV_COLUMNS)
    + " and images <root>/Images/<city_id>/<city_id>_<place_id:07d>_<year>_<month>_<northdeg>_<lat>_<lon>_<panoid>.jpg"
)


@dataclass(frozen=True)
class CityTable:
    """One city's images: place id (offset already applied) and path relative to the root, per row."""

    city: str
    place_ids: np.ndarray  # int64 [n]
    paths: tuple[str, ...]


def read_city_csv(root: Path, city: str, offset: int = 0) -> CityTable:
    """Parse ``<root>/Dataframes/<city>.csv``; malformed files fail with the file, line and expectation."""
    path = Path(root) / "Dataframes" / f"{city}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"GSV-Cities metadata for city {city!r} not found: {path}\n{_LAYOUT_HINT}")
    ids: list[int] = []
    paths: list[str] = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in GSV_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; expected columns {', '.join(GSV_COLUMNS)} "
                             f"(found {header})")
        for row in reader:
            line = reader.line_num
            for key in ("place_id", "year", "month", "northdeg"):
                try:
                    int(row[key])  # type: ignore[arg-type]
                except (TypeError, ValueError):
                    raise ValueError(f"{path}, line {line}: {key} must be an integer, got {row[key]!r}") from None
            try:
                name = gsv_image_name(row)
            except (TypeError, ValueError):
                raise ValueError(f"{path}, line {line}: lat/lon must be numbers, got {row['lat']!r}, "
                                 f"{row['lon']!r}") from None
            ids.append(int(row["place_id"]) + offset)
            paths.append(f"Images/{row['city_id']}/{name}")
    if not ids:
        raise ValueError(f"{path}: no rows; expected one row per image with columns {', '.join(GSV_COLUMNS)}")
    return CityTable(city, np.asarray(ids, dtype=np.int64), tuple(paths))


def read_cities(root: str | Path, cities: Sequence[str]) -> list[CityTable]:
    """All cities' tables, the i-th with place ids offset by ``i * 100000``; checks the image folders."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"GSV-Cities root {root} is not a directory\n{_LAYOUT_HINT}")
    if not cities:
        raise ValueError("no cities given: expected at least one name of a <root>/Dataframes/<City>.csv file")
    tables = [read_city_csv(root, city, i * CITY_ID_OFFSET) for i, city in enumerate(cities)]
    for t in tables:  # one stat per city: a wrong root or naming shows up now, not mid-epoch
        first = root / t.paths[0]
        if not first.is_file():
            raise FileNotFoundError(
                f"GSV-Cities image of the first row of {t.city}.csv not found: {first}\n{_LAYOUT_HINT}")
    return tables


def group_places(tables: Sequence[CityTable], min_img_per_place: int,
                 rng: np.random.Generator) -> list[tuple[int, list[str]]]:
    """Places in reference order: rows shuffled per city, cities in order, small places dropped.

    A place's position is that of its first row after the shuffle (``pd.unique`` order).
    """
    places: list[tuple[int, list[str]]] = []
    for t in tables:
        grouped: dict[int, list[str]] = {}
        for i in rng.permutation(len(t.paths)):
            grouped.setdefault(int(t.place_ids[i]), []).append(t.paths[i])
        places += [(pid, rows) for pid, rows in grouped.items() if len(rows) >= min_img_per_place]
    return places


def train_transform(image_size: Sequence[int] = (224, 224), rand_augment_ops: int = 3,
                    rand_augment_magnitude: int = 9) -> T.Compose:
    """The reference training augmentation: resize, RandAugment (3 ops, magnitude 9), ImageNet
    normalisation. ``rand_augment_ops=0`` leaves RandAugment out (tiny from-scratch models)."""
    augment = [T.RandAugment(rand_augment_ops, rand_augment_magnitude, interpolation=T.InterpolationMode.BILINEAR)]
    return T.Compose([
        T.Resize(tuple(image_size), interpolation=T.InterpolationMode.BILINEAR),
        *(augment if rand_augment_ops else []),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


class GSVCitiesDataset(Dataset):
    """Item i = place i: ``(images [img_per_place, 3, H, W], labels [img_per_place])``."""

    def __init__(self, root: str | Path, tables: Sequence[CityTable], img_per_place: int = 4,
                 min_img_per_place: int = 4, transform: T.Compose | None = None,
                 image_size: Sequence[int] = (224, 224), seed: Sequence[int] | int | None = None) -> None:
        if min_img_per_place < img_per_place:
            raise ValueError(f"min_img_per_place ({min_img_per_place}) must be >= img_per_place ({img_per_place})")
        self.root = Path(root)
        self.img_per_place = img_per_place
        self.image_size = tuple(image_size)
        self.transform = transform if transform is not None else train_transform(image_size)
        self.seed = seed
        self.places = group_places(tables, min_img_per_place, np.random.default_rng(seed))
        if not self.places:
            raise ValueError(f"no place in {[t.city for t in tables]} has >= {min_img_per_place} images")
        self.unreadable = 0  # per process (each loader worker counts its own)

    @property
    def place_ids(self) -> list[int]:
        return [pid for pid, _ in self.places]

    @property
    def total_images(self) -> int:
        return sum(len(rows) for _, rows in self.places)

    def __len__(self) -> int:
        return len(self.places)

    def sample_paths(self, index: int) -> list[Path]:
        """The images item ``index`` uses: drawn without replacement, seeded by (seed, index) if seeded."""
        rows = self.places[index][1]
        seed = None if self.seed is None else [*np.atleast_1d(self.seed).tolist(), index]
        pick = np.random.default_rng(seed).choice(len(rows), self.img_per_place, replace=False)
        return [self.root / rows[j] for j in pick]

    def load(self, path: Path) -> Image.Image:
        """RGB image; an unreadable file becomes a black image and a logged warning (and is counted)."""
        try:
            return Image.fromarray(load_image(path))
        except (OSError, ValueError) as exc:
            self.unreadable += 1
            LOG.warning("unreadable training image replaced by a black image (%d so far in this process): %s",
                        self.unreadable, exc)
            return Image.new("RGB", self.image_size[::-1])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.stack([self.transform(self.load(p)) for p in self.sample_paths(index)])
        return images, torch.full((self.img_per_place,), self.places[index][0], dtype=torch.int64)


class EvalImages(Dataset):
    """References then queries of an evaluation set with the evaluation transform: ``(image, index)``."""

    def __init__(self, dataset: EvalDataset, image_size: Sequence[int]) -> None:
        self.paths = dataset.db_paths() + dataset.q_paths()
        self.image_size = check_image_size(image_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return preprocess_exact([self.paths[index]], self.image_size)[0], index


class GSVCitiesDataModule(pl.LightningDataModule):
    """GSV-Cities training batches (``batch_size`` places x ``img_per_place`` images) and
    Recall@K validation sets.

    The training loader is rebuilt every epoch (set ``reload_dataloaders_every_n_epochs: 1``) with
    a new place order; it does not shuffle, so under DDP each rank takes every world_size-th place.

    Args:
        root: GSV-Cities folder (``Dataframes/``, ``Images/``); needed for ``fit``.
        cities: CSV names under ``Dataframes/``; the i-th city's place ids get ``+ i * 100000``.
        val_root: folder holding the validation sets in the layouts of ``vpr_ros.evaluation.datasets``.
        val_sets: dataset names, e.g. ``pitts30k_val``, ``pitts30k_test``, ``msls_val``.
        rand_augment_ops, rand_augment_magnitude: RandAugment of the training transform (paper: 3, 9).
        seed: place order and image choice are drawn from ``(seed, epoch)``.
        synthetic: generate ``root`` (and ``val_root`` as SPED) from photos when ``root`` has no
            ``Dataframes/`` yet, for CPU configs that must run with one command; keys: ``source``
            (skimage, scenes or a folder), ``places_per_photo``, ``images_per_place``,
            ``image_size``, ``seed`` (see ``vpr_ros.synth.gsv``).
    """

    def __init__(
        self,
        root: str | None = None,
        cities: Sequence[str] = GSV_CITIES,
        batch_size: int = 60,
        img_per_place: int = 4,
        min_img_per_place: int = 4,
        image_size: tuple[int, int] = (224, 224),
        num_workers: int = 8,
        rand_augment_ops: int = 3,
        rand_augment_magnitude: int = 9,
        seed: int = 0,
        val_root: str | None = None,
        val_sets: Sequence[str] = PAPER_VAL_SETS,
        val_image_size: tuple[int, int] = (224, 224),
        val_batch_size: int = 64,
        synthetic: dict[str, int | str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.root = root
        self.cities = list(cities)
        self.batch_size = batch_size
        self.img_per_place = img_per_place
        self.min_img_per_place = min_img_per_place
        self.image_size = check_image_size(image_size)
        self.num_workers = num_workers
        self.transform = train_transform(self.image_size, rand_augment_ops, rand_augment_magnitude)
        self.seed = seed
        self.val_root = val_root
        self.val_set_names = list(val_sets)
        self.val_image_size = check_image_size(val_image_size)
        self.val_batch_size = val_batch_size
        self.synthetic = dict(synthetic) if synthetic else None
        self.tables: list[CityTable] | None = None
        self.val_datasets: list[EvalDataset] = []

    def prepare_data(self) -> None:
        if self.synthetic is None or self.root is None or (Path(self.root) / "Dataframes").is_dir():
            return
        from vpr_ros.synth.gsv import generate

        source = self.synthetic.get("source", "skimage")
        val = f" and SPED-layout validation views into {self.val_root}" if self.val_root else ""
        rank_zero_info(f"{self.root} has no Dataframes/: generating a synthetic GSV-Cities training set there{val} "
                       f"from the {source} photos (first run only; data.synthetic in the config)")
        t0 = time.perf_counter()
        generate(Path(self.root), Path(self.val_root) if self.val_root else None, **self.synthetic)
        rank_zero_info(f"synthetic data written in {time.perf_counter() - t0:.0f} s")

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.tables is None:
            if self.root is None:
                raise ValueError("data.root is not set: pass --data.root <GSV-Cities folder>\n" + _LAYOUT_HINT)
            self.tables = read_cities(self.root, self.cities)
        if stage in ("fit", "validate") and not self.val_datasets and self.val_set_names:
            if self.val_root is None:
                raise ValueError(f"data.val_root is not set but validation sets {self.val_set_names} are "
                                 "configured: pass --data.val_root <folder> (or --data.val_sets [])")
            self.val_datasets = [load_dataset(n, Path(self.val_root)) for n in self.val_set_names]

    def train_dataset(self, epoch: int = 0) -> GSVCitiesDataset:
        assert self.tables is not None, "call setup('fit') first"
        return GSVCitiesDataset(self.root, self.tables, self.img_per_place, self.min_img_per_place,
                                self.transform, self.image_size, seed=(self.seed, epoch))

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return DataLoader(self.train_dataset(epoch), batch_size=self.batch_size, shuffle=False, drop_last=False,
                          num_workers=self.num_workers, pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> list[DataLoader]:
        return [DataLoader(EvalImages(ds, self.val_image_size), batch_size=self.val_batch_size, shuffle=False,
                           num_workers=self.num_workers, pin_memory=torch.cuda.is_available())
                for ds in self.val_datasets]
