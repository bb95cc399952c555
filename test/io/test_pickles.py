"""vpr_ros.io.pickles: reading opcodes tells pickles from other bytes without running anything."""

from __future__ import annotations

import io
import random
from typing import Any

import torch

from vpr_ros.io.pickles import sniff


def _save_bytes(obj: Any, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kwargs)
    return buf.getvalue()


def test_random_bytes_are_never_taken_for_a_pickle() -> None:
    rng = random.Random(5)
    for _ in range(3000):
        data = rng.randbytes(512)
        assert sniff(data) is None and sniff(b"\x80" + data[1:]) is None
    legacy = _save_bytes({"a": torch.zeros(2)}, _use_new_zipfile_serialization=False)
    assert sniff(legacy).torch_magic and sniff(legacy).protocol == 2
