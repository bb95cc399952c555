"""Descriptor extraction speed and peak memory: ViT-B/14 SALAD (random weights), 322x322.

Prints ms/img and img/s per (device, precision, batch, compile) and the peak memory of each
run (CPU: peak resident set size of the process; CUDA: peak allocated tensor memory).
Usage: ``python bench/descriptor.py [--device cuda] [--batch-sizes 1 16 256] [--compile]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from common import add_model_args, make_extractor, model_label

from vpr_ros.extractor import DescriptorExtractor, device_label


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM, so each run reports its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(ext: DescriptorExtractor, x: torch.Tensor, iters: int) -> tuple[float, float, torch.Tensor]:
    """Median seconds per forward of the batch ``x``, peak memory in MiB, and the descriptors."""
    cuda = ext.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(ext.device)
    reset_peak_rss()
    desc, _ = ext.forward(x)  # warm-up (and compilation)
    times = []
    for _ in range(iters):
        if cuda:
            torch.cuda.synchronize(ext.device)
        t0 = time.perf_counter()
        ext.forward(x)
        if cuda:
            torch.cuda.synchronize(ext.device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(ext.device) / 2**20 if cuda else peak_rss_mib()
    return statistics.median(times), peak, desc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser, (322, 322))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also measure with torch.compile")
    parser.set_defaults(device="cpu")
    args = parser.parse_args()

    dev = torch.device(args.device)
    name = device_label(dev)
    label = model_label(args)
    dim = make_extractor(args, "cpu").descriptor_dim
    print(f"{label} ({dim}-d) at {args.image_size[0]}x{args.image_size[1]} on {name}, "
          f"torch {torch.__version__}")
    print(f"{'precision':>9} {'batch':>5} {'compile':>7} {'ms/img':>9} {'img/s':>8} {'peak MiB':>9} "
          f"{'min cos vs fp32':>15}")
    gen = torch.Generator().manual_seed(0)
    inputs = {b: torch.randn(b, 3, *args.image_size, generator=gen).to(dev) for b in args.batch_sizes}
    reference: dict[int, torch.Tensor] = {}
    for compiled in [False, True] if args.compile else [False]:
        for precision in args.precisions:
            ext = make_extractor(args, dev, precision, compile=compiled)
            for batch in args.batch_sizes:
                iters = max(1, args.iters if batch < 64 or dev.type == "cuda" else 1)
                sec, peak, desc = run(ext, inputs[batch], iters)
                if precision == "fp32" and not compiled:
                    reference[batch] = desc
                cos = (desc * reference[batch]).sum(-1).min().item() if batch in reference else float("nan")
                print(f"{precision:>9} {batch:>5} {str(compiled):>7} {1000 * sec / batch:9.1f} "
                      f"{batch / sec:8.1f} {peak:9.0f} {cos:15.6f}", flush=True)


if __name__ == "__main__":
    main()
