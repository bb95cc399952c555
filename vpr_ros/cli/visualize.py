"""``vpr-ros visualize {matches,assignment,attention,heatmap,retrieval,recall}``: run the model on image
files and plot.

The plots themselves are library functions in the :mod:`vpr_ros.plotting` package (BoQ's query
attention in :mod:`vpr_ros.plotting.attention`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vpr_ros.cli.arguments import MAX_INDEX, MAX_K, SIMILARITY, integer
from vpr_ros.cli.common import CHECKPOINT_SIZE, MAP_SIZE, add_model_args, make_extractor, require_files, retrieval_tiles
from vpr_ros.errors import InputError
from vpr_ros.io.files import output_path
from vpr_ros.loop_closure.verification import MIN_MATCH_SIMILARITY

MATCH_SIDE = 640  # longest side of each image in a match plot (aspect ratio kept)
MAX_MATCHES = 100_000  # more than the patches of two images at the largest input size
MAX_PANELS = 64  # panels of one figure (channels, queries per block)


def _patch_features(extractor, image) -> tuple[np.ndarray, np.ndarray, object]:
    """(descriptor [D], patch tokens [h, w, C], feature map tensor [1, C, h, w]) of one image."""
    desc, fmap = extractor.forward(extractor.preprocess([image]), patch_tokens=True)
    return desc[0].cpu().numpy(), fmap[0].permute(1, 2, 0).cpu().numpy(), fmap


def cmd_matches(args) -> int:
    """Matches drawn on the images as they are (aspect ratio kept); the patch grid of the resized
    model input maps onto them proportionally."""
    from vpr_ros.plotting.matches import mutual_matches, plot_matches
    from vpr_ros.plotting.retrieval import thumbnail

    require_files([args.query, args.ref])
    ext = make_extractor(args)
    da, ta, _ = _patch_features(ext, str(args.query))
    db, tb, _ = _patch_features(ext, str(args.ref))
    pairs, scores = mutual_matches(ta, tb, args.threshold, args.top_k)
    title = (f"{len(pairs)} mutual matches (patch cosine >= {args.threshold:g}, top {args.top_k}) of "
             f"{ta.shape[0] * ta.shape[1]} patches; global cosine {float(da @ db):.3f}")
    plot_matches(thumbnail(args.query, MATCH_SIDE), thumbnail(args.ref, MATCH_SIDE), pairs, scores, ta.shape[:2],
                 tb.shape[:2], args.out, title, args.threshold)
    print(f"wrote {args.out}: {len(pairs)} matches")
    return 0


def _image_input(args, method: str | None = None, missing: str = ""):
    """The extractor, patch tokens and aggregator input of ``args.image``, once the model's aggregator is
    known to have ``method`` if one is named (else an InputError: the model ``missing`` ...)."""
    require_files([args.image])
    ext = make_extractor(args)
    if method is not None and not hasattr(ext.model.aggregator, method):
        raise InputError(f"{ext.model.cfg.arch} {missing}")
    _, tokens, fmap = _patch_features(ext, str(args.image))
    return ext, tokens, fmap


def cmd_assignment(args) -> int:
    import torch

    from vpr_ros.plotting import resized_rgb
    from vpr_ros.plotting.features import assignment_maps, plot_assignment

    why = "has no cluster assignment; `vpr-ros visualize attention` shows where its queries look"
    ext, tokens, fmap = _image_input(args, "log_assignment", why)
    with torch.inference_mode():
        log_plan = ext.model.aggregator.log_assignment(fmap)[0].float().cpu().numpy()
    clusters, dustbin = assignment_maps(log_plan, tokens.shape[:2])
    plot_assignment(resized_rgb(args.image, ext.image_size), clusters, dustbin, log_plan.shape[0] - 1, args.out,
                    f"{ext.model.cfg.describe()}: {Path(args.image).name}")
    print(f"wrote {args.out}")
    return 0


def cmd_attention(args) -> int:
    """BoQ: where each block's learned queries look (:mod:`vpr_ros.plotting.attention`)."""
    import torch

    from vpr_ros.plotting import resized_rgb
    from vpr_ros.plotting.attention import plot_query_attention, query_attention

    why = "has no learned queries (BoQ has); `vpr-ros visualize assignment` shows its clusters"
    ext, tokens, fmap = _image_input(args, "forward_with_attention", why)
    with torch.inference_mode():
        _, maps = ext.model.aggregator.forward_with_attention(fmap)
    attention = query_attention([m[0].float().cpu().numpy() for m in maps], tokens.shape[:2])
    plot_query_attention(resized_rgb(args.image, ext.image_size), attention, args.out, args.queries,
                         f"{ext.model.cfg.describe()}: {Path(args.image).name}")
    print(f"wrote {args.out}")
    return 0


