"""Standing adversarial suite for camera messages: generated hostile Image / CompressedImage
messages go through the one conversion path (and a sample through the live node).

For every input: an RGB uint8 array of the declared size, or :class:`BadFrame` with a short
reason, never another exception; the node stays up and counts each one.
"""

from __future__ import annotations

import io
import itertools
import time

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage
from sensor_msgs.msg import CompressedImage, Image
from support import TINY_NODE as BASE

from vpr_ros.errors import BadFrame
from vpr_ros.image_msgs import SUPPORTED_ENCODINGS, image_to_rgb
from vpr_ros.ros.testing import Client, start_node, stop_node

RNG = np.random.default_rng(20261130)
ENCODINGS = sorted(SUPPORTED_ENCODINGS) + ["", "rgb", "RGB8", "32FC1", "64FC3", "bgr8\x00", "é", "rgb8 " * 100]


def _raw(height: int, width: int, encoding: str, step: int, nbytes: int, bigendian: int = 0) -> Image:
    msg = Image(height=height, width=width, encoding=encoding, step=step, is_bigendian=bigendian)
    msg.data = RNG.integers(0, 256, max(nbytes, 0), dtype=np.uint8).tobytes()
    return msg


def hostile_raw() -> list[Image]:
    """Encodings x sizes x steps x data lengths, including the consistent ones."""
    out = []
    for enc, (h, w) in itertools.product(ENCODINGS, [(0, 0), (1, 1), (2, 3), (7, 5), (480, 640), (1, 70000)]):
        bpp = {1: 1, 2: 2, 3: 3, 4: 4}.get(len(enc) % 5, 3)  # a guess: some consistent, most not
        for step, extra in [(w * bpp, 0), (w * bpp + 3, 0), (w * bpp, -1), (0, 0), (w * bpp, 7), (2**31, 0)]:
            nbytes = min(step * h + extra, 2_000_000) if step < 2**31 else 16
            out.append(_raw(h, w, enc, step, nbytes, bigendian=int(RNG.integers(0, 2))))
    out.append(_raw(100_000, 100_000, "rgb8", 300_000, 64))  # claims 30 GB of pixels
    return out


def _jpeg(h: int, w: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", RNG.integers(0, 256, (h, w, 3), dtype=np.uint8))
    assert ok
    return buf.tobytes()


def hostile_compressed() -> list[CompressedImage]:
    good = _jpeg(48, 64)
    png = io.BytesIO()
    PILImage.fromarray(np.zeros((8, 8), np.uint16)).save(png, format="PNG")
    blobs = [b"", b"\xff\xd8", good[: len(good) // 2], good[:-10], good + b"junk", bytes(RNG.integers(0, 256, 4096,
             dtype=np.uint8)), b"\x89PNG\r\n\x1a\n" + bytes(50), png.getvalue(), good]
    flipped = bytearray(good)
    for _ in range(20):
        flipped[int(RNG.integers(0, len(flipped)))] ^= 0xFF
    blobs.append(bytes(flipped))
    # a PNG header claiming 100000 x 100000 pixels
    blobs.append(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (100000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00")
    return [CompressedImage(format=fmt, data=blob) for blob in blobs for fmt in ("jpeg", "png", "", "rgb8; jpeg")]


ALL = hostile_raw() + hostile_compressed()


def test_every_hostile_message_converts_or_is_a_bad_frame() -> None:
    started = time.monotonic()
    converted = bad = 0
    for msg in ALL:
        try:
            rgb = image_to_rgb(msg)
        except BadFrame as exc:
            assert exc.reason and len(exc.reason) < 40  # a short countable category
            bad += 1
            continue
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.flags.c_contiguous
        if isinstance(msg, Image):
            assert rgb.shape[:2] == (msg.height, msg.width)
        converted += 1
    print(f"\nhostile camera messages: {len(ALL)} tried, {converted} converted, {bad} refused as BadFrame, "
          f"{time.monotonic() - started:.1f} s")
    assert converted + bad == len(ALL) > 500 and bad > converted > 0


@pytest.mark.parametrize("max_pixels", [1, 100])
def test_the_pixel_limit_refuses_before_decoding(max_pixels) -> None:
    with pytest.raises(BadFrame):
        image_to_rgb(CompressedImage(format="jpeg", data=_jpeg(48, 64)), max_pixels=max_pixels)


def test_the_node_survives_a_sample_and_counts_every_one(tmp_path) -> None:
    """Every frame received is processed, rejected or dropped for a newer one: none lost, no crash."""
    from vpr_ros.maps.place_map import PlaceMap

    PlaceMap.create(160).save(tmp_path / "empty.map")  # a map without a model: any model may use it
    remaps = ["-r", "image:=/adv/cam", "-r", "image/compressed:=/adv/cam/compressed", "-r", "__ns:=/adv"]
    proc = start_node({**BASE, "map": str(tmp_path / "empty.map")}, remaps)
    client = Client(ns="/adv", image_topic="/adv/cam")
    sample = [m for i, m in enumerate(ALL) if i % 25 == 0 and len(bytes(m.data)) < 1_000_000]
    try:
        client.wait_ready(proc)
        for msg in sample:
            (client.compressed if isinstance(msg, CompressedImage) else client.image).publish(msg)
            client.spin_until(lambda: False, 0.25)  # the reader keeps one sample: let the node take each
        counters = ("frames processed", "frames rejected", "frames dropped (busy)")

        def accounted() -> bool:
            d = client.diag_values()
            return int(d.get("frames received", -1)) == len(sample) == sum(int(d.get(k, 0)) for k in counters)

        assert client.spin_until(accounted, 30), client.diag_values()
        assert proc.poll() is None and int(client.diag_values()["frames rejected"]) > 0
    finally:
        client.close()
        code, out = stop_node(proc)
    assert code == 0, out
    assert "Traceback" not in out
