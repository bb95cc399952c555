"""Diagnostic plots: patch matches, cluster assignments, feature maps, retrieval and recall@K.

Every plot is a PNG written atomically (temporary file, then rename) with the Agg backend, so it
works headless. These functions take arrays; the ``vpr-ros visualize`` subcommands
(:mod:`vpr_ros.cli.visualize`) run a model on image files first:

- ``visualize matches QUERY REF``: mutual-nearest-neighbour patch matches between two images.
- ``visualize assignment IMAGE``: which aggregator cluster each patch goes to, and the dustbin.
- ``visualize heatmap IMAGE``: channel mean / max / L2 norm and the highest-variance channels.
- ``visualize retrieval MAP QUERY``: the query and its top-k places in a saved place map. The
  tiles are read back through each place's ``source`` (its frame in the source bag, or an image
  file); places without a readable image get a placeholder tile.
- ``visualize recall RESULTS_JSON``: recall@K curves, ``{"label": {"1": 0.9, "5": 0.95}}``.

Patch index ``i`` on an ``h x w`` grid is at ``(row, col) = divmod(i, w)``; its centre in an image
of ``H x W`` pixels is ``((col + 0.5) * W / w, (row + 0.5) * H / h)``. Unlike the reference a2gc
plot (whose line ends are shifted by the query width inside the reference axes and overshoot),
matches are drawn on one canvas holding both images, so every line ends on its patch centre.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.colors import BoundaryNorm, ListedColormap, Normalize  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

from vpr_ros.errors import InputError
from vpr_ros.io.files import write_atomic
from vpr_ros.loop_closure.verification import MIN_MATCH_SIMILARITY, mutual_nearest

DPI = 100
GAP = 10  # pixels between the two images of a match plot


# -- helpers ----------------------------------------------------------------------------------------


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


def _minmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.nan_to_num(np.asarray(x, np.float32).reshape(-1, np.shape(x)[-1]))
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# -- matches ----------------------------------------------------------------------------------------


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


# -- assignment -------------------------------------------------------------------------------------


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


# -- feature heat maps ------------------------------------------------------------------------------


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


# -- retrieval --------------------------------------------------------------------------------------


@dataclass
class RetrievalTile:
    """One retrieved place: its image (None: placeholder), caption, score and correctness (None: unknown)."""

    image: np.ndarray | None
    label: str
    score: float
    correct: bool | None = None


def thumbnail(image: str | os.PathLike | np.ndarray | None, side: int = 384) -> np.ndarray | None:
    """An image file or RGB array shrunk to fit ``side`` pixels; None for None or an unreadable file."""
    from vpr_ros.preprocess import load_image  # refuses a FIFO or a device instead of blocking on it

    if image is None:
        return None
    try:
        im = Image.fromarray(image if isinstance(image, np.ndarray) else load_image(image))
        with im:
            im = im.convert("RGB")
            im.thumbnail((side, side))
            return np.asarray(im)
    except (OSError, ValueError):
        return None


def plot_retrieval(
    query: np.ndarray, tiles: Sequence[RetrievalTile], out: str | os.PathLike, title: str | None = None
) -> Path:
    """Query image then one tile per result; border green/red when correctness is known, grey if not.

    The figure is as tall as the tallest image at the common tile width plus its captions, so
    landscape frames leave no empty band.
    """
    n = len(tiles) + 1
    panels = [(query, "query", "query", None)] + [
        (t.image, t.label, f"#{i + 1} {t.label}\ncos {t.score:.3f}", t.correct) for i, t in enumerate(tiles)]
    tile_w = 2.8  # inches per panel; the image gets about 2.65 of them after padding
    aspects = [img.shape[0] / img.shape[1] for img, *_ in panels if img is not None]
    blank = aspects[0] if aspects else 0.75  # placeholders take the query's shape
    aspect = max(aspects + [blank])
    lines = max(caption.count("\n") + 1 for _, _, caption, _ in panels)
    fig, axes = plt.subplots(1, n, figsize=(tile_w * n, 2.65 * aspect + 0.17 * lines + 0.45),
                             layout="constrained", squeeze=False)
    for i, (ax, (img, label, caption, correct)) in enumerate(zip(axes[0], panels, strict=True)):
        if img is None:
            h, w = 4 * blank, 4
            ax.imshow(np.full((3, 4), 0.85), cmap="gray", vmin=0, vmax=1, extent=(0, w, h, 0))
            ax.text(w / 2, h / 2, f"no image\n{label}", ha="center", va="center", fontsize=9)
        else:
            ax.imshow(img)
            h, w = img.shape[:2]
        colour = {True: "tab:green", False: "tab:red", None: "0.5"}[correct]
        if i > 0:
            width = 3 if correct is None else 8
            ax.add_patch(Rectangle((0, 0), w, h, fill=False, edgecolor=colour, linewidth=width, clip_on=True))
        ax.set_title(caption, fontsize=9, color="black" if correct is None else colour)
        ax.set_axis_off()
    known = [t.correct for t in tiles if t.correct is not None]
    default = f"top-{len(tiles)} retrieval" + (f": {sum(known)} of {len(known)} correct" if known else "")
    fig.suptitle(title or default)
    return save_figure(fig, out)


# -- recall@K ---------------------------------------------------------------------------------------


def _recall_groups(curves: Mapping[str, list[tuple[int, float]]]) -> list[tuple[str, list[str]]]:
    """Labels grouped by identical curves, first label first: one line is drawn per group.

    An index kind that loses nothing (``msls_val (fp16)`` equal to ``msls_val``) then shares its
    dataset's line instead of hiding it.
    """
    groups: dict[tuple, list[str]] = {}
    for label, curve in curves.items():
        groups.setdefault(tuple(curve), []).append(label)
    return [(labels[0], labels) for labels in groups.values()]


def _group_name(labels: Sequence[str]) -> str:
    """``msls_val (exact = fp16)`` for one dataset's kinds; several datasets joined with ``=``, one per line."""
    kinds: dict[str, list[str]] = {}
    for label in labels:
        base, _, kind = label.partition(" (")
        kinds.setdefault(base, []).append(kind.removesuffix(")") or "exact")
    return "\n= ".join(base if k == ["exact"] else f"{base} ({' = '.join(k)})" for base, k in kinds.items())


