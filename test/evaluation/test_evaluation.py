"""Recall@K parity with the reference function, the resumable descriptor cache, result files and `vpr-ros eval`."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vpr_ros.errors import ModelOutputError
from vpr_ros.evaluation.datasets import EvalDataset
from vpr_ros.evaluation.recall import (
    K_EVAL,
    K_TRAIN_VALIDATION,
    DescriptorCache,
    describe_cached,
    evaluate,
    extractor_identity,
    format_table,
    recall_at_k,
    recalls_from_predictions,
    search_topk,
    write_msls_predictions,
    write_results,
)
from vpr_ros.extractor import DescriptorExtractor

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "test" / "data" / "golden" / "salad"
SCENES = sorted((REPO / "vpr_ros" / "synth" / "data" / "scenes").glob("*.jpg"))
SIZE = (224, 224)


def scenes_dataset(name: str = "scenes", n: int = 10, gt: bool = True) -> EvalDataset:
    names = [p.name for p in SCENES[:n]]
    positives = [np.array([i]) for i in range(n)] if gt else None
    return EvalDataset(name, SCENES[0].parent, names, names[::-1], positives[::-1] if gt else None)


@pytest.fixture
def extractor(tiny_salad_model) -> DescriptorExtractor:
    return DescriptorExtractor(tiny_salad_model, SIZE, "cpu", batch_size=2)


class CountingForward:
    """Wraps ``extractor.forward``: counts images, optionally fails after ``fail_after`` batches."""

    def __init__(self, extractor: DescriptorExtractor, fail_after: int | None = None) -> None:
        self.inner, self.fail_after, self.images, self.batches = extractor.forward, fail_after, 0, 0
        extractor.forward = self

    def __call__(self, batch, patch_tokens=False):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.batches += 1
        self.images += len(batch)
        return self.inner(batch, patch_tokens)


# -- protocol parity with the reference get_validation_recalls ---------------------------------------


@pytest.fixture(scope="module")
def golden():
    data = np.load(GOLDEN / "eval_recall.npz")
    gt = np.load(GOLDEN / "eval_gt.npy", allow_pickle=True)
    meta = json.loads((GOLDEN / "eval_recall.json").read_text())
    return data, gt, meta


def test_golden_recalls_both_k_sets(golden):
    data, gt, meta = golden
    assert [list(g) for g in gt] == meta["gt"]
    assert list(K_EVAL) == meta["k_values_eval_py"]
    assert list(K_TRAIN_VALIDATION) == meta["k_values_training_validation"]
    for ks, key in ((K_EVAL, "recall_eval_py"), (K_TRAIN_VALIDATION, "recall_training_validation")):
        expected = {int(k): v for k, v in meta[key].items()}
        assert recall_at_k(data["db"], data["queries"], gt, ks) == expected  # exact float equality


def test_golden_predictions(golden):
    data, gt, _ = golden
    pred = search_topk(data["db"], data["queries"], 100, gpu=False)
    np.testing.assert_array_equal(pred, data["predictions_k100"])
    np.testing.assert_array_equal(search_topk(data["db"], data["queries"], 25, gpu=False), data["predictions_k25"])
    gt_flat = np.split(data["gt_flat"], data["gt_offsets"][1:-1])
    assert recalls_from_predictions(pred, gt_flat, K_TRAIN_VALIDATION) == recall_at_k(
        data["db"], data["queries"], gt, K_TRAIN_VALIDATION)


def test_queries_without_positives_are_misses():
    predictions = np.array([[0, 1], [2, 3], [4, 5], [6, 7]])
    positives = [np.array([0]), np.array([], np.int64), np.array([5]), np.array([], np.int64)]
    assert recalls_from_predictions(predictions, positives, (1, 2)) == {1: 0.25, 2: 0.5}
    # unsorted ks give the same answer; a database smaller than K yields -1 rows that never match
    assert recalls_from_predictions(predictions, positives, (2, 1)) == {1: 0.25, 2: 0.5}
    db = np.eye(3, dtype=np.float32)
    pred = search_topk(db, db, 5, gpu=False)
    assert (pred[:, 3:] == -1).all()
    assert recall_at_k(db, db, [np.array([0]), np.array([]), np.array([2])], (1, 5)) == {1: 2 / 3, 5: 2 / 3}


# -- evaluation with the descriptor cache -----------------------------------------------------------


def test_evaluate_and_index_kind(extractor, tmp_path):
    ds = scenes_dataset(n=10)
    result = evaluate(extractor, ds, tmp_path / "cache", ks=(1, 5), index_kind="fp16")
    assert result.recalls == {1: 1.0, 5: 1.0}  # identical images
    assert result.index_recalls == {1: 1.0, 5: 1.0}
    assert result.index_loss == {1: 0.0, 5: 0.0}
    assert result.predictions.shape == (10, 5)
    np.testing.assert_array_equal(result.predictions[:, 0], np.arange(10)[::-1])
    table = format_table([result])
    assert "R@1" in table and "fp16" in table and "100.00" in table


@pytest.mark.parametrize("resize", ["exact", "fast"])
def test_pipeline_matches_extractor(tiny_salad_model, resize, tmp_path):
    ext = DescriptorExtractor(tiny_salad_model, SIZE, "cpu", batch_size=2, resize=resize)
    names = [p.name for p in SCENES[:5]]
    cache = DescriptorCache(tmp_path, "scenes", "db", extractor_identity(ext), names, chunk_size=4)
    np.testing.assert_array_equal(describe_cached(ext, SCENES[:5], cache), ext.describe(SCENES[:5]))


def test_cache_resumes_after_interruption(extractor, tmp_path):
    ds = scenes_dataset(n=10)
    reference = evaluate(extractor, ds, tmp_path / "fresh", ks=(1, 5), chunk_size=4)
    cache = tmp_path / "cache"
    extractor.forward = reference_forward = extractor.forward
    counter = CountingForward(extractor, fail_after=3)  # db: chunks [0-3], [4-7] (2 batches each), [8-9]
    with pytest.raises(KeyboardInterrupt):
        evaluate(extractor, ds, cache, ks=(1, 5), chunk_size=4)
    assert counter.images == 6  # chunk 0 saved, chunk 1 half done
    extractor.forward = reference_forward
    counter = CountingForward(extractor)
    resumed = evaluate(extractor, ds, cache, ks=(1, 5), chunk_size=4)
    assert counter.images == 10 + 10 - 4  # everything but the saved first chunk
    assert resumed.recalls == reference.recalls
    np.testing.assert_array_equal(resumed.predictions, reference.predictions)

    extractor.forward = reference_forward
    counter = CountingForward(extractor)
    again = evaluate(extractor, ds, cache, ks=(1, 5), chunk_size=4)
    assert counter.images == 0  # no model work on a re-run
    np.testing.assert_array_equal(again.predictions, reference.predictions)


def test_cache_recomputes_damaged_chunk_only(extractor, tmp_path):
    ds = scenes_dataset(n=10)
    cache = tmp_path / "cache"
    first = evaluate(extractor, ds, cache, ks=(1,), chunk_size=4)
    ident = extractor_identity(extractor)
    db_cache = DescriptorCache(cache, ds.name, "db", ident, ds.db_images, chunk_size=4)
    last = db_cache.dir / "chunk_000002.npy"
    last.write_bytes(last.read_bytes()[:-8])  # truncated
    (db_cache.dir / "chunk_000001.npy").unlink()  # deleted
    inner = extractor.forward
    counter = CountingForward(extractor)
    second = evaluate(extractor, ds, cache, ks=(1,), chunk_size=4)
    assert counter.images == 4 + 2
    np.testing.assert_array_equal(second.predictions, first.predictions)
    extractor.forward = inner
    # another image size is another cache entry
    other = DescriptorExtractor(extractor.model, (238, 238), "cpu", batch_size=2)
    assert extractor_identity(other) != ident
    assert DescriptorCache(cache, ds.name, "db", extractor_identity(other), ds.db_images, 4).dir != db_cache.dir


def test_msls_predictions_and_result_files(extractor, tmp_path):
    ds = scenes_dataset("msls_challenge", n=6, gt=False)
    result = evaluate(extractor, ds, tmp_path / "cache", ks=K_EVAL)
    assert result.recalls is None and result.predictions.shape == (6, 25)
    path = tmp_path / "out" / "preds.txt"
    write_msls_predictions(path, ds, result.predictions)
    lines = path.read_text().splitlines()
    assert len(lines) == 6
    stems = [Path(n).stem for n in ds.db_images]
    for line, q_name, pred in zip(lines, ds.q_images, result.predictions, strict=True):
        fields = line.split(" ")
        assert fields[0] == Path(q_name).stem
        assert fields[1:] == [stems[j] for j in pred if j >= 0] and len(fields) == 1 + 6  # db has 6 < 25 images

    exact = evaluate(extractor, scenes_dataset(n=6), tmp_path / "cache", ks=K_EVAL, index_kind="hnsw")
    files = write_results([exact, result], tmp_path / "out", {"checkpoint": "x"})
    assert sorted(p.name for p in files) == ["results.csv", "results.json", "results.md"]
    csv_lines = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert csv_lines[0] == "dataset,index,queries,db,R@1,R@5,R@10,R@15,R@20,R@25"
    assert csv_lines[1].startswith("scenes,exact,6,6,1.000000")
    assert csv_lines[2].startswith("scenes,hnsw,6,6,")
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["results"][0]["recalls"]["25"] == 1.0 and data["results"][1]["recalls"] is None
    assert "| scenes | exact |" in (tmp_path / "out" / "results.md").read_text()


# -- generated datasets and the CLI (need vpr_ros.evaluation.datasets) ------------------------------------------


@pytest.mark.parametrize("name", ["pitts30k_test", "msls_val", "nordland"])
def test_generated_dataset_recalls(name, extractor, tmp_path):
    from vpr_ros.evaluation import datasets
    from vpr_ros.synth import eval_data

    generated = eval_data.generate_dataset(name, tmp_path / "data", seed=0, n_places=8)
    ds = datasets.load_dataset(name, tmp_path / "data")
    assert ds.db_images == generated.db_images and ds.q_images == generated.q_images
    result = evaluate(extractor, ds, tmp_path / "cache", ks=K_EVAL)
    assert result.n_db == len(ds.db_images) and result.n_queries == len(ds.q_images)
    hit_possible = np.mean([len(p) > 0 for p in ds.positives])
    if len(ds.db_images) <= 25:
        assert result.recalls[25] == pytest.approx(hit_possible)
    chance = np.mean([len(p) / len(ds.db_images) for p in ds.positives])
    assert result.recalls[1] > chance  # views of the same photo are near even with random weights
    assert all(result.recalls[a] <= result.recalls[b] for a, b in zip(K_EVAL, K_EVAL[1:], strict=False))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vpr_ros.cli", "eval", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_cli_eval_end_to_end(tmp_path):
    from vpr_ros.synth import eval_data

    for name in ("pitts30k_test", "msls_challenge"):
        eval_data.generate_dataset(name, tmp_path / "data", seed=1, n_places=6)
    out = tmp_path / "out"
    common = ["--checkpoint", str(GOLDEN / "tiny_salad_state_dict.pt"), "--config", str(GOLDEN / "config.json"),
              "--data-root", str(tmp_path / "data"), "--image-size", "224", "224", "--batch-size", "4",
              "--device", "cpu", "--cache", str(tmp_path / "cache"), "--out", str(out)]
    proc = _cli(*common, "--datasets", "pitts30k_test", "msls_challenge", "--index", "fp16", cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "R@1" in proc.stdout and "pitts30k_test" in proc.stdout and "fp16" in proc.stdout
    assert {"results.csv", "results.json", "results.md"} <= {p.name for p in out.iterdir()}
    preds = out / "tiny_salad_state_dict.msls_challenge.preds.txt"
    assert preds.exists() and len(preds.read_text().splitlines()) > 0
    data = json.loads((out / "results.json").read_text())
    assert [r["dataset"] for r in data["results"]] == ["pitts30k_test", "msls_challenge"]
    assert data["results"][0]["index_kind"] == "fp16"


def test_cli_missing_files_exit_2(tmp_path):
    (tmp_path / "data").mkdir()
    proc = _cli("--checkpoint", str(GOLDEN / "tiny_salad_state_dict.pt"), "--config", str(GOLDEN / "config.json"),
                "--datasets", "pitts30k_test", "sped", "--data-root", str(tmp_path / "data"),
                "--out", str(tmp_path / "o"), cwd=REPO)
    assert proc.returncode == 2
    assert "'pitts30k_test'" in proc.stderr and "'sped'" in proc.stderr and "expected layout" in proc.stderr
    assert str(tmp_path / "data") in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "o").exists()


# -- impossible ground truth and non-finite descriptors -----------------------------------------------


def test_padding_never_counts_as_a_hit():
    """faiss pads with -1 past the database size; -1 in the ground truth used to match it (R@25 = 100 %)."""
    predictions = np.array([[0, 1, -1, -1], [1, 0, -1, -1]])
    assert recalls_from_predictions(predictions, [np.array([-1]), np.array([-1, 5])], (1, 4)) == {1: 0.0, 4: 0.0}
    db = np.eye(2, dtype=np.float32)
    assert recall_at_k(db, db, [np.array([-1]), np.array([-1])], (1, 25)) == {1: 0.0, 25: 0.0}
    short = [np.array([3]), np.array([], np.int64)]  # fewer results than K: missing, never a hit
    assert recalls_from_predictions([np.array([3]), np.array([], np.int64)], short, (1, 5)) == {1: 0.5, 5: 0.5}


def _sped_with_gt(root: Path, gt: np.ndarray, n: int = 4) -> None:
    from vpr_ros.synth import eval_data

    eval_data.generate_dataset("sped", root, seed=0, n_places=n)
    np.save(root / "SPED" / "SPED_gt.npy", gt, allow_pickle=gt.dtype == object)


@pytest.mark.parametrize(
    ("gt", "words"),
    [
        (np.full((4, 1), -1), "negative reference indices"),
        (np.array([[0], [1], [2], [4]]), "past the end"),
        (np.array([[0], [1], [2]]), "3 ground-truth rows for 4 queries"),
    ],
    ids=["all_minus_1", "beyond_db", "row_count"],
)
def test_impossible_ground_truth_is_refused(tmp_path, gt, words):
    from vpr_ros.errors import DatasetError
    from vpr_ros.evaluation.datasets import load_dataset

    _sped_with_gt(tmp_path, gt)
    with pytest.raises(DatasetError, match=words) as err:
        load_dataset("sped", tmp_path)
    assert "SPED_gt.npy" in str(err.value) and "'sped'" in str(err.value)


def test_dataset_without_queries_is_refused(tmp_path):
    from vpr_ros.errors import DatasetError
    from vpr_ros.evaluation.datasets import load_dataset

    _sped_with_gt(tmp_path, np.zeros((0, 1), np.int64))
    np.save(tmp_path / "SPED" / "SPED_qImages.npy", np.array([], dtype=str))
    with pytest.raises(DatasetError, match="no query images"):
        load_dataset("sped", tmp_path)


def test_cli_eval_impossible_ground_truth_exits_2(tmp_path):
    _sped_with_gt(tmp_path / "data", np.full((4, 1), -1))
    proc = _cli("--checkpoint", str(GOLDEN / "tiny_salad_state_dict.pt"), "--config", str(GOLDEN / "config.json"),
                "--datasets", "sped", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "o"), cwd=REPO)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "SPED_gt.npy" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_non_finite_descriptors_are_neither_cached_nor_evaluated(extractor, tmp_path):
    names = [p.name for p in SCENES[:4]]
    cache = DescriptorCache(tmp_path, "scenes", "db", extractor_identity(extractor), names, chunk_size=4)
    inner = extractor.forward

    def nan_for_third(batch, patch_tokens=False):
        desc, fmap = inner(batch, patch_tokens)
        if nan_for_third.calls == 1:
            desc = desc.clone()
            desc[0, 3] = float("nan")  # image 2 = first of the second batch
        nan_for_third.calls += 1
        return desc, fmap

    nan_for_third.calls = 0
    extractor.forward = nan_for_third
    with pytest.raises(ModelOutputError, match="non-finite") as err:
        describe_cached(extractor, SCENES[:4], cache)
    assert SCENES[2].name in str(err.value) and SCENES[0].name not in str(err.value)
    assert not list(cache.dir.glob("chunk_*.npy")) and cache.chunks == {}
    with pytest.raises(ModelOutputError):
        cache.save_chunk(0, np.full((4, cache.dim), np.inf, np.float32))


def test_cached_non_finite_chunk_is_computed_again(extractor, tmp_path):
    names = [p.name for p in SCENES[:4]]
    ident = extractor_identity(extractor)
    cache = DescriptorCache(tmp_path, "scenes", "db", ident, names, chunk_size=4)
    good = describe_cached(extractor, SCENES[:4], cache)
    path = cache.dir / "chunk_000000.npy"  # as an older version could have written it
    poisoned = good.copy()
    poisoned[1, 0] = np.nan
    buf = io.BytesIO()
    np.save(buf, poisoned)
    path.write_bytes(buf.getvalue())
    index = json.loads((cache.dir / "index.json").read_text())
    index["chunks"]["0"] = hashlib.sha256(buf.getvalue()).hexdigest()
    (cache.dir / "index.json").write_text(json.dumps(index))
    again = DescriptorCache(tmp_path, "scenes", "db", ident, names, chunk_size=4)
    assert again.load_chunk(0) is None
    np.testing.assert_array_equal(describe_cached(extractor, SCENES[:4], again), good)


def test_every_set_make_eval_data_writes_is_evaluable_and_the_cache_is_named(tmp_path, capsys):
    from vpr_ros.cli import main
    from vpr_ros.evaluation.datasets import DATASETS

    assert main(["make-eval-data", str(tmp_path / "data")]) == 0
    hint = capsys.readouterr().out.splitlines()[-1]
    assert hint == (f"evaluate them with: vpr-ros eval --checkpoint CKPT --data-root {tmp_path / 'data'} "
                    f"--datasets {' '.join(DATASETS)}")
    cache = tmp_path / "cache"
    assert main(["eval", "--checkpoint", str(GOLDEN / "tiny_salad_state_dict.pt"), "--config",
                 str(GOLDEN / "config.json"), "--image-size", "56", "56", "--device", "cpu", "--data-root",
                 str(tmp_path / "data"), "--datasets", *DATASETS, "--cache", str(cache), "--out",
                 str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["dataset"] for r in data["results"]] == list(DATASETS)
    size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    assert 1e3 < size < 1e6 and f"descriptor cache {cache}: {size / 1e3:.1f} kB" in out
    with pytest.raises(SystemExit):  # an unknown name is refused by the parser, listing the names
        main(["eval", "--checkpoint", "x", "--data-root", "d", "--datasets", "pitts30k"])
    assert "pitts30k_val" in capsys.readouterr().err
