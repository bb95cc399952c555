"""Tiny SALAD model against golden vectors from the official SALAD + DINOv2 code.

The golden model (test/data/golden/salad) has random weights, width 64, 2 blocks, m=8, l=16,
g=32; outputs were produced in float32 on CPU with ``torch.no_grad()``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import timm.layers
import torch

from vpr_ros.models import VPRModel
from vpr_ros.models.layers import resample_dinov2_pos_embed, sinkhorn_log_plan

CASES = ["x224", "x322", "x518"]
SINKHORN_CASES = ["b2_m8_n20", "b1_m5_n12", "b3_m4_n9"]
DESCRIPTOR_ATOL = 2e-6


@pytest.fixture(scope="module")
def golden_inputs(salad_golden_dir: Path) -> dict[str, torch.Tensor]:
    """Preprocessed images ``{case: [B, 3, H, W]}``."""
    return torch.load(salad_golden_dir / "inputs.pt", weights_only=True)["inputs"]


@pytest.fixture(scope="module")
def golden_outputs(salad_golden_dir: Path) -> dict[str, dict]:
    """Reference intermediates and descriptors per case, plus ``sinkhorn_unit``."""
    return torch.load(salad_golden_dir / "outputs.pt", weights_only=True)


def _grid(x: torch.Tensor) -> tuple[int, int]:
    return x.shape[-2] // 14, x.shape[-1] // 14


def _descriptor(model: VPRModel, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


# ---------------------------------------------------------------------------------------------
# End to end


@pytest.mark.parametrize("case", CASES)
def test_descriptor_matches_golden(
    tiny_salad_model: VPRModel, golden_inputs: dict, golden_outputs: dict, case: str
) -> None:
    x, want = golden_inputs[case], golden_outputs[case]["descriptor"]
    got = _descriptor(tiny_salad_model, x)
    assert got.dtype == torch.float32
    assert got.shape == want.shape == (x.shape[0], 160)
    torch.testing.assert_close(got, want, rtol=0, atol=DESCRIPTOR_ATOL)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(x.shape[0]), rtol=0, atol=1e-6)


def test_model_is_in_eval_mode_and_sized_from_checkpoint(tiny_salad_model: VPRModel) -> None:
    cfg = tiny_salad_model.cfg
    assert not tiny_salad_model.training
    assert (cfg.backbone.embed_dim, cfg.backbone.depth, cfg.backbone.num_heads) == (64, 2, 4)
    assert cfg.backbone.num_trainable_blocks == 1
    agg = cfg.aggregator
    assert (agg.num_clusters, agg.cluster_dim, agg.token_dim, agg.sinkhorn_iters) == (8, 16, 32, 3)
    assert tiny_salad_model.descriptor_dim == 160


# ---------------------------------------------------------------------------------------------
# Backbone intermediates


@pytest.mark.parametrize("case", CASES)
def test_pos_embed_resampling_matches_golden(
    tiny_salad_model: VPRModel, golden_inputs: dict, golden_outputs: dict, case: str
) -> None:
    pos = tiny_salad_model.backbone.model.pos_embed
    got = resample_dinov2_pos_embed(pos.detach(), _grid(golden_inputs[case]))
    torch.testing.assert_close(got, golden_outputs[case]["pos_embed_interpolated"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_prepare_tokens_matches_golden(
    tiny_salad_model: VPRModel, golden_inputs: dict, golden_outputs: dict, case: str
) -> None:
    with torch.no_grad():
        got = tiny_salad_model.backbone.model.prepare_tokens(golden_inputs[case])
    torch.testing.assert_close(got, golden_outputs[case]["tokens_prepared"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_backbone_outputs_match_golden(
    tiny_salad_model: VPRModel, golden_inputs: dict, golden_outputs: dict, case: str
) -> None:
    with torch.no_grad():
        patch_tokens, cls_token = tiny_salad_model.backbone(golden_inputs[case])
    ref = golden_outputs[case]
    torch.testing.assert_close(patch_tokens, ref["patch_tokens"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cls_token, ref["cls_token"], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Aggregator intermediates (fed with the golden backbone outputs, so they are tested in isolation)


@pytest.mark.parametrize("case", CASES)
def test_aggregator_heads_match_golden(tiny_salad_model: VPRModel, golden_outputs: dict, case: str) -> None:
    ref, agg = golden_outputs[case], tiny_salad_model.aggregator
    with torch.no_grad():
        torch.testing.assert_close(agg.score(ref["patch_tokens"]).flatten(2), ref["score_logits"])
        torch.testing.assert_close(
            agg.cluster_features(ref["patch_tokens"]).flatten(2), ref["cluster_features"]
        )
        torch.testing.assert_close(agg.token_features(ref["cls_token"]), ref["token_features"])


@pytest.mark.parametrize("case", CASES)
def test_log_assignment_matches_golden(tiny_salad_model: VPRModel, golden_outputs: dict, case: str) -> None:
    ref = golden_outputs[case]
    with torch.no_grad():
        log_plan = tiny_salad_model.aggregator.log_assignment(ref["patch_tokens"])
    torch.testing.assert_close(log_plan, ref["log_assignment_with_dustbin"], rtol=0, atol=1e-5)
    torch.testing.assert_close(log_plan[:, :-1].exp(), ref["assignment"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_aggregator_alone_matches_golden_descriptor(
    tiny_salad_model: VPRModel, golden_outputs: dict, case: str
) -> None:
    ref = golden_outputs[case]
    with torch.no_grad():
        got = tiny_salad_model.aggregator((ref["patch_tokens"], ref["cls_token"]))
    torch.testing.assert_close(got, ref["descriptor"], rtol=0, atol=DESCRIPTOR_ATOL)


# ---------------------------------------------------------------------------------------------
# Sinkhorn


@pytest.mark.parametrize("case", SINKHORN_CASES)
def test_sinkhorn_unit_cases_match_golden(golden_outputs: dict, case: str) -> None:
    ref = golden_outputs["sinkhorn_unit"][case]
    got = sinkhorn_log_plan(ref["scores"], ref["dustbin"], ref["num_iters"])
    torch.testing.assert_close(got, ref["log_assignment_with_dustbin"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", SINKHORN_CASES)
def test_sinkhorn_columns_sum_to_one(golden_outputs: dict, case: str) -> None:
    """The column (patch) update comes last, so every column of the rescaled plan sums to 1."""
    ref = golden_outputs["sinkhorn_unit"][case]
    plan = sinkhorn_log_plan(ref["scores"].double(), ref["dustbin"].double(), ref["num_iters"]).exp()
    b, m, n = ref["scores"].shape
    assert plan.shape == (b, m + 1, n)
    torch.testing.assert_close(plan.sum(dim=1), torch.ones(b, n, dtype=torch.float64))


@pytest.mark.parametrize("case", SINKHORN_CASES)
def test_sinkhorn_converges_to_row_marginals(golden_outputs: dict, case: str) -> None:
    """With many iterations each cluster receives mass 1 and the dustbin n - m (rescaled)."""
    ref = golden_outputs["sinkhorn_unit"][case]
    b, m, n = ref["scores"].shape
    plan = sinkhorn_log_plan(ref["scores"].double(), ref["dustbin"].double(), num_iters=500).exp()
    want = torch.ones(b, m + 1, dtype=torch.float64)
    want[:, -1] = n - m
    torch.testing.assert_close(plan.sum(dim=2), want, rtol=1e-6, atol=1e-6)


def test_sinkhorn_iteration_count_is_exact(golden_outputs: dict) -> None:
    ref = golden_outputs["sinkhorn_unit"]["b2_m8_n20"]
    got = sinkhorn_log_plan(ref["scores"], ref["dustbin"], ref["num_iters"] + 1)
    assert (got - ref["log_assignment_with_dustbin"]).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------
# Sensitivity: the tolerances above are tight enough to catch plausible mistakes


@pytest.mark.parametrize("case", CASES)
def test_four_sinkhorn_iterations_break_the_match(
    tiny_salad_model: VPRModel, golden_inputs: dict, golden_outputs: dict, case: str
) -> None:
    agg = tiny_salad_model.aggregator
    agg.cfg = dataclasses.replace(agg.cfg, sinkhorn_iters=4)
    got = _descriptor(tiny_salad_model, golden_inputs[case])
    assert (got - golden_outputs[case]["descriptor"]).abs().max() > DESCRIPTOR_ATOL


@pytest.mark.parametrize("antialias", [True, False])
def test_size_based_resampling_differs_from_dinov2(
    tiny_salad_model: VPRModel, golden_outputs: dict, antialias: bool
) -> None:
    """timm's size-based resize is not DINOv2's scale-factor resize (x224: 37x37 -> 16x16)."""
    pos = tiny_salad_model.backbone.model.pos_embed.detach()
    timm_pos = timm.layers.resample_abs_pos_embed(
        pos, new_size=(16, 16), num_prefix_tokens=1, interpolation="bicubic", antialias=antialias
    )
    ref = golden_outputs["x224"]["pos_embed_interpolated"]
    assert timm_pos.shape == ref.shape
    assert (timm_pos - ref).abs().max() > 1e-3


def _official_interpolate_pos_encoding(pos_embed: torch.Tensor, img_hw: tuple[int, int]) -> torch.Tensor:
    """Port of DINOv2's ``interpolate_pos_encoding`` (offset 0.1, no antialias), keeping its
    names: ``prepare_tokens_with_masks`` unpacks ``B, nc, w, h = x.shape``, so its ``w`` is the
    image height and its ``h`` the width."""
    w, h = img_hw
    n = pos_embed.shape[1] - 1
    big_m = int(math.sqrt(n))
    dim = pos_embed.shape[-1]
    w0, h0 = w // 14, h // 14
    sx, sy = float(w0 + 0.1) / big_m, float(h0 + 0.1) / big_m
    patch = torch.nn.functional.interpolate(
        pos_embed[:, 1:].float().reshape(1, big_m, big_m, dim).permute(0, 3, 1, 2),
        scale_factor=(sx, sy),
        mode="bicubic",
        antialias=False,
    )
    assert (w0, h0) == patch.shape[-2:]
    patch = patch.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([pos_embed[:, :1], patch], dim=1)


@pytest.mark.parametrize("img_hw", [(224, 224), (224, 308), (308, 224), (518, 700), (126, 1008)])
def test_pos_embed_resampling_matches_official_formula(
    tiny_salad_model: VPRModel, golden_inputs: dict, golden_outputs: dict, img_hw: tuple[int, int]
) -> None:
    """Non-square grids (not in the golden files) against a port of the official formula."""
    pos = tiny_salad_model.backbone.model.pos_embed.detach()
    want = _official_interpolate_pos_encoding(pos, img_hw)
    got = resample_dinov2_pos_embed(pos, (img_hw[0] // 14, img_hw[1] // 14))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    if img_hw == (224, 224):  # the port itself reproduces the golden table
        torch.testing.assert_close(want, golden_outputs["x224"]["pos_embed_interpolated"])


def test_pos_embed_is_unchanged_at_native_grid(tiny_salad_model: VPRModel) -> None:
    pos = tiny_salad_model.backbone.model.pos_embed.detach()
    assert resample_dinov2_pos_embed(pos, (37, 37)) is pos


# ---------------------------------------------------------------------------------------------
# Attention paths


def test_fused_attention_is_the_default(tiny_salad_model: VPRModel, golden_inputs: dict,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The default golden test runs timm's SDPA path: count the calls."""
    blocks = tiny_salad_model.backbone.model.blocks
    assert all(blk.attn.fused_attn for blk in blocks)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    _descriptor(tiny_salad_model, golden_inputs["x224"])
    assert len(calls) == len(blocks)


@pytest.mark.parametrize("case", CASES)
def test_explicit_attention_matches_golden(
    tiny_salad_model: VPRModel, golden_inputs: dict, golden_outputs: dict, case: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With fused attention off the explicit softmax(QK^T)V path gives the same descriptor."""
    for blk in tiny_salad_model.backbone.model.blocks:
        blk.attn.fused_attn = False

    def no_sdpa(*args, **kwargs):
        raise AssertionError("SDPA must not be used when fused_attn is False")

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", no_sdpa)
    got = _descriptor(tiny_salad_model, golden_inputs[case])
    torch.testing.assert_close(got, golden_outputs[case]["descriptor"], rtol=0, atol=DESCRIPTOR_ATOL)
