"""Camera messages to RGB arrays: the one conversion path for live topics and for rosbag replay.

Works on ``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage`` from rclpy and ``rosbags`` alike
(duck-typed: ``format`` means compressed, ``encoding`` raw), so a map built offline from a bag sees
exactly the pixels the live node would have seen.

rosbags-image (``message_to_cvimage``) decodes and converts colours; the code here covers what it
lacks, handing it a stand-in message (:class:`_Raw`) where the real one would trip it up:

* Validation: encoding, size, ``step``, data length (and a compressed image's header size, before
  decoding) are checked first; bad input raises :class:`BadFrame` with a short ``reason``, never anything else.
* Row padding: it ignores ``step``; padded rows are repacked to exactly the rows the image has.
* 16-bit: it scales by ``255 / 65535`` (a 12-bit sensor in ``mono16`` would be nearly black); its native
  16-bit array goes through :func:`to_uint8` and back to it as the matching 8-bit encoding.
* ``nv12``/``nv21``: it reads only ``height`` rows; the stand-in says ``height * 3 / 2``.
* ``8UC1``/``8UC3``/``8UC4``: it passes them through unchanged; they go in as ``mono8``/``bgr8``/``bgra8``
  as cv_bridge reads them.
* Compressed: it asserts on undecodable bytes (``decode failed`` here) and converts every decoded image
  from ``bgr8``; it only decodes, then converts as ``mono8``, ``bgr8`` or ``bgra8`` by channel count.
  OpenCV already reduces 16-bit PNGs to their top byte, so :func:`to_uint8` does not apply.
* The result never shares memory with the message (rosbags-image returns a view for ``rgb8``).

Raw encodings: ``rgb8 bgr8 rgba8 bgra8 mono8 8UC1 8UC3 8UC4``, ``rgb16 bgr16 rgba16 bgra16 mono16
16UC1``, ``bayer_{rggb,bggr,gbrg,grbg}{8,16}``, ``uyvy yuv422 yuyv yuv422_yuy2``, ``nv12 nv21``.
Compressed: whatever OpenCV decodes (JPEG, PNG, ...).
"""

from __future__ import annotations

import io
import warnings
from typing import Any, NamedTuple

import numpy as np
from PIL import Image as PILImage
from rosbags.image import message_to_cvimage

from vpr_ros.errors import BadFrame


class _Raw(NamedTuple):
    """A stand-in ``sensor_msgs/Image`` for rosbags-image: packed rows, a name it handles right."""

    header: Any
    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: np.ndarray


# encoding -> (bytes per channel, channels, 8-bit encoding rosbags-image converts to RGB)
_ENCODINGS: dict[str, tuple[int, int, str]] = {
    **{e: (1, 3, e) for e in ("rgb8", "bgr8")},
    **{e: (1, 4, e) for e in ("rgba8", "bgra8")},
    **{e: (1, 2, e) for e in ("uyvy", "yuv422", "yuyv", "yuv422_yuy2")},
    **{e: (1, 1, e) for e in ("mono8", "nv12", "nv21")},
    "8UC1": (1, 1, "mono8"), "8UC3": (1, 3, "bgr8"), "8UC4": (1, 4, "bgra8"),
    "rgb16": (2, 3, "rgb8"), "bgr16": (2, 3, "bgr8"), "rgba16": (2, 4, "rgba8"),
    "bgra16": (2, 4, "bgra8"), "mono16": (2, 1, "mono8"), "16UC1": (2, 1, "mono8"),
}
for _pattern in ("rggb", "bggr", "gbrg", "grbg"):
    _ENCODINGS[f"bayer_{_pattern}8"] = (1, 1, f"bayer_{_pattern}8")
    _ENCODINGS[f"bayer_{_pattern}16"] = (2, 1, f"bayer_{_pattern}8")

SUPPORTED_ENCODINGS: frozenset[str] = frozenset(_ENCODINGS)
_YUV420 = {"nv12", "nv21"}  # chroma plane of height/2 rows after the luma plane
_YUV422 = {"uyvy", "yuv422", "yuyv", "yuv422_yuy2"}
_DECODED = {1: "mono8", 3: "bgr8", 4: "bgra8"}  # channels of an OpenCV-decoded image
_BIT_DEPTHS = (8, 10, 12, 14, 16)


def image_to_rgb(msg: Any, max_pixels: int = 50_000_000) -> np.ndarray:
    """RGB uint8 (H, W, 3) C-contiguous copy of an Image or CompressedImage; bad input raises only :class:`BadFrame`."""
    try:
        if hasattr(msg, "format"):
            return _compressed_to_rgb(msg, max_pixels)
        if hasattr(msg, "encoding"):
            return _raw_to_rgb(msg, max_pixels)
    except BadFrame:
        raise
    except (ValueError, TypeError, AttributeError, OverflowError, MemoryError) as exc:
        raise BadFrame("conversion failed", f"{type(exc).__name__}: {exc}") from exc
    raise BadFrame("not an image message", type(msg).__name__)


