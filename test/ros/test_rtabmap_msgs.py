"""The rtabmap_msgs types that ``make venv`` generates match the vendored interface files.

The .msg/.srv files under test/rtabmap_msgs are RTAB-Map's own; the Python types in the venv are
generated from them by test/rtabmap_msgs/build.sh. Every field of every message and service is
compared with what the generated type reports, and a CDR round trip through rclpy's serialisation
keeps an RGBDImage's photo and global descriptor bytes.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import rtabmap_msgs.msg
import rtabmap_msgs.srv
from rclpy.serialization import deserialize_message, serialize_message
from rtabmap_msgs.msg import GlobalDescriptor, RGBDImage

REPO = Path(__file__).resolve().parents[2]
INTERFACES = REPO / "test" / "rtabmap_msgs"
SCENES = REPO / "vpr_ros" / "synth" / "data" / "scenes"
PRIMITIVES = {"bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32",
              "int64", "uint64", "string", "wstring"}
IDL_NAMES = {"bool": "boolean", "byte": "octet", "char": "uint8", "float32": "float", "float64": "double"}
FIELD = re.compile(r"(?P<type>[\w/]+)(?:\[(?P<size>\d*)\])?\s+(?P<name>[A-Za-z]\w*)\s*(?P<constant>=)?")


def _idl_type(base: str, size: str | None) -> str:
    """A field type as rosidl's Python types report it (``uint8[]`` -> ``sequence<uint8>``)."""
    if base not in PRIMITIVES and "/" not in base:
        base = f"rtabmap_msgs/{base}"
    base = IDL_NAMES.get(base, base)
    if size is None:
        return base
    return f"{base}[{size}]" if size else f"sequence<{base}>"


def _fields(text: str) -> dict[str, str]:
    """Field name -> type of one message definition, constants left out."""
    fields = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = FIELD.match(line)
        assert m, f"unparsed line {line!r}"
        if not m["constant"]:
            fields[m["name"]] = _idl_type(m["type"], m["size"])
    return fields


def _definitions() -> list[tuple[str, dict[str, str], type]]:
    """(label, fields from the vendored file, generated type) for every message and service part."""
    out = []
    for path in sorted((INTERFACES / "msg").glob("*.msg")):
        out.append((path.stem, _fields(path.read_text()), getattr(rtabmap_msgs.msg, path.stem)))
    for path in sorted((INTERFACES / "srv").glob("*.srv")):
        request, response = path.read_text().split("\n---", 1)
        srv = getattr(rtabmap_msgs.srv, path.stem)
        out += [(f"{path.stem}.Request", _fields(request), srv.Request),
                (f"{path.stem}.Response", _fields(response), srv.Response)]
    return out


def test_every_vendored_interface_is_generated_with_its_fields() -> None:
    definitions = _definitions()
    assert len(definitions) == 23 + 2 * 16  # upstream's CMakeLists lists 23 messages and 16 services
    mismatched = [label for label, fields, generated in definitions
                  if fields != generated.get_fields_and_field_types()]
    assert not mismatched, mismatched


def test_rgbd_image_and_global_descriptor_layout() -> None:
    assert list(RGBDImage.get_fields_and_field_types())[-1] == "global_descriptor"
    assert GlobalDescriptor.get_fields_and_field_types() == {
        "header": "std_msgs/Header", "type": "int32", "info": "sequence<uint8>", "data": "sequence<uint8>"}


def test_rgbd_image_round_trip_keeps_the_bytes() -> None:
    jpeg = (SCENES / "fruits.jpg").read_bytes()
    descriptor = np.random.default_rng(0).standard_normal(8448).astype(np.float32)
    descriptor /= np.linalg.norm(descriptor)
    msg = RGBDImage()
    msg.header.frame_id = "camera"
    msg.header.stamp.sec = 1_700_000_000
    msg.rgb_compressed.format = "jpeg"
    msg.rgb_compressed.data = jpeg
    msg.global_descriptor.type = 7
    msg.global_descriptor.info = bytes(range(256))
    msg.global_descriptor.data = descriptor.tobytes()

    back = deserialize_message(serialize_message(msg), RGBDImage)

    assert back == msg
    assert bytes(back.rgb_compressed.data) == jpeg
    assert bytes(back.global_descriptor.info) == bytes(range(256))
    np.testing.assert_array_equal(np.frombuffer(bytes(back.global_descriptor.data), np.float32), descriptor)
