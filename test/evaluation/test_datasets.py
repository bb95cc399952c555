"""Benchmark layouts in vpr_ros.evaluation.datasets: generate each one, read it back, check the ground truth."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vpr_ros.evaluation.datasets import (
    DATASETS,
    EvalDataset,
    MissingFilesError,
    load_dataset,
    nordland_positives,
    pittsburgh_from_mat,
    radius_positives,
)
from vpr_ros.evaluation.recall import write_msls_predictions
from vpr_ros.synth.eval_data import generate_dataset

N = 6


def _as_sets(pos: list[np.ndarray]) -> list[set[int]]:
    return [set(p.tolist()) for p in pos]


def _check_common(ds: EvalDataset) -> None:
    for p in ds.db_paths() + ds.q_paths():
        assert p.is_file()
    assert not set(ds.db_images) & set(ds.q_images)
    with Image.open(ds.q_paths()[0]) as im:
        assert max(im.size) <= 320
    if ds.positives is not None:
        assert len(ds.positives) == len(ds.q_images)
        for p in ds.positives:
            assert p.dtype == np.int64
            assert ((p >= 0) & (p < len(ds.db_images))).all()


@pytest.mark.parametrize("name", DATASETS)
def test_generate_then_load_roundtrip(name: str, tmp_path: Path) -> None:
    ds = generate_dataset(name, tmp_path, seed=1, n_places=N)
    assert ds.name == name
    _check_common(ds)
    again = load_dataset(name, tmp_path)
    assert again.db_images == ds.db_images and again.q_images == ds.q_images
    assert len(ds.q_images) == N


def test_generation_is_deterministic(tmp_path: Path) -> None:
    a = generate_dataset("sped", tmp_path / "a", seed=3, n_places=4)
    b = generate_dataset("sped", tmp_path / "b", seed=3, n_places=4)
    assert a.q_paths()[2].read_bytes() == b.q_paths()[2].read_bytes()


def test_pittsburgh_gt_npy_and_mat_radius_search_agree(tmp_path: Path) -> None:
    for name in ("pitts30k_test", "pitts250k_test"):
        ds = generate_dataset(name, tmp_path, n_places=N)
        root = tmp_path / "Pittsburgh"
        assert (root / f"{name}_gt.npy").is_file() and (root / "datasets" / f"{name}.mat").is_file()
        assert ds.db_images[0] == "000/000000_pitch1_yaw1.jpg"
        assert all(q.startswith("queries_real/") for q in ds.q_images)
        from_mat = pittsburgh_from_mat(name, tmp_path)
        assert from_mat.db_images == ds.db_images and from_mat.q_images == ds.q_images
        assert _as_sets(from_mat.positives) == _as_sets(ds.positives)
        assert _as_sets(ds.positives) == [{2 * i, 2 * i + 1} for i in range(N)]
        # without the .npy files the loader falls back to the .mat
        for f in root.glob(f"{name}_*.npy"):
            f.unlink()
        assert _as_sets(load_dataset(name, tmp_path).positives) == _as_sets(ds.positives)


def test_msls_val_selects_queries_with_qidx(tmp_path: Path) -> None:
    ds = generate_dataset("msls_val", tmp_path, n_places=N)
    root = tmp_path / "msls"
    q_all = np.load(root / "msls_val_qImages.npy")
    q_idx = np.load(root / "msls_val_qIdx.npy")
    assert len(q_all) == N + 2 and len(q_idx) == N  # like 747 listed, 740 evaluated
    assert ds.q_images == [str(q_all[i]) for i in q_idx]
    assert set(range(len(q_all))) - set(q_idx.tolist())  # some listed queries are skipped
    assert all(p.startswith("train_val/") and "/database/images/" in p for p in ds.db_images)
    assert all("/query/images/" in p for p in ds.q_images)
    assert _as_sets(ds.positives) == [{2 * i, 2 * i + 1} for i in range(N)]


def test_msls_challenge_has_no_ground_truth_and_writes_predictions(tmp_path: Path) -> None:
    ds = generate_dataset("msls_challenge", tmp_path, n_places=N)
    assert ds.positives is None
    assert all(p.startswith("test/") for p in ds.db_images + ds.q_images)
    out = tmp_path / "preds.txt"
    write_msls_predictions(out, ds, np.array([[i, (i + 1) % N] for i in range(N)]))
    lines = out.read_text().splitlines()
    assert len(lines) == N
    assert lines[0].split() == [Path(ds.q_images[0]).stem, Path(ds.db_images[0]).stem, Path(ds.db_images[1]).stem]


def test_nordland_windows_clip_at_the_ends(tmp_path: Path) -> None:
    ds = generate_dataset("nordland", tmp_path, n_places=N)
    n_db = 10 * N
    assert len(ds.db_images) == n_db and ds.db_images[0] == "ref/0000000.jpg" and ds.q_images[1] == "query/0000001.jpg"
    pos = [p.tolist() for p in ds.positives]
    assert pos[0] == [0, 1] and pos[1] == [9, 10, 11] and pos[N - 1] == [10 * N - 11, 10 * N - 10, 10 * N - 9]
    wide = [p.tolist() for p in load_dataset("nordland", tmp_path, nordland_window=10).positives]
    assert wide[0] == list(range(0, 11))
    assert wide[2] == list(range(10, 31))
    assert wide[N - 1] == list(range(10 * N - 20, n_db))  # clipped at the last reference
    assert [p.tolist() for p in nordland_positives(15, 2, 10)][1] == list(range(0, 15))


def test_sped_identity(tmp_path: Path) -> None:
    ds = generate_dataset("sped", tmp_path, n_places=N)
    gt = np.load(tmp_path / "SPED" / "SPED_gt.npy")
    assert gt.shape == (N, 1) and gt.dtype == np.int64
    assert [p.tolist() for p in ds.positives] == [[i] for i in range(N)]


def test_sfxl_positives_from_utm_in_file_names(tmp_path: Path) -> None:
    ds = generate_dataset("sfxl", tmp_path, n_places=N)
    assert ds.db_images == sorted(ds.db_images)

    def utm(p: str) -> tuple[float, float]:
        parts = Path(p).name.split("@")
        return float(parts[1]), float(parts[2])

    db = np.array([utm(p) for p in ds.db_images])
    for q, pos in zip(ds.q_images, ds.positives, strict=True):
        d = np.linalg.norm(db - np.array(utm(q)), axis=1)
        assert set(pos.tolist()) == set(np.flatnonzero(d <= 25.0).tolist())
        assert len(pos) == 2


def test_sfxl_paths_file_overrides_glob(tmp_path: Path) -> None:
    ds = generate_dataset("sfxl", tmp_path, n_places=N)
    root = tmp_path / "sf_xl" / "test"
    names = [p.removeprefix("database/") for p in reversed(ds.db_images)]
    (root / "database_images_paths.txt").write_text("\n".join(names) + "\n")
    assert load_dataset("sfxl", tmp_path).db_images == list(reversed(ds.db_images))


def test_radius_positives_is_inclusive() -> None:
    db = np.array([[0.0, 0.0], [25.0, 0.0], [25.01, 0.0]])
    assert radius_positives(db, np.array([[0.0, 0.0]]), 25.0)[0].tolist() == [0, 1]


def test_missing_metadata_lists_files_and_layout(tmp_path: Path) -> None:
    with pytest.raises(MissingFilesError) as err:
        load_dataset("msls_val", tmp_path)
    msg = str(err.value)
    for f in ("msls_val_dbImages.npy", "msls_val_qImages.npy", "msls_val_qIdx.npy", "msls_val_pIdx.npy"):
        assert str(tmp_path / "msls" / f) in msg
    assert "expected layout" in msg and "<data_root>/msls/" in msg and "train_val/" in msg
    assert isinstance(err.value, FileNotFoundError)


@pytest.mark.parametrize("name", DATASETS)
def test_every_dataset_reports_missing_files(name: str, tmp_path: Path) -> None:
    with pytest.raises(MissingFilesError, match="expected layout"):
        load_dataset(name, tmp_path)


def test_missing_images_are_listed(tmp_path: Path) -> None:
    ds = generate_dataset("sped", tmp_path, n_places=N)
    ds.q_paths()[3].unlink()
    ds.db_paths()[0].unlink()
    with pytest.raises(MissingFilesError) as err:
        load_dataset("sped", tmp_path)
    assert str(ds.q_paths()[3]) in str(err.value) and str(ds.db_paths()[0]) in str(err.value)
    assert "2 missing" in str(err.value)


def test_unknown_name_lists_datasets(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        load_dataset("tokyo247", tmp_path)
    assert all(n in str(err.value) for n in DATASETS)
    with pytest.raises(ValueError, match="pitts30k_test"):
        generate_dataset("tokyo247", tmp_path)


class _Evil:
    def __reduce__(self) -> tuple:
        return (print, ("pwned",))


def test_pickled_gt_with_foreign_objects_is_refused(tmp_path: Path) -> None:
    generate_dataset("sped", tmp_path, n_places=N)
    gt = np.empty(N, dtype=object)
    gt[:] = [_Evil() for _ in range(N)]
    np.save(tmp_path / "SPED" / "SPED_gt.npy", gt, allow_pickle=True)
    with pytest.raises(pickle.UnpicklingError):
        load_dataset("sped", tmp_path)
