"""On-device rollout storage and the pure target functions (GAE, one-step TD).

Shapes: ``T`` horizon, ``N`` envs. Terminations cut the bootstrap; truncations (time limits)
bootstrap from ``V(final_obs)``, which the caller folds into ``next_values`` (with an
asymmetric critic the critic's inputs are the privileged observations and ``final_privileged``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch


def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor,
        terminated: torch.Tensor, truncated: torch.Tensor, gamma: float, lam: float
        ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over ``[T, N]`` tensors.

    ``next_values[t]`` is V(s'_t): the value of the observation that followed step t, i.e.
    V(final_obs) where the episode was truncated and V(s_{t+1}) otherwise (its value does not
    matter where terminated). Returns ``(advantages, returns = advantages + values)``.
    """
    T = rewards.shape[0]
    not_term = 1.0 - terminated.to(rewards.dtype)
    not_done = 1.0 - (terminated | truncated).to(rewards.dtype)
    # delta_t = r_t + gamma * (1 - term_t) * V(s'_t) - V(s_t)
    deltas = rewards + gamma * not_term * next_values - values
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in range(T - 1, -1, -1):
        # A_t = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}: any episode end cuts the trace
        last = deltas[t] + gamma * lam * not_done[t] * last
        adv[t] = last
    return adv, adv + values


def td_targets(rewards: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
               gamma: float) -> torch.Tensor:
    """One-step TD target y = r + gamma * V(s') * (1 - terminated)."""
    return rewards + gamma * (1.0 - terminated.to(rewards.dtype)) * next_values


def bootstrap_values(value_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                     obs: torch.Tensor, final_obs: torch.Tensor, truncated: torch.Tensor,
                     pol: torch.Tensor, values: Optional[torch.Tensor] = None,
                     has_final_obs: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """V(s_t) and V(s'_t) for ``[T, n]`` columns evaluated with latents ``pol [n]``.

    ``obs`` is ``[T + 1, n, D]`` (the last row is the observation after the final step),
    ``final_obs [T, n, D]``. When ``values [T, n]`` is given (the rollout's own values) only the
    last row and the truncated steps are evaluated. Truncated steps take V(final_obs), or
    V(s_t) when the env cannot give the final observation.
    """
    T, n = truncated.shape
    if values is None:
        flat = value_fn(obs.reshape((T + 1) * n, -1), pol.repeat(T + 1)).view(T + 1, n)
        values, next_values = flat[:-1], flat[1:].clone()
    else:
        last = value_fn(obs[T], pol).unsqueeze(0)
        next_values = torch.cat([values[1:], last], dim=0)
    t_idx, n_idx = truncated.nonzero(as_tuple=True)  # one host sync per call
    if t_idx.numel() > 0:
        if has_final_obs:
            next_values[t_idx, n_idx] = value_fn(final_obs[t_idx, n_idx], pol[n_idx])
        else:
            next_values[t_idx, n_idx] = values[t_idx, n_idx]
    return values, next_values


@dataclass
class Rollout:
    """Everything one iteration collected, ``[T, N, ...]`` on the env's device.

    ``obs`` has T + 1 rows (the last is the observation after the final step). ``log_std``
    is the per-policy log-std snapshot ``[M, A]`` used while acting (state-independent).
    ``rewards`` are the env rewards in env units (scaling and bonuses are applied later).
    With an asymmetric critic ``privileged [T + 1, N, P]`` and ``final_privileged [T, N, P]``
    hold the critic's observations, laid out like ``obs`` and ``final_obs``.
    """

    obs: torch.Tensor
    final_obs: torch.Tensor
    actions: torch.Tensor
    logp: torch.Tensor
    mu: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    log_std: torch.Tensor
    h0: Optional[torch.Tensor] = None  # [N, H] LSTM state at the rollout's start (recurrent)
    c0: Optional[torch.Tensor] = None
    privileged: Optional[torch.Tensor] = None  # [T + 1, N, P] critic observations (asymmetric)
    final_privileged: Optional[torch.Tensor] = None  # [T, N, P] pre-reset critic observations

    @staticmethod
    def empty(T: int, N: int, obs_dim: int, act_dim: int, num_policies: int,
              device: torch.device, rnn_hidden: int = 0, privileged_dim: int = 0) -> "Rollout":
        """Pre-allocated storage, reused every iteration."""
        f = dict(device=device, dtype=torch.float32)
        extra = dict(h0=torch.zeros(N, rnn_hidden, **f), c0=torch.zeros(N, rnn_hidden, **f)) if rnn_hidden else {}
        if privileged_dim:
            extra.update(privileged=torch.zeros(T + 1, N, privileged_dim, **f),
                       final_privileged=torch.zeros(T, N, privileged_dim, **f))
        return Rollout(
            obs=torch.zeros(T + 1, N, obs_dim, **f), final_obs=torch.zeros(T, N, obs_dim, **f),
            actions=torch.zeros(T, N, act_dim, **f), logp=torch.zeros(T, N, **f),
            mu=torch.zeros(T, N, act_dim, **f), values=torch.zeros(T, N, **f),
            rewards=torch.zeros(T, N, **f),
            terminated=torch.zeros(T, N, dtype=torch.bool, device=device),
            truncated=torch.zeros(T, N, dtype=torch.bool, device=device),
            log_std=torch.zeros(num_policies, act_dim, **f), **extra)

    @property
    def horizon(self) -> int:
        """T."""
        return self.rewards.shape[0]

    @property
    def num_envs(self) -> int:
        """N."""
        return self.rewards.shape[1]
