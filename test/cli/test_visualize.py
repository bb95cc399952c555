"""The vpr_ros.plotting package: MNN matching, line geometry, and every plot writes a readable PNG."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vpr_ros.cli import visualize
from vpr_ros.extractor import DescriptorExtractor
from vpr_ros.maps.place_map import PlaceMap
from vpr_ros.plotting import DPI, features, matches, recall, resized_rgb, retrieval
from vpr_ros.plotting.features import plot_heatmaps
from vpr_ros.plotting.retrieval import RetrievalTile, plot_retrieval
from vpr_ros.types import ModelIdentity

SCENES = Path(__file__).resolve().parents[2] / "vpr_ros" / "synth" / "data" / "scenes"
SIZE = (224, 224)


def _png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.std() > 20, "image is nearly uniform"
    assert len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 50, "too few distinct colours"
    return pixels


@pytest.fixture(scope="module")
def salad_ext(tiny_salad_path, tiny_salad_config):
    from vpr_ros.models import load_model

    return DescriptorExtractor(load_model(tiny_salad_path, config=tiny_salad_config), SIZE, "cpu")


@pytest.fixture(scope="module")
def a2gc_ext(tiny_a2gc_path, tiny_a2gc_config):
    from vpr_ros.models import load_model

    return DescriptorExtractor(load_model(tiny_a2gc_path, config=tiny_a2gc_config), SIZE, "cpu")


def _tokens(ext, name):
    return ext.extract([SCENES / name], patch_tokens=True).patch_tokens[0]


# -- mutual_matches ---------------------------------------------------------------------------------


def test_mutual_matches_recovers_permutation():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 5, 32)).astype(np.float32)
    perm = rng.permutation(30)
    b = a.reshape(30, 32)[perm].reshape(6, 5, 32) * 3.0  # norm must not matter
    pairs, scores = matches.mutual_matches(a, b, threshold=0.5, top_k=None)
    assert len(pairs) == 30
    np.testing.assert_array_equal(perm[pairs[:, 1]], pairs[:, 0])  # b[j] = a[perm[j]]
    np.testing.assert_allclose(scores, 1.0, atol=1e-5)


def test_mutual_matches_threshold_topk_and_mutuality():
    e = np.eye(4, dtype=np.float32)
    a = np.stack([e[0], e[1], 0.6 * e[2] + 0.8 * e[3], e[3]])[:, None, :]  # [4, 1, 4]
    b = np.stack([e[0], 0.8 * e[1] + 0.6 * e[2], e[2]])  # [3, 4]
    pairs, scores = matches.mutual_matches(a, b, threshold=0.0, top_k=None)
    # a0<->b0 (1.0), a1<->b1 (0.8), a2<->b2 (0.6); a3's best is b2 but b2 prefers a2: not mutual
    assert pairs.tolist() == [[0, 0], [1, 1], [2, 2]]
    np.testing.assert_allclose(scores, [1.0, 0.8, 0.6], atol=1e-6)
    assert np.all(np.diff(scores) <= 0)
    pairs, scores = matches.mutual_matches(a, b, threshold=0.7, top_k=None)
    assert pairs.tolist() == [[0, 0], [1, 1]] and scores.min() >= 0.7
    pairs, _ = matches.mutual_matches(a, b, threshold=0.0, top_k=1)
    assert pairs.tolist() == [[0, 0]]
    assert matches.mutual_matches(a, b[:0], 0.0, 5)[0].shape == (0, 2)


def test_patch_centres_and_line_ends_land_in_the_right_image():
    # patch 7 on a 3x4 grid = row 1, col 3; image 42x56 -> 14 px patches
    np.testing.assert_allclose(matches.patch_centres([7], (3, 4), (42, 56)), [[3.5 * 14, 1.5 * 14]])
    grid_a, grid_b, size_a, size_b = (16, 16), (12, 20), (224, 224), (168, 280)
    pairs = np.array([[i, j] for i in (0, 15, 255, 100) for j in (0, 19, 239, 125)])
    pa, pb = matches.match_endpoints(pairs, grid_a, grid_b, size_a, size_b, gap=10)
    assert np.all((pa >= 0) & (pa < [224, 224]))
    x0 = 224 + 10
    assert np.all((pb[:, 0] > x0) & (pb[:, 0] < x0 + 280) & (pb[:, 1] > 0) & (pb[:, 1] < 168))
    # the last patch of b sits half a patch inside b's bottom-right corner
    np.testing.assert_allclose(pb[pairs[:, 1] == 239][0], [x0 + 280 - 7, 168 - 7])


# -- plots ------------------------------------------------------------------------------------------


def test_plot_matches(salad_ext, tmp_path):
    ta, tb = _tokens(salad_ext, "graf1.jpg"), _tokens(salad_ext, "graf3.jpg")
    pairs, scores = matches.mutual_matches(ta, tb, threshold=0.0, top_k=50)
    assert 0 < len(pairs) <= 50
    ia, ib = resized_rgb(SCENES / "graf1.jpg", SIZE), resized_rgb(SCENES / "graf3.jpg", SIZE)
    out = matches.plot_matches(ia, ib, pairs, scores, ta.shape[:2], tb.shape[:2], tmp_path / "m.png", "t", 0.0)
    px = _png(out)
    assert px.shape[1] == 1100 and 450 < px.shape[0] < 800
    out2 = matches.plot_matches(ia, ia, pairs[:3], scores[:3], ta.shape[:2], ta.shape[:2], tmp_path / "m2.png")
    assert not np.array_equal(px, _png(out2)) and not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("which", ["salad", "a2gc"])
def test_plot_assignment(which, request, tmp_path):
    ext = request.getfixturevalue(f"{which}_ext")
    images = []
    for name in ("building.jpg", "fruits.jpg"):
        _, tokens, fmap = visualize._patch_features(ext, SCENES / name)
        with torch.inference_mode():
            log_plan = ext.model.aggregator.log_assignment(fmap)[0].numpy()
        clusters, dustbin = features.assignment_maps(log_plan, tokens.shape[:2])
        m = log_plan.shape[0] - 1
        assert clusters.shape == (16, 16) and clusters.min() >= 0 and clusters.max() < m
        assert np.all((dustbin >= 0) & (dustbin <= 1 + 1e-6))
        out = features.plot_assignment(resized_rgb(SCENES / name, SIZE), clusters, dustbin, m, tmp_path / f"{name}.png")
        images.append(_png(out))
    assert images[0].shape == (520, 1100, 3)
    assert not np.array_equal(*images)


def test_plot_heatmaps(salad_ext, tmp_path):
    images = []
    for name in ("messi5.jpg", "sudoku.jpg"):
        out = plot_heatmaps(resized_rgb(SCENES / name, SIZE), _tokens(salad_ext, name), tmp_path / f"{name}.png")
        images.append(_png(out))
    assert images[0].shape == (840, 920, 3)
    assert not np.array_equal(*images)
    tokens = _tokens(salad_ext, "messi5.jpg")
    assert [n for n, _ in features.feature_maps(tokens, 3)][:3] == ["channel mean", "channel max", "L2 norm per patch"]
    assert len(features.feature_maps(tokens, 3)) == 6
    wide = _png(plot_heatmaps(resized_rgb(SCENES / "messi5.jpg", SIZE), tokens, tmp_path / "w.png", channels=3))
    assert wide.shape[1] > images[0].shape[1]


def test_plot_retrieval_and_recall(tmp_path):
    q = np.asarray(Image.open(SCENES / "aloeL.jpg").convert("RGB"))
    tiles = [RetrievalTile(retrieval.thumbnail(SCENES / "aloeR.jpg"), "id 1", 0.9, True),
             RetrievalTile(None, "id 7", 0.5, False)]
    a = _png(plot_retrieval(q, tiles, tmp_path / "r.png"))
    b = _png(plot_retrieval(q, [RetrievalTile(t.image, t.label, t.score) for t in tiles], tmp_path / "r2.png"))
    assert a.shape == b.shape and a.shape[1] == 840 and not np.array_equal(a, b)
    green = np.all(np.abs(a.astype(int) - [44, 160, 44]) < 6, axis=-1).sum()  # tab:green border
    assert green > 500 and np.all(np.abs(b.astype(int) - [44, 160, 44]) < 6, axis=-1).sum() < green / 10
    r = _png(recall.plot_recall({"x": {1: 0.5, 5: 0.7, 10: 0.8}, "y": {"1": 60, "5": 80}}, tmp_path / "rc.png"))
    assert r.shape == (480, 900, 3)
    r2 = _png(recall.plot_recall({"x": {1: 0.9, 5: 0.95}}, tmp_path / "rc2.png"))
    assert not np.array_equal(r, r2)
    with pytest.raises(ValueError):
        recall.plot_recall({}, tmp_path / "none.png")


# -- CLI --------------------------------------------------------------------------------------------


def _parser():
    from vpr_ros.cli import visualize

    parser = argparse.ArgumentParser()
    visualize.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_all_subcommands(salad_ext, tiny_salad_path, salad_golden_dir, tmp_path, capsys):
    model = ["--checkpoint", str(tiny_salad_path), "--config", str(salad_golden_dir / "config.json"),
             "--image-size", "224", "224", "--device", "cpu"]
    names = ["aloeL.jpg", "aloeR.jpg", "baboon.jpg", "fruits.jpg"]
    pm = PlaceMap.create(salad_ext.descriptor_dim, model_id=ModelIdentity.of(salad_ext.model, SIZE))
    pm.add(salad_ext.describe([SCENES / n for n in names]), [0.0, 1.0, 2.0, 3.0],
           sources=[str(SCENES / n) for n in names[:3]] + ["not/an/image.jpg"])
    pm.save(tmp_path / "map")
    (tmp_path / "rec.json").write_text(json.dumps({"a": {"1": 0.5, "5": 0.8}, "b": {"1": 0.6, "5": 0.9}}))
    runs = {
        "matches": ["matches", str(SCENES / "graf1.jpg"), str(SCENES / "graf3.jpg"), "--threshold", "0", *model],
        "assignment": ["assignment", str(SCENES / "building.jpg"), *model],
        "heatmap": ["heatmap", str(SCENES / "messi5.jpg"), "--channels", "2", *model],
        "retrieval": ["retrieval", str(tmp_path / "map"), str(SCENES / "aloeL.jpg"), "--k", "4",
                      "--positives", "0", "1", *model],
        "recall": ["recall", str(tmp_path / "rec.json")],
    }
    parser = _parser()
    for name, argv in runs.items():
        out = tmp_path / f"{name}.png"
        args = parser.parse_args(["visualize", *argv, "--out", str(out)])
        assert args.func(args) == 0
        _png(out)
    assert "id 0" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["visualize", "heatmap", "x.jpg", "--out", "o.png"])  # no --checkpoint


def _blank_rows_below(pixels: np.ndarray) -> int:
    """White rows at the bottom of a plot."""
    content = np.flatnonzero((pixels < 250).any(axis=(1, 2)))
    return pixels.shape[0] - 1 - int(content[-1])


def test_retrieval_figure_fits_its_images(tmp_path):
    """Landscape frames make a short figure with no empty band; portrait ones a taller one."""
    wide = np.asarray(Image.open(SCENES / "building.jpg").convert("RGB").resize((320, 180)))
    tall = np.ascontiguousarray(wide.transpose(1, 0, 2))
    tiles = [RetrievalTile(wide, "id 1 t=5.000\nx 1.0 y 2.0 yaw 90°", 0.9), RetrievalTile(None, "id 2", 0.5)]
    short = _png(plot_retrieval(wide, tiles, tmp_path / "w.png"))
    high = _png(plot_retrieval(tall, [RetrievalTile(tall, "id 1", 0.9)], tmp_path / "t.png"))
    assert short.shape[0] < 0.4 * short.shape[1] and high.shape[0] > short.shape[0] * 1.5
    assert _blank_rows_below(short) < 0.1 * short.shape[0] and _blank_rows_below(high) < 0.1 * high.shape[0]


def test_recall_curves_that_coincide_are_drawn_once_in_their_datasets_colour(tmp_path):
    same, other = {1: 0.4, 5: 0.8}, {1: 0.3, 5: 0.7}
    results = {f"d{i}": same if i % 2 else other for i in range(6)}
    results |= {f"d{i} (fp16)": results[f"d{i}"] for i in range(6)}
    results["d0 (pca256)"] = {1: 0.2, 5: 0.7}
    groups = recall._recall_groups({k: sorted(v.items()) for k, v in results.items()})
    names = [recall._group_name(labels) for _, labels in groups]
    assert names == ["d0 (exact = fp16)\n= d2 (exact = fp16)\n= d4 (exact = fp16)",
                     "d1 (exact = fp16)\n= d3 (exact = fp16)\n= d5 (exact = fp16)", "d0 (pca256)"]
    assert recall._group_name(["msls_val", "msls_val (fp16)"]) == "msls_val (exact = fp16)"
    pixels = _png(recall.plot_recall(results, tmp_path / "r.png"))
    axes_right = 9 * DPI * 0.6  # the legend stands to the right of the curves
    assert (pixels[:, int(axes_right):] < 250).any()


def test_recall_plot_reads_eval_results(tmp_path: Path) -> None:
    """The results.json that `vpr-ros eval` writes plots directly."""
    from vpr_ros.plotting.recall import load_recall_json

    results = {"meta": {}, "results": [
        {"dataset": "sped", "recalls": {"1": 0.5, "5": 0.9}, "index_kind": "fp16",
         "index_recalls": {"1": 0.4, "5": 0.9}},
        {"dataset": "msls_challenge", "recalls": None, "index_kind": None, "index_recalls": None}]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert load_recall_json(path) == {"sped": {1: 0.5, 5: 0.9}, "sped (fp16)": {1: 0.4, 5: 0.9}}


def test_cli_matches_keep_the_aspect_ratio_and_the_verification_threshold(tiny_salad_path, salad_golden_dir,
                                                                          tmp_path, capsys):
    import inspect

    from vpr_ros.loop_closure.verification import MIN_MATCH_SIMILARITY, verify

    assert inspect.signature(verify).parameters["min_similarity"].default == MIN_MATCH_SIMILARITY
    assert inspect.signature(matches.mutual_matches).parameters["threshold"].default == MIN_MATCH_SIMILARITY
    model = ["--checkpoint", str(tiny_salad_path), "--config", str(salad_golden_dir / "config.json"),
             "--image-size", "224", "224", "--device", "cpu"]
    parser = _parser()
    heights = {}
    for name in ("building.jpg", "baboon.jpg"):  # 4:3 and square photos, both described at 224 x 224
        args = parser.parse_args(["visualize", "matches", str(SCENES / name), str(SCENES / name), *model,
                                  "--out", str(tmp_path / f"{name}.png")])
        assert args.threshold == MIN_MATCH_SIMILARITY
        assert args.func(args) == 0
        heights[name] = _png(tmp_path / f"{name}.png").shape[0]
    assert heights["building.jpg"] < 0.85 * heights["baboon.jpg"]  # drawn 4:3, not squeezed to a square
    assert "wrote" in capsys.readouterr().out
