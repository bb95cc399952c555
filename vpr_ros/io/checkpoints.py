"""Reading checkpoint files safely: ``torch.load(weights_only=True)`` once kind, integrity and
pickle protocol are checked, or ``safetensors``; nothing is ever unpickled. Damaged files, Python
objects besides tensors and non-finite values are refused with a CheckpointError that says why."""

from __future__ import annotations

import os
import pickle
import re
import struct
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vpr_ros.errors import CheckpointError, MissingFileError
from vpr_ros.io.files import file_sha256
from vpr_ros.io.pickles import WEIGHTS_ONLY_PROTOCOLS, refusal, sniff

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_HEAD = 1 << 16  # bytes of a pickle read to tell its protocol and first objects
RESAVE = ("save only the state dict with torch.save (its default protocol) or as .safetensors, from code you "
          "trust")
SAFETENSORS_SUFFIX = ".safetensors"

if TYPE_CHECKING:
    from vpr_ros.models.family import StateDict


def read_checkpoint(path: str | os.PathLike) -> tuple[StateDict, str]:
    """Read a checkpoint file with ``weights_only=True`` (or a ``.safetensors`` file with the
    ``safetensors`` library); return (flat state dict, sha256).

    Zip-format files (everything torch.save writes since 1.6) are CRC-checked first, so a
    truncated or damaged download is refused instead of yielding wrong weights, and are then
    memory-mapped rather than copied into memory. Tensors holding NaN / inf are refused
    (:func:`check_values`).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the download or copy did not finish")
    with path.open("rb") as f:
        head = f.read(PICKLE_HEAD)
    if path.suffix == SAFETENSORS_SUFFIX or _looks_like_safetensors(head[:9], size):
        return unwrap_state_dict(_read_safetensors(path, size), str(path)), file_sha256(path)
    is_zip = head[:4] == ZIP_MAGIC
    if is_zip and not _zip_intact(path):
        raise CheckpointError(f"{path} is truncated or corrupt ({size:,} bytes, zip archive incomplete or failing its "
                              "checksums); download or copy it again")
    pickled = sniff(_zip_pickle_head(path) if is_zip else head)
    if not is_zip and pickled is not None and not pickled.torch_magic:
        objects = f"; it names {', '.join(pickled.names[:3])}," if pickled.names else ""
        raise CheckpointError(refusal(path, f"is a plain Python pickle (protocol {pickled.protocol}), not a file "
                                            f"written by torch.save{objects}", RESAVE))
    if pickled is not None and pickled.protocol not in WEIGHTS_ONLY_PROTOCOLS:
        raise CheckpointError(refusal(path, f"was written with pickle protocol {pickled.protocol}, which weights-only "
                                            f"loading does not read (protocols {WEIGHTS_ONLY_PROTOCOLS[0]} and "
                                            f"{WEIGHTS_ONLY_PROTOCOLS[-1]})", RESAVE))
    if not is_zip and head[:1] != b"\x80":
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (starts with {head[:8]!r}); expected a file written "
                              "by torch.save, e.g. dino_salad.ckpt, or a .safetensors file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        refused = _refused_global(str(exc))
        if refused:
            raise CheckpointError(f"{path} holds Python objects besides tensors ({refused}) and is refused for "
                                  "safety (checkpoints are loaded with weights_only=True); re-save only its "
                                  "state_dict") from exc
        raise CheckpointError(f"{path} is truncated or corrupt (unreadable pickle data: {_reason(exc)})") from exc
    except _DAMAGED as exc:
        detail = _first_line(exc) if isinstance(exc, RuntimeError) else f"{type(exc).__name__}: {_first_line(exc)}"
        raise CheckpointError(f"{path} is truncated or corrupt: {detail}") from exc
    return unwrap_state_dict(obj, str(path)), file_sha256(path)


def _zip_pickle_head(path: Path) -> bytes:
    """The first bytes of the pickle inside a torch.save zip archive (its ``data.pkl``)."""
    try:
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
            if name is None:
                return b""
            with zf.open(name) as f:
                return f.read(PICKLE_HEAD)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError):  # torch.load reports it
        return b""


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file starts with its JSON header's length (u64 little-endian), then ``{``."""
    return len(head) == 9 and head[8:9] == b"{" and 8 < 8 + int.from_bytes(head[:8], "little") <= size


def _read_safetensors(path: Path, size: int) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file on the CPU; a damaged file is a CheckpointError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, ValueError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is truncated or corrupt ({size:,} bytes, unreadable as safetensors: "
                              f"{_first_line(exc)}); download or copy it again") from exc


_ANSI = re.compile(r"\x1b\[[0-9;]*m")

# What torch.load raises on damaged bytes besides UnpicklingError: the pickle VM indexes its stack
# and memo, unpacks lengths and decodes strings straight from the file, and the legacy format
# asserts that its storage keys match.
_DAMAGED = (RuntimeError, EOFError, ValueError, LookupError, TypeError, AttributeError, OverflowError, struct.error,
            AssertionError)

