"""What every aggregator family provides, and the helpers its file uses to provide it.

A family is its config class (a frozen dataclass deriving from :class:`AggregatorConfig`): it
builds its aggregator, states its input-size policy, recognises its checkpoints from the keys,
reads its sizes from the shapes and names its ``config.json`` options. The loader and ``VPRModel``
only ask these questions: a new family is its own file plus one line in ``registry.FAMILIES``."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from vpr_ros.errors import CheckpointError
from vpr_ros.models.dinov2 import DinoV2Config
from vpr_ros.models.option_checks import Check

StateDict = dict[str, torch.Tensor]
Options = Mapping[str, Mapping[str, Any]]  # {"backbone": {...}, "aggregator": {...}} from parse_config
BACKBONE_PREFIX = "backbone.model."
AGG_PREFIX = "aggregator."


class AggregatorConfig:
    """Base of the family config classes; the defaults fit a family with nothing special."""

    family: ClassVar[str]  # the name in model identities and manifests, e.g. ``salad``
    title: ClassVar[str]  # the name in messages, e.g. ``SALAD``
    backbone_prefix: ClassVar[str] = BACKBONE_PREFIX  # where the release keeps the ViT
    keeps_mask_token: ClassVar[bool] = True  # the release carries DINOv2's unused mask_token
    options: ClassVar[Mapping[str, Check]] = {}  # what each field accepts in a config.json
    renames: ClassVar[Mapping[str, str]] = {}  # the reference code's option names -> ours
    reference_only: ClassVar[frozenset[str]] = frozenset()  # reference settings checked, not used
    reference_kwargs: ClassVar[str | None] = None  # its constructor arguments' key in a golden config
    marks: ClassVar[tuple[str, ...]] = ()  # aggregator keys only its checkpoints have ("x." = any key under x)

    def build(self) -> nn.Module:
        raise NotImplementedError

    def describe_sizes(self) -> str:
        raise NotImplementedError

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The size an image of ``height`` x ``width`` is run at (:meth:`fit_input` resizes to it)."""
        return height, width

    def fit_input(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def check_patches(self, height: int, width: int) -> None:
        """Raise a ValueError when an input of this size has too few patches for the family."""

    @classmethod
    def recognises(cls, sd: StateDict, user: Mapping[str, Any]) -> bool:
        """Whether a canonical state dict (with the user's aggregator options) has one of the marks;
        a family without marks takes what the others leave."""
        keys = [AGG_PREFIX + m for m in cls.marks]
        return not keys or any(k in sd for k in keys) or any(k.startswith(p) for p in keys if p[-1] == "." for k in sd)

    @classmethod
    def from_state_dict(cls, sd: StateDict, backbone: DinoV2Config, opts: Options
                        ) -> tuple[DinoV2Config, AggregatorConfig]:
        """The backbone as this family's release uses it and the config its shapes give."""
        raise NotImplementedError


def shape(sd: StateDict, key: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"checkpoint lacks {key!r}")
    return tuple(sd[key].shape)


def block_count(sd: StateDict, prefix: str, owner: str, kind: str = "") -> int:
    """Number of blocks ``{prefix}N.*``, which must be numbered 0..N-1."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in sd if (m := pattern.match(k))}
    if not indices or indices != set(range(len(indices))):
        raise CheckpointError(f"{owner} has no contiguous {kind}blocks under {prefix}N (found {sorted(indices)[:5]})")
    return len(indices)


def sized_config(cls: type, shapes: dict[str, int], user: Mapping[str, Any], width: int,
                 drop_foreign: bool = False) -> Any:
    """``cls`` from the sizes the shapes give and the options only ``user`` can give; a user
    option that contradicts a shape is refused, and so is one the family does not have (unless
    ``drop_foreign``)."""
    known = {f.name for f in dataclasses.fields(cls)}
    foreign = sorted(set(user) - known)
    if foreign and not drop_foreign:
        raise CheckpointError(f"{cls.title} checkpoint: options {foreign} do not apply; known: {sorted(known)}")
    conflicts = [f"{k}: config {user[k]} vs checkpoint {v}" for k, v in shapes.items() if k in user and user[k] != v]
    if shapes["num_channels"] != width:
        conflicts.append(f"aggregator input width {shapes['num_channels']} vs backbone width {width}")
    if conflicts:
        raise CheckpointError("config does not match the checkpoint's shapes: " + "; ".join(conflicts))
    return cls(**{**{k: v for k, v in user.items() if k in known}, **shapes})


def dropout_layer(p: float | None) -> nn.Module:
    return nn.Dropout(p) if p else nn.Identity()
