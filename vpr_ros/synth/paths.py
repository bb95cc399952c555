"""Paths in the plane for the demo route: a polyline with its arc length, built like a street of
straights and arcs, shifted sideways, and the orientation of a heading."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Path2D:
    """A polyline sampled every few centimetres, with its cumulative arc length."""

    points: np.ndarray  # [N, 2]

    @cached_property
    def arc(self) -> np.ndarray:
        return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(self.points, axis=0), axis=1))])

    @property
    def length(self) -> float:
        return float(self.arc[-1])

    def at(self, s: np.ndarray | float) -> np.ndarray:
        """Positions at arc lengths ``s``."""
        return np.stack([np.interp(s, self.arc, self.points[:, 0]), np.interp(s, self.arc, self.points[:, 1])], -1)

    def heading(self, s: np.ndarray | float) -> np.ndarray:
        """Direction of travel (radians) at arc lengths ``s``."""
        d = np.gradient(self.points, self.arc, axis=0)
        return np.arctan2(np.interp(s, self.arc, d[:, 1]), np.interp(s, self.arc, d[:, 0]))

    def left(self, s: np.ndarray | float) -> np.ndarray:
        """Unit normals pointing left of the direction of travel at arc lengths ``s``."""
        h = self.heading(s)
        return np.stack([-np.sin(h), np.cos(h)], -1)

    def project(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For points ``q`` [M, 2]: (arc length of the nearest path point, distance, signed
        lateral offset, + to the left of the direction of travel)."""
        out_s, out_d, out_l = (np.empty(len(q)) for _ in range(3))
        for start in range(0, len(q), 256):  # chunks keep the distance matrix small
            chunk = q[start:start + 256]
            d2 = ((chunk[:, None, :] - self.points[None, :, :]) ** 2).sum(-1)
            j = d2.argmin(1)
            s = self.arc[j]
            h = self.heading(s)
            rel = chunk - self.points[j]
            out_s[start:start + 256] = s
            out_d[start:start + 256] = np.sqrt(d2[np.arange(len(j)), j])
            out_l[start:start + 256] = -rel[:, 0] * np.sin(h) + rel[:, 1] * np.cos(h)
        return out_s, out_d, out_l


def turtle(start: Sequence[float], heading: float, moves: Sequence[tuple[float, float]], step: float = 0.05,
           ) -> Path2D:
    """A path of ``moves`` = (length m, turn rate rad/m; + left), like a street of straights and arcs."""
    x, y, h = float(start[0]), float(start[1]), float(heading)
    pts = [(x, y)]
    for length, rate in moves:
        for _ in range(max(1, round(length / step))):
            h += rate * step / 2
            x, y = x + step * math.cos(h), y + step * math.sin(h)
            h += rate * step / 2
            pts.append((x, y))
    return Path2D(np.asarray(pts))


def offset_path(path: Path2D, s0: float, s1: float, lateral: float) -> Path2D:
    """The stretch [s0, s1] of ``path`` shifted ``lateral`` metres to the left."""
    s = np.arange(s0, s1, 0.05)
    return Path2D(path.at(s) + lateral * path.left(s))


def yaw_quaternion(yaw: np.ndarray) -> np.ndarray:
    """(x, y, z, w) quaternions of rotations about z."""
    return np.stack([np.zeros_like(yaw), np.zeros_like(yaw), np.sin(yaw / 2), np.cos(yaw / 2)], -1)