def cmd_heatmap(args) -> int:
    from vpr_ros.plotting import resized_rgb
    from vpr_ros.plotting.features import plot_heatmaps

    ext, tokens, _ = _image_input(args)
    plot_heatmaps(resized_rgb(args.image, ext.image_size), tokens, args.out, args.channels)
    print(f"wrote {args.out}")
    return 0


def cmd_retrieval(args) -> int:
    """The query and its top-k places; tiles come through the same reader as ``vpr-ros query --montage``."""
    from vpr_ros.maps.place_map import PlaceMap
    from vpr_ros.plotting.retrieval import plot_retrieval, thumbnail

    require_files([args.query])
    info = PlaceMap.info(args.map)
    args.image_size = PlaceMap.input_size(info.path, args.image_size)
    ext = make_extractor(args)
    pm = PlaceMap.load(info.path, ext.identity)
    scores, ids = pm.search(ext.describe([str(args.query)]), args.k)
    positives = None if args.positives is None else set(args.positives)
    tiles = retrieval_tiles(pm, scores[0], ids[0], args.bag or [], positives)
    plot_retrieval(thumbnail(args.query, 512), tiles, args.out, None)
    print(f"wrote {args.out}: " + ", ".join(f"{t.label.splitlines()[0]} ({t.score:.3f})" for t in tiles))
    return 0


def cmd_recall(args) -> int:
    from vpr_ros.plotting.recall import load_recall_json, plot_recall

    require_files([args.results], "results")
    plot_recall(load_recall_json(args.results), args.out, args.title)
    print(f"wrote {args.out}")
    return 0


def _checked_out(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``func`` after ``--out`` is known to be writable (:func:`vpr_ros.io.files.output_path`), before the model
    loads: a folder or a device is refused at once."""

    def run(args: argparse.Namespace) -> int:
        output_path(args.out)
        return func(args)

    return run


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``visualize {matches,assignment,attention,heatmap,retrieval,recall}``; ``recall`` needs no model."""
    vis = subparsers.add_parser("visualize", help="diagnostic plots (PNG)")
    sub = vis.add_subparsers(dest="plot", required=True)

    def plot(name: str, help: str, func, model: bool = True, size: str = CHECKPOINT_SIZE) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        if model:
            add_model_args(p, size)
        p.add_argument("--out", required=True, type=Path, help="output PNG")
        p.set_defaults(func=_checked_out(func))
        return p

    p = plot("matches", "mutual nearest-neighbour patch matches between two images", cmd_matches)
    p.add_argument("query", type=Path)
    p.add_argument("ref", type=Path)
    p.add_argument("--top-k", type=integer(1, MAX_MATCHES), default=200,
                   help=f"keep the best K matches, 1..{MAX_MATCHES} (default 200)")
    p.add_argument("--threshold", type=SIMILARITY, default=MIN_MATCH_SIMILARITY,
                   help=f"minimum patch cosine similarity (default {MIN_MATCH_SIMILARITY}, as geometric verification)")
    p = plot("assignment", "aggregator cluster of each patch and the dustbin share", cmd_assignment)
    p.add_argument("image", type=Path)
    p = plot("attention", "BoQ: cross-attention of the learned queries over the patches", cmd_attention)
    p.add_argument("image", type=Path)
    p.add_argument("--queries", type=integer(1, MAX_PANELS), default=5,
                   help=f"most focused queries shown per block, 1..{MAX_PANELS} (default 5)")
    p = plot("heatmap", "patch feature maps: mean, max, L2 norm, top-variance channels", cmd_heatmap)
    p.add_argument("image", type=Path)
    p.add_argument("--channels", type=integer(0, MAX_PANELS), default=1,
                   help=f"highest-variance channels to show, 0..{MAX_PANELS} (default 1: 2x2 grid)")
    p = plot("retrieval", "query and its top-k places; tiles read back through each place's source (bag frame "
             "or image file)", cmd_retrieval, size=MAP_SIZE)
    p.add_argument("map", type=Path, help="place map folder")
    p.add_argument("query", type=Path)
    p.add_argument("--k", type=integer(1, MAX_K), default=5, help=f"results, 1..{MAX_K} (default 5)")
    p.add_argument("--positives", type=integer(0, MAX_INDEX), nargs="*", metavar="ID",
                   help="place ids that are correct for the query (green); others red")
    p.add_argument("--bag", action="append", type=Path, metavar="PATH",
                   help="where a source bag of the map is now, if it moved (matched by file name); repeatable")
    p = plot("recall", 'recall@K curves from JSON {"label": {"1": 0.9, "5": 0.95}}', cmd_recall, model=False)
    p.add_argument("results", type=Path)
    p.add_argument("--title", default="recall@K")
    return vis
