"""Synthetic views of a photographed place: where the camera looks, how it is turned, how it is lit.

The dataset generators (benchmark layouts in ``vpr_ros.evaluation.datasets``, GSV-Cities-style training data,
demo routes) all need "another photo of the same place". A real revisit differs in framing
(distance, position, roll, yaw/pitch seen as perspective) and in light; these functions model
exactly those two things and nothing else, so a generator stays a few lines of bookkeeping.

Everything is deterministic given its arguments (and the state of the ``rng`` passed in).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["photometric", "random_view", "warp_view"]


def _check_image(img: np.ndarray) -> None:
    if not isinstance(img, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(img).__name__}")
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got shape {img.shape} dtype {img.dtype}")
    if img.shape[0] < 2 or img.shape[1] < 2:
        raise ValueError(f"image is too small to sample from: {img.shape[1]}x{img.shape[0]}")


def _check_size(out_size: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(s) for s in out_size)
    if h < 1 or w < 1 or (h, w) != tuple(out_size):
        raise ValueError(f"out_size must be two positive integers (height, width), got {out_size}")
    return h, w


def warp_view(
    img: np.ndarray,
    center: tuple[float, float],
    scale: float,
    rotation_deg: float,
    tilt: tuple[float, float] = (0.0, 0.0),
    out_size: tuple[int, int] = (224, 224),
) -> np.ndarray:
    """What a camera aimed at ``center`` of ``img`` sees: one perspective warp, no randomness.

    ``center`` is (x, y) normalised to 0..1 over the source. The camera sees a window whose shorter
    side is ``scale`` x the source's shorter side and whose aspect is that of ``out_size``
    (height, width), i.e. a square window for a square output. The window is rotated by
    ``rotation_deg`` about its centre, so the content appears turned counter-clockwise by that angle
    (as ``np.rot90`` for 90). ``tilt = (tx, ty)`` shrinks the window's far edge to imitate yaw and
    pitch: ``tx > 0`` shortens its right edge (``< 0`` the left one) by the factor ``1 - |tx|``,
    ``ty > 0`` shortens its top edge (``< 0`` the bottom one); useful values are about -0.3..0.3.
    Outside the source the image is mirrored (BORDER_REFLECT101), never black. Windows much larger
    than the output are area-downscaled first so that the view is not aliased.
    """
    _check_image(img)
    out_h, out_w = _check_size(out_size)
    cx, cy = (float(c) for c in center)
    tx, ty = (float(t) for t in tilt)
    scale, rotation_deg = float(scale), float(rotation_deg)
    if not all(math.isfinite(v) for v in (cx, cy, tx, ty, scale, rotation_deg)):
        raise ValueError("center, scale, rotation_deg and tilt must be finite")
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if not (abs(tx) < 1 and abs(ty) < 1):
        raise ValueError(f"tilt components must lie in (-1, 1), got {tilt}")

    src_h, src_w = img.shape[:2]
    short = scale * min(src_h, src_w)  # window's shorter side, source pixels
    half_w, half_h = (short * out_w / out_h, short) if out_w >= out_h else (short, short * out_h / out_w)
    half_w, half_h = half_w / 2, half_h / 2

    # Anti-aliasing: bring the source to about the output's resolution before sampling it.
    factor = short / min(out_h, out_w)
    if factor > 2.0:
        new_w, new_h = max(2, round(src_w / factor)), max(2, round(src_h / factor))
        img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_AREA)
        sx, sy = new_w / src_w, new_h / src_h
    else:
        sx = sy = 1.0

    # Corners (top-left, top-right, bottom-right, bottom-left) as unit signs; far edges shrink.
    signs = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    fx = 1.0 - np.maximum(0.0, -signs[:, 1] * ty)  # width of the top (ty > 0) or bottom edge
    fy = 1.0 - np.maximum(0.0, signs[:, 0] * tx)  # height of the right (tx > 0) or left edge
    offsets = signs * np.array([half_w, half_h]) * np.stack([fx, fy], axis=1)
    a = math.radians(rotation_deg)
    # y points down: a positive angle turns the window clockwise on screen, the content counter-clockwise
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    corners = offsets @ rot.T + np.array([cx * src_w, cy * src_h])  # continuous coordinates
    corners = corners * np.array([sx, sy]) - 0.5  # pixel-centre coordinates of the (resized) source
    target = np.array([[-0.5, -0.5], [out_w - 0.5, -0.5], [out_w - 0.5, out_h - 0.5], [-0.5, out_h - 0.5]])
    m = cv2.getPerspectiveTransform(corners.astype(np.float32), target.astype(np.float32))
    return cv2.warpPerspective(img, m, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)


def photometric(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """The same scene under other light: brightness, contrast, gamma, colour temperature, saturation, hue.

    At ``strength=1`` the changes span roughly overcast day to dusk (brightness x0.6..1.6, gamma
    0.7..1.4, warm/cool tint, hue +-8 degrees); a slight Gaussian blur (motion, focus) and mild
    sensor noise are added with probability 0.3 each. Every parameter scales with ``strength``;
    ``strength=0`` returns an unchanged copy. Always draws the same number of values from ``rng``,
    so the views generated after it do not depend on which options fired.
    """
    _check_image(img)
    s = float(strength)
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"strength must be a finite number >= 0, got {strength}")
    u = rng.uniform(-1.0, 1.0, size=7)
    p_blur, p_noise, sigma_u = rng.uniform(0.0, 1.0, size=3)
    noise_seed = int(rng.integers(0, 2**31))
    if s == 0:
        return img.copy()

    x = img.astype(np.float32) / 255.0
    x = x ** math.exp(0.35 * s * u[0])  # gamma
    x = x * math.exp(0.5 * s * u[1])  # exposure
    mean = float(x.mean())
    x = (x - mean) * math.exp(0.3 * s * u[2]) + mean  # contrast
    tint = 0.08 * s * u[3]  # > 0 warm (dusk), < 0 cool (overcast)
    x = x * np.array([1 + tint, 1.0, 1 - tint], dtype=np.float32)
    x = np.clip(x, 0.0, 1.0)
    hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)  # float input: H in degrees, S and V in 0..1
    hsv[..., 0] = (hsv[..., 0] + 8.0 * s * u[4]) % 360.0
    hsv[..., 1] = np.clip(hsv[..., 1] * math.exp(0.4 * s * u[5]), 0.0, 1.0)
    x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if p_blur < 0.3 * min(s, 1.0):
        x = cv2.GaussianBlur(x, (0, 0), sigmaX=0.3 + 0.9 * s * sigma_u, borderType=cv2.BORDER_REFLECT101)
    if p_noise < 0.3 * min(s, 1.0):
        noise = np.random.default_rng(noise_seed).normal(0.0, 0.012 * s * (1 + u[6]) / 2 + 1e-3, x.shape)
        x = x + noise.astype(np.float32)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def random_view(
    img: np.ndarray,
    rng: np.random.Generator,
    out_size: tuple[int, int] = (224, 224),
    *,
    scale: tuple[float, float] = (0.55, 0.9),
    max_rotation_deg: float = 10.0,
    max_tilt: float = 0.15,
    max_shift: float = 0.12,
    photometric_strength: float = 1.0,
    center: tuple[float, float] = (0.5, 0.5),
) -> np.ndarray:
    """A random revisit of the place around ``center``: ``warp_view`` then ``photometric``.

    Window scale is uniform in ``scale`` (fraction of the source's shorter side); the aim point
    moves by up to ``max_shift`` window sides in x and y; roll is uniform in +-``max_rotation_deg``;
    each tilt component is uniform in +-``max_tilt``.
    """
    _check_image(img)
    lo, hi = (float(v) for v in scale)
    if not 0 < lo <= hi:
        raise ValueError(f"scale must be a range 0 < low <= high, got {scale}")
    if max_tilt < 0 or max_tilt >= 1 or max_shift < 0 or max_rotation_deg < 0:
        raise ValueError("max_rotation_deg, max_shift must be >= 0 and max_tilt in [0, 1)")
    s = float(rng.uniform(lo, hi))
    dx, dy = rng.uniform(-max_shift, max_shift, size=2)
    rot = float(rng.uniform(-max_rotation_deg, max_rotation_deg))
    tilt = rng.uniform(-max_tilt, max_tilt, size=2)
    side = s * min(img.shape[:2])  # window's shorter side, pixels; shifts are relative to it
    c = (float(center[0]) + dx * side / img.shape[1], float(center[1]) + dy * side / img.shape[0])
    view = warp_view(img, c, s, rot, (float(tilt[0]), float(tilt[1])), out_size)
    return photometric(view, rng, photometric_strength)
