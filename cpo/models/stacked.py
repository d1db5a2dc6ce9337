"""A population of P independent actor-critics held as stacked tensors (for PBT).

Every parameter, normaliser statistic and optimiser moment has a leading member dimension
``[P, ...]``; member p owns the slices ``[p]`` and nothing else. A layer evaluates all members
at once with one ``torch.baddbmm`` over inputs ``[P, R, in]`` (each member on its own rows), so
the population costs one batched forward, never a Python loop over members. Because no
operation mixes member slices (batched matmuls, reductions over non-member dims, the
per-member gradient clip and the elementwise Adam below), member p's update is a function of
member p's data and state alone: ``tests/test_pbt.py`` checks it bitwise.

Env layout: the N envs are P contiguous blocks of B = N / P; env n belongs to member n // B.
``to_members`` / ``from_members`` move between env order ``[T, N, ...]`` and member order
``[P, T * B, ...]``.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from cpo.models.ensemble import _ACTIVATIONS, gaussian_log_prob


def to_members(x: torch.Tensor, members: int) -> torch.Tensor:
    """Env-ordered ``[T, N, *f]`` -> member-ordered ``[P, T * B, *f]`` (row t * B + b of member p
    is env p * B + b at time t)."""
    T, N = x.shape[0], x.shape[1]
    B = N // members
    return x.reshape(T, members, B, *x.shape[2:]).transpose(0, 1).reshape(members, T * B, *x.shape[2:])


def from_members(x: torch.Tensor, horizon: int) -> torch.Tensor:
    """Inverse of :func:`to_members`: ``[P, T * B, *f]`` -> ``[T, N, *f]``."""
    P, TB = x.shape[0], x.shape[1]
    B = TB // horizon
    return x.reshape(P, horizon, B, *x.shape[2:]).transpose(0, 1).reshape(horizon, P * B, *x.shape[2:])


def member_shape(members: int, ndim: int) -> Tuple[int, ...]:
    """``(P, 1, ..., 1)`` with ``ndim`` dims: broadcasts a per-member ``[P]`` vector over a
    stacked tensor."""
    return (members,) + (1,) * (ndim - 1)


class StackedRunningMeanStd(nn.Module):
    """P running means/variances (Chan et al.'s parallel update), one per member, float64.

    ``update`` takes rows in env order: the dimension just before the feature ``shape`` is the
    env dimension, whose contiguous blocks of N / P rows belong to members 0..P-1 (the layout of
    the rollout). Member p's statistics only ever see member p's rows.
    """

    def __init__(self, members: int, shape: Tuple[int, ...], eps: float = 1e-8, clip: float = 5.0) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.register_buffer("mean", torch.zeros((members,) + self.shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones((members,) + self.shape, dtype=torch.float64))
        self.register_buffer("count", torch.zeros(members, dtype=torch.float64))
        self.eps, self.clip = eps, clip

    @property
    def members(self) -> int:
        """P."""
        return self.count.shape[0]

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold env-ordered rows ``x [..., N, *shape]`` into each member's statistics."""
        P, nd = self.members, len(self.shape)
        n = x.shape[x.dim() - nd - 1]
        # [..., N, *shape] -> [L, P, B, *shape] -> [P, L * B, *shape]
        x = x.reshape(-1, P, n // P, *self.shape).transpose(0, 1).reshape(P, -1, *self.shape)
        self.update_members(x)

    @torch.no_grad()
    def update_members(self, x: torch.Tensor) -> None:
        """Fold member-ordered rows ``x [P, K, *shape]`` into the statistics."""
        x = x.to(torch.float64)
        b_mean = x.mean(1)  # [P, *shape]
        b_var = x.var(1, unbiased=False)
        b_count = float(x.shape[1])
        view = member_shape(self.members, 1 + len(self.shape))
        delta = b_mean - self.mean
        total = self.count + b_count  # [P]
        # combined mean: the old mean moves toward the batch mean by the batch's share
        self.mean += delta * (b_count / total).view(view)
        # combined M2 = M2_old + M2_batch + delta^2 * n_old * n_batch / n_total, per member
        n_old = self.count.view(view)
        m2 = self.var * n_old + b_var * b_count + delta.pow(2) * n_old * b_count / total.view(view)
        self.var.copy_(m2 / total.view(view))
        self.count.copy_(total)

    def _stats(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # mean/std [P, 1, *shape] broadcast over member-ordered rows [P, R, *shape]
        mean = self.mean.unsqueeze(1).to(x.dtype)
        std = torch.sqrt(self.var + self.eps).unsqueeze(1).to(x.dtype)
        return mean, std

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean_p) / sqrt(var_p + eps), clipped to [-clip, clip]; ``x [P, R, *shape]``."""
        mean, std = self._stats(x)
        return ((x - mean) / std).clamp(-self.clip, self.clip)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean_p) / std_p without clipping (value targets); ``x [P, R, *shape]``."""
        mean, std = self._stats(x)
        return (x - mean) / std

    def unscale(self, y: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`scale`."""
        mean, std = self._stats(y)
        return y * std + mean


class StackedLinear(nn.Module):
    """P independent linear layers: ``y[p] = x[p] @ W[p] + b[p]`` for ``x [P, R, in]``."""

    def __init__(self, members: int, n_in: int, n_out: int, gain: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(members, n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(members, 1, n_out))
        self.gain = gain

    @torch.no_grad()
    def init_member(self, p: int) -> None:
        """Orthogonal weights with this layer's gain and zero bias for member ``p``, drawn from
        torch's global generator (the caller seeds it per member)."""
        w = torch.empty(self.weight.shape[2], self.weight.shape[1])  # [out, in] like nn.Linear
        nn.init.orthogonal_(w, gain=self.gain)
        self.weight[p].copy_(w.t())
        self.bias[p].zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[P, R, in] -> [P, R, out]`` in one batched matmul."""
        return torch.baddbmm(self.bias, x, self.weight)


def stacked_mlp(members: int, sizes: Sequence[int], activation: str, out_gain: float,
                final_activation: bool = False) -> nn.Sequential:
    """Stacked layers of ``sizes`` with ``activation`` between them; gain sqrt(2) on hidden
    layers and ``out_gain`` on the last (as :func:`cpo.models.ensemble.mlp`)."""
    layers: List[nn.Module] = []
    for i in range(len(sizes) - 1):
        last = i == len(sizes) - 2
        layers.append(StackedLinear(members, sizes[i], sizes[i + 1], out_gain if last else math.sqrt(2.0)))
        if not last or final_activation:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class StackedActorCritic(nn.Module):
    """P independent Gaussian actor-critics (PBT members), evaluated in one batched pass.

    Member p: mu_p(s) from its actor MLP, a state-independent log-std vector, V_p(s) from its
    own critic MLP (or a value head on its actor trunk when ``separate_critic`` is false),
    and its own observation and value normalisers. ``member_seeds[p]`` seeds member p's
    initial weights, so a member's initialisation does not depend on P or on other members.

    Asymmetric critic (``privileged_dim > 0``, the env's, envs/base.py): V_p reads the raw
    privileged observation through member p's own normaliser ``priv_rms`` (stacked like the
    others) while the actor keeps the policy observation, as :class:`cpo.models.ensemble.EnsembleActorCritic`
    does; it needs ``separate_critic``. ``priv_rms`` is registered only then, so symmetric
    checkpoints keep their keys.
    """

    def __init__(self, obs_dim: int, act_dim: int, members: int, actor_hidden: Sequence[int],
                 critic_hidden: Sequence[int], separate_critic: bool = True, activation: str = "elu",
                 init_log_std: float = 0.0, normalize_obs: bool = True, normalize_value: bool = True,
                 obs_clip: float = 5.0, member_seeds: Optional[Sequence[int]] = None,
                 privileged_dim: int = 0) -> None:
        super().__init__()
        P = members
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.num_policies = P  # env blocks, as for the ensemble (the runner splits envs by it)
        self.separate_critic = separate_critic
        self.normalize_obs, self.normalize_value = normalize_obs, normalize_value
        self.privileged_dim = int(privileged_dim)  # read by the runner to store privileged obs
        if self.privileged_dim < 0:
            raise ValueError(f"privileged_dim={self.privileged_dim}: must be >= 0 (0: symmetric critic)")
        if self.privileged_dim > 0 and not separate_critic:
            raise ValueError(f"an asymmetric critic (privileged_dim={self.privileged_dim}) needs "
                             "separate_critic=True: the actor trunk only sees policy observations")
        # gains as cpo.models.ensemble: sqrt(2) on hidden layers, 1 on the trunk's last, 0.01 on the mean
        self.actor = stacked_mlp(P, [obs_dim] + list(actor_hidden), activation, 1.0,
                                 final_activation=True)
        self.mu_head = StackedLinear(P, actor_hidden[-1], act_dim, 0.01)
        if separate_critic:
            critic_in = self.privileged_dim if self.privileged_dim > 0 else obs_dim
            self.critic = stacked_mlp(P, [critic_in] + list(critic_hidden) + [1], activation, 1.0)
        else:
            self.value_head = StackedLinear(P, actor_hidden[-1], 1, 1.0)
        self.log_std = nn.Parameter(torch.full((P, act_dim), float(init_log_std)))
        self.obs_rms = StackedRunningMeanStd(P, (obs_dim,), clip=obs_clip)
        self.value_rms = StackedRunningMeanStd(P, ())
        if self.privileged_dim > 0:  # registered only when used: symmetric checkpoints keep their keys
            self.priv_rms = StackedRunningMeanStd(P, (self.privileged_dim,), clip=obs_clip)
        seeds = list(member_seeds) if member_seeds is not None else list(range(P))
        layers = [m for m in self.modules() if isinstance(m, StackedLinear)]
        with torch.random.fork_rng(devices=[]):
            for p in range(P):  # construction only, never on the training path
                torch.manual_seed(int(seeds[p]))
                for layer in layers:
                    layer.init_member(p)

    @property
    def is_recurrent(self) -> bool:
        """Always False (the runner's LSTM paths are skipped)."""
        return False

    @property
    def asymmetric(self) -> bool:
        """True when the critic reads a privileged observation instead of the actor's input."""
        return self.privileged_dim > 0

    # ---- member-ordered evaluation: inputs [P, R, D] --------------------------------------
    def embed(self, obs: torch.Tensor) -> torch.Tensor:
        """Each member's normalised observation, ``[P, R, D]``."""
        return self.obs_rms.normalize(obs) if self.normalize_obs else obs

    def embed_critic(self, priv: torch.Tensor) -> torch.Tensor:
        """Each member's normalised privileged observation ``priv [P, R, D_priv]`` (member p
        with its own ``priv_rms`` statistics); asymmetric models only."""
        if not self.asymmetric:
            raise RuntimeError("embed_critic needs a model built with privileged_dim > 0")
        return self.priv_rms.normalize(priv) if self.normalize_obs else priv

    def heads(self, x: torch.Tensor, critic: bool = True, critic_x: Optional[torch.Tensor] = None
              ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Normalised observations ``x [P, R, D]`` -> (mu [P, R, A], log_std [P, A], normalised
        value [P, R] or None). An asymmetric model's critic reads ``critic_x`` (its
        :meth:`embed_critic` of the privileged observations of the same rows) instead of ``x``."""
        h = self.actor(x)
        mu = self.mu_head(h)
        value = None
        if critic:
            if self.asymmetric:
                if critic_x is None:
                    raise RuntimeError("an asymmetric critic needs critic_x (the normalised "
                                       "privileged observation)")
                value = self.critic(critic_x).squeeze(-1)
            else:
                value = (self.critic(x) if self.separate_critic else self.value_head(h)).squeeze(-1)
        return mu, self.log_std, value

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """V_p(obs) in reward units for the critic's raw member-ordered input ``obs [P, R, D]``
        -> ``[P, R]``: the policy observation, or for an asymmetric model the privileged one."""
        if self.asymmetric:
            return self.denorm_value(self.critic(self.embed_critic(obs)).squeeze(-1))
        x = self.embed(obs)
        v = self.critic(x) if self.separate_critic else self.value_head(self.actor(x))
        return self.denorm_value(v.squeeze(-1))

    def mean_action(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic actions mu_p(obs) for raw member-ordered ``obs [P, R, D]``."""
        return self.mu_head(self.actor(self.embed(obs)))

    def denorm_value(self, v: torch.Tensor) -> torch.Tensor:
        """Normalised critic output ``[P, R]`` -> reward units."""
        return self.value_rms.unscale(v) if self.normalize_value else v

    def norm_value(self, v: torch.Tensor) -> torch.Tensor:
        """Reward units ``[P, R]`` -> normalised critic units."""
        return self.value_rms.scale(v) if self.normalize_value else v

    # ---- env-ordered acting (the runner's rollout interface) ------------------------------
    def noise(self, n: int, generator: Optional[torch.Generator] = None,
              device: Optional[torch.device] = None) -> torch.Tensor:
        """Standard normal exploration noise ``[n, A]`` from ``generator``."""
        return torch.randn((n, self.act_dim), generator=generator,
                           device=device if device is not None else self.log_std.device)

    def policy_step(self, obs: torch.Tensor, pol: torch.Tensor, eps: torch.Tensor,
                    critic_obs: Optional[torch.Tensor] = None
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pure step on env-ordered raw ``obs [N, D]`` with noise ``eps [N, A]``: env n acts with
        member n // (N / P) (``pol`` must be that block layout; it is not read). Returns
        (action, log_prob, mu, value in reward units), env-ordered. An asymmetric model's value
        reads the raw privileged ``critic_obs [N, D_priv]``; without it the value is 0 (acting
        for evaluation never needs it)."""
        P, N = self.num_policies, obs.shape[0]
        x = self.embed(obs.reshape(P, N // P, -1))  # [P, B, D]
        cx = None
        if self.asymmetric and critic_obs is not None:
            cx = self.embed_critic(critic_obs.reshape(P, N // P, -1))  # [P, B, D_priv]
        with_value = not self.asymmetric or cx is not None
        mu, log_std, v = self.heads(x, critic=with_value, critic_x=cx)
        action = mu + torch.exp(log_std).unsqueeze(1) * eps.reshape(P, N // P, -1)  # a = mu + sigma * eps
        logp = gaussian_log_prob(action, mu, log_std.unsqueeze(1))
        value = self.denorm_value(v) if v is not None else torch.zeros_like(logp)
        return (action.reshape(N, -1), logp.reshape(N), mu.reshape(N, -1), value.reshape(N))

    @torch.no_grad()
    def act(self, obs: torch.Tensor, pol: torch.Tensor, generator: Optional[torch.Generator] = None,
            base: Optional[torch.Tensor] = None, critic_obs: Optional[torch.Tensor] = None
            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample env-ordered actions (see :meth:`policy_step`); ``critic_obs`` is the raw
        privileged observation of an asymmetric model (the runner's rollout passes it)."""
        return self.policy_step(obs, pol, self.noise(obs.shape[0], generator, obs.device), critic_obs)

    # ---- member state --------------------------------------------------------------------
    def member_tensors(self) -> Dict[str, torch.Tensor]:
        """Every parameter and buffer by name; each has the member dimension first."""
        out = dict(self.named_parameters())
        out.update(dict(self.named_buffers()))
        return out


def clip_grad_norm_per_member(params: Sequence[nn.Parameter], max_norm: torch.Tensor) -> torch.Tensor:
    """Clip each member's gradient by its own global norm; returns the norms ``[P]``.

    norm_p = sqrt(sum over member p's slices of every parameter of g^2); the gradient is scaled
    by min(max_norm_p / (norm_p + 1e-6), 1), as ``torch.nn.utils.clip_grad_norm_`` would do for
    a single member. ``max_norm`` is a number or a ``[P]`` tensor.
    """
    grads = [p.grad for p in params if p.grad is not None]
    P = grads[0].shape[0]
    sq = torch.stack([g.detach().pow(2).reshape(P, -1).sum(1) for g in grads]).sum(0)  # [P]
    norm = sq.sqrt()
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)  # [P]
    for g in grads:
        g.mul_(coef.to(g.dtype).view(member_shape(P, g.dim())))
    return norm


class StackedAdam:
    """Adam over stacked parameters with a per-member learning rate ``lr [P]``.

    Adam is elementwise, so one optimiser over the stacked tensors is P independent Adams as
    long as the step size carries each member's own learning rate and bias correction:
    m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; with k_p the member's step count,
    theta -= lr_p / (1 - b1^k_p) * m / (sqrt(v) / sqrt(1 - b2^k_p) + eps) (torch.optim.Adam's
    formula). ``lr`` is read at every step, so PBT changes it in place.
    """

    def __init__(self, params: Sequence[nn.Parameter], lr: torch.Tensor, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params = list(params)
        self.lr = lr
        self.b1, self.b2 = betas
        self.eps = eps
        P = self.params[0].shape[0]
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.steps = torch.zeros(P, dtype=torch.float64, device=self.params[0].device)

    def zero_grad(self) -> None:
        """Drop every gradient."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step of every member with its own learning rate."""
        self.steps += 1.0
        bc1 = 1.0 - torch.pow(self.b1, self.steps)  # [P] bias corrections, float64 like torch's
        bc2_sqrt = torch.sqrt(1.0 - torch.pow(self.b2, self.steps))
        step_size = self.lr.to(torch.float64) / bc1  # lr_p / (1 - b1^k_p)
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            g = p.grad
            view = member_shape(p.shape[0], p.dim())
            m.mul_(self.b1).add_(g, alpha=1.0 - self.b1)  # first moment
            v.mul_(self.b2).addcmul_(g, g, value=1.0 - self.b2)  # second moment
            denom = (v.sqrt() / bc2_sqrt.to(p.dtype).view(view)).add_(self.eps)
            p.sub_(m / denom * step_size.to(p.dtype).view(view))

    def tensors(self) -> List[torch.Tensor]:
        """Every state tensor (m's, v's, then the step counts), member dimension first."""
        return self.m + self.v + [self.steps]

    def state_dict(self) -> Dict[str, object]:
        """Moments and step counts (tensors only)."""
        return {"m": [t.clone() for t in self.m], "v": [t.clone() for t in self.v],
                "steps": self.steps.clone()}

    def load_state_dict(self, sd: Dict[str, object]) -> None:
        """Restore :meth:`state_dict`."""
        for dst, src in zip(self.m, sd["m"]):
            dst.copy_(src)
        for dst, src in zip(self.v, sd["v"]):
            dst.copy_(src)
        self.steps.copy_(sd["steps"])