def stamp_of(msg: Any) -> tuple[int, int]:
    """``header.stamp`` as (sec, nanosec) for rclpy and rosbags messages alike."""
    try:
        stamp = msg.header.stamp
        sec, nsec = int(stamp.sec), int(stamp.nanosec)
    except (AttributeError, TypeError, ValueError) as exc:
        raise BadFrame("missing stamp", str(exc)) from exc
    if not 0 <= nsec < 1_000_000_000:
        raise BadFrame("bad stamp", f"nanosec {nsec} outside [0, 1e9)")
    return sec, nsec


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Scale 16-bit pixels to 8 bit by shifting out the bits above the frame's inferred depth.

    The depth is the smallest of 8/10/12/14/16 bits that holds the 99.9th percentile (sampled on
    a grid, so it costs little and a few hot pixels cannot darken the frame); brighter outliers
    saturate at 255. uint8 input is returned unchanged.
    """
    if image.dtype == np.uint8:
        return image
    sample = image[:: max(1, image.shape[0] // 256), :: max(1, image.shape[1] // 256)]
    high = int(np.percentile(sample, 99.9)) if sample.size else 0
    bits = next((b for b in _BIT_DEPTHS if high < (1 << b)), 16)
    shifted = image >> (bits - 8) if bits > 8 else image
    return np.minimum(shifted, 255).astype(np.uint8)


def _data_view(data: Any) -> np.ndarray:
    """The message's byte buffer as a flat uint8 array, without copying when possible."""
    try:
        return np.frombuffer(memoryview(data).cast("B"), np.uint8)
    except (TypeError, ValueError):  # a list of ints, or a non-contiguous array
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0 or width * height > max_pixels:
        raise BadFrame("absurd size", f"{width}x{height} (limit {max_pixels} pixels)")


def _convert(msg: Any, color_space: str | None, reason: str = "conversion failed") -> np.ndarray:
    """``message_to_cvimage``, with whatever it raises (a bare assert included) as BadFrame."""
    try:
        out = message_to_cvimage(msg, color_space)
    except Exception as exc:  # ImageError, cv2.error, AssertionError, TypeError, ...
        raise BadFrame(reason, f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(out, np.ndarray):  # imdecode's None when asserts are off (python -O)
        raise BadFrame(reason, f"got {type(out).__name__}")
    return out


def _to_rgb(raw: _Raw, height: int, source: np.ndarray) -> np.ndarray:
    """rosbags-image's RGB conversion of ``raw``, as a fresh array not sharing ``source``."""
    out = _convert(raw, "rgb8")
    if out.shape != (height, raw.width, 3) or out.dtype != np.uint8:
        raise BadFrame("conversion failed", f"got {out.dtype} {out.shape}")
    if np.may_share_memory(out, source) or not out.flags.c_contiguous:
        out = np.array(out, order="C", copy=True)
    return out


def _raw_to_rgb(msg: Any, max_pixels: int) -> np.ndarray:
    encoding = str(msg.encoding)
    if encoding not in _ENCODINGS:
        raise BadFrame("unsupported encoding", repr(encoding))
    size, channels, encoding8 = _ENCODINGS[encoding]
    width, height, step = int(msg.width), int(msg.height), int(msg.step)
    _check_size(width, height, max_pixels)
    if (encoding in _YUV422 and width % 2) or (encoding in _YUV420 and (width % 2 or height % 2)):
        raise BadFrame("absurd size", f"{encoding} needs even sides, got {width}x{height}")
    data = _data_view(msg.data)
    if data.size == 0:
        raise BadFrame("empty data")
    row_bytes = width * size * channels
    if step < row_bytes:
        raise BadFrame("step mismatch", f"step {step} < {width} px * {size * channels} B")
    rows = height * 3 // 2 if encoding in _YUV420 else height
    if data.size < step * rows:
        raise BadFrame("truncated data", f"{data.size} bytes < step {step} * {rows} rows")

    packed = data[: step * rows]
    if step != row_bytes:  # rosbags-image ignores step: drop the row padding
        packed = np.ascontiguousarray(packed.reshape(rows, step)[:, :row_bytes])
    raw = _Raw(getattr(msg, "header", None), rows, width, encoding8, 0, row_bytes, packed)
    if size == 2:  # native 16-bit array from rosbags-image (byte order handled), our depth rule
        native = _convert(raw._replace(encoding=encoding, is_bigendian=int(msg.is_bigendian)), None)
        eight = np.ascontiguousarray(to_uint8(native))
        raw = raw._replace(step=width * channels, data=eight.reshape(-1))
    return _to_rgb(raw, height, data)


def _compressed_to_rgb(msg: Any, max_pixels: int) -> np.ndarray:
    data = _data_view(msg.data)
    if data.size == 0:
        raise BadFrame("empty data")
    _check_header_size(data, max_pixels)
    decoded = _convert(msg, None, "decode failed")  # no colour space: decode only
    channels = 1 if decoded.ndim == 2 else decoded.shape[2] if decoded.ndim == 3 else 0
    if channels not in _DECODED or decoded.dtype != np.uint8:
        raise BadFrame("decode failed", f"format {msg.format!r}: {decoded.dtype} {decoded.shape}")
    height, width = decoded.shape[:2]
    _check_size(width, height, max_pixels)
    decoded = np.ascontiguousarray(decoded)
    raw = _Raw(None, height, width, _DECODED[channels], 0, width * channels, decoded.reshape(-1))
    return _to_rgb(raw, height, data)


def _check_header_size(data: np.ndarray, max_pixels: int) -> None:
    """Refuse a compressed image whose header claims too many pixels, before decoding it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data)) as header:  # reads the header only
                width, height = header.size
    except PILImage.DecompressionBombError as exc:
        raise BadFrame("absurd size", str(exc)) from exc
    except Exception:  # not a format Pillow knows, or a broken header: decoding decides below
        return
    _check_size(width, height, max_pixels)
