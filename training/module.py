"""LightningModule: a ``vpr_ros.models`` SALAD / A²GC / BoQ model (or a MegaLoc being fine-tuned)
trained with the multi-similarity loss.

The module wraps a ``VPRModel`` as ``self.model``, so its checkpoints key the weights
``model.backbone.model.*`` / ``model.aggregator.*``: ``vpr_ros.models.load_model`` drops that
prefix, and ``export`` writes the released flat layout without it.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from pytorch_metric_learning import distances, losses, miners

from vpr_ros.evaluation.recall import K_TRAIN_VALIDATION, recall_at_k
from vpr_ros.models import VPRModel, canonical_state_dict, load_backbone_weights, read_checkpoint
from vpr_ros.models.loading import AGG_PREFIX, BACKBONE_PREFIX

from .config import build_model_config
from .export import MODULE_PREFIX, flat_state_dict


class VPRLightningModule(pl.LightningModule):
    """Train a SALAD, A²GC or BoQ model on GSV-Cities-style batches (places x images per place).

    Args:
        model: registry name (``dino_salad``, ``dino_salad_512_32``, ``dino_salad_2048_64``,
            ``a2gc_vitb14``, ``boq_dinov2_12288``; ``megaloc`` to fine-tune from its released
            weights with ``init_checkpoint``): aggregator kind and sizes.
        backbone_arch: another DINOv2 size (``dinov2_vits14`` ... ``dinov2_vitg14``), default the
            registry's ViT-B.
        backbone: DinoV2Config field overrides, e.g. a tiny ViT ``{embed_dim: 64, depth: 2,
            num_heads: 4, img_size: 112}``.
        aggregator: SaladConfig / A2GCConfig / BoQConfig / MegaLocConfig field overrides, e.g.
            ``{num_clusters: 8}`` or ``{proj_channels: 64, num_queries: 4}``.
        num_trainable_blocks: last ViT blocks that train (4 in the paper); ``depth`` for all. The
            others are frozen by ``DinoV2Backbone`` itself.
        train_embeddings: also train patch/position embeddings and CLS token (from scratch;
            needs ``num_trainable_blocks >= depth``).
        backbone_weights: official DINOv2 weights file (``dinov2_vitb14_pretrain.pth``) loaded into
            the backbone when fitting starts; None trains the backbone from its random init.
        init_checkpoint: a released / exported model (flat or Lightning file, MegaLoc's
            ``model.safetensors``, BoQ's ``dinov2_12288.pth``) whose backbone and aggregator weights
            start the fit (fine-tuning); loaded strictly, shapes must agree.
        lr, weight_decay: AdamW over the trainable parameters.
        lr_schedule: ``linear`` (SALAD's recipe): LinearLR from 1 to ``lr_end_factor`` over
            ``lr_total_iters`` optimizer steps. ``multistep`` (BoQ's recipe): linear warm-up over
            ``warmup_epochs``, then the rate times ``lr_gamma`` at each epoch in ``lr_milestones``.
        ms_alpha, ms_beta, ms_base: MultiSimilarityLoss on dot products of the unit descriptors.
        miner_epsilon: MultiSimilarityMiner margin on cosine similarity.
        val_ks: Recall@K values logged as ``<valset>/R<K>``.
    """

    def __init__(
        self,
        model: str = "dino_salad",
        backbone_arch: str | None = None,
        backbone: dict[str, int | str | bool] | None = None,
        aggregator: dict[str, int | float | bool] | None = None,
        num_trainable_blocks: int = 4,
        train_embeddings: bool = False,
        backbone_weights: str | None = None,
        init_checkpoint: str | None = None,
        lr: float = 6e-5,
        weight_decay: float = 9.5e-9,
        lr_end_factor: float = 0.2,
        lr_total_iters: int = 4000,
        lr_schedule: Literal["linear", "multistep"] = "linear",
        warmup_epochs: float = 0.0,
        lr_milestones: Sequence[int] = (10, 20),
        lr_gamma: float = 0.1,
        ms_alpha: float = 1.0,
        ms_beta: float = 50.0,
        ms_base: float = 0.0,
        miner_epsilon: float = 0.1,
        val_ks: Sequence[int] = K_TRAIN_VALIDATION,
    ) -> None:
        super().__init__()
        if lr_schedule not in ("linear", "multistep"):
            raise ValueError(f"lr_schedule must be 'linear' or 'multistep', got {lr_schedule!r}")
        self.save_hyperparameters()
        self.model_config = build_model_config(model, backbone_arch, backbone, aggregator, num_trainable_blocks,
                                               train_embeddings)
        self.model = VPRModel(self.model_config)
        self.loss_fn = losses.MultiSimilarityLoss(alpha=ms_alpha, beta=ms_beta, base=ms_base,
                                                  distance=distances.DotProductSimilarity())
        self.miner = miners.MultiSimilarityMiner(epsilon=miner_epsilon, distance=distances.CosineSimilarity())
        self.val_ks = tuple(sorted(int(k) for k in val_ks))
        self._val_outputs: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm float32 descriptors ``[B, D]`` (what ``VPRModel`` returns)."""
        return self.model(images)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Checkpoints of the earlier module, which held backbone/aggregator itself, keep loading.
        sd = checkpoint.get("state_dict", {})
        if sd and not any(k.startswith(MODULE_PREFIX) for k in sd):
            checkpoint["state_dict"] = {
                (MODULE_PREFIX + k if k.startswith((BACKBONE_PREFIX, AGG_PREFIX)) else k): v for k, v in sd.items()}

    # -- training ---------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        # Before a resumed checkpoint is restored, so resuming keeps the trained weights.
        if stage == "fit" and self.hparams.backbone_weights:
            load_backbone_weights(self.model, self.hparams.backbone_weights)  # keeps requires_grad
            rank_zero_info(f"backbone initialised from {self.hparams.backbone_weights}")
        if stage == "fit" and self.hparams.init_checkpoint:
            released = canonical_state_dict(read_checkpoint(self.hparams.init_checkpoint)[0])
            self.model.load_state_dict(flat_state_dict(released), strict=True)
            rank_zero_info(f"model initialised from {self.hparams.init_checkpoint}")

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        places, labels = batch  # [P, N, 3, H, W], [P, N]: images of a place stay consecutive
        images, labels = places.flatten(0, 1), labels.flatten()
        descriptors = self(images)
        if not torch.isfinite(descriptors).all():
            raise FloatingPointError(f"non-finite descriptors at step {self.global_step}")
        pairs = self.miner(descriptors, labels)
        loss = self.loss_fn(descriptors, labels, pairs)
        n = len(labels)
        mined = len(pairs[0]) + len(pairs[2])
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        # fraction of all positive + negative pairs the miner kept; b_acc as in the reference logs:
        # share of images that are not the anchor of any hard positive pair
        self.log("train/mined_pairs", mined / max(n * n - n, 1), batch_size=n)
        self.log("train/b_acc", 1.0 - len(torch.unique(pairs[0])) / n, prog_bar=True, batch_size=n)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        hp = self.hparams
        if hp.get("lr_schedule", "linear") == "multistep":
            per_epoch = self._steps_per_epoch()
            warmup = hp.warmup_epochs * per_epoch
            milestones = sorted(int(m) * per_epoch for m in hp.lr_milestones)

            def factor(step: int) -> float:
                ramp = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
                return ramp * hp.lr_gamma ** bisect_right(milestones, step)

            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        else:
            scheduler = torch.optim.lr_scheduler.LinearLR(
                optimizer, start_factor=1.0, end_factor=hp.lr_end_factor, total_iters=hp.lr_total_iters)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _steps_per_epoch(self) -> int:
        """Optimizer steps per epoch of the running fit (1 outside a fit), so that epoch-based
        schedules can run per step."""
        trainer = self._trainer
        if trainer is None or not trainer.max_epochs or trainer.max_epochs < 1:
            return 1
        return max(1, int(trainer.estimated_stepping_batches) // trainer.max_epochs)

    # -- validation: Recall@K over all ranks' descriptors -------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self._val_outputs = defaultdict(list)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int,
                        dataloader_idx: int = 0) -> None:
        images, indices = batch
        self._val_outputs[dataloader_idx].append((indices, self(images)))

    def on_validation_epoch_end(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        val_sets = getattr(datamodule, "val_datasets", [])
        if self.trainer.sanity_checking:
            return
        for i, ds in enumerate(val_sets):
            outputs = self._val_outputs.get(i, [])
            if not outputs:
                rank_zero_warn(f"no validation batches for {ds.name}; Recall@K not logged")
                continue
            indices = torch.cat([o[0] for o in outputs]).to(self.device)
            descs = torch.cat([o[1] for o in outputs])
            # DistributedSampler pads every rank to the same length, so all_gather shapes agree.
            indices = self.all_gather(indices).reshape(-1).cpu().numpy()
            descs = self.all_gather(descs).reshape(len(indices), -1).float().cpu().numpy()
            n_db, n = len(ds.db_images), len(ds.db_images) + len(ds.q_images)
            full = np.zeros((n, descs.shape[1]), np.float32)
            seen = np.zeros(n, bool)
            full[indices], seen[indices] = descs, True
            if not seen.all() or ds.positives is None:
                rank_zero_warn(f"{ds.name}: {int((~seen).sum())} images not described or no ground truth; "
                               "Recall@K not logged")
                continue
            recalls = recall_at_k(full[:n_db], full[n_db:], ds.positives, self.val_ks)
            for k, r in recalls.items():
                self.log(f"{ds.name}/R{k}", r, sync_dist=True)  # identical on every rank
            # self.print: rank 0 only, and on a line of its own above the progress bar
            self.print(f"epoch {self.current_epoch} {ds.name} ({n_db} db, {n - n_db} queries): "
                       + "  ".join(f"R@{k} {100 * r:.2f}" for k, r in recalls.items()))
        self._val_outputs = defaultdict(list)

