"""Full-size architectures against the key/shape manifests of the released checkpoints.

Most models are built on the meta device (no weight memory, no init). Two tests use real
full-size ViT-B models: a save/load round trip of a random dino_salad state dict and the
A²GC forward shapes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from vpr_ros.models import (
    MODELS,
    A2GCConfig,
    ModelConfig,
    SaladConfig,
    VPRModel,
    create_model,
    dinov2_config,
    infer_config,
    load_model,
)

SALAD_MANIFESTS = {
    "dino_salad": "manifest_dino_salad.json",
    "dino_salad_512_32": "manifest_dino_salad_512_32.json",
    "dino_salad_2048_64": "manifest_dino_salad_2048_64.json",
}
WIDTH_TO_BACKBONE = {"384": "dinov2_vits14", "1024": "dinov2_vitl14", "1536": "dinov2_vitg14"}
Shapes = dict[str, tuple[int, ...]]


def _read_json(path: Path) -> dict[str, Any]:
    with path.open() as f:
        return json.load(f)


@pytest.fixture(scope="module")
def salad_manifests(salad_golden_dir: Path) -> dict[str, dict[str, Any]]:
    return {name: _read_json(salad_golden_dir / f) for name, f in SALAD_MANIFESTS.items()}


@pytest.fixture(scope="module")
def a2gc_manifest(a2gc_golden_dir: Path) -> dict[str, Any]:
    return _read_json(a2gc_golden_dir / "manifest_vitb14_full.json")


def meta_model(cfg: ModelConfig) -> VPRModel:
    """Build a model without allocating or initialising weights."""
    with torch.device("meta"):
        return VPRModel(cfg, init_weights=False)


def shapes_of(sd: dict[str, torch.Tensor]) -> Shapes:
    return {k: tuple(v.shape) for k, v in sd.items()}


def manifest_shapes(manifest: dict[str, Any]) -> Shapes:
    """Ordered ``{key: shape}`` of a SALAD manifest (its ``keys`` list)."""
    return {e["key"]: tuple(e["shape"]) for e in manifest["keys"]}


def alt_split_shapes(manifest: dict[str, Any]) -> Shapes:
    """Key shapes of the 2048_64 alternative candidate (m=64, l=32)."""
    shapes = manifest_shapes(manifest)
    for e in manifest["alt_candidate"]["differing_keys"]:
        assert e["key"] in shapes
        shapes[e["key"]] = tuple(e["shape"])
    return shapes


def alt_split_config() -> ModelConfig:
    cfg = MODELS["dino_salad_2048_64"].config
    return dataclasses.replace(cfg, aggregator=dataclasses.replace(cfg.aggregator, num_clusters=64, cluster_dim=32))


def meta_state_dict(shapes: Shapes) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


# ---------------------------------------------------------------------------------------------
# SALAD variants


def test_meta_construction_allocates_nothing() -> None:
    model = meta_model(MODELS["dino_salad"].config)
    tensors = list(model.parameters()) + list(model.buffers())
    assert tensors and all(t.is_meta for t in tensors)


@pytest.mark.parametrize("name", list(SALAD_MANIFESTS))
def test_salad_state_dict_matches_manifest(salad_manifests: dict, name: str) -> None:
    manifest = salad_manifests[name]
    sd = meta_model(MODELS[name].config).state_dict()
    assert list(sd) == [e["key"] for e in manifest["keys"]]
    assert shapes_of(sd) == manifest_shapes(manifest)
    assert len(sd) == manifest["num_tensors"]
    assert {e["dtype"] for e in manifest["keys"]} == {"float32"}
    assert all(v.dtype == torch.float32 for v in sd.values())


@pytest.mark.parametrize("name", list(SALAD_MANIFESTS))
def test_salad_sizes_match_manifest(salad_manifests: dict, name: str) -> None:
    manifest = salad_manifests[name]
    model = meta_model(MODELS[name].config)
    assert model.descriptor_dim == MODELS[name].descriptor_dim == manifest["descriptor_dim"]
    assert sum(p.numel() for p in model.parameters()) == manifest["num_elements"]
    assert sum(v.numel() for v in model.state_dict().values()) == manifest["num_elements"]
    agg = model.cfg.aggregator
    want = manifest["agg_config"]
    assert (agg.num_channels, agg.num_clusters, agg.cluster_dim, agg.token_dim) == (
        want["num_channels"], want["num_clusters"], want["cluster_dim"], want["token_dim"]
    )
    assert model.cfg.backbone.num_trainable_blocks == manifest["backbone_config"]["num_trainable_blocks"]
    assert model.cfg.backbone.norm_layer == manifest["backbone_config"]["norm_layer"]


@pytest.mark.parametrize("name", list(SALAD_MANIFESTS))
def test_trainable_keys_match_manifest(salad_manifests: dict, name: str) -> None:
    """Keys marked ``updated_in_training``: the last 4 blocks, the final norm and the aggregator."""
    cfg = MODELS[name].config
    first = cfg.backbone.depth - cfg.backbone.num_trainable_blocks
    trainable_prefixes = tuple(f"backbone.model.blocks.{i}." for i in range(first, cfg.backbone.depth))
    trainable_prefixes += ("backbone.model.norm.", "aggregator.")
    for e in salad_manifests[name]["keys"]:
        assert e["updated_in_training"] == e["key"].startswith(trainable_prefixes), e["key"]


def test_2048_64_alternative_split_matches_manifest(salad_manifests: dict) -> None:
    manifest = salad_manifests["dino_salad_2048_64"]
    alt = manifest["alt_candidate"]["agg_config"]
    assert (alt["num_clusters"], alt["cluster_dim"], alt["token_dim"]) == (64, 32, 64)
    model = meta_model(alt_split_config())
    sd = model.state_dict()
    want = alt_split_shapes(manifest)
    assert list(sd) == list(want)
    assert shapes_of(sd) == want
    assert model.descriptor_dim == manifest["descriptor_dim"] == 2112
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(torch.Size(s).numel() for s in want.values())
    # Candidate B has 32*512 + 32 more score parameters and as many fewer cluster-feature ones.
    assert n_params == manifest["num_elements"]


@pytest.mark.parametrize("alt", [False, True], ids=["m32_l64", "m64_l32"])
def test_infer_config_reads_the_2048_64_split(salad_manifests: dict, alt: bool) -> None:
    manifest = salad_manifests["dino_salad_2048_64"]
    shapes = alt_split_shapes(manifest) if alt else manifest_shapes(manifest)
    cfg = infer_config(meta_state_dict(shapes))
    m, l_dim = (64, 32) if alt else (32, 64)
    assert isinstance(cfg.aggregator, SaladConfig)
    assert (cfg.aggregator.num_clusters, cfg.aggregator.cluster_dim, cfg.aggregator.token_dim) == (m, l_dim, 64)
    assert cfg.descriptor_dim == 2112
    want = alt_split_config() if alt else MODELS["dino_salad_2048_64"].config
    assert cfg == want


def test_alt_split_small_model_loads_and_runs(tiny_salad_state_dict: dict[str, torch.Tensor]) -> None:
    """A small (width-64 backbone) model with the m=64, l=32, g=64 head loads and gives 2112-d."""
    tiny_backbone = infer_config(tiny_salad_state_dict).backbone
    cfg = ModelConfig(tiny_backbone, SaladConfig(num_channels=64, num_clusters=64, cluster_dim=32, token_dim=64))
    torch.manual_seed(0)
    sd = VPRModel(cfg).state_dict()
    model = load_model(sd)
    agg = model.cfg.aggregator
    assert (agg.num_clusters, agg.cluster_dim, agg.token_dim) == (64, 32, 64)
    with torch.no_grad():
        desc = model(torch.randn(1, 3, 126, 126))  # 81 patches > 64 clusters
    assert desc.shape == (1, 2112)
    torch.testing.assert_close(desc.norm(dim=-1), torch.ones(1), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# A²GC


def test_a2gc_state_dict_matches_manifest(a2gc_manifest: dict) -> None:
    model = meta_model(MODELS["a2gc_vitb14"].config)
    sd = model.state_dict()
    want = {k: tuple(v) for k, v in a2gc_manifest["keys"].items()}
    assert list(sd) == list(want)
    assert shapes_of(sd) == want
    assert len(sd) == a2gc_manifest["num_keys"]
    assert model.descriptor_dim == a2gc_manifest["descriptor_dim"]
    counts = a2gc_manifest["num_parameters"]
    assert sum(p.numel() for p in model.backbone.parameters()) == counts["backbone"]
    assert sum(p.numel() for p in model.aggregator.parameters()) == counts["aggregator"]


def test_a2gc_config_defaults_match_reference_constructor(a2gc_manifest: dict) -> None:
    """Our defaults equal the reference constructor's, except the width (ours: ViT-B's 768)."""
    ref = a2gc_manifest["aggregator_constructor_defaults"]
    cfg = A2GCConfig()
    assert ref["assignment_mode"] == "asymmetric_ot"
    assert (cfg.num_clusters, cfg.cluster_dim, cfg.token_dim, cfg.dropout) == (
        ref["num_clusters"], ref["cluster_dim"], ref["token_dim"], ref["dropout"]
    )
    assert (cfg.ot_iters, cfg.ot_reg, cfg.ot_temperature) == (
        ref["contrastive_ot_iters"], ref["contrastive_ot_reg"], ref["contrastive_ot_temp"]
    )
    assert (cfg.use_geometric_ot, cfg.geo_dim, cfg.geo_lambda) == (
        ref["use_geometric_ot"], ref["geo_dim"], ref["geo_lambda"]
    )
    assert MODELS["a2gc_vitb14"].config.aggregator == dataclasses.replace(cfg, num_channels=768)


@pytest.mark.parametrize("width", list(WIDTH_TO_BACKBONE))
def test_a2gc_aggregator_keys_for_other_widths(a2gc_manifest: dict, width: str) -> None:
    backbone = dinov2_config(WIDTH_TO_BACKBONE[width])
    assert backbone.embed_dim == int(width)
    model = meta_model(ModelConfig(backbone, A2GCConfig(num_channels=int(width))))
    agg = {k: v for k, v in shapes_of(model.state_dict()).items() if k.startswith("aggregator.")}
    want = {k: tuple(v) for k, v in a2gc_manifest["aggregator_keys_for_other_backbone_widths"][width].items()}
    assert list(agg) == list(want)
    assert agg == want


# ---------------------------------------------------------------------------------------------
# Other DINOv2 sizes


@pytest.mark.parametrize(
    ("name", "width", "depth", "heads"),
    [("dinov2_vits14", 384, 12, 6), ("dinov2_vitb14", 768, 12, 12),
     ("dinov2_vitl14", 1024, 24, 16), ("dinov2_vitg14", 1536, 40, 24)],
)
def test_backbone_sizes(name: str, width: int, depth: int, heads: int) -> None:
    cfg = ModelConfig(dinov2_config(name), SaladConfig(num_channels=width))
    vit = meta_model(cfg).backbone.model
    assert len(vit.blocks) == depth
    assert all(blk.attn.num_heads == heads for blk in vit.blocks)
    assert tuple(vit.pos_embed.shape) == (1, 1 + 37 * 37, width)
    assert tuple(vit.mask_token.shape) == (1, width)


def test_vitg_uses_dinov2_swiglu_keys() -> None:
    cfg = ModelConfig(dinov2_config("dinov2_vitg14"), SaladConfig(num_channels=1536))
    model = meta_model(cfg)
    shapes = shapes_of(model.state_dict())
    assert len(model.backbone.model.blocks) == 40
    assert model.backbone.model.blocks[0].attn.num_heads == 24
    for i in range(40):
        p = f"backbone.model.blocks.{i}.mlp."
        assert shapes[p + "w12.weight"] == (8192, 1536)
        assert shapes[p + "w12.bias"] == (8192,)
        assert shapes[p + "w3.weight"] == (1536, 4096)
        assert shapes[p + "w3.bias"] == (1536,)
    assert not any(".mlp.fc1." in k or ".mlp.fc2." in k for k in shapes)
    inferred = infer_config(meta_state_dict(shapes))
    assert inferred.backbone == cfg.backbone
    assert inferred.backbone.ffn == "swiglu"


# ---------------------------------------------------------------------------------------------
# Full-size weights: save/load round trip and forward shapes


@pytest.fixture(scope="module")
def dino_salad_random() -> VPRModel:
    torch.manual_seed(0)
    return create_model("dino_salad")


@pytest.fixture(scope="module")
def dino_salad_file(dino_salad_random: VPRModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("full") / "dino_salad_random.ckpt"
    torch.save(dino_salad_random.state_dict(), path)
    return path


def test_full_size_flat_file_loads_strictly(dino_salad_random: VPRModel, dino_salad_file: Path) -> None:
    """Weights are compared exactly, so one forward pass suffices for the output contract."""
    model = load_model(dino_salad_file)
    assert model.cfg == MODELS["dino_salad"].config
    assert not model.training
    assert model.checkpoint_sha256 == hashlib.sha256(dino_salad_file.read_bytes()).hexdigest()
    got, want = model.state_dict(), dino_salad_random.state_dict()
    assert list(got) == list(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert all(not t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    torch.manual_seed(1)
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        desc = model(x)
    assert desc.shape == (2, 8448) and desc.dtype == torch.float32
    assert torch.isfinite(desc).all()
    torch.testing.assert_close(desc.norm(dim=-1), torch.ones(2), rtol=0, atol=1e-5)


def test_full_size_lightning_checkpoint_loads(dino_salad_random: VPRModel, tmp_path: Path) -> None:
    sd = dino_salad_random.state_dict()
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 4000, "pytorch-lightning_version": "2.1.2"}, path)
    model = load_model(path)
    assert model.cfg == MODELS["dino_salad"].config
    got = model.state_dict()
    assert list(got) == list(sd)
    assert all(torch.equal(got[k], sd[k]) for k in sd)


@pytest.fixture(scope="module")
def a2gc_random() -> VPRModel:
    torch.manual_seed(0)
    return create_model("a2gc_vitb14")


@pytest.mark.parametrize("size", ["224x224", "322x322", "224x308"])
def test_a2gc_forward_shapes(a2gc_manifest: dict, a2gc_random: VPRModel, size: str) -> None:
    want = a2gc_manifest["forward_shapes"][size]
    h, w = (int(s) for s in size.split("x"))
    torch.manual_seed(2)
    x = torch.randn(1, 3, h, w)
    with torch.inference_mode():
        feature_map, token = a2gc_random.forward_features(x)
        desc = a2gc_random.aggregator((feature_map, token))
    assert list(feature_map.shape) == want["feature_map"]
    assert list(token.shape) == want["token"]
    assert list(desc.shape) == want["descriptor"]
    assert torch.isfinite(desc).all()
    torch.testing.assert_close(desc.norm(dim=-1), torch.ones(1), rtol=0, atol=1e-5)
