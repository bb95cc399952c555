"""``vpr-ros visualize {matches,assignment,heatmap,retrieval,recall}``: run the model on image files and plot.

The plots themselves are library functions in :mod:`vpr_ros.plotting`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vpr_ros.cli.common import add_model_args, make_extractor
from vpr_ros.plotting import (
    RetrievalTile,
    assignment_maps,
    load_recall_json,
    mutual_matches,
    plot_assignment,
    plot_heatmaps,
    plot_matches,
    plot_recall,
    plot_retrieval,
    resized_rgb,
    thumbnail,
)


def _patch_features(extractor, image) -> tuple[np.ndarray, np.ndarray, object]:
    """(descriptor [D], patch tokens [h, w, C], feature map tensor [1, C, h, w]) of one image."""
    desc, fmap = extractor.forward(extractor.preprocess([image]), patch_tokens=True)
    return desc[0].cpu().numpy(), fmap[0].permute(1, 2, 0).cpu().numpy(), fmap


def cmd_matches(args) -> int:
    ext = make_extractor(args)
    size = ext.image_size
    da, ta, _ = _patch_features(ext, str(args.query))
    db, tb, _ = _patch_features(ext, str(args.ref))
    pairs, scores = mutual_matches(ta, tb, args.threshold, args.top_k)
    title = (f"{len(pairs)} mutual matches (score >= {args.threshold}, top {args.top_k}) of "
             f"{ta.shape[0] * ta.shape[1]} patches; global cosine {float(da @ db):.3f}")
    plot_matches(resized_rgb(args.query, size), resized_rgb(args.ref, size), pairs, scores, ta.shape[:2],
                 tb.shape[:2], args.out, title, args.threshold)
    print(f"wrote {args.out}: {len(pairs)} matches")
    return 0


def cmd_assignment(args) -> int:
    import torch

    ext = make_extractor(args)
    _, tokens, fmap = _patch_features(ext, str(args.image))
    with torch.inference_mode():
        log_plan = ext.model.aggregator.log_assignment(fmap)[0].float().cpu().numpy()
    clusters, dustbin = assignment_maps(log_plan, tokens.shape[:2])
    plot_assignment(resized_rgb(args.image, ext.image_size), clusters, dustbin, log_plan.shape[0] - 1, args.out,
                    f"{ext.model.cfg.describe()}: {Path(args.image).name}")
    print(f"wrote {args.out}")
    return 0


def cmd_heatmap(args) -> int:
    ext = make_extractor(args)
    _, tokens, _ = _patch_features(ext, str(args.image))
    plot_heatmaps(resized_rgb(args.image, ext.image_size), tokens, args.out, args.channels)
    print(f"wrote {args.out}")
    return 0


def cmd_retrieval(args) -> int:
    from vpr_ros.bags.reader import place_image
    from vpr_ros.maps.place_map import PlaceMap

    model = PlaceMap.info(args.map).model
    if args.image_size is None and model is not None:
        args.image_size = model.image_size
    ext = make_extractor(args)
    pm = PlaceMap.load(args.map, ext.identity)
    scores, ids = pm.search(ext.describe([str(args.query)]), args.k)
    positives = None if args.positives is None else set(args.positives)
    tiles = []
    for score, pid in zip(scores[0], ids[0], strict=True):
        if pid < 0:
            continue
        place = pm.place(int(pid))
        label = f"id {place.id} t={place.seconds:.2f}"
        image = thumbnail(place_image(place))
        tiles.append(RetrievalTile(image, label, float(score), None if positives is None else int(pid) in positives))
    plot_retrieval(thumbnail(args.query, 512), tiles, args.out, None)
    print(f"wrote {args.out}: " + ", ".join(f"{t.label} ({t.score:.3f})" for t in tiles))
    return 0


def cmd_recall(args) -> int:
    plot_recall(load_recall_json(args.results), args.out, args.title)
    print(f"wrote {args.out}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``visualize {matches,assignment,heatmap,retrieval,recall}``; ``recall`` needs no model."""
    vis = subparsers.add_parser("visualize", help="diagnostic plots (PNG)")
    sub = vis.add_subparsers(dest="plot", required=True)

    def plot(name: str, help: str, func, model: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        if model:
            add_model_args(p)
        p.add_argument("--out", required=True, type=Path, help="output PNG")
        p.set_defaults(func=func)
        return p

    p = plot("matches", "mutual nearest-neighbour patch matches between two images", cmd_matches)
    p.add_argument("query", type=Path)
    p.add_argument("ref", type=Path)
    p.add_argument("--top-k", type=int, default=200, help="keep the best K matches (default 200)")
    p.add_argument("--threshold", type=float, default=0.3, help="minimum patch cosine similarity (default 0.3)")
    p = plot("assignment", "aggregator cluster of each patch and the dustbin share", cmd_assignment)
    p.add_argument("image", type=Path)
    p = plot("heatmap", "patch feature maps: mean, max, L2 norm, top-variance channels", cmd_heatmap)
    p.add_argument("image", type=Path)
    p.add_argument("--channels", type=int, default=1, help="highest-variance channels to show (default 1: 2x2 grid)")
    p = plot("retrieval", "query and its top-k places; tiles read back through each place's source (bag frame "
             "or image file)", cmd_retrieval)
    p.add_argument("map", type=Path, help="place map folder")
    p.add_argument("query", type=Path)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--positives", type=int, nargs="*", metavar="ID",
                   help="place ids that are correct for the query (green); others red")
    p = plot("recall", 'recall@K curves from JSON {"label": {"1": 0.9, "5": 0.95}}', cmd_recall, model=False)
    p.add_argument("results", type=Path)
    p.add_argument("--title", default="recall@K")
    return vis
