"""Tiny A²GC model against golden vectors from the (repaired) official A²GC code.

Image cases run the whole model; aggregator-only cases feed random feature maps/tokens to the
aggregator (one case with a patch mask, one with fewer patches than clusters, one with solver
overrides). Tolerances are the ones recommended in test/data/golden/a2gc/config.json.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from vpr_ros.models import A2GC, A2GCConfig, VPRModel, load_model
from vpr_ros.models.a2gc import grid_coordinates
from vpr_ros.models.salad import aggregate_descriptor

IMAGE_CASES = ["img224", "img322"]
AGG_CASES = ["feat10x10", "feat2x2_fewer_patches_than_clusters", "feat6x6_mask", "feat10x10_ot_params"]
OT_OVERRIDES = {"contrastive_ot_iters": 5, "contrastive_ot_reg": 0.5, "contrastive_ot_temp": 0.7}
DESCRIPTOR_ATOL = 1e-5
PLAN_ATOL = 1e-4
FEATURE_ATOL = 1e-4


@pytest.fixture(scope="module")
def golden(a2gc_golden_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """All golden cases ``{case name: {tensor name: tensor}}``."""
    names = IMAGE_CASES + AGG_CASES
    return {n: torch.load(a2gc_golden_dir / f"case_{n}.pt", weights_only=True) for n in names}


@pytest.fixture
def ot_params_model(tiny_a2gc_path: Path) -> VPRModel:
    """The tiny model with the solver overrides of the ``feat10x10_ot_params`` case."""
    return load_model(tiny_a2gc_path, config={"aggregator": dict(OT_OVERRIDES)})


def _model_for(case: str, tiny_a2gc_model: VPRModel, ot_params_model: VPRModel) -> VPRModel:
    return ot_params_model if case == "feat10x10_ot_params" else tiny_a2gc_model


def assert_log_plan_close(got: torch.Tensor, want: torch.Tensor, atol: float = PLAN_ATOL) -> None:
    """Same -inf pattern, then values close where finite."""
    assert got.shape == want.shape
    finite = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got), finite)
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got[finite], want[finite], rtol=0, atol=atol)


# ---------------------------------------------------------------------------------------------
# Model structure


def test_config_and_state_dict_layout(tiny_a2gc_model: VPRModel, tiny_a2gc_config: dict[str, Any]) -> None:
    cfg = tiny_a2gc_model.aggregator.cfg
    assert isinstance(tiny_a2gc_model.aggregator, A2GC)
    assert isinstance(cfg, A2GCConfig)
    assert isinstance(cfg.geo_lambda, float)
    assert cfg.geo_lambda == tiny_a2gc_config["aggregator"]["kwargs"]["geo_lambda"] == 0.15
    assert (cfg.num_clusters, cfg.cluster_dim, cfg.token_dim, cfg.geo_dim) == (8, 16, 32, 16)
    assert (cfg.ot_iters, cfg.ot_reg, cfg.ot_temperature, cfg.use_geometric_ot) == (3, 1.0, 1.0, True)
    sd = tiny_a2gc_model.state_dict()
    assert not any("geo_lambda" in k for k in sd)
    assert not any("geo_lambda" in name for name, _ in tiny_a2gc_model.named_parameters())
    for key in ("aggregator.geo_proj.weight", "aggregator.geo_proj.bias", "aggregator.cluster_geo"):
        assert key in sd
    want = {k: tuple(v[0]) for k, v in tiny_a2gc_config["state_dict"]["keys"].items()}
    assert {k: tuple(v.shape) for k, v in sd.items()} == want
    assert list(sd) == list(want)
    assert tiny_a2gc_model.descriptor_dim == tiny_a2gc_config["descriptor_dim"] == 160
    assert not tiny_a2gc_model.training


def test_ot_overrides_reach_the_aggregator(ot_params_model: VPRModel) -> None:
    cfg = ot_params_model.aggregator.cfg
    assert (cfg.ot_iters, cfg.ot_reg, cfg.ot_temperature) == (5, 0.5, 0.7)
    assert cfg.geo_lambda == 0.15


def test_ot_overrides_via_constructor_match_load_model(
    tiny_a2gc_path: Path, ot_params_model: VPRModel, golden: dict
) -> None:
    """Building ``A2GC(A2GCConfig(...))`` by hand and loading ``aggregator.*`` gives the same."""
    sd = torch.load(tiny_a2gc_path, weights_only=True)
    agg = A2GC(A2GCConfig(num_channels=64, num_clusters=8, cluster_dim=16, token_dim=32,
                          ot_iters=5, ot_reg=0.5, ot_temperature=0.7)).eval()
    prefix = "aggregator."
    agg.load_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, strict=True)
    ref = golden["feat10x10_ot_params"]
    with torch.no_grad():
        got = agg((ref["feature_map"], ref["token"]))
        via_loader = ot_params_model.aggregator((ref["feature_map"], ref["token"]))
    torch.testing.assert_close(got, via_loader, rtol=0, atol=0)
    torch.testing.assert_close(got, ref["descriptor"], rtol=0, atol=DESCRIPTOR_ATOL)


# ---------------------------------------------------------------------------------------------
# Image cases (whole model)


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_image_descriptor_matches_golden(tiny_a2gc_model: VPRModel, golden: dict, case: str) -> None:
    ref = golden[case]
    with torch.no_grad():
        got = tiny_a2gc_model(ref["images"])
    assert got.shape == ref["descriptor"].shape
    torch.testing.assert_close(got, ref["descriptor"], rtol=0, atol=DESCRIPTOR_ATOL)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(got.shape[0]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_image_backbone_matches_golden(tiny_a2gc_model: VPRModel, golden: dict, case: str) -> None:
    ref = golden[case]
    with torch.no_grad():
        feature_map, token = tiny_a2gc_model.backbone(ref["images"])
    torch.testing.assert_close(feature_map, ref["backbone_feature_map"], rtol=0, atol=FEATURE_ATOL)
    torch.testing.assert_close(token, ref["backbone_token"], rtol=0, atol=FEATURE_ATOL)


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_image_intermediates_match_golden(tiny_a2gc_model: VPRModel, golden: dict, case: str) -> None:
    ref, agg = golden[case], tiny_a2gc_model.aggregator
    with torch.no_grad():
        fm, token = tiny_a2gc_model.backbone(ref["images"])
        b, _, h, w = fm.shape
        torch.testing.assert_close(agg.score(fm).flatten(2), ref["S_feature"], rtol=0, atol=FEATURE_ATOL)
        torch.testing.assert_close(
            agg.cluster_features(fm).flatten(2), ref["cluster_features"], rtol=0, atol=FEATURE_ATOL
        )
        torch.testing.assert_close(agg.token_features(token), ref["token_projected"], rtol=0, atol=FEATURE_ATOL)
        torch.testing.assert_close(agg.geo_scores(h, w, b), ref["S_geo"], rtol=0, atol=1e-5)
        torch.testing.assert_close(agg.scores(fm), ref["S_total"], rtol=0, atol=FEATURE_ATOL)
        assert_log_plan_close(agg.log_assignment(fm), ref["log_plan"])
    torch.testing.assert_close(grid_coordinates(h, w), ref["coords"][0], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Aggregator-only cases


@pytest.mark.parametrize("case", AGG_CASES)
def test_aggregator_descriptor_matches_golden(
    tiny_a2gc_model: VPRModel, ot_params_model: VPRModel, golden: dict, case: str
) -> None:
    ref = golden[case]
    agg = _model_for(case, tiny_a2gc_model, ot_params_model).aggregator
    with torch.no_grad():
        got = agg((ref["feature_map"], ref["token"]), ref.get("mask"))
    assert got.shape == ref["descriptor"].shape
    torch.testing.assert_close(got, ref["descriptor"], rtol=0, atol=DESCRIPTOR_ATOL)


@pytest.mark.parametrize("case", AGG_CASES)
def test_aggregator_log_plan_matches_golden(
    tiny_a2gc_model: VPRModel, ot_params_model: VPRModel, golden: dict, case: str
) -> None:
    ref = golden[case]
    agg = _model_for(case, tiny_a2gc_model, ot_params_model).aggregator
    with torch.no_grad():
        got = agg.log_assignment(ref["feature_map"], ref.get("mask"))
    assert_log_plan_close(got, ref["log_plan"])


@pytest.mark.parametrize("case", AGG_CASES)
def test_aggregator_intermediates_match_golden(
    tiny_a2gc_model: VPRModel, ot_params_model: VPRModel, golden: dict, case: str
) -> None:
    ref = golden[case]
    agg = _model_for(case, tiny_a2gc_model, ot_params_model).aggregator
    fm = ref["feature_map"]
    b, _, h, w = fm.shape
    with torch.no_grad():
        local = agg.cluster_features(fm).flatten(2)
        torch.testing.assert_close(local, ref["cluster_features"], rtol=0, atol=FEATURE_ATOL)
        torch.testing.assert_close(agg.score(fm).flatten(2), ref["S_feature"], rtol=0, atol=FEATURE_ATOL)
        torch.testing.assert_close(agg.geo_scores(h, w, b), ref["S_geo"], rtol=0, atol=1e-5)
        torch.testing.assert_close(agg.scores(fm), ref["S_total"], rtol=0, atol=FEATURE_ATOL)
        token = agg.token_features(ref["token"])
        torch.testing.assert_close(token, ref["token_projected"], rtol=0, atol=FEATURE_ATOL)
        plan = agg.log_assignment(fm, ref.get("mask"))[:, :-1].exp()
        desc, pooled = aggregate_descriptor(local, plan, token)
    torch.testing.assert_close(pooled, ref["vlad_unnormalized"], rtol=1e-4, atol=FEATURE_ATOL)
    torch.testing.assert_close(desc, ref["descriptor"], rtol=0, atol=DESCRIPTOR_ATOL)
    for i in range(b):
        torch.testing.assert_close(grid_coordinates(h, w), ref["coords"][i], rtol=0, atol=0)


def test_mask_gives_masked_columns_only_dustbin_mass(tiny_a2gc_model: VPRModel, golden: dict) -> None:
    ref = golden["feat6x6_mask"]
    mask = ref["mask"]
    assert mask.dtype == torch.bool and (~mask).any() and mask.any()
    with torch.no_grad():
        log_plan = tiny_a2gc_model.aggregator.log_assignment(ref["feature_map"], mask)
    clusters = log_plan[:, :-1]
    assert torch.isneginf(clusters.permute(0, 2, 1)[~mask]).all()
    assert torch.isfinite(clusters.permute(0, 2, 1)[mask]).all()
    assert torch.isfinite(log_plan[:, -1]).all()


def test_mask_changes_the_descriptor(tiny_a2gc_model: VPRModel, golden: dict) -> None:
    ref = golden["feat6x6_mask"]
    with torch.no_grad():
        unmasked = tiny_a2gc_model.aggregator((ref["feature_map"], ref["token"]))
    assert (unmasked - ref["descriptor"]).abs().max() > 1e-3


@pytest.mark.parametrize("case", AGG_CASES)
def test_log_plan_columns_sum_to_patch_marginal(
    tiny_a2gc_model: VPRModel, ot_params_model: VPRModel, golden: dict, case: str
) -> None:
    """The last calibration pass is over columns: each sums to 1/(n+m) (the plan is not rescaled)."""
    ref = golden[case]
    agg = _model_for(case, tiny_a2gc_model, ot_params_model).aggregator
    with torch.no_grad():
        plan = agg.log_assignment(ref["feature_map"], ref.get("mask")).exp()
    b, m1, n = plan.shape
    want = torch.full((b, n), 1.0 / (n + m1 - 1))
    torch.testing.assert_close(plan.sum(dim=1), want, rtol=1e-5, atol=0)


# ---------------------------------------------------------------------------------------------
# Sensitivity: the golden comparison catches plausible mistakes


def _replace_cfg(model: VPRModel, **changes: Any) -> None:
    model.aggregator.cfg = dataclasses.replace(model.aggregator.cfg, **changes)


@pytest.mark.parametrize(
    "changes",
    [{"geo_lambda": 0.0}, {"ot_iters": 4}, {"use_geometric_ot": False}, {"ot_temperature": 0.9}],
    ids=["no_geo_term", "ot_iters_4", "geometric_ot_off", "temperature"],
)
def test_config_changes_break_the_match(tiny_a2gc_model: VPRModel, golden: dict, changes: dict) -> None:
    ref = golden["img224"]
    _replace_cfg(tiny_a2gc_model, **changes)
    with torch.no_grad():
        got = tiny_a2gc_model(ref["images"])
    assert (got - ref["descriptor"]).abs().max() > 10 * DESCRIPTOR_ATOL


def test_swapped_coordinate_channels_break_the_match(tiny_a2gc_model: VPRModel, golden: dict) -> None:
    """Channel 0 must be x (along the width): the transposed grid changes S_geo."""
    agg = tiny_a2gc_model.aggregator
    ref = golden["img224"]
    h, w = ref["coords"].shape[-2:]
    coords = grid_coordinates(h, w).flip(0).unsqueeze(0)
    with torch.no_grad():
        swapped = torch.matmul(agg.cluster_geo, agg.geo_proj(coords).flatten(2))
    assert (swapped[0] - ref["S_geo"][0]).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------
# Inputs SALAD refuses


def test_fewer_patches_than_clusters_is_allowed(tiny_a2gc_model: VPRModel) -> None:
    """A 28x28 image (2x2 = 4 patches) with 8 clusters works for A²GC."""
    torch.manual_seed(0)
    with torch.no_grad():
        desc = tiny_a2gc_model(torch.randn(1, 3, 28, 28))
    assert desc.shape == (1, 160)
    assert torch.isfinite(desc).all()
    torch.testing.assert_close(desc.norm(dim=-1), torch.ones(1), rtol=0, atol=1e-6)
