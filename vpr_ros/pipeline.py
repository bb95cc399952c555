"""Throughput mode on a CUDA GPU (docs/gpu.md): while batch i computes, batch i+1 uploads from
page-locked memory on a side stream and batch i+2 is decoded by a worker thread; results come back
the same way, batch i-1's while batch i computes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from vpr_ros.preprocess import imagenet_stats, load_image, preprocess_exact, preprocess_fast, resize_normalize, to_rgb

if TYPE_CHECKING:
    from vpr_ros.extractor import DescriptorExtractor


def decode(images: Sequence) -> list[np.ndarray]:
    """Images (paths, RGB or gray arrays, PIL images) as contiguous RGB uint8 arrays ``(H, W, 3)``."""
    return [to_rgb(i, "rgb") if isinstance(i, np.ndarray) else
            np.asarray(i.convert("RGB")) if isinstance(i, Image.Image) else load_image(i) for i in images]


def host_batch(chunk: Sequence, resize: str, image_size: tuple[int, int]) -> torch.Tensor:
    """A chunk decoded and prepared on the CPU, page-locked for an asynchronous upload: uint8
    frames ``[B, H, W, 3]`` for the fast resize (4x less to move), else the exact input."""
    if resize == "fast":
        arrays = decode(chunk)
        if all(a.shape == arrays[0].shape for a in arrays):
            return torch.from_numpy(np.stack(arrays)).pin_memory()
        return preprocess_fast(arrays, image_size).pin_memory()
    return preprocess_exact(chunk, image_size).pin_memory()


def pipelined(ext: DescriptorExtractor, images: Sequence,
              patch_tokens: bool) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """``ext.forward`` over ``images`` in batches of ``ext.batch_size``: (descriptors, patch tokens) per batch."""
    size, device = ext.batch_size, ext.device
    chunks = [images[s : s + size] for s in range(0, len(images), size)]
    mean, std = imagenet_stats(device)
    compute = torch.cuda.current_stream(device)
    upload = torch.cuda.Stream(device)
    with ThreadPoolExecutor(1, thread_name_prefix="vpr_decode") as pool:
        ahead = pool.submit(host_batch, chunks[0], ext.resize, ext.image_size)
        waiting = None
        for i in range(len(chunks)):
            host = ahead.result()
            if i + 1 < len(chunks):
                ahead = pool.submit(host_batch, chunks[i + 1], ext.resize, ext.image_size)
            with torch.cuda.stream(upload):
                batch = host.to(device, non_blocking=True)
            compute.wait_stream(upload)
            batch.record_stream(compute)
            if batch.dtype == torch.uint8:
                batch = resize_normalize(batch.permute(0, 3, 1, 2), ext.image_size, mean, std)
            n = len(batch)
            if n < size:  # pad the last batch: one compiled shape for the whole run
                batch = torch.cat([batch, batch.new_zeros(size - n, *batch.shape[1:])])
            desc, fmap = ext.forward(batch, patch_tokens)
            outs = [desc[:n]] if fmap is None else [desc[:n], fmap[:n].permute(0, 2, 3, 1)]
            pinned = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in outs]
            for dst, src in zip(pinned, outs, strict=True):
                dst.copy_(src, non_blocking=True)
            done = torch.cuda.Event()
            done.record(compute)
            if waiting is not None:  # batch i-1's results, while batch i is still computing
                yield _collect(*waiting)
            waiting = (done, pinned)
        yield _collect(*waiting)


def _collect(done: torch.cuda.Event, pinned: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray | None]:
    done.synchronize()
    return pinned[0].numpy(), (pinned[1].numpy() if len(pinned) > 1 else None)
