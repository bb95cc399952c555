"""A query and the places retrieved for it, as tiles with captions, scores and correctness."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.patches import Rectangle
from PIL import Image

from vpr_ros.plotting import plt, save_figure


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
