"""WGS84 fixes to metres in a local east-north-up frame, and the frame id that carries its origin."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# WGS84 ellipsoid (NIMA TR8350.2): semi-major axis and flattening.
WGS84_A = 6378137.0
WGS84_F = 1.0 / 298.257223563
WGS84_E2 = WGS84_F * (2.0 - WGS84_F)


def geodetic_to_ecef(lat_deg: float, lon_deg: float, alt_m: float) -> np.ndarray:
    """Earth-centred, earth-fixed (x, y, z) metres of a WGS84 latitude/longitude/ellipsoid height."""
    lat, lon = math.radians(lat_deg), math.radians(lon_deg)
    n = WGS84_A / math.sqrt(1.0 - WGS84_E2 * math.sin(lat) ** 2)  # prime vertical radius of curvature
    return np.array([(n + alt_m) * math.cos(lat) * math.cos(lon),
                     (n + alt_m) * math.cos(lat) * math.sin(lon),
                     (n * (1.0 - WGS84_E2) + alt_m) * math.sin(lat)])


def geodetic_to_enu(lat_deg: float, lon_deg: float, alt_m: float, origin: Sequence[float]) -> np.ndarray:
    """East, north, up metres of a fix relative to ``origin`` = (lat°, lon°, alt m); exact, no flat-earth guess."""
    lat0, lon0 = math.radians(origin[0]), math.radians(origin[1])
    d = geodetic_to_ecef(lat_deg, lon_deg, alt_m) - geodetic_to_ecef(*origin)
    sl, cl, so, co = math.sin(lat0), math.cos(lat0), math.sin(lon0), math.cos(lon0)
    rotation = np.array([[-so, co, 0.0], [-sl * co, -sl * so, cl], [cl * co, cl * so, sl]])
    return rotation @ d


ENU_PREFIX = "enu:"


def enu_frame(origin: Sequence[float]) -> str:
    """Frame id of the ENU frame around ``origin``: the origin travels with every pose that uses it."""
    return f"{ENU_PREFIX}{origin[0]:.9f},{origin[1]:.9f},{origin[2]:.3f}"


def enu_origin_of(frame_id: str) -> tuple[float, float, float] | None:
    """The (lat, lon, alt) origin encoded by :func:`enu_frame`, or None for any other frame."""
    if not frame_id.startswith(ENU_PREFIX):
        return None
    try:
        lat, lon, alt = (float(v) for v in frame_id[len(ENU_PREFIX):].split(","))
    except ValueError:
        return None
    return lat, lon, alt
