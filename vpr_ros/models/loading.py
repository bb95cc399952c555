"""Load released SALAD / A²GC / MegaLoc / BoQ checkpoints (and DINOv2 backbone weights) safely
and strictly.

Files are read with ``torch.load(weights_only=True)`` or, for ``.safetensors`` files (MegaLoc's
release), with the ``safetensors`` library; nothing is ever unpickled. The family is recognised
from the keys and the released layouts are mapped onto this package's one layout
(``backbone.model.*`` + ``aggregator.*``, see :func:`canonical_state_dict`):

- SALAD ``dino_salad.ckpt``, A²GC, this package's exports: ``backbone.model.*`` and
  ``aggregator.*`` as they are.
- MegaLoc ``model.safetensors``: ``backbone.*`` -> ``backbone.model.*`` (no ``mask_token`` in the
  file, none in the model); ``aggregator.agg.*`` (SALAD) and ``aggregator.linear.*`` as they are.
- BoQ ``dinov2_12288.pth``: ``backbone.dino.*`` -> ``backbone.model.*``; ``aggregator.*`` as is.

Sizes are read from tensor shapes, never hard-coded per variant: width from ``cls_token``,
depth from the block indices, heads = width / 64, FFN kind from ``mlp.w12``, position grid
from ``pos_embed``; m, l, g (and MegaLoc's ``mlp_dim`` and projection) from the aggregator heads;
A²GC from ``cluster_geo``; BoQ's channels, queries, blocks and rows from ``proj_c``, ``queries``,
``boqs.N`` and ``fc``. What shapes cannot tell (trainable blocks, solver settings, geo lambda,
head counts of non-DINOv2 widths) comes from ``config``, which may be a reference ``config.json``
as written by the official code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from vpr_ros.errors import CheckpointError, InputError, MissingFileError
from vpr_ros.models.a2gc import A2GCConfig
from vpr_ros.models.boq import BoQConfig
from vpr_ros.models.dinov2 import HEAD_DIM, PATCH_SIZE, DinoV2Config
from vpr_ros.models.megaloc import MegaLocConfig
from vpr_ros.models.salad import SaladConfig
from vpr_ros.models.vpr_model import ModelConfig, VPRModel
from vpr_ros.pickles import WEIGHTS_ONLY_PROTOCOLS, refusal, sniff
from vpr_ros.preprocess import check_image_size
from vpr_ros.types import MAX_IMAGE_SIDE

StateDict = dict[str, torch.Tensor]
Source = str | os.PathLike | Mapping[str, Any]

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_HEAD = 1 << 16  # bytes of a pickle read to tell its protocol and first objects
RESAVE = ("save only the state dict with torch.save (its default protocol) or as .safetensors, from code you "
          "trust")
BACKBONE_PREFIX = "backbone.model."
AGG_PREFIX = "aggregator."
# Backbone prefixes of the released files, in the order they are tried: ours / SALAD / A²GC,
# BoQ (``VPRModel.backbone.dino``), MegaLoc (the ViT written out as ``MegaLoc.backbone``).
BACKBONE_ALIASES = (BACKBONE_PREFIX, "backbone.dino.", "backbone.")
SAFETENSORS_SUFFIX = ".safetensors"


# ---------------------------------------------------------------------------------------------
# Reading files


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
        raise CheckpointError(
            f"{path} is truncated or corrupt ({size:,} bytes, zip archive incomplete or failing its "
            "checksums); download or copy it again"
        )
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
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (starts with {head[:8]!r}); expected a file written "
            "by torch.save, e.g. dino_salad.ckpt, or a .safetensors file"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        refused = _refused_global(str(exc))
        if refused:
            raise CheckpointError(
                f"{path} holds Python objects besides tensors ({refused}) and is refused for safety "
                "(checkpoints are loaded with weights_only=True); re-save only its state_dict"
            ) from exc
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
_REFUSED_PATTERNS = (
    re.compile(r"Unsupported global: GLOBAL (\S+)"),
    re.compile(r"unsupported GLOBAL (\S+) whose module \S+ is blocked", re.IGNORECASE),
    re.compile(r"Unsupported class (\S+)"),
)


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


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, streamed (checkpoints can be several GB)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


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
        raise CheckpointError(
            f"{name} holds NaN or inf in {len(bad)} tensor(s) (first: {first}): the weights are damaged "
            "(diverged training or a failed conversion) and would make every descriptor NaN; use another checkpoint"
        )


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


# ---------------------------------------------------------------------------------------------
# Inferring the architecture


def _shape(sd: StateDict, key: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"checkpoint lacks {key!r}")
    return tuple(sd[key].shape)


def infer_backbone_config(sd: StateDict, prefix: str = BACKBONE_PREFIX, **overrides: Any) -> DinoV2Config:
    """DINOv2 sizes from a state dict whose ViT keys start with ``prefix``."""
    width = _shape(sd, prefix + "cls_token")[-1]
    patch = _shape(sd, prefix + "patch_embed.proj.weight")
    if patch[-2:] != (PATCH_SIZE, PATCH_SIZE):
        raise CheckpointError(f"patch size {patch[-2:]} is not DINOv2's {PATCH_SIZE}x{PATCH_SIZE}")
    pattern = re.compile(re.escape(prefix) + r"blocks\.(\d+)\.")
    indices = {int(m.group(1)) for k in sd if (m := pattern.match(k))}
    if not indices or indices != set(range(len(indices))):
        raise CheckpointError(
            f"checkpoint has no contiguous ViT blocks under {prefix}blocks.N (found {sorted(indices)[:5]})"
        )
    grid = math.isqrt(_shape(sd, prefix + "pos_embed")[1] - 1)
    ffn = "swiglu" if f"{prefix}blocks.0.mlp.w12.weight" in sd else "mlp"
    if "num_heads" in overrides:
        heads = overrides["num_heads"]
        if width % heads:
            divisors = [d for d in range(1, width + 1) if width % d == 0 and width // d >= 8][-4:]
            raise CheckpointError(f"num_heads {heads} in the model options does not divide the checkpoint's width "
                                  f"{width}; use a divisor of {width} (e.g. {', '.join(map(str, divisors))})")
    elif width % HEAD_DIM:
        raise CheckpointError(f"width {width} is not a multiple of DINOv2's head size {HEAD_DIM}; "
                              "give num_heads in the model options (the checkpoint's .json) for other widths")
    else:
        heads = width // HEAD_DIM  # released models: 64-d heads
    cfg = DinoV2Config(embed_dim=width, depth=len(indices), num_heads=heads, ffn=ffn, img_size=grid * PATCH_SIZE,
                       mask_token=prefix + "mask_token" in sd)
    conflicts = [f"{k}: config {v} vs checkpoint {getattr(cfg, k)}" for k, v in overrides.items()
                 if k in ("embed_dim", "depth", "ffn", "img_size", "mask_token") and v != getattr(cfg, k)]
    if conflicts:
        raise CheckpointError("config does not match the checkpoint's shapes: " + "; ".join(conflicts))
    return dataclasses.replace(cfg, **overrides)


def canonical_state_dict(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """The state dict under this package's keys: the backbone prefix of the release (the first of
    :data:`BACKBONE_ALIASES` whose ``cls_token`` is present) becomes ``backbone.model.``; every
    other key is kept as it is (and refused by :func:`check_layout` if it fits nothing)."""
    prefix = next((p for p in BACKBONE_ALIASES if p + "cls_token" in sd), BACKBONE_PREFIX)
    if prefix == BACKBONE_PREFIX:
        return dict(sd)
    return {(BACKBONE_PREFIX + k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}


def model_family(sd: Mapping[str, torch.Tensor]) -> str:
    """``salad``, ``a2gc``, ``megaloc`` or ``boq``, from the aggregator keys of a canonical state
    dict (A²GC without its geometric term looks like SALAD; ``config`` options then decide)."""
    if AGG_PREFIX + "proj_c.weight" in sd or any(k.startswith(AGG_PREFIX + "boqs.") for k in sd):
        return "boq"
    if AGG_PREFIX + "linear.weight" in sd or any(k.startswith(AGG_PREFIX + "agg.") for k in sd):
        return "megaloc"
    return "a2gc" if AGG_PREFIX + "cluster_geo" in sd else "salad"


def infer_config(sd: StateDict, config: Mapping[str, Any] | None = None) -> ModelConfig:
    """Build a ``ModelConfig`` from tensor shapes, completed (and checked) by ``config``."""
    sd = canonical_state_dict(sd)
    check_layout(sd)
    opts = parse_config(config) if config else {"backbone": {}, "aggregator": {}}
    backbone = infer_backbone_config(sd, **opts["backbone"])
    family = model_family(sd)
    if family == "megaloc":
        return _megaloc_config(sd, backbone, opts["aggregator"])
    # Every other release carries DINOv2's (unused) mask_token: a file without it is missing a key.
    backbone = dataclasses.replace(backbone, mask_token=True)
    if family == "boq":
        return _boq_config(sd, backbone, opts)
    width = backbone.embed_dim
    agg = {
        "num_channels": _shape(sd, AGG_PREFIX + "token_features.0.weight")[1],
        "num_clusters": _shape(sd, AGG_PREFIX + "score.3.weight")[0],
        "cluster_dim": _shape(sd, AGG_PREFIX + "cluster_features.3.weight")[0],
        "token_dim": _shape(sd, AGG_PREFIX + "token_features.2.weight")[0],
    }
    user = dict(opts["aggregator"])
    # A²GC without its geometric term has SALAD's keys: then only A²GC options in the config tell.
    is_a2gc = AGG_PREFIX + "cluster_geo" in sd or bool(_A2GC_ONLY & user.keys())
    if AGG_PREFIX + "cluster_geo" in sd:
        agg["geo_dim"] = _shape(sd, AGG_PREFIX + "cluster_geo")[1]
    if not is_a2gc:  # SALAD's head width (A²GC keeps the released 512)
        agg["hidden_dim"] = _shape(sd, AGG_PREFIX + "token_features.0.weight")[0]
    conflicts = [f"{k}: config {user[k]} vs checkpoint {v}" for k, v in agg.items() if k in user and user[k] != v]
    if agg["num_channels"] != width:
        conflicts.append(f"aggregator input width {agg['num_channels']} vs backbone width {width}")
    if conflicts:
        raise CheckpointError("config does not match the checkpoint's shapes: " + "; ".join(conflicts))
    agg_cls = A2GCConfig if is_a2gc else SaladConfig
    known = {f.name for f in dataclasses.fields(agg_cls)}
    return ModelConfig(backbone, agg_cls(**{**{k: v for k, v in user.items() if k in known}, **agg}))


def _megaloc_config(sd: StateDict, backbone: DinoV2Config, user: Mapping[str, Any]) -> ModelConfig:
    """MegaLoc: SALAD sizes (with the head width ``mlp_dim``) and the projection from the shapes."""
    salad, (feat_dim, _) = AGG_PREFIX + "agg.", _shape(sd, AGG_PREFIX + "linear.weight")
    mlp_dim, width = _shape(sd, salad + "token_features.0.weight")
    shapes = {
        "num_channels": width,
        "mlp_dim": mlp_dim,
        "num_clusters": _shape(sd, salad + "score.3.weight")[0],
        "cluster_dim": _shape(sd, salad + "cluster_features.3.weight")[0],
        "token_dim": _shape(sd, salad + "token_features.2.weight")[0],
        "feat_dim": feat_dim,
    }
    return ModelConfig(backbone, _aggregator_config(MegaLocConfig, "MegaLoc", shapes, user, backbone.embed_dim))


def _boq_config(sd: StateDict, backbone: DinoV2Config, opts: Mapping[str, Mapping[str, Any]]) -> ModelConfig:
    """BoQ: channels, queries, blocks and rows from the shapes; the backbone hands over the last
    block's tokens without the final LayerNorm, and (as in BoQ's training) its last 2 blocks train."""
    proj = _shape(sd, AGG_PREFIX + "proj_c.weight")
    pattern = re.compile(re.escape(AGG_PREFIX) + r"boqs\.(\d+)\.")
    blocks = {int(m.group(1)) for k in sd if (m := pattern.match(k))}
    if not blocks or blocks != set(range(len(blocks))):
        raise CheckpointError(f"BoQ checkpoint has no contiguous blocks under {AGG_PREFIX}boqs.N "
                              f"(found {sorted(blocks)[:5]})")
    shapes = {
        "num_channels": proj[1],
        "proj_channels": proj[0],
        "num_queries": _shape(sd, AGG_PREFIX + "boqs.0.queries")[1],
        "num_layers": len(blocks),
        "row_dim": _shape(sd, AGG_PREFIX + "fc.weight")[0],
    }
    trainable = opts["backbone"].get("num_trainable_blocks", 2)
    backbone = dataclasses.replace(backbone, norm_layer=False, num_trainable_blocks=trainable)
    return ModelConfig(backbone, _aggregator_config(BoQConfig, "BoQ", shapes, opts["aggregator"], backbone.embed_dim))


def _aggregator_config(cls: type, family: str, shapes: dict[str, int], user: Mapping[str, Any], width: int) -> Any:
    """``cls`` from the sizes the shapes give and the options only ``user`` can give; a user
    option that contradicts a shape, or that the family does not have, is refused."""
    known = {f.name for f in dataclasses.fields(cls)}
    foreign = sorted(set(user) - known)
    if foreign:
        raise CheckpointError(f"{family} checkpoint: options {foreign} do not apply; known: {sorted(known)}")
    conflicts = [f"{k}: config {user[k]} vs checkpoint {v}" for k, v in shapes.items() if k in user and user[k] != v]
    if shapes["num_channels"] != width:
        conflicts.append(f"aggregator input width {shapes['num_channels']} vs backbone width {width}")
    if conflicts:
        raise CheckpointError("config does not match the checkpoint's shapes: " + "; ".join(conflicts))
    return cls(**{**user, **shapes})


def check_layout(sd: StateDict) -> None:
    """Refuse state dicts that are not backbone.model.* + aggregator.* (after
    :func:`canonical_state_dict`) with a specific message."""
    foreign = [k for k in sd if not k.startswith((BACKBONE_PREFIX, AGG_PREFIX))]
    if not foreign:
        if not any(k.startswith(AGG_PREFIX) for k in sd):
            raise CheckpointError("checkpoint has a backbone but no aggregator.* keys")
        return
    if {"cls_token", "pos_embed", "patch_embed.proj.weight"} <= sd.keys():
        raise CheckpointError(
            "this is a DINOv2 backbone-only checkpoint (keys cls_token, blocks.N.*), not a place-recognition "
            "model; use it to initialise training with vpr_ros.models.load_backbone_weights"
        )
    raise CheckpointError(
        "not a SALAD / A²GC / MegaLoc / BoQ checkpoint: expected keys 'backbone.model.*' (or the releases' "
        f"'backbone.dino.*' / 'backbone.*') and 'aggregator.*'; first unexpected keys: {foreign[:5]}"
    )


# Reference constructor vocabulary -> our config fields.
_AGG_RENAMES = {
    "in_channels": "num_channels",  # BoQ's constructor
    "contrastive_ot_iters": "ot_iters",
    "contrastive_ot_reg": "ot_reg",
    "contrastive_ot_temp": "ot_temperature",
}
_AGG_FIELDS = {f.name for cls in (A2GCConfig, SaladConfig, MegaLocConfig, BoQConfig) for f in dataclasses.fields(cls)}
_A2GC_ONLY = {f.name for f in dataclasses.fields(A2GCConfig)} - {f.name for f in dataclasses.fields(SaladConfig)}
_AGG_IGNORED = {"assignment_mode", "gumbel_tau", "hidden_width", "class", "sinkhorn_reg"}  # checked, not used
_REFERENCE_KWARGS = {"dinov2_kwargs", "megaloc_kwargs", "boq_kwargs"}
_BB_FIELDS = {f.name for f in dataclasses.fields(DinoV2Config)}
_VIT_KEYS = ("embed_dim", "depth", "num_heads", "img_size")


def parse_config(config: Mapping[str, Any], source: str = "model options") -> dict[str, dict[str, Any]]:
    """Read options from a reference ``config.json`` (SALAD, A²GC, MegaLoc or BoQ golden layout) or
    from a plain ``{"backbone": {...}, "aggregator": {...}}`` / flat constructor-argument dict.

    Every option used is checked for its type and range (:func:`check_option`), and so is a top-level
    ``image_size``: a bad value is an InputError naming ``source`` (the file), the field and what
    it accepts, before any model is built.
    """
    if not isinstance(config, Mapping):
        raise InputError(f"{source} must be a JSON object of model options, got {_show(config)}")
    bb: dict[str, tuple[str, Any]] = {}  # option -> (its field in the file, value)
    agg: dict[str, tuple[str, Any]] = {}

    def obj(parent: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
        value = parent.get(key, {})
        if not isinstance(value, Mapping):
            raise InputError(f"{source}: field {where!r} is {_show(value)}, expected an object")
        return value

    def put(target: dict, mapping: Mapping[str, Any], where: str, keys: Any = None, rename: Any = None) -> None:
        for k, v in mapping.items():
            if keys is None or k in keys:
                target[(rename or {}).get(k, k)] = (f"{where}.{k}" if where else str(k), v)

    def vit(mapping: Mapping[str, Any], where: str) -> None:  # ViT constructor arguments
        put(bb, mapping, where, (*_VIT_KEYS, "image_size"), {"image_size": "img_size"})
        if "ffn_layer" in mapping:
            bb["ffn"] = (f"{where}.ffn_layer", "swiglu" if "swiglu" in str(mapping["ffn_layer"]) else "mlp")

    if "aggregator" in config or "backbone" in config or "backbone_wrapper" in config:
        a = obj(config, "aggregator", "aggregator")
        if "kwargs" in a:
            put(agg, obj(a, "kwargs", "aggregator.kwargs"), "aggregator.kwargs")
        else:
            put(agg, a, "aggregator")
        b = obj(config, "backbone", "backbone")
        put(bb, obj(b, "wrapper_kwargs", "backbone.wrapper_kwargs"), "backbone.wrapper_kwargs")
        put(bb, obj(config, "backbone_wrapper", "backbone_wrapper"), "backbone_wrapper")
        if "vit_kwargs" in b:
            vit(obj(b, "vit_kwargs", "backbone.vit_kwargs"), "backbone.vit_kwargs")
        else:
            vit(obj(config, "vit_constructor", "vit_constructor"), "vit_constructor")
        put(bb, b, "backbone", _BB_FIELDS)
    elif _REFERENCE_KWARGS & config.keys():  # MegaLoc / BoQ golden: constructor arguments as given
        vit(obj(config, "dinov2_kwargs", "dinov2_kwargs"), "dinov2_kwargs")
        for key in ("megaloc_kwargs", "boq_kwargs"):
            if obj(config, key, key):
                put(agg, obj(config, key, key), key)
                break
    else:
        put(agg, {k: v for k, v in config.items() if k != "image_size"}, "")
    agg = {_AGG_RENAMES.get(k, k): v for k, v in agg.items()}
    unknown = set(agg) - _AGG_FIELDS - _AGG_IGNORED
    if unknown:
        raise InputError(f"{source}: unknown aggregator options {sorted(unknown)}; known: {sorted(_AGG_FIELDS)}")
    bb = {k: v for k, v in bb.items() if k in _BB_FIELDS}
    for name, (where, value) in [*bb.items(), *agg.items()]:
        check_option(name, value, where, source)
    if "image_size" in config:
        check_option("image_size", config["image_size"], "image_size", source)
    agg_values = {k: v for k, (_, v) in agg.items() if k not in _AGG_IGNORED}
    if agg_values.get("dropout", 0.0) is None:
        agg_values["dropout"] = 0.0
    return {"backbone": {k: v for k, (_, v) in bb.items()}, "aggregator": agg_values}


# What each option accepts: (test, words). Sizes that the checkpoint's shapes also give are compared
# with them later; these bounds only keep absurd values from reaching a constructor.
_SIZE = (lambda v: _is_int(v) and 1 <= v <= 65536, "an integer in 1..65536")


def _int(lo: int, hi: int) -> tuple[Any, str]:
    return (lambda v: _is_int(v) and lo <= v <= hi), f"an integer in {lo}..{hi}"


def _float(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> tuple[Any, str]:
    def test(v: Any) -> bool:
        return _is_number(v) and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)

    return test, f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def _one_of(*choices: Any) -> tuple[Any, str]:
    return (lambda v: any(type(v) is type(c) and v == c for c in choices),
            " or ".join(json.dumps(c) for c in choices))


def _is_int(v: Any) -> bool:
    return type(v) is int


def _is_number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


_BOOL = (lambda v: type(v) is bool, "true or false")
_ITERATIONS = _int(1, 100)  # the releases use 3 to 5; each iteration is a pass over every patch and cluster
OPTIONS: dict[str, tuple[Any, str]] = {
    # backbone (DinoV2Config)
    "embed_dim": _SIZE, "depth": _int(1, 256), "num_heads": _int(1, 1024), "ffn": _one_of("mlp", "swiglu"),
    "img_size": _int(PATCH_SIZE, MAX_IMAGE_SIDE), "num_trainable_blocks": _int(0, 256), "norm_layer": _BOOL,
    "mask_token": _BOOL, "train_embeddings": _BOOL,
    # aggregators (SaladConfig, A2GCConfig, MegaLocConfig, BoQConfig)
    **dict.fromkeys(("num_channels", "num_clusters", "cluster_dim", "token_dim", "hidden_dim", "mlp_dim", "feat_dim",
                     "geo_dim", "proj_channels", "num_queries", "row_dim"), _SIZE),
    "num_layers": _int(1, 64), "sinkhorn_iters": _ITERATIONS, "ot_iters": _ITERATIONS,
    "dropout": ((lambda v: v is None or _float(0, 1, hi_open=True)[0](v)), "null or a number in [0, 1)"),
    "ot_reg": _float(0, 1000, lo_open=True), "ot_temperature": _float(0, 1000, lo_open=True),
    "geo_lambda": _float(0, 1000), "use_geometric_ot": _BOOL,
    # reference settings this package reads but only has one implementation of
    "assignment_mode": _one_of("asymmetric_ot"), "sinkhorn_reg": _one_of(1.0, 1), "hidden_width": _one_of(512),
    "gumbel_tau": ((lambda v: v is None or _is_number(v)), "null or a number"),
    "class": ((lambda v: isinstance(v, str)), "a class name"),
    "image_size": ((lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(s) for s in v)),
                   f"[H, W]: two integers, multiples of {PATCH_SIZE} in {PATCH_SIZE}..{MAX_IMAGE_SIDE}"),
}


def check_option(name: str, value: Any, where: str = "", source: str = "model options") -> None:
    """Refuse a model option of the wrong type or out of its range (:data:`OPTIONS`) with an InputError
    that names ``source``, the field ``where`` it was given and what is accepted."""
    test, accepted = OPTIONS[name]
    ok = bool(test(value))
    if ok and name == "image_size":
        try:
            check_image_size(value)
        except InputError:
            ok = False
    if not ok:
        raise InputError(f"{source}: field {where or name!r} is {_show(value)}, expected {accepted}")


def _show(value: Any, limit: int = 60) -> str:
    """A JSON value in a message, short whatever its size or depth."""
    if isinstance(value, (list, dict)):
        kind = "an array" if isinstance(value, list) else "an object"
        scalars = all(not isinstance(v, (list, dict)) for v in (value if isinstance(value, list) else value.values()))
        if not (scalars and len(value) <= 8):
            return f"{kind} of {len(value)} items"
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Public entry points


def load_model(
    source: Source, config: Mapping[str, Any] | None = None, device: str | torch.device | None = None
) -> VPRModel:
    """Build a SALAD, A²GC, MegaLoc or BoQ model from a released checkpoint, strictly, in eval mode.

    Args:
        source: path to a flat state-dict file (released format: ``.ckpt``/``.pt``/``.pth`` or
            MegaLoc's ``.safetensors``) or a Lightning checkpoint, or an in-memory state dict /
            Lightning dict. Released key layouts are mapped by :func:`canonical_state_dict`.
        config: optional options shapes cannot tell (e.g. ``geo_lambda``, solver settings,
            ``num_trainable_blocks``); a reference ``config.json`` dict is accepted as is.
        device: where to put the model (default: CPU).

    Raises:
        FileNotFoundError: missing file. CheckpointError (a ValueError): not a checkpoint,
        truncated, Python objects besides tensors, NaN / inf values, foreign architecture,
        shapes or dtypes that do not fit, options in ``config`` that contradict the shapes.
    """
    if isinstance(source, Mapping):
        sd, sha = unwrap_state_dict(source, "state dict"), None
    else:
        sd, sha = read_checkpoint(source)
    sd = canonical_state_dict(sd)
    try:
        cfg = infer_config(sd, config)
        try:
            with torch.device("meta"):
                model = VPRModel(cfg, init_weights=False)
        except (ValueError, TypeError) as exc:  # options from the config (or shapes) no model can take
            raise CheckpointError(f"no model can be built from these shapes and options: {exc}") from exc
        load_strict(model, sd)
    except CheckpointError as exc:
        if sha is None or str(source) in str(exc):
            raise
        raise CheckpointError(f"{source}: {exc}") from exc  # the CLI shows one line: say which file
    model.checkpoint_sha256 = sha
    return model.to(device or "cpu").eval()


def load_strict(model: torch.nn.Module, sd: StateDict) -> None:
    """``load_state_dict(strict=True)`` with a message that lists the first offending keys.

    Dtypes are checked against the model's own tensors: an integer, bool or complex tensor where
    the model has a floating one would otherwise fail with a raw error (or load and break at the
    first image). Floating tensors of another precision (fp16/bf16 files) are converted to the
    model's, after the checks, so a tensor that does not fit is never copied.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in sd and sd[k].shape != own[k].shape]
    dtypes = [f"{k}: checkpoint {_dtype_name(sd[k].dtype)} vs model {_dtype_name(own[k].dtype)}"
              for k in own if k in sd and not _dtype_fits(sd[k].dtype, own[k].dtype)]
    if missing or unexpected or wrong or dtypes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {missing[:5]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {unexpected[:5]})")
        if wrong:
            parts.append(f"{len(wrong)} with wrong shapes (first: {wrong[:3]})")
        if dtypes:
            parts.append(f"{len(dtypes)} with wrong dtypes (first: {dtypes[:3]})")
        raise CheckpointError("checkpoint does not fit the model: " + "; ".join(parts))
    sd = {k: v.to(own[k].dtype) if v.dtype != own[k].dtype else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a tensor the checkpoint format does not carry would stay unallocated
        raise RuntimeError(f"model tensors not set by the checkpoint: {left[:5]}")


def _dtype_fits(got: torch.dtype, want: torch.dtype) -> bool:
    """Any floating precision for a floating model tensor; otherwise exactly the model's dtype."""
    return (got.is_floating_point and want.is_floating_point) or got == want


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def load_backbone_weights(model: VPRModel, source: str | os.PathLike | Mapping[str, Any]) -> VPRModel:
    """Initialise ``model.backbone.model`` from official DINOv2 weights
    (``dinov2_vitb14_pretrain.pth`` layout: ``cls_token``, ``blocks.N.*``, ``mask_token``...)."""
    sd = unwrap_state_dict(source, "state dict") if isinstance(source, Mapping) else read_checkpoint(source)[0]
    sd = canonical_state_dict(sd)
    if any(k.startswith(BACKBONE_PREFIX) for k in sd):
        sd = {k[len(BACKBONE_PREFIX):]: v for k, v in sd.items() if k.startswith(BACKBONE_PREFIX)}
    if model.backbone.model.mask_token is None:  # MegaLoc's layout has no place for the unused tensor
        sd.pop("mask_token", None)
    got = infer_backbone_config(sd, prefix="")
    want = model.cfg.backbone
    if (got.embed_dim, got.depth, got.ffn) != (want.embed_dim, want.depth, want.ffn):
        raise CheckpointError(
            f"DINOv2 weights are width {got.embed_dim}, depth {got.depth}, {got.ffn} FFN; "
            f"the model's backbone is width {want.embed_dim}, depth {want.depth}, {want.ffn} FFN"
        )
    load_strict(model.backbone.model, sd)
    return model
