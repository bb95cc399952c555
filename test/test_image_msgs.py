"""Image messages built from the bundled photos convert back to the photo's exact RGB pixels.

Messages are real: rclpy ``sensor_msgs`` objects and rosbags messages that went through a CDR
round trip (as a bag reader hands them out: read-only numpy data).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from builtin_interfaces.msg import Time
from rosbags.image import message_to_cvimage
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from vpr_ros import image_msgs
from vpr_ros.image_msgs import SUPPORTED_ENCODINGS, BadFrame, image_to_rgb, stamp_of, to_uint8
from vpr_ros.preprocess import load_image

SCENES = Path(__file__).resolve().parents[1] / "vpr_ros" / "synth" / "data" / "scenes"
TS = get_typestore(Stores.ROS2_KILTED)
STAMP = (1_700_000_000, 123_456_789)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photo cropped to even sides (needed by the 4:2:x YUV layouts)."""
    rgb = load_image(SCENES / "fruits.jpg")
    return np.ascontiguousarray(rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2])


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def _bayer_rggb(rgb: np.ndarray) -> np.ndarray:
    mosaic = np.empty(rgb.shape[:2], np.uint8)
    mosaic[0::2, 0::2] = rgb[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = rgb[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = rgb[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = rgb[1::2, 1::2, 2]
    return mosaic


def _nv12(rgb: np.ndarray) -> np.ndarray:
    """NV12 planes (Y rows, then interleaved UV rows) from OpenCV's planar I420."""
    h, w = rgb.shape[:2]
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).reshape(-1)
    y, u, v = i420[: h * w], i420[h * w : h * w * 5 // 4], i420[h * w * 5 // 4 :]
    uv = np.stack([u, v], axis=1).reshape(h // 2, w)
    return np.concatenate([y.reshape(h, w), uv])


def _raw_fields(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> dict[str, Any]:
    """Message fields for ``pixels`` with ``pad`` garbage bytes after every row."""
    rows = pixels.shape[0] - (pixels.shape[0] // 3 if encoding in ("nv12", "nv21") else 0)
    if pixels.dtype == np.uint16:
        pixels = pixels.astype(">u2" if bigendian else "<u2")
    row_bytes = pixels.reshape(pixels.shape[0], -1).view(np.uint8)
    padded = np.full((row_bytes.shape[0], row_bytes.shape[1] + pad), 0xAB, np.uint8)
    padded[:, : row_bytes.shape[1]] = row_bytes
    return dict(height=rows, width=pixels.shape[1], encoding=encoding, is_bigendian=int(bigendian),
                step=padded.shape[1], data=padded.tobytes())


def rclpy_image(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    header = Header(stamp=Time(sec=STAMP[0], nanosec=STAMP[1]), frame_id="camera")
    return Image(header=header, **_raw_fields(pixels, encoding, pad, bigendian))


def _bag_header() -> Any:
    time = TS.types["builtin_interfaces/msg/Time"](sec=STAMP[0], nanosec=STAMP[1])
    return TS.types["std_msgs/msg/Header"](stamp=time, frame_id="camera")


def _cdr_round_trip(msg: Any) -> Any:
    return TS.deserialize_cdr(TS.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)


def bag_image(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Any:
    fields = _raw_fields(pixels, encoding, pad, bigendian)
    fields["data"] = np.frombuffer(fields["data"], np.uint8)
    return _cdr_round_trip(TS.types["sensor_msgs/msg/Image"](header=_bag_header(), **fields))


def rclpy_compressed(data: bytes, fmt: str) -> CompressedImage:
    header = Header(stamp=Time(sec=STAMP[0], nanosec=STAMP[1]), frame_id="camera")
    return CompressedImage(header=header, format=fmt, data=data)


def bag_compressed(data: bytes, fmt: str) -> Any:
    msg = TS.types["sensor_msgs/msg/CompressedImage"](header=_bag_header(), format=fmt,
                                                       data=np.frombuffer(data, np.uint8))
    return _cdr_round_trip(msg)


def _check_rgb(out: np.ndarray, shape: tuple[int, ...]) -> None:
    assert out.dtype == np.uint8 and out.shape == (*shape[:2], 3) and out.flags.c_contiguous


# -- lossless raw encodings ------------------------------------------------------------------

LOSSLESS: dict[str, Any] = {
    "rgb8": (lambda rgb: rgb, lambda rgb: rgb),
    "bgr8": (lambda rgb: rgb[..., ::-1], lambda rgb: rgb),
    "8UC3": (lambda rgb: rgb[..., ::-1], lambda rgb: rgb),
    "rgba8": (lambda rgb: np.dstack([rgb, _gray(rgb)]), lambda rgb: rgb),
    "bgra8": (lambda rgb: np.dstack([rgb[..., ::-1], _gray(rgb)]), lambda rgb: rgb),
    "mono8": (_gray, lambda rgb: np.dstack([_gray(rgb)] * 3)),
    "rgb16": (lambda rgb: rgb.astype(np.uint16) * 257, lambda rgb: rgb),
    "bgra16": (lambda rgb: np.dstack([rgb[..., ::-1], _gray(rgb)]).astype(np.uint16) * 257, lambda rgb: rgb),
    "mono16": (lambda rgb: _gray(rgb).astype(np.uint16) * 257, lambda rgb: np.dstack([_gray(rgb)] * 3)),
    # 12-bit sensor data unpacked into 16-bit words must not come out nearly black
    "16UC1": (lambda rgb: _gray(rgb).astype(np.uint16) << 4, lambda rgb: np.dstack([_gray(rgb)] * 3)),
}


@pytest.mark.parametrize("make", [rclpy_image, bag_image], ids=["rclpy", "rosbags"])
@pytest.mark.parametrize("pad", [0, 13], ids=["packed", "padded"])
@pytest.mark.parametrize("encoding", sorted(LOSSLESS))
def test_lossless_encodings_give_the_photo_back_exactly(photo, make, pad, encoding) -> None:
    encode, expected = LOSSLESS[encoding]
    msg = make(np.ascontiguousarray(encode(photo)), encoding, pad)
    out = image_to_rgb(msg)
    _check_rgb(out, photo.shape)
    np.testing.assert_array_equal(out, expected(photo))


@pytest.mark.parametrize("make", [rclpy_image, bag_image], ids=["rclpy", "rosbags"])
def test_big_endian_mono16(photo, make) -> None:
    msg = make(_gray(photo).astype(np.uint16) * 257, "mono16", pad=2, bigendian=True)
    np.testing.assert_array_equal(image_to_rgb(msg)[..., 0], _gray(photo))


def test_output_never_aliases_the_message(photo) -> None:
    msg = bag_image(photo, "rgb8")
    out = image_to_rgb(msg)
    assert not np.shares_memory(out, msg.data)
    out[:] = 0  # writable, and the message is untouched
    assert msg.data.any()



@pytest.mark.parametrize("make", [rclpy_image, bag_image], ids=["rclpy", "rosbags"])
def test_rosbags_image_does_the_conversion(photo, make, monkeypatch) -> None:
    """The colour conversion is rosbags-image's own: same pixels, and it is what gets called."""
    msg = make(np.ascontiguousarray(photo[..., ::-1]), "bgr8")
    calls = []

    def spy(message: Any, color_space: str | None = None) -> np.ndarray:
        calls.append((message.encoding, color_space))
        return message_to_cvimage(message, color_space)

    monkeypatch.setattr(image_msgs, "message_to_cvimage", spy)
    np.testing.assert_array_equal(image_to_rgb(msg), message_to_cvimage(msg, "rgb8"))
    assert calls == [("bgr8", "rgb8")]

# -- lossy raw encodings -----------------------------------------------------------------------


@pytest.mark.parametrize("make", [rclpy_image, bag_image], ids=["rclpy", "rosbags"])
@pytest.mark.parametrize("bits", [8, 16])
def test_bayer_rggb_demosaics_with_the_right_pattern(photo, make, bits) -> None:
    mosaic = _bayer_rggb(photo)
    if bits == 16:
        mosaic = mosaic.astype(np.uint16) * 257
    out = image_to_rgb(make(mosaic, f"bayer_rggb{bits}", pad=6))
    _check_rgb(out, photo.shape)
    out = out.astype(np.int32)
    ref = photo.astype(np.int32)
    assert np.abs(out - ref).mean() < 4  # demosaicing interpolates 2/3 of the samples
    # a red/blue mix-up would swap the channel means; the photo's differ by far more than this
    assert abs(out[..., 0].mean() - ref[..., 0].mean()) < 2
    assert abs(out[..., 2].mean() - ref[..., 2].mean()) < 2
    assert abs(ref[..., 0].mean() - ref[..., 2].mean()) > 20


@pytest.mark.parametrize("encoding", ["uyvy", "nv12"])
def test_yuv_layouts(photo, encoding) -> None:
    pixels = cv2.cvtColor(photo, cv2.COLOR_RGB2YUV_UYVY) if encoding == "uyvy" else _nv12(photo)
    out = image_to_rgb(rclpy_image(pixels, encoding, pad=4))
    _check_rgb(out, photo.shape)
    assert np.abs(out.astype(np.int32) - photo).mean() < 4  # chroma subsampling only


# -- compressed ------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [rclpy_compressed, bag_compressed], ids=["rclpy", "rosbags"])
def test_png_is_exact_and_jpeg_close(photo, make) -> None:
    bgr = cv2.cvtColor(photo, cv2.COLOR_RGB2BGR)
    png = cv2.imencode(".png", bgr)[1].tobytes()
    np.testing.assert_array_equal(image_to_rgb(make(png, "png")), photo)
    jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    out = image_to_rgb(make(jpeg, "rgb8; jpeg compressed bgr8"))
    _check_rgb(out, photo.shape)
    assert np.abs(out.astype(np.int32) - photo).mean() < 3


def test_gray_and_16bit_png(photo) -> None:
    gray = _gray(photo)
    for pixels in (gray, gray.astype(np.uint16) * 257):
        png = cv2.imencode(".png", pixels)[1].tobytes()
        np.testing.assert_array_equal(image_to_rgb(rclpy_compressed(png, "png")), np.dstack([gray] * 3))


def test_to_uint8_ignores_hot_pixels(photo) -> None:
    twelve_bit = _gray(photo).astype(np.uint16) << 4
    twelve_bit[::97, ::89] = 65535  # a few hot pixels must not turn the frame into 16-bit black
    hot = twelve_bit == 65535
    out = to_uint8(twelve_bit)
    np.testing.assert_array_equal(out[~hot], _gray(photo)[~hot])
    assert (out[hot] == 255).all()


# -- bad frames --------------------------------------------------------------------------------


def _bad_raw(photo: np.ndarray, case: str) -> Image:
    msg = rclpy_image(photo[:16, :20], "rgb8")
    if case == "step mismatch":
        msg.step = 20 * 3 - 1
    elif case == "truncated data":
        msg.data = bytes(msg.data)[:-1]
    elif case == "huge step":
        msg.step = 2**32 - 1
    elif case == "empty data":
        msg.data = b""
    elif case == "zero size":
        msg.width = 0
    elif case == "absurd size":
        msg.width = msg.height = 100_000
    elif case == "unsupported encoding":
        msg.encoding = "xyz16"
    elif case == "odd uyvy":
        msg.encoding, msg.width, msg.step = "uyvy", 19, 38
    return msg


def _jpeg_with_size(photo: np.ndarray, height: int, width: int) -> bytes:
    data = bytearray(cv2.imencode(".jpg", photo[:16, :16])[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _png_with_size(photo: np.ndarray, height: int, width: int) -> bytes:
    data = bytearray(cv2.imencode(".png", photo[:16, :16])[1].tobytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    return bytes(data)


BAD_RAW = {
    "step mismatch": "step mismatch",
    "truncated data": "truncated data",
    "huge step": "truncated data",
    "empty data": "empty data",
    "zero size": "absurd size",
    "absurd size": "absurd size",
    "unsupported encoding": "unsupported encoding",
    "odd uyvy": "absurd size",
}


@pytest.mark.parametrize("case", sorted(BAD_RAW))
def test_bad_raw_frames(photo, case) -> None:
    with pytest.raises(BadFrame) as info:
        image_to_rgb(_bad_raw(photo, case))
    assert info.value.reason == BAD_RAW[case]


def test_unsupported_encoding_names_it(photo) -> None:
    with pytest.raises(BadFrame, match="xyz16"):
        image_to_rgb(_bad_raw(photo, "unsupported encoding"))
    assert "xyz16" not in SUPPORTED_ENCODINGS and "bayer_gbrg16" in SUPPORTED_ENCODINGS


@pytest.mark.parametrize(
    ("make_data", "reason"),
    [
        (lambda photo: b"", "empty data"),
        (lambda photo: b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "decode failed"),
        (lambda photo: b"not an image at all", "decode failed"),
        (lambda photo: cv2.imencode(".jpg", photo)[1].tobytes()[:200], "decode failed"),
        (lambda photo: _jpeg_with_size(photo, 60_000, 60_000), "absurd size"),
        (lambda photo: _png_with_size(photo, 100_000, 100_000), "absurd size"),
    ],
    ids=["empty", "corrupt-jpeg", "garbage", "headers-only-jpeg", "huge-jpeg", "huge-png"],
)
@pytest.mark.parametrize("make", [rclpy_compressed, bag_compressed], ids=["rclpy", "rosbags"])
def test_bad_compressed_frames(photo, make, make_data, reason) -> None:
    with pytest.raises(BadFrame) as info:
        image_to_rgb(make(make_data(photo), "jpeg"))
    assert info.value.reason == reason


def test_random_field_corruption_raises_only_badframe(photo) -> None:
    """Fuzz the header fields of real messages: either a valid image or BadFrame, nothing else."""
    rng = np.random.default_rng(0)
    small = photo[:12, :16]
    encodings = sorted(SUPPORTED_ENCODINGS) + ["xyz16", "", "32FC1"]
    outcomes = {"ok": 0, "bad": 0}
    for _ in range(400):
        msg = bag_image(small, "rgb8")
        msg.encoding = str(rng.choice(encodings))
        msg.width = int(rng.integers(0, 24))
        msg.height = int(rng.integers(0, 16))
        msg.step = int(msg.width * rng.choice([1, 2, 3, 4, 6, 8]) + rng.integers(-1, 3))
        msg.is_bigendian = int(rng.integers(0, 2))
        msg.data = msg.data[: int(rng.integers(0, msg.data.size + 1))]
        try:
            out = image_to_rgb(msg)
        except BadFrame:
            outcomes["bad"] += 1
        else:
            _check_rgb(out, (msg.height, msg.width))
            outcomes["ok"] += 1
    assert outcomes["ok"] > 10 and outcomes["bad"] > 10


def test_not_an_image_message() -> None:
    with pytest.raises(BadFrame) as info:
        image_to_rgb(Header())
    assert info.value.reason == "not an image message"


# -- stamps ----------------------------------------------------------------------------------


def test_stamp_of_rclpy_and_rosbags(photo) -> None:
    assert stamp_of(rclpy_image(photo, "rgb8")) == STAMP
    assert stamp_of(bag_compressed(b"x", "jpeg")) == STAMP
    with pytest.raises(BadFrame) as info:
        stamp_of(Time(sec=1))
    assert info.value.reason == "missing stamp"
