"""Tests for vpr_ros.preprocess against golden tensors made by the official SALAD transform.

The golden inputs were produced by ``Resize((H, W), BILINEAR)`` + ``ToTensor`` + ``Normalize`` from
the decoded RGB arrays stored next to them, so the exact path must reproduce them bit for bit.
Decoding the scene JPEGs ourselves may differ by one level with another libjpeg, so file-path
comparisons allow a small tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from vpr_ros.preprocess import (
    DEFAULT_IMAGE_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PATCH_SIZE,
    check_image_size,
    load_image,
    preprocess_exact,
    preprocess_fast,
    to_rgb,
    to_uint8_image,
)

TEST_DIR = Path(__file__).resolve().parent
GOLDEN = TEST_DIR / "data" / "golden"
SCENES = TEST_DIR.parent / "vpr_ros" / "synth" / "data" / "scenes"

ONE_LEVEL = 1.0 / 255.0 / min(IMAGENET_STD)  # largest normalized step of one uint8 level (0.0175)
DECODER_TOLERANCE = 2 * ONE_LEVEL  # another libjpeg build may decode a pixel one level off


@pytest.fixture(scope="module")
def salad_golden() -> dict:
    return torch.load(GOLDEN / "salad" / "inputs.pt", weights_only=True)


def _sources(golden: dict, name: str) -> tuple[list[np.ndarray], tuple[int, int], torch.Tensor]:
    source = golden["sources"][name]
    arrays = [t.numpy() for t in source["rgb_uint8"]]
    return arrays, tuple(source["size_hw"]), golden["inputs"][name]


def _photo(name: str = "graf1.jpg") -> np.ndarray:
    return load_image(SCENES / name)


# --- exact path -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x224", "x322", "x518"])
def test_exact_reproduces_golden_inputs_bit_for_bit(salad_golden: dict, name: str) -> None:
    arrays, size, expected = _sources(salad_golden, name)
    got = preprocess_exact(arrays, size)
    assert got.dtype == torch.float32
    assert got.shape == expected.shape
    assert torch.equal(got, expected), f"max abs diff {(got - expected).abs().max().item()}"


@pytest.mark.parametrize("name", ["x224", "x322", "x518"])
def test_exact_from_jpeg_files_matches_golden(salad_golden: dict, name: str) -> None:
    files = [SCENES / f for f in salad_golden["sources"][name]["files"]]
    _, size, expected = _sources(salad_golden, name)
    got = preprocess_exact(files, size)
    diff = (got - expected).abs()
    assert diff.max().item() <= DECODER_TOLERANCE
    assert diff.mean().item() < 1e-3


@pytest.mark.parametrize("case", ["img224", "img322"])
def test_exact_matches_a2gc_golden_images(case: str) -> None:
    config = json.loads((GOLDEN / "a2gc" / "config.json").read_text())["cases"][case]
    files = [SCENES / photo["file"] for photo in config["photos"]]
    expected = torch.load(GOLDEN / "a2gc" / f"case_{case}.pt", weights_only=True)["images"]
    got = preprocess_exact(files, tuple(config["hw"]))
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= DECODER_TOLERANCE


def test_exact_equals_torchvision_compose_on_pil_images() -> None:
    official = transforms.Compose(
        [
            transforms.Resize((322, 434), interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.ToTensor(),
            transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )
    pils = [Image.open(SCENES / name).convert("RGB") for name in ("aloeL.jpg", "baboon.jpg")]
    expected = torch.stack([official(p) for p in pils])
    assert torch.equal(preprocess_exact(pils, (322, 434)), expected)
    arrays = [np.asarray(p) for p in pils]
    assert torch.equal(preprocess_exact(arrays, (322, 434)), expected)


def test_exact_default_size_and_4d_batch() -> None:
    photo = _photo()
    batch = np.stack([photo, photo[::-1]])
    out = preprocess_exact(batch)
    assert out.shape == (2, 3, *DEFAULT_IMAGE_SIZE)
    assert torch.equal(out[0], preprocess_exact([photo])[0])


def test_single_image_instead_of_sequence_is_rejected() -> None:
    with pytest.raises(TypeError, match="wrap a single image in a list"):
        preprocess_exact(_photo())
    with pytest.raises(TypeError, match="wrap a single image in a list"):
        preprocess_exact(SCENES / "graf1.jpg")
    with pytest.raises(TypeError, match="wrap a single image in a list"):
        preprocess_fast(_photo())
    with pytest.raises(ValueError, match="no images"):
        preprocess_exact([])


# --- fast path --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "max_mean"),
    # Measured on CPU: mean 8.4e-05 / 7.7e-06 / 4.1e-06 (see the preprocess module docstring).
    [("x224", 2e-4), ("x322", 5e-5), ("x518", 5e-5)],
)
def test_fast_is_within_one_level_of_exact(salad_golden: dict, name: str, max_mean: float) -> None:
    arrays, size, expected = _sources(salad_golden, name)
    got = preprocess_fast(arrays, size)
    assert got.dtype == torch.float32
    assert got.shape == expected.shape
    diff = (got - expected).abs()
    assert diff.max().item() <= ONE_LEVEL + 1e-6
    assert diff.mean().item() <= max_mean
    assert (diff == 0).float().mean().item() >= 0.99


def test_fast_portrait_frame_stays_within_one_level() -> None:
    # Recent Pillow resizes vertically first here; the fast path keeps horizontal-first.
    portrait = np.ascontiguousarray(_photo("basketball1.jpg").transpose(1, 0, 2))
    exact = preprocess_exact([portrait], (322, 322))
    diff = (preprocess_fast([portrait], (322, 322)) - exact).abs()
    assert diff.max().item() <= ONE_LEVEL + 1e-6
    assert diff.mean().item() < 0.01


def test_fast_tensor_layouts_and_mixed_sizes_agree() -> None:
    a, b = _photo("graf1.jpg"), _photo("graf3.jpg")  # both 512x640
    c = _photo("home.jpg")  # 384x512
    from_list = preprocess_fast([a, b], (224, 224))
    nhwc = torch.from_numpy(np.stack([a, b]))
    assert torch.equal(preprocess_fast(nhwc, (224, 224)), from_list)
    assert torch.equal(preprocess_fast(nhwc.permute(0, 3, 1, 2).contiguous(), (224, 224)), from_list)
    assert torch.equal(preprocess_fast(np.stack([a, b]), (224, 224)), from_list)
    mixed = preprocess_fast([a, c, b], (224, 224), device="cpu")
    assert mixed.shape == (3, 3, 224, 224)
    assert torch.equal(mixed[0], from_list[0])
    assert torch.equal(mixed[2], from_list[1])
    assert torch.equal(mixed[1], preprocess_fast([c], (224, 224))[0])


def test_fast_without_resize_equals_exact() -> None:
    crop = np.ascontiguousarray(_photo()[:224, :322])
    assert torch.equal(preprocess_fast([crop], (224, 322)), preprocess_exact([crop], (224, 322)))


def test_fast_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="uint8"):
        preprocess_fast(torch.zeros(1, 32, 32, 3, dtype=torch.float32), (28, 28))
    with pytest.raises(ValueError, match="3 channels"):
        preprocess_fast(torch.zeros(1, 32, 32, 4, dtype=torch.uint8), (28, 28))
    with pytest.raises(TypeError, match="numpy arrays"):
        preprocess_fast([str(SCENES / "graf1.jpg")], (28, 28))


def test_fast_on_the_default_device_matches_exact(salad_golden: dict) -> None:
    """Runs on the GPU where there is one (the node's case), on the CPU otherwise."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    arrays, size, expected = _sources(salad_golden, "x322")
    got = preprocess_fast(arrays, size, device=device)
    assert got.device.type == device
    diff = (got.cpu() - expected).abs()
    assert diff.max().item() <= ONE_LEVEL + 1e-6
    assert diff.mean().item() < 1e-3


# --- colour handling --------------------------------------------------------------------------


def test_bgr_input_equals_rgb_after_flip() -> None:
    rgb = _photo()
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    assert np.array_equal(to_rgb(bgr, "bgr"), rgb)
    assert torch.equal(preprocess_exact([to_rgb(bgr, "bgr")], (224, 224)), preprocess_exact([rgb], (224, 224)))
    assert torch.equal(preprocess_fast([to_rgb(bgr, "bgr")], (224, 224)), preprocess_fast([rgb], (224, 224)))


@pytest.mark.parametrize("shape_suffix", [(), (1,)])
def test_mono_gives_three_equal_channels(shape_suffix: tuple[int, ...]) -> None:
    gray = np.asarray(Image.open(SCENES / "graf1.jpg").convert("L"))
    mono = gray.reshape(*gray.shape, *shape_suffix)
    rgb = to_rgb(mono, "mono")
    assert rgb.shape == (*gray.shape, 3)
    assert rgb.flags.c_contiguous
    assert all(np.array_equal(rgb[:, :, i], gray) for i in range(3))
    for out in (preprocess_exact([rgb], (224, 224))[0], preprocess_fast([rgb], (224, 224))[0]):
        pixels = to_uint8_image(out)
        assert np.array_equal(pixels[:, :, 0], pixels[:, :, 1])
        assert np.array_equal(pixels[:, :, 0], pixels[:, :, 2])


@pytest.mark.parametrize("color", ["rgb", "bgr"])
def test_four_channels_drop_alpha(color: str) -> None:
    rgb = _photo()
    alpha = np.full(rgb.shape[:2] + (1,), 7, dtype=np.uint8)
    colour = rgb if color == "rgb" else rgb[:, :, ::-1]
    assert np.array_equal(to_rgb(np.concatenate([colour, alpha], axis=2), color), rgb)


def test_uint16_is_scaled_with_rounding() -> None:
    values = np.array([[0, 128, 129, 257, 32896, 65535]], dtype=np.uint16)
    assert to_rgb(values, "mono")[0, :, 0].tolist() == [0, 0, 1, 1, 128, 255]


@pytest.mark.parametrize(
    ("array", "color", "message"),
    [
        (np.zeros((0, 5), np.uint8), "rgb", r"empty image array of shape \(0, 5\)"),
        (np.zeros((4, 5, 2), np.uint8), "rgb", r"got \(4, 5, 2\)"),
        (np.zeros((2, 4, 5, 3), np.uint8), "rgb", r"got \(2, 4, 5, 3\)"),
        (np.zeros((4, 5, 3), np.float32), "rgb", "got dtype float32"),
        (np.zeros((4, 5, 3), np.uint8), "mono", "has 3 channels"),
        (np.zeros((4, 5, 3), np.uint8), "hsv", "got 'hsv'"),
    ],
)
def test_to_rgb_rejects_bad_arrays(array: np.ndarray, color: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_rgb(array, color)  # type: ignore[arg-type]


def test_to_uint8_image_undoes_normalization() -> None:
    crop = np.ascontiguousarray(_photo()[:224, :224])
    assert np.array_equal(to_uint8_image(preprocess_exact([crop], (224, 224))[0]), crop)


# --- file loading -----------------------------------------------------------------------------


def test_load_image_jpeg_and_png(tmp_path: Path) -> None:
    jpeg = load_image(SCENES / "aloeL.jpg")
    assert jpeg.dtype == np.uint8
    assert jpeg.ndim == 3 and jpeg.shape[2] == 3
    assert np.array_equal(jpeg, np.asarray(Image.open(SCENES / "aloeL.jpg").convert("RGB")))
    png_path = tmp_path / "aloeL.png"
    Image.fromarray(jpeg).save(png_path)
    assert np.array_equal(load_image(str(png_path)), jpeg)
    gray_path = tmp_path / "gray.png"
    Image.fromarray(jpeg[:, :, 1]).save(gray_path)
    assert np.array_equal(load_image(gray_path), to_rgb(jpeg[:, :, 1], "mono"))


def test_load_image_rejects_truncated_jpeg(tmp_path: Path) -> None:
    data = (SCENES / "graf1.jpg").read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable image") as info:
        load_image(truncated)
    assert info.value.__cause__ is not None
    with pytest.raises(ValueError, match="not a readable image"):
        preprocess_exact([truncated])


def test_load_image_rejects_text_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("not an image\n")
    with pytest.raises(ValueError, match=r"notes\.jpg is not a readable image"):
        load_image(text)


def test_load_image_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.jpg"
    with pytest.raises(FileNotFoundError, match="nowhere.jpg"):
        load_image(missing)


# --- sizes ------------------------------------------------------------------------------------


def test_valid_sizes_pass() -> None:
    assert check_image_size((322, 322)) == (322, 322)
    assert check_image_size([224, 518]) == (224, 518)
    assert check_image_size((np.int64(14), 28)) == (14, 28)
    assert DEFAULT_IMAGE_SIZE[0] % PATCH_SIZE == 0 and DEFAULT_IMAGE_SIZE[1] % PATCH_SIZE == 0


@pytest.mark.parametrize(
    ("size", "message"),
    [
        (
            (320, 320),
            r"image size \(320, 320\) is not a multiple of the patch size 14; use \(322, 322\) or \(308, 308\)",
        ),
        ((320, 322), r"use \(322, 322\) or \(308, 322\)"),
        ((0, 14), r"image size \(0, 14\) must be positive; use \(14, 14\)"),
        ((-28, 322), r"image size \(-28, 322\) must be positive; use \(14, 322\)"),
        ((322,), "pair of ints"),
        ((322.0, 322), "pair of ints"),
        (322, "pair of ints"),
    ],
)
def test_bad_sizes_raise_with_suggestions(size: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_image_size(size)  # type: ignore[arg-type]


def test_preprocessing_checks_the_size_first() -> None:
    with pytest.raises(ValueError, match=r"use \(322, 322\) or \(308, 308\)"):
        preprocess_exact([_photo()], (320, 320))
    with pytest.raises(ValueError, match=r"use \(322, 322\) or \(308, 308\)"):
        preprocess_fast([_photo()], (320, 320))
