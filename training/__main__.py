"""``python -m vpr_ros.training fit|validate --config config/train_salad.yaml --data.root GSV_CITIES ...``

A LightningCLI over :class:`vpr_ros.training.module.VPRLightningModule` and
:class:`vpr_ros.training.gsv.GSVCitiesDataModule`: every constructor argument is a ``--model.*`` /
``--data.*`` option, and the Trainer's (``--trainer.devices``, ``--trainer.num_nodes``,
``--trainer.strategy ddp``...) give multi-GPU and multi-node training.
"""

from __future__ import annotations

from pytorch_lightning.cli import LightningCLI

from .gsv import GSVCitiesDataModule
from .module import VPRLightningModule


def main(args: list[str] | None = None) -> LightningCLI:
    """Run the CLI (``args`` instead of ``sys.argv`` for tests)."""
    return LightningCLI(
        VPRLightningModule,
        GSVCitiesDataModule,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def console_main() -> None:
    """``vpr-ros-train``: console scripts ``sys.exit`` with the return value, and a LightningCLI
    object there would print itself and exit 1."""
    main()


if __name__ == "__main__":
    main()
