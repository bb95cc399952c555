"""Evaluation pipeline throughput: images/s of load + preprocess + model (``describe_cached``,
fresh cache) vs. the bare extractor forward on ready-made tensors of the same batch size.

Random-weight model (default ViT-B ``dino_salad``, 322x322, batch 16); images are the bundled
photos, cycled to ``--images``. The gap between the two numbers is what image decoding and
resizing cost on top of the model (the loader runs one batch ahead in a thread pool).
Usage: ``python bench/eval.py [--model dino_salad] [--images 32] [--rounds 2] [--device cuda] [--precision bf16]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import add_model_args, make_extractor, model_label

from vpr_ros.evaluation.recall import DescriptorCache, describe_cached, extractor_identity
from vpr_ros.extractor import device_label
from vpr_ros.preprocess import preprocess_exact

SCENES = sorted((Path(__file__).resolve().parents[1] / "vpr_ros" / "synth" / "data" / "scenes").glob("*.jpg"))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser, (322, 322))
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    ext = make_extractor(args, args.device, args.precision, args.batch_size)
    dev = ext.device
    name = device_label(dev)
    print(f"{model_label(args)} ({ext.descriptor_dim}-d) {args.image_size[0]}x{args.image_size[1]} {args.precision}, "
          f"batch {args.batch_size}, {args.images} images, on {name}")
    paths = [SCENES[i % len(SCENES)] for i in range(args.images)]
    names = [f"{i}/{p.name}" for i, p in enumerate(paths)]  # distinct names: nothing is deduplicated
    ext.warmup(1)

    batch = torch.randn(args.batch_size, 3, *args.image_size, generator=torch.Generator().manual_seed(0)).to(dev)
    n_bare = max(1, args.images // args.batch_size) * args.batch_size
    pipeline, bare, cached, loader = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):  # interleaved, best of rounds: robust to other load on the machine
            t0 = time.perf_counter()
            preprocess_exact(paths, args.image_size)
            loader.append(time.perf_counter() - t0)
            cache = DescriptorCache(Path(tmp) / str(r), "bench", "db", extractor_identity(ext), names, 512)
            sync(dev)
            t0 = time.perf_counter()
            describe_cached(ext, paths, cache, desc="pipeline")
            sync(dev)
            pipeline.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            describe_cached(ext, paths, DescriptorCache(Path(tmp) / str(r), "bench", "db", cache.key["identity"], names,
                                                        512))
            cached.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for _ in range(n_bare // args.batch_size):
                ext.forward(batch)
            sync(dev)
            bare.append(time.perf_counter() - t0)

    n = args.images
    title = f"stage (best of {args.rounds})"
    print(f"{title:<34} {'img/s':>9} {'ms/img':>9}")
    for label, sec, count in (("pipeline (load+preprocess+model)", min(pipeline), n),
                              ("bare forward (tensors ready)", min(bare), n_bare),
                              ("loader only (1 thread, no model)", min(loader), n),
                              ("re-run from cache", min(cached), n)):
        print(f"{label:<34} {count / sec:9.2f} {1000 * sec / count:9.2f}")
    print(f"pipeline / bare speed: {(n / min(pipeline)) / (n_bare / min(bare)):.2f}")

if __name__ == "__main__":
    main()
