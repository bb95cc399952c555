"""vpr_ros.synth.views: the geometry of warp_view is checked pixel by pixel, the randomness for determinism."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from vpr_ros.synth.views import photometric, random_view, warp_view


@pytest.fixture(scope="module")
def square() -> np.ndarray:
    return data.astronaut()  # 512 x 512 RGB


@pytest.fixture(scope="module")
def wide() -> np.ndarray:
    return data.coffee()  # 400 x 600 RGB


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def test_full_window_at_source_size_is_the_source(square: np.ndarray, wide: np.ndarray) -> None:
    assert _diff(warp_view(square, (0.5, 0.5), 1.0, 0.0, out_size=(512, 512)), square) <= 1
    assert _diff(warp_view(wide, (0.5, 0.5), 1.0, 0.0, out_size=(400, 600)), wide) <= 1


def test_square_output_sees_a_square_window_of_the_shorter_side(wide: np.ndarray) -> None:
    v = warp_view(wide, (0.5, 0.5), 1.0, 0.0, out_size=(400, 400))
    assert _diff(v, wide[:, 100:500]) <= 1


def test_center_and_scale_select_the_window(square: np.ndarray) -> None:
    v = warp_view(square, (0.25, 0.75), 0.5, 0.0, out_size=(256, 256))
    assert _diff(v, square[256:512, 0:256]) <= 1


def test_rotation_turns_the_content_counter_clockwise(square: np.ndarray) -> None:
    assert _diff(warp_view(square, (0.5, 0.5), 1.0, 90.0, out_size=(512, 512)), np.rot90(square, 1)) <= 1
    assert _diff(warp_view(square, (0.5, 0.5), 1.0, -90.0, out_size=(512, 512)), np.rot90(square, -1)) <= 1
    assert _diff(warp_view(square, (0.5, 0.5), 1.0, 180.0, out_size=(512, 512)), np.rot90(square, 2)) <= 1


def test_outside_the_photo_is_mirrored(square: np.ndarray) -> None:
    v = warp_view(square, (0.0, 0.0), 0.5, 0.0, out_size=(256, 256))
    assert _diff(v[128:, 128:], square[:128, :128]) <= 1
    assert _diff(v[:128, :128], square[128:0:-1, 128:0:-1]) <= 1  # BORDER_REFLECT101


def test_tilt_shrinks_only_the_far_edge(square: np.ndarray) -> None:
    base = warp_view(square, (0.5, 0.5), 0.6, 0.0, out_size=(128, 128)).astype(int)

    def change(tilt: tuple[float, float]) -> dict[str, float]:
        v = warp_view(square, (0.5, 0.5), 0.6, 0.0, tilt=tilt, out_size=(128, 128)).astype(int)
        edges = {"left": (slice(None), 0), "right": (slice(None), -1), "top": 0, "bottom": -1}
        return {k: float(np.abs(v[e] - base[e]).mean()) for k, e in edges.items()}

    yaw = change((0.25, 0.0))
    assert yaw["left"] < 2 and yaw["right"] > 20  # the near edge stays, the far one narrows
    up, down = change((0.0, 0.25)), change((0.0, -0.25))
    assert up["bottom"] < 2 and up["top"] > 20
    assert down["top"] < 2 and down["bottom"] > 20


def test_large_windows_are_area_downscaled(square: np.ndarray) -> None:
    v = warp_view(square, (0.5, 0.5), 1.0, 0.0, out_size=(64, 64))
    ref = cv2.resize(square, (64, 64), interpolation=cv2.INTER_AREA)
    assert np.abs(v.astype(int) - ref).mean() < 2.0


def test_warp_view_is_deterministic_and_shaped(wide: np.ndarray) -> None:
    args = (wide, (0.4, 0.6), 0.7, 12.5, (0.1, -0.2), (96, 128))
    a, b = warp_view(*args), warp_view(*args)
    assert a.shape == (96, 128, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)


def test_photometric_strength_zero_is_identity(square: np.ndarray) -> None:
    out = photometric(square, np.random.default_rng(0), strength=0.0)
    assert np.array_equal(out, square) and out is not square


def test_photometric_changes_light_and_repeats_for_a_seed(square: np.ndarray) -> None:
    outs = [photometric(square, np.random.default_rng(s), 1.0) for s in (7, 7, 8)]
    assert all(o.shape == square.shape and o.dtype == np.uint8 for o in outs)
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])
    changes = [np.abs(photometric(square, np.random.default_rng(s), 1.0).astype(int) - square).mean() for s in range(8)]
    assert min(changes) > 1.0  # every draw changes the light
    weak = [np.abs(photometric(square, np.random.default_rng(s), 0.2).astype(int) - square).mean() for s in range(8)]
    assert np.mean(weak) < np.mean(changes)


def test_random_view_is_deterministic_and_varied(wide: np.ndarray) -> None:
    a = random_view(wide, np.random.default_rng(3), (80, 120))
    b = random_view(wide, np.random.default_rng(3), (80, 120))
    assert a.shape == (80, 120, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    rng = np.random.default_rng(3)
    views = [random_view(wide, rng, (64, 64), center=(0.3, 0.6)) for _ in range(3)]
    assert not np.array_equal(views[0], views[1]) and not np.array_equal(views[1], views[2])


def test_random_view_without_randomness_is_the_plain_warp(wide: np.ndarray) -> None:
    v = random_view(
        wide, np.random.default_rng(0), (64, 64), scale=(0.5, 0.5), max_rotation_deg=0.0, max_tilt=0.0,
        max_shift=0.0, photometric_strength=0.0, center=(0.3, 0.6),
    )  # fmt: skip
    assert np.array_equal(v, warp_view(wide, (0.3, 0.6), 0.5, 0.0, out_size=(64, 64)))


@pytest.mark.parametrize(
    "img, kwargs, err",
    [
        (np.zeros((32, 32), np.uint8), {}, ValueError),  # greyscale
        (np.zeros((32, 32, 4), np.uint8), {}, ValueError),  # RGBA
        (np.zeros((32, 32, 3), np.float32), {}, ValueError),
        ([[0, 0, 0]], {}, TypeError),
        (np.zeros((32, 32, 3), np.uint8), {"scale": 0.0}, ValueError),
        (np.zeros((32, 32, 3), np.uint8), {"tilt": (1.0, 0.0)}, ValueError),
        (np.zeros((32, 32, 3), np.uint8), {"out_size": (0, 16)}, ValueError),
        (np.zeros((32, 32, 3), np.uint8), {"center": (float("nan"), 0.5)}, ValueError),
    ],
)
def test_warp_view_rejects_bad_input(img: np.ndarray, kwargs: dict, err: type) -> None:
    args = {"center": (0.5, 0.5), "scale": 0.5, "rotation_deg": 0.0} | kwargs
    with pytest.raises(err):
        warp_view(img, **args)


def test_bad_randomness_settings_are_rejected(square: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        photometric(square, rng, strength=-0.5)
    with pytest.raises(ValueError):
        random_view(square, rng, scale=(0.9, 0.5))
    with pytest.raises(ValueError):
        random_view(square, rng, max_tilt=1.0)
