"""Value types every layer shares: stamps, poses, the model identity, the ViT patch size.

Stamps: inside the library a stamp is an integer count of nanoseconds since the epoch (what
``header.stamp`` holds, without float rounding). Callers may pass float seconds or a
``(sec, nanosec)`` pair; :func:`to_ns` is the one conversion in, :func:`ns_to_pair` and
:func:`ns_to_seconds` the conversions out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vpr_ros.errors import InputError

PATCH_SIZE = 14  # DINOv2 ViT-*/14: image sides are multiples of this
# Largest model input side (146 patches): larger sizes cost minutes per image for no recognition gain.
MAX_IMAGE_SIDE = 2044
NS_PER_S = 1_000_000_000

Stamp = float | tuple[int, int]  # what callers may pass; int nanoseconds are used inside


def to_ns(stamp: Stamp) -> int:
    """Integer nanoseconds from float seconds or a ``(sec, nanosec)`` pair."""
    if isinstance(stamp, (tuple, list)):
        sec, nsec = int(stamp[0]), int(stamp[1])
        if not 0 <= nsec < NS_PER_S:
            raise InputError(f"nanosec must be in [0, 1e9), got {nsec}")
        return sec * NS_PER_S + nsec
    if not math.isfinite(stamp):
        raise InputError(f"stamp must be finite, got {stamp}")
    sec = math.floor(stamp)
    return sec * NS_PER_S + int(round((stamp - sec) * 1e9))


def ns_to_pair(ns: int) -> tuple[int, int]:
    """``(sec, nanosec)`` as in ``builtin_interfaces/Time``."""
    return int(ns) // NS_PER_S, int(ns) % NS_PER_S


def ns_to_seconds(ns: int) -> float:
    return int(ns) / NS_PER_S


def to_stamp(stamp: Stamp) -> tuple[int, int]:
    """``(sec, nanosec)`` from float seconds or a pair (validated)."""
    return ns_to_pair(to_ns(stamp))


def format_stamp(ns: int) -> str:
    """``sec.nanosec`` with all nine digits, for logs and tables."""
    sec, nsec = ns_to_pair(ns)
    return f"{sec}.{nsec:09d}"


class Stamped:
    """``stamp`` and ``seconds`` views of the ``stamp_ns`` field of a frame or a place."""

    stamp_ns: int

    @property
    def stamp(self) -> tuple[int, int]:
        """``(sec, nanosec)`` of the image header."""
        return ns_to_pair(self.stamp_ns)

    @property
    def seconds(self) -> float:
        return ns_to_seconds(self.stamp_ns)


@dataclass(frozen=True)
class Pose:
    """Position (x, y, z) and orientation quaternion (x, y, z, w) in ``frame_id``."""

    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)
    frame_id: str = "map"


@dataclass(frozen=True)
class ModelIdentity:
    """What makes descriptors comparable: architecture, input size and weights."""

    arch: str
    image_size: tuple[int, int]
    descriptor_dim: int
    checkpoint_sha256: str | None = None

    def __post_init__(self) -> None:  # lists from JSON/YAML compare equal to tuples after this
        object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))

    @classmethod
    def of(cls, model: Any, image_size: Sequence[int]) -> ModelIdentity:
        """Identity of a loaded :class:`vpr_ros.models.VPRModel` used at ``image_size``."""
        return cls(model.cfg.describe(), tuple(int(s) for s in image_size), model.descriptor_dim,
                   model.checkpoint_sha256)

    def describe(self) -> str:
        """One line for messages: architecture, input size and the start of the weights' hash."""
        sha = (self.checkpoint_sha256 or "unknown")[:12]
        return f"{self.arch} at {self.image_size[0]}x{self.image_size[1]} (checkpoint sha256 {sha})"
