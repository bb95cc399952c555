"""``python -m vpr_ros.training fit|validate --config config/train_salad.yaml --data.root GSV_CITIES ...``

A LightningCLI over :class:`vpr_ros.training.module.VPRLightningModule` and
:class:`vpr_ros.training.gsv.GSVCitiesDataModule`: every constructor argument is a ``--model.*`` /
``--data.*`` option, and the Trainer's (``--trainer.devices``, ``--trainer.num_nodes``,
``--trainer.strategy ddp``...) give multi-GPU and multi-node training.
"""

from __future__ import annotations

import logging
import warnings

from pytorch_lightning.cli import LightningCLI

from .gsv import GSVCitiesDataModule
from .module import VPRLightningModule


class TrainingCLI(LightningCLI):
    """The logger writes under ``trainer.default_root_dir``: ``--trainer.default_root_dir DIR``
    moves the logs, checkpoints and exports together (the configs name no logger folder)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("trainer.default_root_dir", "trainer.logger.init_args.save_dir",
                              compute_fn=lambda root: root or ".")


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(f in record.getMessage() for f in self.fragments)


def quiet_lightning() -> None:
    """Silence what Lightning prints on every run but a user cannot act on, so a real warning
    stands out: the advertisement for its cloud logger, and the deprecation warning that its
    own code raises by using torch's ``LeafSpec``."""
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages("litlogger"))
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)


def main(args: list[str] | None = None) -> LightningCLI:
    """Run the CLI (``args`` instead of ``sys.argv`` for tests)."""
    quiet_lightning()
    return TrainingCLI(
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