def plot_recall(results: Mapping[str, Mapping[int | str, float]], out: str | os.PathLike,
                title: str = "recall@K") -> Path:
    """R@K curves; ``results = {label: {k: recall}}``, recall as fraction or percent.

    Labels ``"<dataset> (<index kind>)"`` share their dataset's colour, dashed. Identical curves
    are drawn once with all their labels; the legend sits beside the axes, never over a curve.
    """
    if not results:
        raise InputError("no results to plot")
    curves = {label: sorted((int(k), float(v)) for k, v in r.items()) for label, r in results.items()}
    percent = max(v for c in curves.values() for _, v in c) > 1.0
    bases = list(dict.fromkeys(label.split(" (", 1)[0] for label in curves))
    cmap = plt.get_cmap("tab10" if len(bases) <= 10 else "tab20")
    colour = {base: cmap(i % cmap.N) for i, base in enumerate(bases)}
    fig, ax = plt.subplots(figsize=(9, 4.8), layout="constrained")
    all_k = sorted({k for c in curves.values() for k, _ in c})
    for first, labels in _recall_groups(curves):
        ks, vs = zip(*curves[first], strict=True)
        vs = np.asarray(vs) * (1 if percent else 100)
        kind = " (" in first
        ax.plot(ks, vs, marker="s" if kind else "o", linestyle="--" if kind else "-",
                color=colour[first.split(" (", 1)[0]], label=f"{_group_name(labels)}: R@{ks[0]} {vs[0]:.1f}")
    ax.set_xscale("log" if all_k[-1] / max(all_k[0], 1) > 20 else "linear")
    ax.set_xticks(all_k, [str(k) for k in all_k])
    ax.set_xlabel("K (retrieved candidates)")
    ax.set_ylabel("recall@K (%)")
    ax.set_ylim(top=100)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9, frameon=False)
    ax.set_title(title)
    return save_figure(fig, out)


def load_recall_json(path: str | os.PathLike) -> dict[str, dict[int, float]]:
    """``{label: {k: recall}}``, or the ``results.json`` that ``vpr-ros eval`` writes."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict) and isinstance(data.get("results"), list):  # vpr-ros eval output
        curves = {}
        for r in data["results"]:
            if r.get("recalls"):
                curves[r["dataset"]] = r["recalls"]
            if r.get("index_recalls"):
                curves[f"{r['dataset']} ({r['index_kind']})"] = r["index_recalls"]
        data = curves
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise InputError(f"{path}: expected {{label: {{k: recall}}}}")
    return {str(label): {int(k): float(v) for k, v in r.items()} for label, r in data.items()}
