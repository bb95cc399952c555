"""Checked argument types: every number and window of the command line is refused at parse time,
with a message that says what is accepted, instead of deep inside a command (a MemoryError for a
huge ``--k``, an empty map for an empty time window, a NaN threshold).

Each type is an argparse ``type=`` callable; :class:`CheckedParser` adds checks that involve more
than one option (``--start`` before ``--end``). Used by the ``vpr-ros`` subcommands and the player.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Sequence

from vpr_ros.types import MAX_IMAGE_SIDE, PATCH_SIZE

MAX_K = 1000  # results per query: a map answers with at most this many
MAX_BATCH = 4096  # images per forward pass (also the largest dynamic batch of an ONNX export)
MAX_SECONDS = 1e9  # about 30 years: any duration or offset longer than this is a typo
MAX_METRES = 1e7  # a quarter of the earth's circumference
MAX_INDEX = 2**62  # ids and frame indices: non-negative and within int64
_DEVICE = re.compile(r"auto|cpu|cuda(:\d{1,3})?")


def integer(lo: int, hi: int) -> Callable[[str], int]:
    """An int in ``lo..hi``."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer in {lo}..{hi}, got {text!r}")
        return value

    parse.__name__ = "integer"
    return parse


def number(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Callable[[str], float]:
    """A finite float in the interval ``lo..hi`` (open at an end when asked); never NaN or infinite."""
    span = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        inside = (lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi)
        if not inside:  # NaN fails every comparison
            raise argparse.ArgumentTypeError(f"expected a finite number in {span}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def image_side(text: str) -> int:
    """One side of a model input size: a multiple of the 14 px patch, 14..MAX_IMAGE_SIDE."""
    side = integer(PATCH_SIZE, MAX_IMAGE_SIDE)
    try:
        value = side(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a multiple of {PATCH_SIZE} in {PATCH_SIZE}..{MAX_IMAGE_SIDE} "
                                         f"(pixels), got {text!r}") from None
    if value % PATCH_SIZE:
        down, up = value // PATCH_SIZE * PATCH_SIZE, -(-value // PATCH_SIZE) * PATCH_SIZE
        raise argparse.ArgumentTypeError(f"{value} is not a multiple of the patch size {PATCH_SIZE}; use {down} or "
                                         f"{min(up, MAX_IMAGE_SIDE)}")
    return value


def device(text: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``: anything else is refused at parse time instead of inside torch."""
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text


SECONDS = number(0, MAX_SECONDS)  # a duration, or a time after some start
STAMP = number(0, (2**63 - 1) / 1e9)  # a header stamp in seconds: int64 nanoseconds, as ROS keeps them
METRES = number(0, MAX_METRES)
SIMILARITY = number(-1, 1)  # a cosine similarity


class CheckedParser(argparse.ArgumentParser):
    """An ArgumentParser that also runs checks over several parsed options (:meth:`add_check`); a check
    that fails is a usage error of this (sub)command, exit status 2, like a bad value."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.checks: list[Callable[[argparse.Namespace], str | None]] = []

    def add_check(self, check: Callable[[argparse.Namespace], str | None]) -> None:
        """``check(args)`` returns what is wrong, or None."""
        self.checks.append(check)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        namespace, extras = super().parse_known_args(args, namespace)
        for check in self.checks:
            if problem := check(namespace):
                self.error(problem)
        return namespace, extras


def time_window(start: str, end: str) -> Callable[[argparse.Namespace], str | None]:
    """A check that option ``start`` (e.g. ``--start``) is before ``end`` when both are given."""
    first, last = (name.lstrip("-").replace("-", "_") for name in (start, end))

    def check(args: argparse.Namespace) -> str | None:
        lo, hi = getattr(args, first), getattr(args, last)
        if lo is not None and hi is not None and not lo < hi:
            return f"{end} {hi:g} must be after {start} {lo:g}: the window would be empty"
        return None

    return check
