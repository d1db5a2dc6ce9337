"""Importance-sampling health and ensemble diversity (ALGORITHMS.md section 8)."""
from __future__ import annotations

import math

import torch

from cpo.algo.losses import gaussian_kl


def relative_ess(log_rho: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Relative effective sample size (sum rho)^2 / (n * sum rho^2) in (0, 1].

    Computed in log space from log-ratios so that large ratios do not overflow:
    log ESS = 2 logsumexp(l) - log n - logsumexp(2 l).
    """
    n = log_rho.shape[dim]
    # shift by the max first so that the difference below is of O(1) numbers (ESS is scale-free)
    shifted = log_rho - log_rho.amax(dim=dim, keepdim=True)
    lse = torch.logsumexp(shifted, dim=dim)
    lse2 = torch.logsumexp(2.0 * shifted, dim=dim)
    return torch.exp(2.0 * lse - math.log(n) - lse2)


def mean_abs_deviation(log_rho: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mean |rho - 1|, an estimate of twice the total-variation distance."""
    return (torch.exp(log_rho) - 1.0).abs().mean(dim)


def kl_matrix(mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Pairwise K[i, j] = E_s KL(pi_i(.|s) || pi_j(.|s)) for diagonal Gaussians.

    ``mu [M, S, A]`` are the M policies' means on the same S states, ``log_std [M, A]`` (state
    independent) or ``[M, S, A]``. Returns ``[M, M]``.
    """
    if log_std.dim() == 2:
        log_std = log_std.unsqueeze(1).expand_as(mu)
    # broadcast i over dim 0 and j over dim 1: [M, 1, S, A] vs [1, M, S, A] -> [M, M, S]
    kl = gaussian_kl(mu.unsqueeze(1), log_std.unsqueeze(1), mu.unsqueeze(0), log_std.unsqueeze(0))
    return kl.mean(-1)
