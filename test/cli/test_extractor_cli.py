"""Extractor, command line, torch.hub entries and the demo, on the bundled real photos."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vpr_ros.extractor import DescriptorExtractor, resolve_device
from vpr_ros.models import load_model
from vpr_ros.preprocess import load_image, preprocess_exact

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "test" / "data" / "golden"
SALAD_CKPT = GOLDEN / "salad" / "tiny_salad_state_dict.pt"
A2GC_CKPT = GOLDEN / "a2gc" / "state_dict.pt"
SCENES = REPO / "vpr_ros" / "synth" / "data" / "scenes"
PHOTOS = sorted(SCENES.glob("*.jpg"))[:6]


@pytest.fixture(scope="module")
def model():
    # The tiny golden ViT has 16-d heads, which shapes cannot reveal: its config.json says so.
    return load_model(SALAD_CKPT, config=json.loads((GOLDEN / "salad" / "config.json").read_text()))


def test_extractor_matches_model_and_is_batch_invariant(model) -> None:
    images = [load_image(p) for p in PHOTOS]
    ref = model(preprocess_exact(images, (224, 224))).detach().numpy()
    for batch_size in (1, 4, 16):
        ext = DescriptorExtractor(model, (224, 224), device="cpu", batch_size=batch_size)
        desc = ext.describe(images)
        assert desc.dtype == np.float32 and desc.shape == (len(images), 160)
        np.testing.assert_allclose(desc, ref, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1.0, atol=1e-5)


def test_extractor_golden_inputs_reproduce_golden_descriptors(model) -> None:
    inputs = torch.load(GOLDEN / "salad" / "inputs.pt", weights_only=True)["inputs"]["x322"]
    outputs = torch.load(GOLDEN / "salad" / "outputs.pt", weights_only=True)["x322"]["descriptor"]
    desc, fmap = DescriptorExtractor(model, (322, 322), device="cpu").forward(inputs, patch_tokens=True)
    torch.testing.assert_close(desc, outputs, atol=2e-6, rtol=0)
    assert fmap.shape == (2, 64, 23, 23)


def test_patch_tokens_and_reduced_precision(model) -> None:
    images = [load_image(p) for p in PHOTOS[:3]]
    exact = DescriptorExtractor(model, (322, 322), device="cpu").extract(images, patch_tokens=True)
    assert exact.patch_tokens.shape == (3, 23, 23, 64) and exact.patch_tokens.dtype == np.float32
    for precision in ("bf16", "fp16"):
        approx = DescriptorExtractor(model, (322, 322), device="cpu", precision=precision).describe(images)
        np.testing.assert_allclose(np.linalg.norm(approx, axis=1), 1.0, atol=1e-5)
        cos = np.sum(approx * exact.descriptors, axis=1)
        assert cos.min() > 0.99, (precision, cos)
        assert np.abs(approx - exact.descriptors).max() > 0  # really ran in reduced precision


def test_fast_resize_is_close_to_exact(model) -> None:
    images = [load_image(p) for p in PHOTOS[:3]]
    exact = DescriptorExtractor(model, (322, 322), device="cpu").describe(images)
    fast = DescriptorExtractor(model, (322, 322), device="cpu", resize="fast")
    assert np.sum(fast.describe(images) * exact, axis=1).min() > 0.999
    np.testing.assert_array_equal(fast.describe([str(p) for p in PHOTOS[:3]]), fast.describe(images))


def test_extractor_rejects_bad_settings(model) -> None:
    with pytest.raises(ValueError, match="multiple"):
        DescriptorExtractor(model, (320, 320))
    with pytest.raises(ValueError, match="more patches than clusters"):
        DescriptorExtractor(model, (28, 28))
    with pytest.raises(ValueError, match="precision"):
        DescriptorExtractor(model, precision="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vpr_ros.cli", *args], capture_output=True, text=True, cwd=REPO)


def test_cli_describe_writes_descriptors(tmp_path: Path, model) -> None:
    out = tmp_path / "descs.npy"
    res = _cli("describe", *map(str, PHOTOS[:3]), "--checkpoint", str(SALAD_CKPT), "--image-size", "224", "224",
               "--config", str(GOLDEN / "salad" / "config.json"), "--out", str(out))
    assert res.returncode == 0, res.stderr
    desc = np.load(out)
    ref = DescriptorExtractor(model, (224, 224), device="cpu").describe([str(p) for p in PHOTOS[:3]])
    np.testing.assert_allclose(desc, ref, atol=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image-size", "320", "320"], "multiple of the patch size"),
        (["--checkpoint", str(REPO / "README.md")], "not a PyTorch checkpoint"),
        (["--checkpoint", "missing.ckpt"], "not found"),
    ],
)
def test_cli_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    base = {"--checkpoint": str(SALAD_CKPT), "--image-size": None}
    cmd = ["describe", str(PHOTOS[0]), "--out", str(tmp_path / "d.npy")]
    if "--checkpoint" not in args:
        cmd += ["--checkpoint", base["--checkpoint"]]
    res = _cli(*cmd, *args)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "d.npy").exists()


def test_cli_unreadable_image_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(PHOTOS[0].read_bytes()[:2000])
    res = _cli("describe", str(PHOTOS[0]), str(bad), "--checkpoint", str(SALAD_CKPT), "--out", str(tmp_path / "d.npy"))
    assert res.returncode == 2 and "broken.jpg" in res.stderr
    assert not (tmp_path / "d.npy").exists()


def test_torch_hub_local_entries() -> None:
    salad = torch.hub.load(str(REPO), "dinov2_salad", source="local", weights=str(SALAD_CKPT))
    assert salad.descriptor_dim == 160 and not salad.training
    config = json.loads((GOLDEN / "a2gc" / "config.json").read_text())
    a2gc = torch.hub.load(str(REPO), "dinov2_a2gc", source="local", weights=str(A2GC_CKPT), config=config)
    case = torch.load(GOLDEN / "a2gc" / "case_img224.pt", weights_only=True)
    with torch.no_grad():
        torch.testing.assert_close(a2gc(case["images"]), case["descriptor"], atol=1e-5, rtol=0)
    with torch.device("meta"):
        for name, dim in [("dinov2_salad", 8448), ("dinov2_salad_512_32", 544), ("dinov2_salad_2048_64", 2112)]:
            assert torch.hub.load(str(REPO), name, source="local").descriptor_dim == dim
