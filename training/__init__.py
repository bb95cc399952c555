"""Offline training with PyTorch Lightning: ``python -m vpr_ros.training fit --config config/train_salad.yaml``.

``module`` holds the LightningModule (SALAD, A²GC or BoQ on a DINOv2 backbone, or MegaLoc fine-tuned
from its released weights; multi-similarity loss), ``config`` the model config it builds from its
hyperparameters, ``gsv`` the GSV-Cities dataset and DataModule, ``export`` the flat export that
``vpr_ros.models.load_model`` reads. Needs the ``train`` extra (pytorch-lightning,
pytorch-metric-learning, jsonargparse).

The sources sit in the repository's top-level ``training/`` folder, which setup.py installs as
``vpr_ros.training``; they import each other relatively, so they work under that name.
"""
