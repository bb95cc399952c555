"""Recall@K on the standard VPR benchmarks and the readers of their list/ground-truth layouts."""
