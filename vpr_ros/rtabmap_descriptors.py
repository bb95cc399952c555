"""RTAB-Map's global descriptor wire format, without ROS: a descriptor as the ``data`` bytes of
``rtabmap_msgs/GlobalDescriptor``.

RTAB-Map (>= 0.21.5) keeps each ``RGBDImage``'s global descriptor with its node and, with
``Kp/TfIdfLikelihoodUsed: false``, scores loop hypotheses by ``(dot + 1) / 2`` of two type-1
descriptors (``Signature::compareTo``), which assumes unit vectors. Its ``uncompressData`` reads the
zlib stream of the raw matrix bytes, then three native-endian int32 (rows, cols, OpenCV type); this
module writes what its ``compressData`` writes for one float32 row. A descriptor that is not one finite
unit-norm row raises :class:`InputError` here, where RTAB-Map would assert (or score garbage) far away.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from vpr_ros.errors import InputError

DESCRIPTOR_TYPE = 1  # the type Signature::compareTo scores by dot product when TF-IDF is off
CV_32FC1 = 5  # OpenCV's type code of a one-channel float32 matrix
ZLIB_LEVEL = zlib.Z_DEFAULT_COMPRESSION  # rtabmap calls compress(), i.e. compress2 at the default level
NORM_TOLERANCE = 1e-3  # |norm - 1| accepted: float32 rounding of a normalised vector stays far below
_TRAILER = struct.Struct("=iii")  # rows, cols, type; native byte order, as rtabmap copies its ints


def encode_descriptor(descriptor: np.ndarray) -> bytes:
    """``GlobalDescriptor.data`` for one L2-normalised descriptor (1-D, floating point; sent as float32)."""
    d = np.asarray(descriptor)
    if d.ndim != 1 or d.size == 0:
        raise InputError(f"a global descriptor must be one non-empty row, got shape {d.shape}")
    if not np.issubdtype(d.dtype, np.floating):
        raise InputError(f"a global descriptor must be floating point, got {d.dtype}")
    row = np.ascontiguousarray(d, dtype=np.float32)
    if not np.isfinite(row).all():
        raise InputError(f"the global descriptor has {int((~np.isfinite(row)).sum())} non-finite value(s)")
    norm = float(np.linalg.norm(row.astype(np.float64)))
    if abs(norm - 1.0) > NORM_TOLERANCE:
        raise InputError(f"the global descriptor must be L2-normalised (RTAB-Map scores (dot + 1) / 2), "
                         f"its norm is {norm:.6g}")
    return zlib.compress(row.tobytes(), ZLIB_LEVEL) + _TRAILER.pack(1, row.size, CV_32FC1)
