"""Load released SALAD / A²GC / MegaLoc / BoQ checkpoints (and DINOv2 backbone weights) safely
and strictly.

Files are read by :mod:`~vpr_ros.io.checkpoints` (weights only, nothing unpickled). The
release's backbone prefix (each family names its own) becomes ``backbone.model.*``, the family that
recognises the keys (:data:`~vpr_ros.models.registry.FAMILIES`) reads its sizes from the tensor
shapes, and what shapes cannot tell comes from ``config`` (:func:`parse_config`), which may be a
reference ``config.json`` as written by the official code. The DINOv2 sizes are read here: width
from ``cls_token``, depth from the block indices, heads = width / 64, FFN from ``mlp.w12``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vpr_ros.errors import CheckpointError, InputError, MissingFileError
from vpr_ros.io.checkpoints import read_checkpoint, unwrap_state_dict
from vpr_ros.io.files import file_kind
from vpr_ros.models.dinov2 import HEAD_DIM, PATCH_SIZE, DinoV2Config
from vpr_ros.models.family import AGG_PREFIX, BACKBONE_PREFIX, AggregatorConfig, StateDict, block_count, shape
from vpr_ros.models.option_checks import BOOL, SIZE, Check, int_range, is_int, one_of
from vpr_ros.models.registry import FAMILIES
from vpr_ros.models.vpr_model import ModelConfig, VPRModel
from vpr_ros.preprocess import check_image_size
from vpr_ros.types import MAX_IMAGE_SIDE

Source = str | os.PathLike | Mapping[str, Any]
MAX_OPTIONS_BYTES = 1 << 20  # a model options file is a few hundred bytes; a larger one is another file
# Backbone prefixes of the released files, in the order they are tried: ours first, then the
# families' own (BoQ: ``backbone.dino.``, MegaLoc: ``backbone.``).
BACKBONE_ALIASES = tuple(dict.fromkeys((BACKBONE_PREFIX, *(cls.backbone_prefix for cls in reversed(FAMILIES)))))


def infer_backbone_config(sd: StateDict, prefix: str = BACKBONE_PREFIX, **overrides: Any) -> DinoV2Config:
    """DINOv2 sizes from a state dict whose ViT keys start with ``prefix``."""
    width = shape(sd, prefix + "cls_token")[-1]
    patch = shape(sd, prefix + "patch_embed.proj.weight")
    if patch[-2:] != (PATCH_SIZE, PATCH_SIZE):
        raise CheckpointError(f"patch size {patch[-2:]} is not DINOv2's {PATCH_SIZE}x{PATCH_SIZE}")
    depth = block_count(sd, prefix + "blocks.", "checkpoint", "ViT ")
    grid = math.isqrt(shape(sd, prefix + "pos_embed")[1] - 1)
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
    cfg = DinoV2Config(embed_dim=width, depth=depth, num_heads=heads, ffn=ffn, img_size=grid * PATCH_SIZE,
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
    return _family(sd, {}).family


def _family(sd: Mapping[str, torch.Tensor], user: Mapping[str, Any]) -> type[AggregatorConfig]:
    return next(cls for cls in reversed(FAMILIES) if cls.recognises(sd, user))  # the most specific


def infer_config(sd: StateDict, config: Mapping[str, Any] | None = None) -> ModelConfig:
    """Build a ``ModelConfig`` from tensor shapes, completed (and checked) by ``config``."""
    sd = canonical_state_dict(sd)
    check_layout(sd)
    opts = parse_config(config) if config else {"backbone": {}, "aggregator": {}}
    backbone = infer_backbone_config(sd, **opts["backbone"])
    family = _family(sd, opts["aggregator"])
    if family.keeps_mask_token:  # a file without DINOv2's (unused) mask_token is then missing a key
        backbone = dataclasses.replace(backbone, mask_token=True)
    return ModelConfig(*family.from_state_dict(sd, backbone, opts))


def check_layout(sd: StateDict) -> None:
    """Refuse state dicts that are not backbone.model.* + aggregator.* (after
    :func:`canonical_state_dict`) with a specific message."""
    foreign = [k for k in sd if not k.startswith((BACKBONE_PREFIX, AGG_PREFIX))]
    if not foreign:
        if not any(k.startswith(AGG_PREFIX) for k in sd):
            raise CheckpointError("checkpoint has a backbone but no aggregator.* keys")
        return
    if {"cls_token", "pos_embed", "patch_embed.proj.weight"} <= sd.keys():
        raise CheckpointError("this is a DINOv2 backbone-only checkpoint (keys cls_token, blocks.N.*), not a "
                              "place-recognition model; use it to initialise training with "
                              "vpr_ros.models.load_backbone_weights")
    titles = " / ".join(cls.title for cls in FAMILIES)
    releases = " / ".join(f"'{p}*'" for p in BACKBONE_ALIASES[1:])
    raise CheckpointError(f"not a {titles} checkpoint: expected keys '{BACKBONE_PREFIX}*' (or the releases' "
                          f"{releases}) and '{AGG_PREFIX}*'; first unexpected keys: {foreign[:5]}")


# Reference constructor vocabulary -> our config fields.
_AGG_RENAMES = {k: v for cls in FAMILIES for k, v in cls.renames.items()}
_AGG_FIELDS = {f.name for cls in FAMILIES for f in dataclasses.fields(cls)}
_AGG_IGNORED = {"class"}.union(*(cls.reference_only for cls in FAMILIES))  # checked, not used
_FAMILY_KWARGS = [cls.reference_kwargs for cls in FAMILIES if cls.reference_kwargs]
_REFERENCE_KWARGS = {"dinov2_kwargs", *_FAMILY_KWARGS}
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
        for key in _FAMILY_KWARGS:
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


OPTIONS: dict[str, Check] = {
    # backbone (DinoV2Config)
    "embed_dim": SIZE, "depth": int_range(1, 256), "num_heads": int_range(1, 1024), "ffn": one_of("mlp", "swiglu"),
    "img_size": int_range(PATCH_SIZE, MAX_IMAGE_SIDE), "num_trainable_blocks": int_range(0, 256), "norm_layer": BOOL,
    "mask_token": BOOL, "train_embeddings": BOOL,
    # aggregators: each family's own
    **{name: check for cls in FAMILIES for name, check in cls.options.items()},
    "class": ((lambda v: isinstance(v, str)), "a class name"),
    "image_size": ((lambda v: isinstance(v, list) and len(v) == 2 and all(is_int(s) for s in v)),
                   f"[H, W]: two integers, multiples of {PATCH_SIZE} in {PATCH_SIZE}..{MAX_IMAGE_SIDE}"),
}


def check_option(name: str, value: Any, where: str = "", source: str = "model options") -> None:
    """Refuse a model option of the wrong type or out of its range (:data:`OPTIONS`) with an InputError
    that names ``source``, the field ``where`` it was given and what is accepted."""
    test, accepted = OPTIONS[name]
    try:
        ok = bool(test(value)) and (name != "image_size" or bool(check_image_size(value)))
    except InputError:  # check_image_size: not multiples of the patch size, or too large
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
    sd, sha = ((unwrap_state_dict(source, "state dict"), None) if isinstance(source, Mapping)
               else read_checkpoint(source))
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
    dtypes = [f"{k}: checkpoint {sd[k].dtype} vs model {own[k].dtype}".replace("torch.", "") for k in own if k in sd
              and not (sd[k].dtype.is_floating_point and own[k].dtype.is_floating_point or sd[k].dtype == own[k].dtype)]
    parts = [f"{len(keys)} {what} (first: {keys[:shown]})" for keys, what, shown in (
        (missing, "missing", 5), (unexpected, "unexpected", 5), (wrong, "with wrong shapes", 3),
        (dtypes, "with wrong dtypes", 3)) if keys]
    if parts:
        raise CheckpointError("checkpoint does not fit the model: " + "; ".join(parts))
    sd = {k: v.to(own[k].dtype) if v.dtype != own[k].dtype else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a tensor the checkpoint format does not carry would stay unallocated
        raise RuntimeError(f"model tensors not set by the checkpoint: {left[:5]}")


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
        raise CheckpointError(f"DINOv2 weights are width {got.embed_dim}, depth {got.depth}, {got.ffn} FFN; "
                              f"the model's backbone is width {want.embed_dim}, depth {want.depth}, {want.ffn} FFN")
    load_strict(model.backbone.model, sd)
    return model


def read_model_options(checkpoint: Source, config: Source | None = None) -> dict[str, Any] | None:
    """Model options for ``checkpoint``: ``config`` (a JSON file or a dict) when given, else the checkpoint's
    sidecar ``.json`` when there is one, else None (shapes alone decide). Every option is checked
    (:func:`parse_config`): a bad one is an InputError naming the file, the field and what it accepts."""
    if isinstance(config, Mapping):
        parse_config(config)
        return dict(config)
    if config is None and isinstance(checkpoint, Mapping):
        return None  # an in-memory state dict has no sidecar
    path = Path(config) if config is not None else Path(checkpoint).with_suffix(".json")  # training's export writes it
    if config is None and not path.is_file():
        return None
    if not path.exists():
        raise MissingFileError(f"model config not found: {path}")
    if not path.is_file():  # a FIFO would block the read forever
        raise InputError(f"model config {path} is {file_kind(path.stat().st_mode)}, not a JSON file")
    if path.stat().st_size > MAX_OPTIONS_BYTES:
        raise InputError(f"model config {path} is {path.stat().st_size:,} bytes; model options take a few hundred "
                         f"(at most {MAX_OPTIONS_BYTES:,}): is it the right file?")
    try:
        options = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # ValueError: bad JSON, a number of 5000 digits
        raise InputError(f"model config {path} is not readable JSON: {exc}") from exc
    except RecursionError as exc:
        raise InputError(f"model config {path} nests arrays or objects too deeply to be model options") from exc
    if not isinstance(options, dict):
        raise InputError(f"model config {path} must hold a JSON object of model options, got "
                         f"{type(options).__name__}")
    parse_config(options, f"model config {path}")  # every field checked here, naming this file
    return options
