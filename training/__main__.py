"""``python -m training fit|validate --config config/train_salad.yaml --data.root GSV_CITIES ...``

A LightningCLI over :class:`training.module.VPRLightningModule` and
:class:`training.gsv.GSVCitiesDataModule`: every constructor argument is a ``--model.*`` /
``--data.*`` option, and the Trainer's (``--trainer.devices``, ``--trainer.num_nodes``,
``--trainer.strategy ddp``...) give multi-GPU and multi-node training.
"""

from __future__ import annotations

from pytorch_lightning.cli import LightningCLI

from training.gsv import GSVCitiesDataModule
from training.module import VPRLightningModule


def main(args: list[str] | None = None) -> LightningCLI:
    """Run the CLI (``args`` instead of ``sys.argv`` for tests)."""
    return LightningCLI(
        VPRLightningModule,
        GSVCitiesDataModule,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
