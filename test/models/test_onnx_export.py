"""ONNX export of the golden tiny models, run through onnxruntime on the CPU.

Parity on the golden inputs (fp32 max abs <= 1e-4 against PyTorch and the official outputs; fp16
cosine >= 0.9995), a graph without dynamic control flow, the model identity carried in the file
(maps accept the export exactly where they accept the PyTorch model), and the extractor, the CLI
and fixed batch sizes on it.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import vpr_ros.models.onnx_export as onnx_export
from vpr_ros import cli
from vpr_ros.errors import CheckpointError, InputError, MissingFileError, ModelMismatchError
from vpr_ros.extractor import DescriptorExtractor, load_extractor
from vpr_ros.maps.place_map import PlaceMap
from vpr_ros.models import VPRModel, load_model
from vpr_ros.models.onnx_export import DYNAMIC_OPS, export_onnx
from vpr_ros.models.onnx_model import OnnxModel, choose_providers
from vpr_ros.preprocess import load_image
from vpr_ros.types import ModelIdentity

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "test" / "data" / "golden"
SALAD_CKPT = GOLDEN / "salad" / "tiny_salad_state_dict.pt"
SALAD_CONFIG = GOLDEN / "salad" / "config.json"
DEMO_CKPT = REPO / "vpr_ros" / "synth" / "data" / "models" / "demo_salad.pt"
PHOTOS = sorted((REPO / "vpr_ros" / "synth" / "data" / "scenes").glob("*.jpg"))[:5]


@pytest.fixture(scope="module")
def salad() -> VPRModel:
    return load_model(SALAD_CKPT, config=json.loads(SALAD_CONFIG.read_text()))


@pytest.fixture(scope="module")
def a2gc(tiny_a2gc_path: Path, tiny_a2gc_config: dict) -> VPRModel:
    return load_model(tiny_a2gc_path, config=tiny_a2gc_config)


@pytest.fixture(scope="module")
def golden_salad() -> tuple[torch.Tensor, torch.Tensor]:
    """Golden 322x322 inputs and the official code's descriptors for them."""
    inputs = torch.load(GOLDEN / "salad" / "inputs.pt", weights_only=True)["inputs"]["x322"]
    return inputs, torch.load(GOLDEN / "salad" / "outputs.pt", weights_only=True)["x322"]["descriptor"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, salad: VPRModel, a2gc: VPRModel) -> dict[str, Path]:
    """SALAD fp32 at 322x322 (dynamic batch); A²GC fp32 at 224x224 with its weights in a .data file
    beside the model (the layout of models over 2 GB, forced here by a low limit)."""
    root = tmp_path_factory.mktemp("onnx")
    paths = {"salad": root / "salad.onnx", "a2gc": root / "a2gc.onnx"}
    export_onnx(salad, (322, 322), paths["salad"])
    limit = onnx_export.PROTOBUF_LIMIT
    onnx_export.PROTOBUF_LIMIT = 1000
    try:
        export_onnx(a2gc, (224, 224), paths["a2gc"])
    finally:
        onnx_export.PROTOBUF_LIMIT = limit
    return paths


def test_fp32_salad_matches_pytorch_and_the_official_outputs(exports: dict, salad: VPRModel,
                                                             golden_salad: tuple) -> None:
    inputs, official = golden_salad
    got, tokens = OnnxModel(exports["salad"], "cpu").run(inputs.numpy(), patch_tokens=True)
    with torch.no_grad():
        want = salad(inputs).numpy()
        fmap, _ = salad.backbone(inputs)
    assert got.shape == (2, 160) and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-4
    assert np.abs(got - official.numpy()).max() <= 1e-4
    np.testing.assert_allclose(tokens, fmap.numpy(), atol=1e-4, rtol=1e-4)


