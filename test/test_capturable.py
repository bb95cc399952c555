"""CUDA-graph readiness, checked on the CPU, and the extractor modes that rely on it.

A CUDA graph replays kernels only: a forward that copies host data into a device tensor (a Python
float written with ``t[i] = x``, ``torch.tensor(...)`` built inside forward) or reads a device value
back (``.item()``, ``nonzero``) cannot be captured. ``torch.compile(fullgraph=True)`` accepts such
code, so these tests watch every op of a forward instead: each tensor an op reads must be a
parameter, a buffer, an input, or the output of an earlier op; a tensor that enters any other way
came from the host. New aggregators are covered through the registry.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from vpr_ros.cuda_graphs import GraphRunner
from vpr_ros.errors import InputError
from vpr_ros.extractor import DescriptorExtractor
from vpr_ros.models import MODELS, VPRModel
from vpr_ros.preprocess import load_image

SCENES = Path(__file__).resolve().parents[1] / "vpr_ros" / "synth" / "data" / "scenes"
FRAMES_640x480 = [SCENES / n for n in ("Blender_Suzanne1.jpg", "Blender_Suzanne2.jpg", "basketball1.jpg")]
aten = torch.ops.aten
SYNCS = {aten.item.default, aten._local_scalar_dense.default, aten.is_nonzero.default, aten.nonzero.default,
         aten.masked_select.default}
MASK_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}  # bool masks: nonzero


class HostTransfers(TorchDispatchMode):
    """Records ops that read a tensor of unknown origin (host data) or sync with the device."""

    def __init__(self, known: list[torch.Tensor]) -> None:
        super().__init__()
        self.keep = list(known)  # held, so that no storage address is reused while recording
        self.known = {t.untyped_storage().data_ptr() for t in known}
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        kwargs = kwargs or {}
        if func in SYNCS or (func in MASK_INDEXING and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in tree_flatten(args[1])[0])):
            self.found.append(f"{func} (reads a device value on the host)")
        for arg in tree_flatten((args, kwargs))[0]:
            if isinstance(arg, torch.Tensor) and arg.untyped_storage().data_ptr() not in self.known:
                self.found.append(f"{func} reads a {arg.dtype} {tuple(arg.shape)} tensor made from host data")
        out = func(*args, **kwargs)
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self.known.add(tensor.untyped_storage().data_ptr())
                self.keep.append(tensor)
        return out


def host_transfers(fn: Any, *inputs: Any, known: tuple[torch.Tensor, ...] = ()) -> list[str]:
    """What ``fn(*inputs)`` would copy from / sync with the host inside a CUDA graph."""
    modules = [m for m in (fn, getattr(fn, "__self__", None)) if isinstance(m, torch.nn.Module)]
    params = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    tensors = [t for t in tree_flatten(inputs)[0] if isinstance(t, torch.Tensor)]
    with torch.inference_mode(), HostTransfers([*params, *tensors, *known]) as rec:
        fn(*inputs)
    return rec.found


def test_recorder_catches_host_copies_and_syncs() -> None:
    x = torch.randn(2, 5)

    def scalar_write(x: torch.Tensor) -> torch.Tensor:  # what the Sinkhorn marginals used to do
        marginals = torch.full((5,), -1.0, device=x.device)
        marginals[-1] = 0.5
        return x + marginals

    def host_constant(x: torch.Tensor) -> torch.Tensor:
        return x * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]).to(x.device)

    def item(x: torch.Tensor) -> torch.Tensor:
        return x / x.abs().max().item()

    def mask(x: torch.Tensor) -> torch.Tensor:
        return x[x > 0]

    def clean(x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(0, 1, 5, device=x.device)
        return torch.cat([x * 2.0 + 1, torch.full((2, 1), 0.5, device=x.device)], dim=1)[:, :5] + ramp

    for fn in (scalar_write, host_constant, item, mask):
        assert host_transfers(fn, x), fn.__name__
    assert host_transfers(clean, x) == []


def _small(name: str) -> VPRModel:
    """A registry architecture at full width with one ViT block: every aggregator op, little time."""
    cfg = MODELS[name].config
    cfg = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, depth=1, num_trainable_blocks=1))
    torch.manual_seed(0)
    return VPRModel(cfg).eval()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_registry_models_forward_without_host_transfers(name: str) -> None:
    model = _small(name)
    assert host_transfers(model, torch.randn(1, 3, 224, 224)) == []


def test_golden_models_forward_without_host_transfers(tiny_salad_model: VPRModel, tiny_a2gc_model: VPRModel) -> None:
    assert host_transfers(tiny_salad_model, torch.randn(2, 3, 322, 322)) == []
    assert host_transfers(tiny_a2gc_model, torch.randn(2, 3, 224, 224)) == []
    fmap, token = torch.randn(2, 64, 6, 6), torch.randn(2, 64)
    mask = torch.rand(2, 36) > 0.3
    assert host_transfers(tiny_a2gc_model.aggregator, (fmap, token), mask) == []


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_latency_frame_path_is_capturable(tiny_salad_model: VPRModel, precision: str) -> None:
    """The step a latency extractor captures on a GPU: uint8 frame -> resize -> model -> descriptor."""
    ext = DescriptorExtractor(tiny_salad_model, (224, 224), "cpu", precision, mode="latency")
    graphs = GraphRunner(ext.runner.infer, ext.device, ext.image_size)  # what a CUDA device captures
    frames = torch.from_numpy(np.stack([load_image(p) for p in FRAMES_640x480[:1]]))
    found = host_transfers(graphs.frame_path, frames, known=(graphs.mean, graphs.std, *tiny_salad_model.parameters()))
    assert found == []


# -- extractor modes on the CPU: the same computation as the standard path ---------------------------


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """Real 640x480 photographs, as a camera would deliver them."""
    return [load_image(p) for p in FRAMES_640x480]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_latency_mode_equals_the_fast_resize_path(tiny_salad_model: VPRModel, frames: list, precision: str) -> None:
    fast = DescriptorExtractor(tiny_salad_model, (224, 224), "cpu", precision, batch_size=2, resize="fast")
    latency = DescriptorExtractor(tiny_salad_model, (224, 224), "cpu", precision, batch_size=2, mode="latency")
    assert latency.resize == "fast" and latency.mode == "latency" and not latency.compiled
    want = fast.extract(frames, patch_tokens=True)
    got = latency.extract(frames, patch_tokens=True)
    np.testing.assert_array_equal(got.descriptors, want.descriptors)
    np.testing.assert_array_equal(got.patch_tokens, want.patch_tokens)
    one, _ = latency.describe_frames(frames[0][None])
    np.testing.assert_array_equal(one, fast.describe(frames[:1]))
    # frames of different sizes in one batch, and other inputs, take the eager path
    mixed = [frames[0], frames[1][:300, :400], str(FRAMES_640x480[2])]
    np.testing.assert_array_equal(latency.describe(mixed), fast.describe(mixed))
    latency.warmup(1, frame_size=(480, 640))


def test_throughput_mode_equals_standard_on_the_cpu(tiny_a2gc_model: VPRModel, frames: list) -> None:
    standard = DescriptorExtractor(tiny_a2gc_model, (224, 224), "cpu", batch_size=2)
    throughput = DescriptorExtractor(tiny_a2gc_model, (224, 224), "cpu", batch_size=2, mode="throughput",
                                     attention="flash")
    assert not throughput.compiled and throughput.resize == "exact"
    want, got = standard.extract(frames, patch_tokens=True), throughput.extract(frames, patch_tokens=True)
    np.testing.assert_array_equal(got.descriptors, want.descriptors)
    np.testing.assert_array_equal(got.patch_tokens, want.patch_tokens)


def test_mode_options_are_checked(tiny_salad_model: VPRModel) -> None:
    with pytest.raises(InputError, match="mode must be"):
        DescriptorExtractor(tiny_salad_model, (224, 224), "cpu", mode="fastest")
    with pytest.raises(InputError, match="resize 'fast'"):
        DescriptorExtractor(tiny_salad_model, (224, 224), "cpu", mode="latency", resize="exact")
    with pytest.raises(InputError, match="attention must be"):
        DescriptorExtractor(tiny_salad_model, (224, 224), "cpu", attention="triton")
    with pytest.raises(InputError, match="uint8 frames"):
        DescriptorExtractor(tiny_salad_model, (224, 224), "cpu").describe_frames(np.zeros((480, 640, 3), np.uint8))
