"""Offline training with PyTorch Lightning (run from the repository root as ``python -m training``).

Empty for now.
"""
