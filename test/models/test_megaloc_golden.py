"""MegaLoc against golden outputs of the official code, and its released ``model.safetensors`` layout.

The golden model (test/data/golden/megaloc) has random weights in the exact released layout (ViT width
64, 2 blocks, 4 heads of 16; m=8, l=16, g=32, mlp_dim=32; 160 -> 96); its ``config.json`` holds
the official constructor arguments. Outputs were produced in float32 on CPU from real photos
(the bundled scenes), including one input that MegaLoc itself resizes (300x400 -> 294x406).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from family_cli import build_query_describe
from safetensors.torch import save_file

from vpr_ros.cli import main
from vpr_ros.errors import CheckpointError
from vpr_ros.models import MODELS, MegaLocConfig, VPRModel, get_spec, load_model
from vpr_ros.models.loading import canonical_state_dict, model_family
from vpr_ros.models.megaloc import patch_multiple_size, resize_to_patch_multiple
from vpr_ros.preprocess import preprocess_exact

DATA = Path(__file__).parents[1] / "data" / "golden" / "megaloc"
SCENES = Path(__file__).parents[2] / "vpr_ros" / "synth" / "data" / "scenes"
WEIGHTS = DATA / "model.safetensors"
CASES = ["x224", "x322", "x300x400_resized"]
ATOL = 1e-5  # the acceptance bound; measured errors are below 1e-7 (descriptors) and 4e-6 (tokens)


@pytest.fixture(scope="module")
def config() -> dict:
    return json.loads((DATA / "config.json").read_text())


@pytest.fixture(scope="module")
def golden() -> tuple[dict, dict]:
    inputs = torch.load(DATA / "inputs.pt", weights_only=True)
    return inputs, torch.load(DATA / "outputs.pt", weights_only=True)


@pytest.fixture(scope="module")
def model(config: dict) -> VPRModel:
    return load_model(WEIGHTS, config=config)


# ---------------------------------------------------------------------------------------------
# Parity with the official forward pass


@pytest.mark.parametrize("case", CASES)
def test_descriptor_matches_golden(model: VPRModel, golden: tuple[dict, dict], case: str) -> None:
    x, want = golden[0]["inputs"][case], golden[1][case]["descriptor"]
    with torch.no_grad():
        got = model(x)
    assert got.shape == want.shape == (x.shape[0], 96) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(x.shape[0]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_intermediates_match_golden(model: VPRModel, golden: tuple[dict, dict], case: str) -> None:
    x, ref = golden[0]["inputs"][case], golden[1][case]
    resized = resize_to_patch_multiple(x)
    torch.testing.assert_close(resized, ref["resized_input"], rtol=0, atol=ATOL)
    with torch.no_grad():
        patch_tokens, cls_token = model.forward_features(x)
        salad = model.aggregator.agg((ref["patch_tokens"], ref["cls_token"]))  # aggregator in isolation
        projected = model.aggregator((ref["patch_tokens"], ref["cls_token"]))
    torch.testing.assert_close(patch_tokens, ref["patch_tokens"], rtol=0, atol=ATOL)
    torch.testing.assert_close(cls_token, ref["cls_token"], rtol=0, atol=ATOL)
    torch.testing.assert_close(salad, ref["salad_descriptor"], rtol=0, atol=ATOL)
    torch.testing.assert_close(projected, ref["descriptor"], rtol=0, atol=ATOL)


def test_resize_rule_rounds_each_side_to_a_multiple_of_14() -> None:
    assert patch_multiple_size(300, 400) == (294, 406)  # the golden case
    assert patch_multiple_size(322, 322) == (322, 322)
    assert patch_multiple_size(35, 21) == (28, 28)  # 2.5 and 1.5 patches: ties go to the even count
    x = torch.zeros(1, 3, 224, 224)
    assert resize_to_patch_multiple(x) is x  # multiples of 14 pass untouched
    with pytest.raises(ValueError, match="too small"):
        patch_multiple_size(7, 300)  # 7 / 14 = 0.5 rounds to 0


def test_batch_of_one_equals_its_row_in_a_batch(model: VPRModel, golden: tuple[dict, dict]) -> None:
    """The reference solver squeezes its logsumexp results (shapes change at batch 1); the values
    must not: each image alone gives its row of the batch."""
    x = golden[0]["inputs"]["x224"]
    with torch.no_grad():
        batch = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(alone, batch, rtol=0, atol=1e-6)


def test_golden_inputs_are_the_bundled_photos_preprocessed(golden: tuple[dict, dict]) -> None:
    """The exact preprocessing path turns the bundled photos into the official inputs bit for bit."""
    inputs, files = golden[0]["inputs"], golden[0]["files"]
    for case in ("x224", "x322"):
        got = preprocess_exact([SCENES / f for f in files[case]["files"]], tuple(files[case]["size_hw"]))
        torch.testing.assert_close(got, inputs[case], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# The released file layout


def test_family_sizes_and_identity_come_from_the_file(model: VPRModel) -> None:
    cfg = model.cfg
    assert cfg.arch == "megaloc" and isinstance(cfg.aggregator, MegaLocConfig)
    assert cfg.aggregator == MegaLocConfig(num_channels=64, num_clusters=8, cluster_dim=16, token_dim=32,
                                           mlp_dim=32, feat_dim=96)
    assert (cfg.backbone.embed_dim, cfg.backbone.depth, cfg.backbone.num_heads) == (64, 2, 4)
    assert not cfg.backbone.mask_token and cfg.backbone.norm_layer
    assert cfg.describe() == "megaloc/vit64x2 m8 l16 g32 h32 (96-d)"
    assert not model.training and model.checkpoint_sha256 and len(model.checkpoint_sha256) == 64


def test_every_released_key_is_used_under_the_documented_mapping(model: VPRModel) -> None:
    from safetensors import safe_open

    with safe_open(WEIGHTS, "pt") as f:
        keys = list(f.keys())
    assert "backbone.cls_token" in keys and not any(k.startswith("backbone.model.") for k in keys)
    mapped = canonical_state_dict(dict.fromkeys(keys, torch.zeros(0)))
    assert model_family(mapped) == "megaloc"
    assert set(mapped) == set(model.state_dict())  # strict: nothing missing, nothing left over
    aggregator = {k for k in keys if k.startswith("aggregator.")}
    assert {k for k in mapped if not k.startswith("backbone.model.")} == aggregator  # kept as they are


def test_registry_architecture_matches_the_release_manifest() -> None:
    manifest = json.loads((DATA / "manifest_megaloc_release.json").read_text())
    want = canonical_state_dict({e["key"]: torch.empty(e["shape"], device="meta") for e in manifest["keys"]})
    spec = get_spec("megaloc")
    with torch.device("meta"):
        got = VPRModel(spec.config, init_weights=False).state_dict()
    assert {k: tuple(v.shape) for k, v in got.items()} == {k: tuple(v.shape) for k, v in want.items()}
    assert spec.descriptor_dim == manifest["descriptor_dim"] == 8448 and MODELS["megaloc"].image_size == (322, 322)


def _random_release(manifest: dict, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {e["key"]: torch.randn(e["shape"], generator=gen) * 0.02 for e in manifest["keys"]}


def test_full_size_random_release_loads_strictly_and_gives_unit_8448_vectors(tmp_path: Path) -> None:
    manifest = json.loads((DATA / "manifest_megaloc_release.json").read_text())
    sd = _random_release(manifest, 0)
    path = tmp_path / "model.safetensors"
    save_file(sd, path)
    del sd
    model = load_model(path)  # no config: everything from the keys and shapes
    assert model.cfg == get_spec("megaloc").config
    x = torch.randn(1, 3, 130, 136, generator=torch.Generator().manual_seed(1))  # resized to 126x140
    with torch.inference_mode():
        desc = model(x)
    assert desc.shape == (1, 8448) and torch.isfinite(desc).all()
    torch.testing.assert_close(desc.norm(dim=-1), torch.ones(1), rtol=0, atol=1e-5)


def test_damaged_safetensors_file_is_refused(tmp_path: Path) -> None:
    data = WEIGHTS.read_bytes()
    half = tmp_path / "half.safetensors"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_model(half)
    assert str(half) in str(info.value)
    renamed = tmp_path / "model.bin"  # recognised by its header, not only by its name
    renamed.write_bytes(data)
    assert load_model(renamed, config=json.loads((DATA / "config.json").read_text())).cfg.arch == "megaloc"


# ---------------------------------------------------------------------------------------------
# Downstream: the command line and place maps take MegaLoc unchanged


def test_describe_build_map_query_and_assignment_through_the_cli(model: VPRModel, tmp_path: Path, capsys) -> None:
    model_args, query, identity = build_query_describe(model, WEIGHTS, DATA / "config.json", tmp_path, capsys, 2)
    assert identity.arch == "megaloc/vit64x2 m8 l16 g32 h32 (96-d)" and identity.descriptor_dim == 96
    assert main(["visualize", "assignment", str(query), *model_args, "--out", str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "a.png").stat().st_size > 0


def test_onnx_export_matches_the_model(model: VPRModel, tmp_path: Path) -> None:
    from vpr_ros.models.onnx_export import check_images, check_parity, export_onnx

    info = export_onnx(model, (112, 112), tmp_path / "model.onnx")
    assert info.identity.arch == model.cfg.describe() and info.family == model.cfg.arch
    parity = check_parity(model, tmp_path / "model.onnx", check_images((112, 112)))
    assert parity.max_abs <= 1e-5, parity.describe()


def test_torch_hub_entry_loads_the_release(config: dict, golden: tuple[dict, dict]) -> None:
    hub = torch.hub.load(str(Path(__file__).parents[2]), "megaloc", source="local", weights=str(WEIGHTS), config=config)
    with torch.no_grad():
        torch.testing.assert_close(hub(golden[0]["inputs"]["x322"]), golden[1]["x322"]["descriptor"], rtol=0, atol=ATOL)
