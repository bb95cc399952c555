"""A node keeps answering frames when the GPU fast path cannot be built, and stops when the device fails.

This machine has no GPU, so the failures are those the CUDA path raises, injected where the library
builds its CUDA graph; everything after that (the fallback, the eager path, the recognizer's answer) is
the real code on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vpr_ros.cuda_graphs import GraphRunner
from vpr_ros.errors import InputError
from vpr_ros.extractor import load_extractor
from vpr_ros.fast_path import DeviceFailure, FastPathGuard, is_device_failure
from vpr_ros.loop_closure.policy import LoopClosureConfig
from vpr_ros.loop_closure.recognizer import CameraFrame, PlaceRecognizer
from vpr_ros.maps.place_map import PlaceMap
from vpr_ros.preprocess import load_image

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "vpr_ros" / "synth" / "data" / "models" / "demo_salad.pt"
SCENES = REPO / "vpr_ros" / "synth" / "data" / "scenes"
CAPTURE_FAILED = RuntimeError("capturing the latency path ('frames', (1, 480, 640, 3), False) in a CUDA graph "
                              "failed: operation not permitted when stream is capturing")


def graphed_extractor(failure: BaseException):
    """The node's latency-mode extractor, as on a CUDA machine whose graph capture raises ``failure``."""
    ext = load_extractor(DEMO, device="cpu", mode="latency", batch_size=1)
    ext._graphs = GraphRunner(ext.runner.infer, ext.device, ext.image_size)  # what a CUDA device sets

    def capture(*_args, **_kwargs):  # capture is where it fails
        raise failure

    ext._graphs.capture = capture
    return ext


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    import cv2

    return cv2.resize(load_image(SCENES / "building.jpg"), (640, 480), interpolation=cv2.INTER_AREA)


def test_a_failed_capture_falls_back_once_and_frames_are_answered(photo) -> None:
    ext = graphed_extractor(CAPTURE_FAILED)
    with pytest.raises(RuntimeError, match="capturing the latency path"):  # the library fails loudly
        ext.describe([photo])
    reports: list[str] = []
    guard = FastPathGuard(ext, reports.append)
    pm = PlaceMap.create(ext.descriptor_dim, model_id=ext.identity)
    rec = PlaceRecognizer(ext, pm, LoopClosureConfig(threshold=0.9, consistency_k=1, exclude_last=0), "slam")
    outcomes = [rec.process_batch([CameraFrame(photo, t * 10**9)], guard.run) for t in (1, 2, 100)]
    assert [len(o) for o in outcomes] == [1, 1, 1] and len(pm) == 3  # every frame answered and mapped
    assert outcomes[2][0].decision.accepted is not None  # the revisit still closes the loop
    assert reports == ["RuntimeError: capturing the latency path ('frames', (1, 480, 640, 3), False) in a CUDA "
                       "graph failed: operation not permitted when stream is capturing"]  # said once
    assert guard.fallback == reports[0] and not guard.fast and ext.mode == "standard"
    eager = load_extractor(DEMO, device="cpu", batch_size=1, resize="fast")
    np.testing.assert_allclose(ext.describe([photo]), eager.describe([photo]), atol=1e-6)


@pytest.mark.parametrize("failure", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                     RuntimeError("CUDA error: an illegal memory access was encountered")])
def test_a_failing_device_is_not_papered_over(photo, failure) -> None:
    assert is_device_failure(failure)
    ext = graphed_extractor(failure)
    guard = FastPathGuard(ext, lambda cause: pytest.fail(f"fell back on a device failure: {cause}"))
    with pytest.raises(DeviceFailure, match="cpu failed: .*(out of memory|illegal memory access)"):
        guard.run(lambda: ext.describe([photo]))
    assert guard.fallback is None


def test_bad_input_and_eager_failures_pass_through(photo) -> None:
    guard = FastPathGuard(graphed_extractor(CAPTURE_FAILED), lambda cause: pytest.fail(cause))
    with pytest.raises(InputError):
        guard.run(lambda: guard.extractor.describe_frames(photo.astype(np.float32)[None]))
    eager = FastPathGuard(load_extractor(DEMO, device="cpu", batch_size=1), lambda cause: pytest.fail(cause))
    with pytest.raises(ZeroDivisionError):  # already eager: nothing to fall back to, the bug shows
        eager.run(lambda: 1 / 0)