# How torch >= 2.1 words the refusal of a non-tensor global (its name is group 1), all wrapped in
# "Weights only load failed. ...": 2.4+ "Unsupported global: GLOBAL x.y was not an allowed global by
# default", 2.5+ "Trying to load unsupported GLOBAL posix.system whose module posix is blocked",
# 2.1-2.3 "Unsupported class x.y". Other complaints ("Unsupported operand 63", "Can only build ...
# but got <class 'int'>") come from damaged bytes, not from a saved object.
_REFUSED_PATTERNS = (re.compile(r"Unsupported global: GLOBAL (\S+)"),
                     re.compile(r"unsupported GLOBAL (\S+) whose module \S+ is blocked", re.IGNORECASE),
                     re.compile(r"Unsupported class (\S+)"))


def _refused_global(message: str) -> str | None:
    """Name of the Python object a weights-only ``torch.load`` refused, from its error message
    (any torch >= 2.1 wording); None when the message is about damaged bytes instead."""
    text = _ANSI.sub("", message)
    for pattern in _REFUSED_PATTERNS:
        if m := pattern.search(text):
            return m.group(1).rstrip(".,;")
    return None


def _reason(exc: Exception) -> str:
    """The unpickler's own complaint inside torch's long "Weights only load failed" text."""
    text = _ANSI.sub("", str(exc)).split("Check the documentation of torch.load")[0]
    text = text.rsplit("WeightsUnpickler error:", 1)[-1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def _first_line(exc: Exception) -> str:
    text = _ANSI.sub("", str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _zip_intact(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.testzip() is None
    except (zipfile.BadZipFile, EOFError, OSError):
        return False


def unwrap_state_dict(obj: Any, name: str = "checkpoint") -> StateDict:
    """Accept a flat state dict or a Lightning checkpoint (``state_dict`` key).

    The training LightningModule holds its ``VPRModel`` as ``self.model``, so its checkpoints key
    the weights ``model.backbone.model.*`` / ``model.aggregator.*``; that ``model.`` is dropped.
    """
    from vpr_ros.models.family import AGG_PREFIX, BACKBONE_PREFIX  # here: the models package imports this module

    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{name} does not contain a state dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(f"{name} is not a state dict: non-tensor entries {bad[:5]}")
    check_values(obj, name)
    if all(k.startswith("model.") for k in obj):
        inner = {k[len("model."):]: v for k, v in obj.items()}
        if all(k.startswith((BACKBONE_PREFIX, AGG_PREFIX)) for k in inner):
            return inner
    return dict(obj)


_CHUNK = 1 << 24  # elements per isfinite pass: bounds the temporary mask at 16 MB per tensor


def check_values(sd: Mapping[str, torch.Tensor], name: str = "checkpoint") -> None:
    """Refuse tensors without usable values: NaN / inf in floating tensors (diverged training, a
    broken conversion) would load and silently turn every descriptor into NaN, and tensors with
    no data (meta device) or a sparse layout cannot be weights.

    Checked tensor by tensor and in chunks, so memory-mapped multi-GB files are only paged
    through, never copied.
    """
    no_data = [f"{k} ({'meta' if t.is_meta else t.layout})" for k, t in sd.items()
               if t.is_meta or t.layout != torch.strided]
    if no_data:
        raise CheckpointError(f"{name} has {len(no_data)} tensor(s) without dense data (first: {no_data[:5]}); "
                              "save the materialised dense weights")
    bad = [k for k, t in sd.items() if t.is_floating_point() and t.numel() and not _all_finite(t)]
    if bad:
        first = [f"{k} ({'NaN' if _has_nan(sd[k]) else 'inf'})" for k in bad[:5]]
        raise CheckpointError(f"{name} holds NaN or inf in {len(bad)} tensor(s) (first: {first}): the weights are "
                              "damaged (diverged training or a failed conversion) and would make every descriptor "
                              "NaN; use another checkpoint")


def _all_finite(t: torch.Tensor) -> bool:
    # A finite sum proves every element finite (NaN and inf propagate through addition) and costs
    # no temporary; only a non-finite sum (or a mere overflow) needs the element-wise test.
    return all(bool(torch.isfinite(p.sum())) or bool(torch.isfinite(p).all()) for p in _parts(t))


def _has_nan(t: torch.Tensor) -> bool:
    return any(bool(torch.isnan(p).any()) for p in _parts(t))


def _parts(t: torch.Tensor) -> Iterator[torch.Tensor]:
    """A dense floating tensor in chunks of at most about ``_CHUNK`` elements, as views.

    Overlapping elements (stride 0, e.g. ``expand``) are read once, over the storage span the
    tensor covers, so a huge claimed shape costs no more than its stored bytes.
    """
    span = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride(), strict=True))
    if t.numel() > span:
        t = t.as_strided((span,), (1,))
    if t.is_contiguous():
        t = t.view(-1)
    rows = max(1, _CHUNK // max(1, t.numel() // t.shape[0]))
    for start in range(0, t.shape[0], rows):
        part = t[start : start + rows]
        yield part if part.dtype in _ISFINITE_DTYPES else part.float()  # e.g. float8: no isfinite kernel


_ISFINITE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
