"""Recall@K curves, from results in memory or the ``results.json`` that ``vpr-ros eval`` writes."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from vpr_ros.errors import InputError
from vpr_ros.plotting import plt, save_figure


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
