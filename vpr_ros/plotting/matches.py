"""Mutual-nearest-neighbour patch matches between two images, drawn as lines between patch centres.

Patch index ``i`` on an ``h x w`` grid is at ``(row, col) = divmod(i, w)``; its centre in an image
of ``H x W`` pixels is ``((col + 0.5) * W / w, (row + 0.5) * H / h)``. Unlike the reference a2gc
plot (whose line ends are shifted by the query width inside the reference axes and overshoot),
matches are drawn on one canvas holding both images, so every line ends on its patch centre.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize

from vpr_ros.errors import InputError
from vpr_ros.loop_closure.verification import MIN_MATCH_SIMILARITY, mutual_nearest
from vpr_ros.plotting import plt, save_figure

GAP = 10  # pixels between the two images of a match plot


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.nan_to_num(np.asarray(x, np.float32).reshape(-1, np.shape(x)[-1]))
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def mutual_matches(
    tokens_a: np.ndarray, tokens_b: np.ndarray, threshold: float = MIN_MATCH_SIMILARITY, top_k: int | None = 200
) -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest-neighbour patch matches by cosine similarity.

    Args:
        tokens_a, tokens_b: patch tokens ``[h, w, C]`` (or ``[n, C]``), any norm.
        threshold: minimum cosine similarity of a kept pair (default: the one geometric verification uses).
        top_k: keep at most this many pairs, best first (None: all).
    Returns:
        ``(pairs [M, 2] int64 flat patch indices (a, b), scores [M] float32)``, sorted by score
        descending.
    """
    a, b = _unit_rows(tokens_a), _unit_rows(tokens_b)
    if a.shape[1] != b.shape[1]:
        raise InputError(f"token widths differ: {a.shape[1]} vs {b.shape[1]}")
    ia, ib, scores = mutual_nearest(a, b, threshold)
    order = np.argsort(-scores, kind="stable")
    if top_k is not None:
        order = order[: max(int(top_k), 0)]
    return np.stack([ia[order], ib[order]], axis=1).astype(np.int64), scores[order].astype(np.float32)


def patch_centres(indices: np.ndarray, grid: Sequence[int], image_size: Sequence[int]) -> np.ndarray:
    """Pixel centres ``[M, 2]`` as (x, y) of flat patch ``indices`` on an ``(h, w)`` grid."""
    (h, w), (height, width) = grid, image_size
    row, col = np.divmod(np.asarray(indices, np.int64), w)
    return np.stack([(col + 0.5) * width / w, (row + 0.5) * height / h], axis=1).astype(np.float64)


def match_endpoints(
    pairs: np.ndarray,
    grid_a: Sequence[int],
    grid_b: Sequence[int],
    size_a: Sequence[int],
    size_b: Sequence[int],
    gap: int = GAP,
) -> tuple[np.ndarray, np.ndarray]:
    """Line ends on the side-by-side canvas: image a at x in [0, Wa), b at [Wa + gap, Wa + gap + Wb)."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    pa = patch_centres(pairs[:, 0], grid_a, size_a)
    pb = patch_centres(pairs[:, 1], grid_b, size_b)
    pb[:, 0] += size_a[1] + gap
    return pa, pb


def plot_matches(
    image_a: np.ndarray,
    image_b: np.ndarray,
    pairs: np.ndarray,
    scores: np.ndarray,
    grid_a: Sequence[int],
    grid_b: Sequence[int],
    out: str | os.PathLike,
    title: str | None = None,
    threshold: float | None = None,
) -> Path:
    """Both images side by side on one canvas, matched patch centres joined by score-coloured lines."""
    (ha, wa), (hb, wb) = image_a.shape[:2], image_b.shape[:2]
    height = max(ha, hb)
    canvas = np.full((height, wa + GAP + wb, 3), 255, np.uint8)
    canvas[:ha, :wa] = image_a[..., :3]
    canvas[:hb, wa + GAP:] = image_b[..., :3]
    pa, pb = match_endpoints(pairs, grid_a, grid_b, (ha, wa), (hb, wb))
    scores = np.asarray(scores, np.float64)
    lo = scores.min() if len(scores) > 1 else (threshold if threshold is not None else 0.0)
    hi = max(scores.max() if len(scores) else 1.0, lo + 1e-6)
    norm, cmap = Normalize(lo, hi), plt.get_cmap("viridis")
    fig_w = 11.0
    fig = plt.figure(figsize=(fig_w, 0.85 * fig_w * height / canvas.shape[1] + 1.4), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(canvas)
    if len(pairs):
        colours = cmap(norm(scores))
        ax.add_collection(LineCollection(np.stack([pa, pb], axis=1), colors=colours, linewidths=0.9, alpha=0.85))
        for pts in (pa, pb):
            ax.scatter(pts[:, 0], pts[:, 1], s=9, c=colours, edgecolors="white", linewidths=0.3, zorder=3)
    ax.set_xlim(-0.5, canvas.shape[1] - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_xticks([wa / 2, wa + GAP + wb / 2], ["query", "reference"])
    ax.set_yticks([])
    ax.set_title(textwrap.fill(title or f"{len(pairs)} mutual patch matches", 90))
    fig.colorbar(plt.cm.ScalarMappable(norm, cmap), ax=ax, shrink=0.8, label="patch cosine similarity")
    return save_figure(fig, out)
