"""Diagnostic plots: patch matches, cluster assignments, feature maps, BoQ's query attention,
retrieval and recall@K.

Every plot is a PNG written atomically (temporary file, then rename) with the Agg backend, so it
works headless. These functions take arrays; the ``vpr-ros visualize`` subcommands
(:mod:`vpr_ros.cli.visualize`) run a model on image files first:

- ``visualize matches QUERY REF``: mutual-nearest-neighbour patch matches between two images (:mod:`.matches`).
- ``visualize assignment IMAGE``: which aggregator cluster each patch goes to, and the dustbin (:mod:`.features`).
- ``visualize heatmap IMAGE``: channel mean / max / L2 norm and the highest-variance channels (:mod:`.features`).
- ``visualize attention IMAGE``: where BoQ's learned queries look (:mod:`.attention`).
- ``visualize retrieval MAP QUERY``: the query and its top-k places in a saved place map (:mod:`.retrieval`).
  The tiles are read back through each place's ``source`` (its frame in the source bag, or an image
  file); places without a readable image get a placeholder tile.
- ``visualize recall RESULTS_JSON``: recall@K curves, ``{"label": {"1": 0.9, "5": 0.95}}`` (:mod:`.recall`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from vpr_ros.io.files import write_atomic  # noqa: E402

DPI = 100


def save_figure(fig, out: str | os.PathLike) -> Path:
    """Save ``fig`` as PNG atomically (:func:`vpr_ros.io.files.write_atomic`: never over a device or folder)."""
    try:
        return write_atomic(out, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    finally:
        plt.close(fig)


def resized_rgb(image, size: Sequence[int]) -> np.ndarray:
    """An image (path, array, PIL) as the model sees it: RGB uint8 resized to (H, W), bilinear."""
    from vpr_ros.preprocess import _to_pil_rgb

    h, w = int(size[0]), int(size[1])
    return np.asarray(_to_pil_rgb(image).resize((w, h), Image.BILINEAR))
