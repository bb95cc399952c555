"""Log-domain optimal-transport solvers that turn cluster scores into soft assignments.

Both solvers take scores ``[B, m, n]`` (m clusters, n patches) and a learnable dustbin scalar
and return a log transport plan ``[B, m + 1, n]`` whose last row is the dustbin.
Shapes: B batch, m clusters, n patch tokens.
"""

from __future__ import annotations

import math

import torch


def _augment(scores: torch.Tensor, dustbin: torch.Tensor) -> torch.Tensor:
    """Append the dustbin as an extra row, the same value in every column."""
    b, _, n = scores.shape
    row = dustbin.to(scores.dtype).reshape(1, 1, 1).expand(b, 1, n)
    return torch.cat([scores, row], dim=1)


def _cluster_marginals(m: int, log_dustbin: float, log_cluster: float, like: torch.Tensor) -> torch.Tensor:
    """Log row marginals ``[m + 1]``: ``m`` clusters, then the dustbin.

    Built from two device-side fills instead of writing a Python float into the tensor
    (``t[-1] = x``): that write is a host-to-device copy, which CUDA-graph capture forbids.
    """
    opts = {"dtype": like.dtype, "device": like.device}
    return torch.cat([torch.full((m,), log_cluster, **opts), torch.full((1,), log_dustbin, **opts)])


def sinkhorn_log_plan(
    scores: torch.Tensor, dustbin: torch.Tensor, num_iters: int = 3, reg: float = 1.0
) -> torch.Tensor:
    """SALAD's Sinkhorn with a dustbin, rescaled so that every column sums to one.

    Marginals: each cluster 1/(n+m), the dustbin (n-m)/(n+m), each patch 1/(n+m). Exactly
    ``num_iters`` alternating updates, rows (u) before columns (v).
    """
    b, m, n = scores.shape
    if n <= m:
        raise ValueError(
            f"SALAD needs more patches than clusters: got {n} patches for {m} clusters; "
            "use a larger input image"
        )
    log_total = math.log(n + m)
    z = _augment(scores, dustbin) / reg
    log_a = _cluster_marginals(m, math.log(n - m) - log_total, -log_total, z)
    log_b = torch.full((n,), -log_total, dtype=z.dtype, device=z.device)
    log_a = log_a.expand(b, m + 1)
    log_b = log_b.expand(b, n)
    u = torch.zeros_like(log_a)
    v = torch.zeros_like(log_b)
    for _ in range(num_iters):
        u = log_a - torch.logsumexp(z + v.unsqueeze(1), dim=2)
        v = log_b - torch.logsumexp(z + u.unsqueeze(2), dim=1)
    return z + u.unsqueeze(2) + v.unsqueeze(1) + log_total


def asymmetric_ot_log_plan(
    scores: torch.Tensor,
    dustbin: torch.Tensor,
    num_iters: int = 3,
    reg: float = 1.0,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """A²GC's asymmetric solver (the repaired reference).

    Each iteration averages a row-normalised and a column-normalised copy of the same matrix
    instead of alternating; then one calibration pass (rows, then columns) imposes the
    marginals. The plan is not rescaled (columns sum to 1/(n+m)). The dustbin mass is clamped
    to at least 1/(n+m), so fewer patches than clusters is allowed.

    Args:
        mask: optional ``[B, n]`` bool, True = valid patch; invalid patches get -inf scores.
    """
    b, m, n = scores.shape
    if mask is not None:
        scores = scores.masked_fill(~mask.bool().unsqueeze(1), float("-inf"))
    if temperature != 1.0:
        scores = scores / temperature
    z = _augment(scores, dustbin) / reg
    log_total = math.log(n + m)
    log_a = _cluster_marginals(m, math.log(max(n - m, 1)) - log_total, -log_total, z)
    for _ in range(num_iters):
        row = z - torch.logsumexp(z, dim=2, keepdim=True)
        col = z - torch.logsumexp(z, dim=1, keepdim=True)
        z = 0.5 * (row + col)
    z = z + (log_a.view(1, m + 1, 1) - torch.logsumexp(z, dim=2, keepdim=True))
    z = z + (-log_total - torch.logsumexp(z, dim=1, keepdim=True))
    return z
