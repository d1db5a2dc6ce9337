"""Ensemble actor-critic: one shared network, a learned latent and a log-std per policy.

Policy m acts with pi_m(a|s) = N(mu_theta(s, phi_m), diag sigma_m^2) and has the critic
V_m(s) = V_theta(s, phi_m). Every row of a batch carries its policy index, so all M policies
run in one batched forward pass (ALGORITHMS.md section 2).
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import nn

_ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}
LOG_2PI = math.log(2.0 * math.pi)


class RunningMeanStd(nn.Module):
    """Running mean and variance of a stream of vectors (Chan et al.'s parallel update).

    Statistics are float64 buffers so that they survive long runs without drift and are
    saved with the model. ``update`` is called once per rollout, never inside the minibatch
    loop, and always with raw (un-normalised) data.
    """

    def __init__(self, shape: Tuple[int, ...], eps: float = 1e-8, clip: float = 5.0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.eps = eps
        self.clip = clip

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold a batch ``x [B, *shape]`` into the statistics."""
        x = x.reshape(-1, *self.mean.shape).to(torch.float64)
        b_mean = x.mean(0)
        b_var = x.var(0, unbiased=False)
        b_count = float(x.shape[0])
        delta = b_mean - self.mean
        total = self.count + b_count
        # combined mean: old mean moved toward the batch mean by the batch's share
        self.mean += delta * (b_count / total)
        # combined M2 = M2_old + M2_batch + delta^2 * n_old * n_batch / n_total
        m2 = self.var * self.count + b_var * b_count + delta.pow(2) * self.count * b_count / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / sqrt(var + eps), clipped to [-clip, clip]."""
        mean = self.mean.to(x.dtype)
        std = torch.sqrt(self.var + self.eps).to(x.dtype)
        return ((x - mean) / std).clamp(-self.clip, self.clip)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std without clipping (for value targets)."""
        return (x - self.mean.to(x.dtype)) / torch.sqrt(self.var + self.eps).to(x.dtype)

    def unscale(self, y: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`scale`."""
        return y * torch.sqrt(self.var + self.eps).to(y.dtype) + self.mean.to(y.dtype)


def mlp(sizes: List[int], activation: str, out_gain: float = 1.0) -> nn.Sequential:
    """Linear layers of ``sizes`` with ``activation`` between them (none after the last).

    Hidden layers use orthogonal init with gain sqrt(2); the last layer ``out_gain`` (small
    for the policy mean so that the initial policy is near zero mean, as is common in PPO).
    """
    layers: List[nn.Module] = []
    for i in range(len(sizes) - 1):
        lin = nn.Linear(sizes[i], sizes[i + 1])
        last = i == len(sizes) - 2
        nn.init.orthogonal_(lin.weight, gain=out_gain if last else math.sqrt(2.0))
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if not last:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def gaussian_log_prob(action: torch.Tensor, mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(action; mu, diag exp(log_std)^2), summed over the last (action) dimension."""
    z = (action - mu) * torch.exp(-log_std)
    return -0.5 * z.pow(2).sum(-1) - log_std.sum(-1) - 0.5 * LOG_2PI * action.shape[-1]


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    """Entropy of a diagonal Gaussian: sum_d (log sigma_d + 0.5 * (1 + log 2 pi))."""
    return (log_std + 0.5 * (1.0 + LOG_2PI)).sum(-1)


class EnsembleActorCritic(nn.Module):
    """Shared actor-critic for M policies, conditioned on per-policy latents.

    Inputs are raw observations; the module owns the observation normaliser and the value
    normaliser, so a checkpoint of its ``state_dict`` is a complete policy.
    """

    def __init__(self, obs_dim: int, act_dim: int, num_policies: int = 1, latent_dim: int = 32,
                 actor_hidden: Optional[List[int]] = None, critic_hidden: Optional[List[int]] = None,
                 separate_critic: bool = True, activation: str = "elu", init_log_std: float = 0.0,
                 normalize_obs: bool = True, normalize_value: bool = True, obs_clip: float = 5.0,
                 seed: int = 0) -> None:
        super().__init__()
        actor_hidden = list(actor_hidden or [256, 128, 64])
        critic_hidden = list(critic_hidden or actor_hidden)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.num_policies, self.latent_dim = num_policies, latent_dim
        self.separate_critic = separate_critic
        self.normalize_obs, self.normalize_value = normalize_obs, normalize_value
        gen = torch.Generator().manual_seed(seed)
        # phi_m ~ N(0, 1): distinct latents make the policies distinct from the first step
        self.latents = nn.Parameter(torch.randn(num_policies, latent_dim, generator=gen))
        self.log_std = nn.Parameter(torch.full((num_policies, act_dim), float(init_log_std)))
        inp = obs_dim + latent_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor_trunk = mlp([inp] + actor_hidden, activation)
            self.actor_trunk.append(_ACTIVATIONS[activation]())
            self.mu_head = mlp([actor_hidden[-1], act_dim], activation, out_gain=0.01)
            if separate_critic:
                self.critic = mlp([inp] + critic_hidden + [1], activation, out_gain=1.0)
            else:
                self.value_head = mlp([actor_hidden[-1], 1], activation, out_gain=1.0)
        self.obs_rms = RunningMeanStd((obs_dim,), clip=obs_clip)
        self.value_rms = RunningMeanStd(())

    # ---- batched evaluation ---------------------------------------------------------------
    def _input(self, obs: torch.Tensor, pol: torch.Tensor) -> torch.Tensor:
        """Normalised observation concatenated with each row's policy latent."""
        x = self.obs_rms.normalize(obs) if self.normalize_obs else obs
        return torch.cat([x, self.latents[pol].to(x.dtype)], dim=-1)

    def forward(self, obs: torch.Tensor, pol: torch.Tensor, critic: bool = True
                ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Rows of raw ``obs [R, D]`` with policy ids ``pol [R]`` ->
        (mu [R, A], log_std [R, A], normalised value [R] or None)."""
        x = self._input(obs, pol)
        h = self.actor_trunk(x)
        mu = self.mu_head(h)
        log_std = self.log_std[pol]
        value = None
        if critic:
            value = (self.critic(x) if self.separate_critic else self.value_head(h)).squeeze(-1)
        return mu, log_std, value

    def value(self, obs: torch.Tensor, pol: torch.Tensor) -> torch.Tensor:
        """V_pol(obs) in reward units (de-normalised)."""
        x = self._input(obs, pol)
        v = self.critic(x) if self.separate_critic else self.value_head(self.actor_trunk(x))
        return self.denorm_value(v.squeeze(-1))

    def mean_action(self, obs: torch.Tensor, pol: torch.Tensor) -> torch.Tensor:
        """Deterministic action mu_pol(obs)."""
        return self.mu_head(self.actor_trunk(self._input(obs, pol)))

    def denorm_value(self, v: torch.Tensor) -> torch.Tensor:
        """Normalised critic output -> reward units."""
        return self.value_rms.unscale(v) if self.normalize_value else v

    def norm_value(self, v: torch.Tensor) -> torch.Tensor:
        """Reward units -> normalised critic units."""
        return self.value_rms.scale(v) if self.normalize_value else v

    @torch.no_grad()
    def act(self, obs: torch.Tensor, pol: torch.Tensor, generator: Optional[torch.Generator] = None
            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample a ~ pi_pol(.|obs): returns (action, log_prob, mu, value in reward units)."""
        mu, log_std, v = self.forward(obs, pol)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        action = mu + torch.exp(log_std) * eps
        logp = gaussian_log_prob(action, mu, log_std)
        return action, logp, mu, self.denorm_value(v)
