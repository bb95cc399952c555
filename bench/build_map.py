"""build-map throughput: frames/s of ``build_map`` on a bag vs the bare extractor on the same frames.

Writes an mcap bag of ``--frames`` camera frames (the bundled photos resized to ``--frame-size``)
once as raw ``rgb8`` and once as JPEG, then times, best of ``--rounds``:

- bare: ``extractor.describe`` on the decoded RGB arrays already in memory (preprocess + model);
- build-map: ``build_map`` from the bag (read, deserialise, decode, describe, add, save), every
  frame kept.

The ratio shows what reading and decoding cost on top of inference once the read-ahead thread
overlaps them with the model (goal >= 0.9). Random-weight model (default ViT-B ``dino_salad``).
Usage: ``python bench/build_map.py [--model dino_salad] [--frames 32] [--image-size 224 224] [--device cuda]``;
the default run takes about 3 minutes on 2 CPU cores (ViT-B on 32 frames, 2 formats x 2 rounds x 2 ways).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from common import add_model_args, make_extractor, model_label

from vpr_ros.bags.mapping import build_map
from vpr_ros.bags.reader import read_frames
from vpr_ros.bags.writer import write_bag
from vpr_ros.extractor import device_label
from vpr_ros.preprocess import load_image

SCENES = sorted((Path(__file__).resolve().parents[1] / "vpr_ros" / "synth" / "data" / "scenes").glob("*.jpg"))
TOPIC = "/camera/image_raw"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def frames(n: int, size: tuple[int, int]) -> list[tuple[int, np.ndarray]]:
    photos = [cv2.resize(load_image(p), size, interpolation=cv2.INTER_AREA) for p in SCENES]
    return [(1_700_000_000 * 10**9 + i * 10**8, photos[i % len(photos)]) for i in range(n)]


def best(rounds: int, device: torch.device, run) -> float:
    times = []
    for _ in range(rounds):
        sync(device)
        t0 = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser, (224, 224))
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--frame-size", nargs=2, type=int, default=[640, 480], metavar=("W", "H"))
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    ext = make_extractor(args, args.device, args.precision, args.batch_size)
    dev = ext.device
    name = device_label(dev)
    print(f"{model_label(args)} {args.image_size[0]}x{args.image_size[1]} {args.precision}, batch {args.batch_size}, "
          f"{args.frames} frames of {args.frame_size[0]}x{args.frame_size[1]}, on {name}")
    ext.warmup(1)
    data = frames(args.frames, tuple(args.frame_size))
    print(f"{'images':<8} {'bare frames/s':>14} {'build-map frames/s':>19} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("raw", "jpeg"):
            bag = write_bag(Path(tmp) / fmt, data, image_format=fmt)
            rgb = [f.rgb for f in read_frames(bag, TOPIC)]  # the frames exactly as the bag decodes them
            bare = best(args.rounds, dev, lambda rgb=rgb: ext.describe(rgb))
            counter = iter(range(args.rounds))
            built = best(args.rounds, dev, lambda bag=bag, fmt=fmt, counter=counter: build_map(
                [bag], ext, Path(tmp) / f"{fmt}-{next(counter)}.map", image_topic=TOPIC, progress=False))
            n = args.frames
            print(f"{fmt:<8} {n / bare:14.2f} {n / built:19.2f} {bare / built:6.2f}")


if __name__ == "__main__":
    main()
