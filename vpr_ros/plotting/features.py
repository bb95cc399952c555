"""What the aggregator sees in one image: each patch's cluster and dustbin share, and feature heat maps."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.colors import BoundaryNorm, ListedColormap
from PIL import Image

from vpr_ros.plotting import plt, save_figure


def _minmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def assignment_maps(log_plan: np.ndarray, grid: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """From a log plan ``[m + 1, n]`` (dustbin last): (cluster argmax ``[h, w]``, dustbin share ``[h, w]``).

    The dustbin share is the dustbin's part of each patch's (column's) total mass, in [0, 1]; it
    does not depend on whether the solver rescales columns (SALAD) or not (A²GC).
    """
    plan = np.exp(np.asarray(log_plan, np.float64))
    h, w = grid
    clusters = plan[:-1].argmax(axis=0).reshape(h, w)
    dustbin = (plan[-1] / np.maximum(plan.sum(axis=0), 1e-300)).reshape(h, w)
    return clusters, dustbin


def plot_assignment(
    image: np.ndarray,
    clusters: np.ndarray,
    dustbin: np.ndarray,
    num_clusters: int,
    out: str | os.PathLike,
    title: str | None = None,
) -> Path:
    """Left: patch -> cluster as categorical colours over the image; right: dustbin share heat map."""
    height, width = image.shape[:2]
    extent = (0, width, height, 0)
    base = plt.get_cmap("tab20" if num_clusters > 10 else "tab10")
    cmap = ListedColormap([base(i % base.N) for i in range(num_clusters)])
    bounds = np.arange(num_clusters + 1) - 0.5
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2), layout="constrained")
    axes[0].imshow(image)
    im = axes[0].imshow(clusters, cmap=cmap, norm=BoundaryNorm(bounds, cmap.N), alpha=0.55,
                        extent=extent, interpolation="nearest")
    used = len(np.unique(clusters))
    axes[0].set_title(f"cluster of each patch ({used} of {num_clusters} clusters used)")
    ticks = np.arange(num_clusters) if num_clusters <= 20 else np.linspace(0, num_clusters - 1, 9).round()
    fig.colorbar(im, ax=axes[0], ticks=ticks, shrink=0.85, label="cluster")
    axes[1].imshow(np.asarray(Image.fromarray(image).convert("L")), cmap="gray")
    im = axes[1].imshow(dustbin, cmap="inferno", vmin=0, vmax=max(float(dustbin.max()), 1e-6), alpha=0.6,
                        extent=extent, interpolation="nearest")
    axes[1].set_title(f"dustbin share (discarded), mean {dustbin.mean():.2f}")
    fig.colorbar(im, ax=axes[1], shrink=0.85, label="share of patch mass sent to dustbin")
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return save_figure(fig, out)


def feature_maps(tokens: np.ndarray, channels: int = 1) -> list[tuple[str, np.ndarray]]:
    """Named ``[h, w]`` maps of patch tokens ``[h, w, C]``: mean, max, L2 norm, top-variance channels."""
    t = np.asarray(tokens, np.float32)
    flat_var = t.reshape(-1, t.shape[-1]).var(axis=0)
    top = np.argsort(-flat_var, kind="stable")[: max(int(channels), 0)]
    maps = [("channel mean", t.mean(-1)), ("channel max", t.max(-1)), ("L2 norm per patch", np.linalg.norm(t, axis=-1))]
    maps += [(f"channel {c} (variance rank {r + 1})", t[..., c]) for r, c in enumerate(top)]
    return maps


def plot_heatmaps(
    image: np.ndarray, tokens: np.ndarray, out: str | os.PathLike, channels: int = 1, title: str | None = None
) -> Path:
    """Jet overlays (min-max normalised, bilinearly upscaled) of :func:`feature_maps`; 2x2 for one channel."""
    maps = feature_maps(tokens, channels)
    height, width = image.shape[:2]
    ncols = 2 if len(maps) <= 4 else 3
    nrows = -(-len(maps) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 4.2 * nrows), layout="constrained", squeeze=False)
    for ax, (name, m) in zip(axes.flat, maps, strict=False):
        ax.imshow(image)
        im = ax.imshow(_minmax(m), cmap="jet", vmin=0, vmax=1, alpha=0.5, extent=(0, width, height, 0),
                       interpolation="bilinear")
        ax.set_title(f"{name}\n[{m.min():.3g}, {m.max():.3g}]", fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.8, label="min-max normalised")
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle(title or f"patch feature maps ({tokens.shape[0]}x{tokens.shape[1]} patches, {tokens.shape[-1]} ch)")
    return save_figure(fig, out)