def test_fp32_a2gc_with_external_weights_matches_the_official_outputs(exports: dict, a2gc_golden_dir: Path) -> None:
    assert exports["a2gc"].with_name("a2gc.onnx.data").is_file()
    assert sorted(p.name for p in exports["a2gc"].parent.glob("a2gc*")) == ["a2gc.onnx", "a2gc.onnx.data"]
    case = torch.load(a2gc_golden_dir / "case_img224.pt", weights_only=True)
    got, _ = OnnxModel(exports["a2gc"], "cpu").run(case["images"].numpy())
    assert np.abs(got - case["descriptor"].numpy()).max() <= 1e-4


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``vpr-ros export-onnx`` of the tiny SALAD model: fp16, 224x224, a fixed batch of 3; and what it printed."""
    out = tmp_path_factory.mktemp("cli") / "fixed.onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(["export-onnx", str(SALAD_CKPT), "--config", str(SALAD_CONFIG), "--image-size", "224", "224",
                         "--fp16", "--batch", "3", "--out", str(out)])
    assert code == 0
    return out, printed.getvalue()


def test_fp16_export_keeps_the_direction(cli_export: tuple, salad: VPRModel) -> None:
    inputs = torch.load(GOLDEN / "salad" / "inputs.pt", weights_only=True)["inputs"]["x224"]
    model = OnnxModel(cli_export[0], "cpu")
    assert model.precision == "fp16"
    got, _ = model.run(inputs.numpy())
    with torch.no_grad():
        want = salad(inputs).numpy()
    cosine = np.sum(got * want, axis=1)
    assert cosine.min() >= 0.9995
    assert np.abs(got - want).max() > 1e-6  # really ran the backbone in half precision


def test_graph_is_static_and_the_batch_dynamic(exports: dict, golden_salad: tuple) -> None:
    for name in ("salad", "a2gc"):
        graph = onnx.load(exports[name], load_external_data=False).graph
        assert not {n.op_type for n in graph.node} & DYNAMIC_OPS
    inputs, _ = golden_salad
    model = OnnxModel(exports["salad"], "cpu")
    both, _ = model.run(inputs.numpy())
    one, _ = model.run(inputs[1:].numpy())
    np.testing.assert_allclose(one, both[1:], atol=1e-6, rtol=0)


def test_identity_travels_in_the_file(exports: dict, salad: VPRModel, a2gc: VPRModel) -> None:
    model = OnnxModel(exports["salad"], "cpu")
    assert model.identity == ModelIdentity.of(salad, (322, 322))
    assert model.identity.checkpoint_sha256 == salad.checkpoint_sha256 is not None
    assert (model.info.family, model.info.batch, model.providers) == ("salad", None, ["CPUExecutionProvider"])
    assert OnnxModel(exports["a2gc"], "cpu").identity == ModelIdentity.of(a2gc, (224, 224))


def test_extractor_runs_the_export(exports: dict, salad: VPRModel) -> None:
    ext = load_extractor(exports["salad"], device="cpu", batch_size=2)
    ref = DescriptorExtractor(salad, (322, 322), "cpu", batch_size=2)
    assert ext.onnx and ext.image_size == (322, 322) and ext.identity == ref.identity
    assert ext.backend == "onnxruntime CPU"
    images = [load_image(p) for p in PHOTOS[:3]]
    got, want = ext.extract(images, patch_tokens=True), ref.extract(images, patch_tokens=True)
    np.testing.assert_allclose(got.descriptors, want.descriptors, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got.patch_tokens, want.patch_tokens, atol=1e-4, rtol=1e-4)
    latency = load_extractor(exports["salad"], device="cpu", mode="latency")
    np.testing.assert_allclose(latency.describe(images), want.descriptors, atol=0.02, rtol=0)  # fast resize
    with pytest.raises(InputError, match="exported for 322x322"):
        load_extractor(exports["salad"], image_size=(224, 224), device="cpu")


def _place_map(tmp: Path, identity: ModelIdentity, descriptors: np.ndarray) -> Path:
    pm = PlaceMap.create(identity.descriptor_dim, "flat", identity)
    pm.add(descriptors, stamps=[float(i) for i in range(len(descriptors))])
    pm.save(tmp)
    return tmp


def test_maps_accept_the_export_exactly_where_they_accept_its_checkpoint(exports: dict, salad: VPRModel,
                                                                       tmp_path: Path) -> None:
    onnx_ext = load_extractor(exports["salad"], device="cpu")
    torch_ext = DescriptorExtractor(salad, (322, 322), "cpu")
    images = [load_image(p) for p in PHOTOS[:3]]
    by_torch = _place_map(tmp_path / "torch", torch_ext.identity, torch_ext.describe(images))
    by_onnx = _place_map(tmp_path / "onnx", onnx_ext.identity, onnx_ext.describe(images))
    scores, ids = PlaceMap.load(by_torch, onnx_ext.identity).search(onnx_ext.describe(images), 1)
    assert ids[:, 0].tolist() == [0, 1, 2] and scores.min() > 0.9999
    PlaceMap.load(by_onnx, torch_ext.identity)
    other_size = DescriptorExtractor(salad, (224, 224), "cpu").identity
    other_weights = load_extractor(DEMO_CKPT, device="cpu").identity
    for other in (other_size, other_weights):
        with pytest.raises(ModelMismatchError):
            PlaceMap.load(by_onnx, other)
        with pytest.raises(ModelMismatchError):
            PlaceMap.load(_place_map(tmp_path / f"other{other.image_size[0]}", other,
                                     np.eye(1, other.descriptor_dim, dtype=np.float32)), onnx_ext.identity)


def test_cli_exports_a_fixed_batch_and_runs_it(cli_export: tuple, tmp_path: Path, salad: VPRModel) -> None:
    out, printed = cli_export
    assert "fp16, batch 3" in printed and "passes cosine >= 0.9995" in printed
    assert OnnxModel(out, "cpu").info.batch == 3
    descs = tmp_path / "d.npy"
    assert cli.main(["describe", *map(str, PHOTOS), "--checkpoint", str(out), "--device", "cpu",
                     "--out", str(descs)]) == 0
    want = DescriptorExtractor(salad, (224, 224), "cpu").describe([str(p) for p in PHOTOS])
    cosine = np.sum(np.load(descs) * want, axis=1)  # 5 images: 3, then 2 padded to 3
    assert cosine.shape == (5,) and cosine.min() >= 0.9995


def test_cli_keeps_no_file_that_fails_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an earlier export")
    monkeypatch.setattr(onnx_export, "FP32_MAX_ABS", 0.0)
    code = cli.main(["export-onnx", str(SALAD_CKPT), "--config", str(SALAD_CONFIG), "--image-size", "224", "224",
                     "--out", str(out)])
    assert code == 2
    assert out.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    with pytest.raises(SystemExit):
        cli.main(["export-onnx", str(SALAD_CKPT), "--out", str(out), "--batch", "0"])


def test_files_that_are_not_exports_are_refused(tmp_path: Path, exports: dict,
                                                caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(MissingFileError):
        OnnxModel(tmp_path / "missing.onnx", "cpu")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a protobuf" * 10)
    with pytest.raises(CheckpointError, match="not a usable ONNX model"):
        OnnxModel(garbage, "cpu")
    foreign = tmp_path / "foreign.onnx"
    proto = onnx.load(exports["salad"])
    del proto.metadata_props[:]
    onnx.save(proto, foreign)
    with pytest.raises(CheckpointError, match="not written by vpr-ros export-onnx"):
        load_extractor(foreign, device="cpu")
    caplog.clear()
    assert cli.main(["describe", str(PHOTOS[0]), "--checkpoint", str(foreign), "--out", str(tmp_path / "d.npy")]) == 2
    assert [r.levelname for r in caplog.records if "not written by vpr-ros export-onnx" in r.getMessage()] == ["ERROR"]
    assert not (tmp_path / "d.npy").exists()


def test_execution_providers_follow_the_device() -> None:
    every = ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]
    assert choose_providers("auto", every) == ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                               "CPUExecutionProvider"]
    assert choose_providers("cuda:1", every[:2]) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("cpu", every) == ["CPUExecutionProvider"]
    assert choose_providers("auto", every[:1]) == ["CPUExecutionProvider"]
    with pytest.raises(InputError, match="onnxruntime-gpu"):
        choose_providers("cuda", every[:1])
    with pytest.raises(InputError, match="device must be"):
        choose_providers("mps", every)
