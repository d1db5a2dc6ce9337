"""Pure per-row loss functions: PPO surrogate, value, bounds, CPO coupling, Gaussian KL.

Every function returns one value per row; the learner combines rows with masks so that a
minibatch mixing PPO rows and coupling rows is weighted as in ALGORITHMS.md section 5.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch


def ppo_surrogate(logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor,
                  clip_eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate loss per row and the ratio.

    ratio = pi_theta(a|s) / pi_behaviour(a|s) = exp(logp - logp_old); the loss is
    -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A). For the leader's off-policy rows
    ``logp_old`` is the follower's stored behaviour log-prob, which makes this the SAPG
    importance-sampled surrogate.
    """
    ratio = torch.exp(logp - logp_old)
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv
    return -torch.min(unclipped, clipped), ratio


def value_loss(v: torch.Tensor, v_old: torch.Tensor, target: torch.Tensor, clip_eps: float,
               clip: bool = True) -> torch.Tensor:
    """Squared error per row, optionally the max with the clipped-update error (PPO2)."""
    err = (v - target).pow(2)
    if not clip:
        return err
    # the value may move at most clip_eps away from its old prediction
    v_clipped = v_old + (v - v_old).clamp(-clip_eps, clip_eps)
    return torch.max(err, (v_clipped - target).pow(2))


def bounds_loss(mu: torch.Tensor, bound: float = 1.1) -> torch.Tensor:
    """Quadratic penalty on action means outside [-bound, bound], summed over action dims."""
    high = (mu - bound).clamp(min=0.0).pow(2)
    low = (-bound - mu).clamp(min=0.0).pow(2)
    return (high + low).sum(-1)


def coupling_weights(adv: torch.Tensor, lambda_f: torch.Tensor, weight_max: float) -> torch.Tensor:
    """AWAC-style weights w = min(exp(A / lambda_f), w_max), computed without overflow."""
    # exp(min(x, log w_max)) == min(exp(x), w_max) and never overflows
    return torch.exp(torch.clamp(adv / lambda_f, max=math.log(weight_max))).detach()


def coupling_loss(logp_f: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """CPO coupling term per row: -w * log pi_f(a_L | s_L) (weighted behaviour cloning)."""
    return -weight * logp_f


def gaussian_kl(mu_p: torch.Tensor, log_std_p: torch.Tensor, mu_q: torch.Tensor,
                log_std_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of diagonal Gaussians, summed over the last dimension.

    KL = sum_d [log sigma_q - log sigma_p + (sigma_p^2 + (mu_p - mu_q)^2) / (2 sigma_q^2) - 1/2].
    """
    var_p = torch.exp(2.0 * log_std_p)
    var_q = torch.exp(2.0 * log_std_q)
    return (log_std_q - log_std_p + (var_p + (mu_p - mu_q).pow(2)) / (2.0 * var_q) - 0.5).sum(-1)
