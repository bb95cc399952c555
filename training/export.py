"""Export trained weights in the released flat format that ``vpr_ros.models.load_model`` reads.

The flat file is a ``torch.save``d state dict with exactly the keys of ``VPRModel.state_dict()``
(``backbone.model.*``, ``aggregator.*``). A JSON file next to it holds the options tensor shapes
cannot tell (head count of non-DINOv2 widths, dropout, solver settings, ``geo_lambda``); pass it
as ``load_model(path, config=json.load(...))``.

    python -m vpr_ros.training.export LIGHTNING_CKPT OUT.pt     # writes OUT.pt and OUT.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from vpr_ros.io.files import output_path, write_atomic
from vpr_ros.models import ModelConfig
from vpr_ros.models.loading import AGG_PREFIX, BACKBONE_PREFIX

from .config import build_model_config

EXPORT_FORMAT = "vpr_ros.training_export/1"
MODULE_PREFIX = "model."  # VPRLightningModule.model: the wrapped VPRModel


def flat_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's tensors under their released keys, on the CPU.

    Takes the LightningModule's state dict (``model.backbone.model.*``...; the loss and miner
    hold no tensors) or one that is already flat, such as a released file.
    """
    flat = {}
    for key, value in state_dict.items():
        key = key.removeprefix(MODULE_PREFIX)
        if key.startswith((BACKBONE_PREFIX, AGG_PREFIX)):
            flat[key] = value.detach().to("cpu").contiguous()
    return flat


def load_config(cfg: ModelConfig, image_size: Sequence[int] | None = None) -> dict[str, Any]:
    """The sidecar ``.json`` that ``load_extractor`` reads: full backbone and aggregator options, and
    the input size the model was validated at (the size its descriptors are meant for)."""
    bb = dataclasses.asdict(cfg.backbone)
    for training_only in ("num_trainable_blocks", "train_embeddings"):
        bb.pop(training_only)
    size = {} if image_size is None else {"image_size": [int(s) for s in image_size]}
    return {
        "format": EXPORT_FORMAT,
        "arch": cfg.describe(),
        "descriptor_dim": cfg.descriptor_dim,
        **size,
        "backbone": bb,
        "aggregator": dataclasses.asdict(cfg.aggregator),
    }


def export_flat(state_dict: Mapping[str, torch.Tensor], cfg: ModelConfig, out: str | Path,
                image_size: Sequence[int] | None = None) -> tuple[Path, Path]:
    """Write ``out`` (flat state dict) and ``out`` with suffix ``.json`` (load options); return both paths."""
    out = Path(out)
    flat = flat_state_dict(state_dict)
    if not flat:
        raise ValueError("state dict has no backbone.model.* / aggregator.* tensors: not a VPR model")
    config_path = out.with_suffix(".json")
    output_path(config_path)  # both refused before either is written: a folder, a device
    write_atomic(out, lambda p: torch.save(flat, p))
    write_atomic(config_path, lambda p: p.write_text(json.dumps(load_config(cfg, image_size), indent=1) + "\n"))
    return out, config_path


def export_lightning_checkpoint(ckpt: str | Path, out: str | Path) -> tuple[Path, Path]:
    """Export a checkpoint written by training (weights + ``hyper_parameters``)."""
    obj = torch.load(ckpt, map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping) or "state_dict" not in obj or "hyper_parameters" not in obj:
        raise ValueError(f"{ckpt} is not a Lightning checkpoint of this training module "
                         "(expected 'state_dict' and 'hyper_parameters')")
    size = (obj.get("datamodule_hyper_parameters") or {}).get("val_image_size")
    return export_flat(obj["state_dict"], build_model_config(**obj["hyper_parameters"]), out, size)


class ExportFlatCheckpoint(pl.Callback):
    """At the end of ``fit``, write flat exports next to the Lightning checkpoints.

    ``last.pt`` holds the final weights; ``<best checkpoint name>.pt`` the best ones by the
    ModelCheckpoint monitor (e.g. ``pitts30k_val/R1``), each with its ``.json``.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath
        self.exported: list[Path] = []

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        ckpt_cb = trainer.checkpoint_callback
        dirpath = self.dirpath or getattr(ckpt_cb, "dirpath", None) or trainer.default_root_dir
        size = getattr(trainer.datamodule, "val_image_size", None)
        written = [*export_flat(pl_module.state_dict(), pl_module.model_config, Path(dirpath) / "last.pt", size)]
        best = getattr(ckpt_cb, "best_model_path", "")
        if best and Path(best).is_file():
            written += export_lightning_checkpoint(best, Path(best).with_suffix(".pt"))
        self.exported = [p for p in written if p.suffix == ".pt"]
        pl.utilities.rank_zero_info("exported for vpr_ros.models.load_model: " + ", ".join(map(str, self.exported)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vpr_ros.training.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="Lightning checkpoint written by python -m vpr_ros.training fit")
    parser.add_argument("out", type=Path, help="flat state-dict file to write (a .json goes next to it)")
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        parser.error(f"checkpoint not found: {args.checkpoint}")
    for path in export_lightning_checkpoint(args.checkpoint, args.out):
        print(path)


if __name__ == "__main__":
    main()
