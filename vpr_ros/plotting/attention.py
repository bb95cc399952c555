"""Where BoQ's learned queries look: their cross-attention over the patches, drawn on the image.

BoQ has no cluster assignment to show (``vpr-ros visualize assignment``); what plays that part is
the attention each learned query of each BoQ block pays to every patch. ``vpr-ros visualize
attention IMAGE`` runs a BoQ model on one image and calls :func:`plot_query_attention`: one row
per BoQ block, first the mean over all its queries, then the queries whose attention is most
concentrated (highest peak), each map scaled to its own maximum.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vpr_ros.errors import InputError
from vpr_ros.plotting import plt, save_figure


def query_attention(maps: Sequence[np.ndarray], grid: tuple[int, int]) -> np.ndarray:
    """Per block ``[Q, h*w]`` head-averaged attention (row-major patches) -> ``[blocks, Q, h, w]``."""
    h, w = grid
    arrays = [np.asarray(m, np.float32) for m in maps]
    if not arrays or any(a.ndim != 2 or a.shape[1] != h * w for a in arrays):
        raise InputError(f"expected per-block attention maps [queries, {h * w}] for a {h}x{w} grid, got "
                         f"{[a.shape for a in arrays]}")
    return np.stack([a.reshape(a.shape[0], h, w) for a in arrays])


def most_focused(attention: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` queries per block with the highest attention peak: ``[blocks, count]``
    (ties in index order)."""
    peaks = attention.reshape(*attention.shape[:2], -1).max(-1)
    return np.argsort(-peaks, axis=1, kind="stable")[:, : max(0, min(count, attention.shape[1]))]


def plot_query_attention(
    image: np.ndarray, attention: np.ndarray, out: str | os.PathLike, queries: int = 5, title: str | None = None
) -> Path:
    """Jet overlays of ``attention [blocks, Q, h, w]`` on ``image [H, W, 3]``: per block the mean over
    all queries, then its ``queries`` most focused queries (:func:`most_focused`)."""
    blocks, num_queries = attention.shape[:2]
    picks = most_focused(attention, queries)
    ncols = 1 + picks.shape[1]
    height, width = image.shape[:2]
    fig, axes = plt.subplots(blocks, ncols, figsize=(2.8 * ncols, 2.9 * blocks), layout="constrained", squeeze=False)
    for b in range(blocks):
        panels = [(f"block {b}: mean of {num_queries} queries", attention[b].mean(0))]
        panels += [(f"block {b}, query {q}", attention[b, q]) for q in picks[b]]
        for ax, (name, m) in zip(axes[b], panels, strict=True):
            ax.imshow(image)
            ax.imshow(m / max(float(m.max()), 1e-12), cmap="jet", vmin=0, vmax=1, alpha=0.5,
                      extent=(0, width, height, 0), interpolation="bilinear")
            ax.set_title(f"{name}\npeak {m.max():.3f}", fontsize=9)
            ax.set_axis_off()
    fig.suptitle(title or f"BoQ cross-attention ({attention.shape[2]}x{attention.shape[3]} patches)")
    return save_figure(fig, out)
