"""What a model option accepts, as ``(test, words)``, checked before any model is built. Sizes
the shapes also give are compared with them later; these bounds keep absurd values out."""

from __future__ import annotations

import json
import math
from typing import Any

Check = tuple[Any, str]  # (test of a value, what it accepts in words)


def int_range(lo: int, hi: int) -> Check:
    return (lambda v: is_int(v) and lo <= v <= hi), f"an integer in {lo}..{hi}"


def float_range(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Check:
    def test(v: Any) -> bool:
        return is_number(v) and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)

    return test, f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def one_of(*choices: Any) -> Check:
    return (lambda v: any(type(v) is type(c) and v == c for c in choices),
            " or ".join(json.dumps(c) for c in choices))


def is_int(v: Any) -> bool:
    return type(v) is int


def is_number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


SIZE: Check = ((lambda v: is_int(v) and 1 <= v <= 65536), "an integer in 1..65536")
BOOL: Check = ((lambda v: type(v) is bool), "true or false")
ITERATIONS = int_range(1, 100)  # the releases use 3 to 5; each iteration is a pass over every patch and cluster
DROPOUT: Check = ((lambda v: v is None or float_range(0, 1, hi_open=True)[0](v)), "null or a number in [0, 1)")
