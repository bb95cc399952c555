"""The latency path on a CUDA GPU (docs/gpu.md): the whole way of a frame (uint8 upload from page-locked
memory, resize, normalise, network, download) captured once per input shape in a CUDA graph and
replayed, so that a frame costs one copy in, one replay and one synchronisation."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from vpr_ros.backends import Output
from vpr_ros.preprocess import imagenet_stats, resize_normalize

MAX_GRAPHS = 4  # captured shapes kept per extractor; the least recently used one goes first
Step = Callable[[], Any]


class Graph:
    """A step over static tensors, captured once in a CUDA graph and then replayed."""

    def __init__(self, step: Step, buffers: dict[str, torch.Tensor], device: torch.device, warmup: int = 3) -> None:
        self.buffers = buffers
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # compilation, kernel plans and the allocator settle before capture
            for _ in range(warmup):
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = step()

    def replay(self) -> Any:
        self.graph.replay()
        return self.outputs


class GraphRunner:
    """The graphs of one extractor by input shape; ``infer`` is its backend's."""

    def __init__(self, infer: Callable[[torch.Tensor, bool], Output], device: torch.device,
                 image_size: tuple[int, int]) -> None:
        self.infer, self.device, self.image_size = infer, device, image_size
        self.mean, self.std = imagenet_stats(device)
        self.graphs: OrderedDict[tuple, Graph] = OrderedDict()

    def __len__(self) -> int:
        return len(self.graphs)

    def frame_path(self, frames: torch.Tensor) -> Output:
        """uint8 frames ``[B, H, W, 3]`` on the device -> (descriptors, patch map): the step captured."""
        return self.infer(resize_normalize(frames.permute(0, 3, 1, 2), self.image_size, self.mean, self.std), True)

    def capture(self, key: tuple, build: Callable[[], tuple[Step, dict[str, torch.Tensor]]]) -> Graph:
        graph = self.graphs.pop(key, None)
        if graph is None:
            step, buffers = build()
            try:
                graph = Graph(step, buffers, self.device)
            except RuntimeError as exc:  # a host-device copy or a sync inside the model: a bug, say so loudly
                raise RuntimeError(f"capturing the latency path {key} in a CUDA graph failed: {exc}") from exc
            while len(self.graphs) >= MAX_GRAPHS:
                self.graphs.popitem(last=False)
        self.graphs[key] = graph
        return graph

    def forward(self, batch: torch.Tensor, patch_tokens: bool) -> Output:
        """A normalised batch through the graph of its shape."""
        def build() -> tuple[Step, dict[str, torch.Tensor]]:
            buffers = {"images": torch.zeros(batch.shape, device=self.device)}
            return lambda: self.infer(buffers["images"], True), buffers

        graph = self.capture(("batch", tuple(batch.shape)), build)
        graph.buffers["images"].copy_(batch)
        desc, fmap = graph.replay()
        return desc.clone(), (fmap.clone() if patch_tokens else None)

    def describe_frames(self, frames: np.ndarray, patch_tokens: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """RGB uint8 frames ``[B, H, W, 3]`` -> (descriptors, optional patch tokens ``[B, h, w, C]``)."""
        def build() -> tuple[Step, dict[str, torch.Tensor]]:
            buffers = {"host_in": torch.zeros(frames.shape, dtype=torch.uint8).pin_memory(),
                       "frames": torch.zeros(frames.shape, dtype=torch.uint8, device=self.device)}

            def step() -> None:
                buffers["frames"].copy_(buffers["host_in"], non_blocking=True)
                desc, fmap = self.frame_path(buffers["frames"])
                outs = {"desc": desc, "tokens": fmap.permute(0, 2, 3, 1)} if patch_tokens else {"desc": desc}
                for name, value in outs.items():
                    if name not in buffers:  # first warm-up run, before capture: page-locked outputs
                        buffers[name] = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
                    buffers[name].copy_(value, non_blocking=True)

            return step, buffers

        graph = self.capture(("frames", frames.shape, patch_tokens), build)
        graph.buffers["host_in"].numpy()[...] = frames
        graph.replay()
        torch.cuda.current_stream(self.device).synchronize()
        out = graph.buffers
        return out["desc"].numpy().copy(), (out["tokens"].numpy().copy() if patch_tokens else None)
