"""Keeping a live camera answered when the GPU fast path fails.

On a CUDA device the nodes describe frames in ``latency`` mode (a compiled backbone replayed as one
CUDA graph). The library fails loudly when that path cannot be built (a model that copies host data
or synchronises inside forward cannot be captured). A node must not then fail every frame:
:class:`FastPathGuard` runs a step, and when the fast path fails it switches the extractor to the eager
``standard`` path on the same device, reports the cause once, and runs the step again. A failure of the
device itself (a CUDA error, out of memory) is not the fast path's fault: it becomes
:class:`DeviceFailure`, which a node turns into a non-zero exit rather than spinning on a dead GPU.
Bad input (:class:`~vpr_ros.errors.VprError`) passes through untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

from vpr_ros.errors import VprError
from vpr_ros.extractor import DescriptorExtractor

T = TypeVar("T")
_DEVICE_ERRORS = ("CUDA error", "CUDA driver error", "CUBLAS_STATUS", "CUDNN_STATUS", "cuDNN error",
                  "out of memory", "device-side assert", "illegal memory access")


class DeviceFailure(RuntimeError):
    """The compute device itself failed; describing more frames on it is pointless."""


def is_device_failure(exc: BaseException) -> bool:
    accelerator = getattr(torch, "AcceleratorError", ())  # torch >= 2.8 raises it for CUDA errors
    if isinstance(exc, (torch.cuda.OutOfMemoryError, *((accelerator,) if accelerator else ()))):
        return True
    return any(text in str(exc) for text in _DEVICE_ERRORS)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


class FastPathGuard:
    """Runs describing steps for a node; see the module docstring. ``report(cause)`` is called once,
    when the node leaves the fast path; :attr:`fallback` keeps the cause for ``/diagnostics``."""

    def __init__(self, extractor: DescriptorExtractor, report: Callable[[str], None]) -> None:
        self.extractor, self._report = extractor, report
        self.fallback: str | None = None

    @property
    def fast(self) -> bool:
        """Whether the extractor still runs a compiled or graph-captured path."""
        return self.extractor.mode != "standard" or self.extractor.compiled

    def run(self, step: Callable[[], T]) -> T:
        try:
            return step()
        except VprError:
            raise
        except Exception as exc:
            if is_device_failure(exc):
                raise DeviceFailure(f"{self.extractor.device} failed: {first_line(exc)}") from exc
            if not self.fast:
                raise
            self.fallback = first_line(exc)
            self.extractor.use_standard_path()
            self._report(self.fallback)
        return step()
