"""``vpr-ros eval`` (Recall@K on benchmark datasets) and ``make-eval-data`` (small datasets in their layouts)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vpr_ros.cli.arguments import MAX_K, integer
from vpr_ros.cli.common import add_model_args, make_extractor
from vpr_ros.errors import InputError
from vpr_ros.evaluation.datasets import DATASETS
from vpr_ros.io.files import file_kind

DEFAULT_CACHE = Path.home() / ".cache" / "vpr_ros" / "descriptors"


def folder_size(folder: Path) -> str:
    """Total size of the files under ``folder``, in kB, MB or GB."""
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0
    unit, scale = next((u, s) for u, s in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)) if size >= s or u == "kB")
    return f"{size / scale:.1f} {unit}"


def cmd_eval(args: argparse.Namespace) -> int:
    """Recall@K of a checkpoint on benchmark datasets; table on stdout, results.{csv,json,md} in --out."""
    from vpr_ros.evaluation.datasets import MissingFilesError, load_dataset
    from vpr_ros.evaluation.recall import evaluate, format_table, write_msls_predictions, write_results
    from vpr_ros.maps.index_kinds import IndexKind

    if args.index is not None:
        IndexKind.parse(args.index)
    for folder in (args.out, args.cache):  # refused before the model loads
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{folder} is {file_kind(folder.stat().st_mode)}, not a folder to write results into")
    datasets, missing = [], []
    for name in args.datasets:  # every dataset is checked before the model loads
        try:
            datasets.append(load_dataset(name, args.data_root, nordland_window=args.nordland_window))
        except MissingFilesError as exc:
            missing.append(f"error: {exc}")
    if missing:
        print("\n\n".join(missing), file=sys.stderr)
        return 2
    extractor = make_extractor(args)
    results, written = [], []
    for dataset in datasets:
        result = evaluate(extractor, dataset, args.cache, ks=args.ks, index_kind=args.index)
        results.append(result)
        if dataset.positives is None:  # no ground truth (MSLS challenge): write the submission file
            path = args.out / f"{args.checkpoint.stem}.{dataset.name}.preds.txt"
            write_msls_predictions(path, dataset, result.predictions)
            written.append(path)
    meta = {"checkpoint": str(args.checkpoint), "image_size": list(extractor.image_size), "precision": args.precision,
            "index": args.index, "nordland_window": args.nordland_window}
    written = write_results(results, args.out, meta) + written
    print(format_table(results))
    print("wrote " + ", ".join(str(p) for p in written))
    print(f"descriptor cache {args.cache}: {folder_size(args.cache)} (a re-run reads the descriptors "
          "from there; --cache DIR puts them elsewhere, deleting the folder clears them)")
    return 0


def cmd_make_eval_data(args: argparse.Namespace) -> int:
    """Generated datasets let ``vpr-ros eval`` run end to end without downloading a benchmark."""
    from vpr_ros.synth.eval_data import generate_dataset

    names = args.datasets or DATASETS
    for name in names:
        ds = generate_dataset(name, args.out)
        print(f"{name}: {len(ds.db_images)} references, {len(ds.q_images)} queries under {ds.root}")
    print(f"evaluate them with: vpr-ros eval --checkpoint CKPT --data-root {args.out} --datasets {' '.join(names)}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="Recall@K on benchmark datasets (Pitts30k/250k, MSLS, Nordland, SPED, SF-XL)")
    add_model_args(p)
    p.add_argument("--datasets", nargs="+", required=True, metavar="NAME", choices=DATASETS,
                   help=f"one or more of: {' '.join(DATASETS)}")
    p.add_argument("--data-root", required=True, type=Path, help="folder holding one sub-folder per dataset")
    p.add_argument("--index", help="also measure recall with this place-map index kind (fp16, pca256, ivfpq, hnsw...)")
    p.add_argument("--ks", nargs="+", type=integer(1, MAX_K), default=[1, 5, 10, 15, 20, 25],
                   help=f"K values, each 1..{MAX_K} (default: 1 5 10 15 20 25)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                   help="descriptor cache folder, printed with its size after the run (resumable; default: "
                        "~/.cache/vpr_ros/descriptors)")
    p.add_argument("--out", type=Path, default=Path("eval_out"), help="results folder (default: eval_out)")
    p.add_argument("--nordland-window", type=int, default=1, choices=(1, 10),
                   help="Nordland positives: same frame (1) or +-10 frames (10)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("make-eval-data", help="write small datasets in every benchmark layout from the bundled photos")
    p.add_argument("out", type=Path, help="data root to write (one sub-folder per dataset)")
    p.add_argument("--datasets", nargs="+", default=None, metavar="NAME", choices=DATASETS,
                   help="default: all of them, each one `vpr-ros eval --datasets` accepts")
    p.set_defaults(func=cmd_make_eval_data)
