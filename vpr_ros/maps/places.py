"""The places of a map: one place's record, the growable columns that hold all of them by id, and the checks a
place's pose and texts pass before they are stored.

Columns rather than a list of records: the exclusion window, stamps and positions of every place
are numpy slices, and the strings (frame ids, sources, cameras) are stored once each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vpr_ros.errors import InputError
from vpr_ros.types import Pose, Stamped


@dataclass(frozen=True)
class Place(Stamped):
    """One stored place. ``source`` says where its image can be read again: ``"<bag path>#<image topic>"``
    for maps built from bags, the image topic for places a live node added, empty when unknown.
    ``camera`` names the camera that saw it on a robot with several (empty for a single camera)."""

    id: int
    stamp_ns: int  # header.stamp of the image, integer nanoseconds
    frame_id: str
    pose: Pose | None
    source: str
    camera: str = ""


class PlaceColumns:
    """Per-place metadata as growable numpy columns indexed by place id."""

    def __init__(self) -> None:
        self.n = 0
        self.ns = np.zeros(0, np.int64)  # header stamps, integer nanoseconds
        self.alive = np.zeros(0, bool)
        self.pose = np.zeros((0, 7), np.float64)  # NaN row = no pose
        self.frame = np.zeros(0, np.int32)  # index into self.strings
        self.pose_frame = np.zeros(0, np.int32)
        self.source = np.zeros(0, np.int32)
        self.camera = np.zeros(0, np.int32)
        self.strings: list[str] = []
        self._string_ids: dict[str, int] = {}

    def intern(self, text: str) -> int:
        if text not in self._string_ids:
            self._string_ids[text] = len(self.strings)
            self.strings.append(text)
        return self._string_ids[text]

    def grow(self, extra: int) -> None:
        need = self.n + extra
        if need <= len(self.ns):
            return
        cap = max(need, 2 * len(self.ns), 1024)
        for name in ("ns", "alive", "pose", "frame", "pose_frame", "source", "camera"):
            old = getattr(self, name)
            new = np.zeros((cap, *old.shape[1:]), old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)

    @property
    def seconds(self) -> np.ndarray:
        return self.ns[: self.n] / 1e9


def pose_row(pose: Pose) -> list[float]:
    """The 7 numbers stored for a pose; InputError unless they are finite (a stored NaN or inf would make the
    saved map unloadable)."""
    try:
        row = [float(v) for v in (*pose.position, *pose.orientation)]
        shaped = len(pose.position) == 3 and len(pose.orientation) == 4
    except (TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"pose {pose!r} is no position of 3 and orientation of 4 numbers") from exc
    if not shaped or not all(math.isfinite(v) for v in row):
        raise InputError(f"pose {pose!r} is not 3 + 4 finite numbers; a place keeps finite poses only")
    return row


def check_text(name: str, text: object) -> None:
    """InputError unless ``text`` is a string the places database can store (UTF-8: no lone surrogates)."""
    if not isinstance(text, str):
        raise InputError(f"{name} must be text, got {text!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{name} {text!r} is not valid text ({exc.reason})") from exc
