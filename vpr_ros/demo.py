"""``make demo``: describe the bundled real photographs and show their similarity matrix.

Four pairs among the photos show the same scene twice (viewpoint, time, stereo); the demo
reports where each photo's partner ranks among all others. The bundled model is an
*untrained stand-in* (a tiny SALAD in the released checkpoint layout with random weights)
until the project's own trained demo model lands; pass ``--checkpoint dino_salad.ckpt`` to
run the real thing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
SCENES = DATA / "scenes"
STAND_IN = DATA / "models" / "tiny_salad_untrained.pt"
STAND_IN_CONFIG = DATA / "models" / "tiny_salad_untrained.json"  # 16-d heads: not inferable from shapes
REVISIT_PAIRS = [("graf1", "graf3"), ("basketball1", "basketball2"), ("aloeL", "aloeR"),
                 ("Blender_Suzanne1", "Blender_Suzanne2")]


def partner_ranks(sim: np.ndarray, names: list[str]) -> list[tuple[str, str, int, float]]:
    """For each revisit pair (a, b): rank of b among all other photos when querying with a."""
    index = {n: i for i, n in enumerate(names)}
    rows = []
    for a, b in REVISIT_PAIRS:
        if a not in index or b not in index:
            continue
        for q, t in ((a, b), (b, a)):
            scores = sim[index[q]].copy()
            scores[index[q]] = -np.inf
            rank = int((scores > scores[index[t]]).sum()) + 1
            rows.append((q, t, rank, float(scores[index[t]])))
    return rows


def plot_similarity(sim: np.ndarray, names: list[str], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 8))
    im = ax.imshow(sim, cmap="viridis", vmin=float(sim.min()), vmax=1.0)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="cosine similarity")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    from vpr_ros.extractor import DescriptorExtractor
    from vpr_ros.models import load_model
    from vpr_ros.preprocess import load_image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=STAND_IN)
    parser.add_argument("--image-size", nargs=2, type=int, default=(322, 322), metavar=("H", "W"))
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    args = parser.parse_args(argv)

    files = sorted(SCENES.glob("*.jpg"))
    names = [f.stem for f in files]
    stand_in = args.checkpoint.resolve() == STAND_IN
    model = load_model(args.checkpoint, config=json.loads(STAND_IN_CONFIG.read_text()) if stand_in else None)
    print(f"model: {model.cfg.describe()}" + ("  [untrained stand-in: scores show the pipeline, not accuracy]"
                                               if stand_in else ""))
    extractor = DescriptorExtractor(model, tuple(args.image_size), batch_size=8)
    images = [load_image(f) for f in files]
    start = time.perf_counter()
    desc = extractor.describe(images)
    elapsed = time.perf_counter() - start
    print(f"described {len(files)} photos at {args.image_size[0]}x{args.image_size[1]} on {extractor.device}: "
          f"{1000 * elapsed / len(files):.1f} ms/img, descriptor {desc.shape[1]}-d, "
          f"norms {np.linalg.norm(desc, axis=1).min():.4f}..{np.linalg.norm(desc, axis=1).max():.4f}")

    sim = desc @ desc.T
    print("\ncosine similarity matrix (columns in the same order as rows)")
    print(" " * 20 + "".join(f"{i:>5d}" for i in range(len(names))))
    for i, row in enumerate(sim):
        print(f"{i:>2d} {names[i][:16]:<16s} " + "".join(f"{v:5.2f}" for v in row))
    print("\nrevisit pairs: rank of the partner among the other photos (1 = best)")
    ranks = partner_ranks(sim, names)
    for q, t, rank, score in ranks:
        print(f"  {q:>17s} -> {t:<17s} rank {rank:>2d}  cos {score:.3f}")
    top1 = sum(r == 1 for _, _, r, _ in ranks)
    print(f"  partner ranked first for {top1}/{len(ranks)} queries")
    png = args.out / "similarity.png"
    plot_similarity(sim, names, png, f"{model.cfg.describe()}  ({top1}/{len(ranks)} revisit queries top-1)")
    np.save(args.out / "descriptors.npy", desc)
    print(f"\nwrote {png} and {args.out / 'descriptors.npy'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
