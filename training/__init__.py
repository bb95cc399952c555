"""Offline training with PyTorch Lightning: ``python -m training fit --config config/train_salad.yaml``.

``module`` holds the LightningModule (SALAD / A²GC on a DINOv2 backbone, multi-similarity loss),
``gsv`` the GSV-Cities dataset and DataModule, ``export`` the flat export that
``vpr_ros.models.load_model`` reads. Needs the ``train`` extra (pytorch-lightning,
pytorch-metric-learning, jsonargparse).
"""
