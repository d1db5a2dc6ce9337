"""Ensemble actor-critic: one shared network, a learned latent and a log-std per policy.

Policy m acts with pi_m(a|s) = N(mu_theta(s, phi_m), diag sigma_m^2) and has the critic
V_m(s) = V_theta(s, phi_m). Every row of a batch carries its policy index, so all M policies
run in one batched forward pass (ALGORITHMS.md section 2). With an asymmetric critic
(``privileged_dim > 0``) V_m reads the env's privileged observation (own normaliser, own MLP)
while the actors keep the policy observation; only the actor is ever exported.
"""
from __future__ import annotations

import itertools
import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from cpo.models.normalizer import RunningMeanStd

_ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}
LOG_2PI = math.log(2.0 * math.pi)


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


def per_row(table: torch.Tensor, pol: torch.Tensor) -> torch.Tensor:
    """``table[pol]``: the row of a small per-policy table ``[M, D]`` for each policy id in
    ``pol [R]``. Written as an embedding lookup because its backward sums the R gradients
    into M rows with a sort-and-segment kernel; plain indexing's backward (an accumulating
    index_put) makes R atomic adds contend for the same M rows on a GPU, which dominated the
    eager update at the ShadowHand shapes (bench/gpu.py). On a CPU the embedding backward
    (it sorts the ids) is the slow one: there ``index_select``, whose backward is a serial
    index_add, is used (measured, 40 k rows, M = 6: D = 2 takes 0.4 ms instead of 4.0 ms,
    D = 32 1.9 ms instead of 3.8; SAPG on the point maze 3-4 % faster end to end).

    ``pol`` may also be a one-hot matrix ``[R, M]`` (the update's rows, see
    :func:`one_hot_rows`): then the rows are ``pol @ table``, a GEMM whose backward is another
    GEMM, ``pol^T @ grad``, instead of a scatter of R rows into M (measured on the CPU, SAPG's
    maze minibatch of 11 k rows and width 128: gather + add and its backward 13.1 ms, one-hot
    addmm 5.8 ms with the one-hot rows gathered, PPO's plain bias 3.6 ms)."""
    if pol.dim() == 2:
        return pol.to(table.dtype) @ table
    if table.device.type == "cpu":
        return table.index_select(0, pol)
    return torch.nn.functional.embedding(pol, table)


def one_hot_rows(pol: torch.Tensor, num_policies: int) -> torch.Tensor:
    """``[R, M]`` float one-hot rows of the policy ids ``pol [R]`` (what :func:`per_row` and
    the first layer take to turn a gather and its scatter backward into GEMMs)."""
    return F.one_hot(pol, num_policies).to(torch.float32)


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
                 rnn_hidden: int = 0, privileged_dim: int = 0, seed: int = 0) -> None:
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
        self.rnn_hidden = int(rnn_hidden)
        # asymmetric critic: the value heads read the privileged observation (its own
        # normaliser, no LSTM: the privileged state is meant to be Markov) instead of the
        # actor's features; it needs its own network since the actor trunk sees policy obs
        self.privileged_dim = int(privileged_dim)
        if self.privileged_dim > 0 and not separate_critic:
            raise ValueError(f"an asymmetric critic (privileged_dim={self.privileged_dim}) needs "
                             "separate_critic=True: the shared actor trunk only sees policy observations")
        # the recurrent front end sees only observations, so its features are the same for
        # every policy: relabelling rows with another latent never re-runs the LSTM
        inp = (self.rnn_hidden or obs_dim) + latent_dim
        # critic input: [actor front-end features, latent] or [privileged obs, latent]
        critic_inp = (self.privileged_dim + latent_dim) if self.privileged_dim > 0 else inp
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.rnn = nn.LSTM(obs_dim, self.rnn_hidden) if self.rnn_hidden > 0 else None
            self.actor_trunk = mlp([inp] + actor_hidden, activation)
            self.actor_trunk.append(_ACTIVATIONS[activation]())
            self.mu_head = mlp([actor_hidden[-1], act_dim], activation, out_gain=0.01)
            if separate_critic:
                self.critic = mlp([critic_inp] + critic_hidden + [1], activation, out_gain=1.0)
            else:
                self.value_head = mlp([actor_hidden[-1], 1], activation, out_gain=1.0)
        self.obs_rms = RunningMeanStd((obs_dim,), clip=obs_clip)
        self.value_rms = RunningMeanStd(())
        if self.privileged_dim > 0:  # registered only when used: symmetric checkpoints keep their keys
            self.priv_rms = RunningMeanStd((self.privileged_dim,), clip=obs_clip)

    @property
    def asymmetric(self) -> bool:
        """True when the critic reads a privileged observation instead of the actor's input."""
        return self.privileged_dim > 0

    def embed_critic(self, priv: torch.Tensor) -> torch.Tensor:
        """Critic features of raw privileged observations ``priv [..., P]``: normalised with
        the privileged normaliser (asymmetric models only)."""
        if not self.asymmetric:
            raise RuntimeError("embed_critic needs a model built with privileged_dim > 0")
        return self.priv_rms.normalize(priv) if self.normalize_obs else priv

    # ---- recurrent front end ---------------------------------------------------------------
    @property
    def is_recurrent(self) -> bool:
        """True when an LSTM encodes the observation history."""
        return self.rnn is not None

    def initial_state(self, n: int, device: Optional[torch.device] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Zero LSTM state ``(h, c)``, each ``[n, H]``."""
        z = torch.zeros(n, self.rnn_hidden, device=device or self.log_std.device)
        return z, z.clone()

    def encode_step(self, obs: torch.Tensor, state: Tuple[torch.Tensor, torch.Tensor]
                    ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """One LSTM step on raw ``obs [n, D]`` -> (features [n, H], new state)."""
        x = self.obs_rms.normalize(obs) if self.normalize_obs else obs
        out, (h, c) = self.rnn(x.unsqueeze(0), (state[0].unsqueeze(0), state[1].unsqueeze(0)))
        return out.squeeze(0), (h.squeeze(0), c.squeeze(0))

    def encode_seq(self, obs: torch.Tensor, state: Tuple[torch.Tensor, torch.Tensor],
                   dones: torch.Tensor) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Features of a sequence ``obs [S, n, D]`` from ``state`` at its start; the state is
        zeroed after every step with ``dones [S', n]`` true (S' >= S - 1). Returns
        (features [S, n, H], the pre-reset states after each step, each ``[S, n, H]``)."""
        feats, hs, cs = [], [], []
        h, c = state
        for t in range(obs.shape[0]):
            f, (h, c) = self.encode_step(obs[t], (h, c))
            feats.append(f)
            hs.append(h)
            cs.append(c)
            if t < dones.shape[0]:
                keep = (~dones[t]).to(h.dtype).unsqueeze(-1)
                h, c = h * keep, c * keep
        return torch.stack(feats), (torch.stack(hs), torch.stack(cs))

    # ---- batched evaluation ---------------------------------------------------------------
    def embed(self, obs: torch.Tensor) -> torch.Tensor:
        """Feed-forward front end: the normalised observation (recurrent models use
        :meth:`encode_step` / :meth:`encode_seq` instead)."""
        if self.rnn is not None:
            raise RuntimeError("a recurrent model needs its LSTM state: use encode_step/encode_seq")
        return self.obs_rms.normalize(obs) if self.normalize_obs else obs

    def heads(self, base: torch.Tensor, pol: torch.Tensor, critic: bool = True,
              n_critic: Optional[int] = None, critic_base: Optional[torch.Tensor] = None
              ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Rows of front-end features ``base [R, F]`` with policy ids ``pol [R]`` (or their
        one-hot rows ``[R, M]``, :func:`one_hot_rows`) ->
        (mu [R, A], log_std [R, A], normalised value [R] or None). With ``n_critic`` the
        critic runs on the first ``n_critic`` rows only (coupling rows need no value). An
        asymmetric model's critic reads ``critic_base`` (:meth:`embed_critic` of the
        privileged observation, at least the first ``n_critic`` rows) instead of ``base``."""
        h = self.conditioned(self.actor_trunk, base, pol)
        mu = self.mu_head(h)
        log_std = self.policy_log_std(pol)
        value = None
        if critic:
            k = base.shape[0] if n_critic is None else n_critic
            if self.asymmetric:
                if critic_base is None:
                    raise RuntimeError("an asymmetric critic needs critic_base (the privileged observation)")
                # V_pol(s_priv) = critic([normalised privileged obs, phi_pol])
                value = self.conditioned(self.critic, critic_base[:k], pol[:k]).squeeze(-1)
            elif self.separate_critic:
                value = self.conditioned(self.critic, base[:k], pol[:k]).squeeze(-1)
            else:
                value = self.value_head(h[:k]).squeeze(-1)
        return mu, log_std, value

    def conditioned(self, seq: nn.Sequential, base: torch.Tensor, pol: torch.Tensor) -> torch.Tensor:
        """``seq([base, phi_pol])`` without building the concatenated input.

        The first layer's weight splits as W = [W_s, W_phi], so
        W [s; phi_pol] + b = W_s s + (W_phi phi_pol + b): the latent's contribution is one bias
        row per policy, a table ``[M, H]`` computed once per call and gathered per row. Same
        function and parameters as concatenating (checkpoints unchanged), but the first matmul
        reads F instead of F + latent_dim inputs per row and no ``[R, F + Z]`` copy is made."""
        first = seq[0]
        n_in = base.shape[-1]
        w = first.weight
        if self.latent_dim == 0:
            h = F.linear(base, w, first.bias)
        else:
            table = F.linear(self.latents, w[:, n_in:], first.bias)  # [M, H]: W_phi phi_m + b
            if self.num_policies == 1:  # one policy: the table is an ordinary bias
                h = F.linear(base, w[:, :n_in], table[0])
            else:
                # measured on CPU (SAPG, point maze): this gather-and-add beats both the
                # concatenated input and a one-hot column block in the same GEMM by 7-15 %
                h = F.linear(base, w[:, :n_in])
                if pol.dim() == 2:  # one-hot rows: the bias rows and their add in one GEMM
                    h = torch.addmm(h, pol.to(h.dtype), table.to(h.dtype))
                else:
                    h = h + per_row(table, pol).to(h.dtype)  # under autocast both are bf16/fp16
        for layer in itertools.islice(seq, 1, None):  # the rest of the MLP as usual
            h = layer(h)
        return h

    def policy_log_std(self, pol: torch.Tensor) -> torch.Tensor:
        """log sigma of each row's policy, ``[R, A]`` (a broadcast view when M = 1, whose
        backward is a plain sum instead of an embedding-gradient scatter)."""
        if self.num_policies == 1:
            return self.log_std[0].expand(pol.shape[0], self.act_dim)
        if pol.dim() == 2:  # one-hot rows: a GEMM, kept in fp32 (under autocast it would round
            # log sigma to bf16 and move every log-prob, hence every PPO ratio, by up to ~20 %)
            with torch.autocast(device_type=pol.device.type, enabled=False):
                return pol.float() @ self.log_std.float()
        return per_row(self.log_std, pol)

    def value_base(self, base: torch.Tensor, pol: torch.Tensor) -> torch.Tensor:
        """V_pol from critic features, in reward units: the front-end features, or for an
        asymmetric model the normalised privileged observation (:meth:`embed_critic`)."""
        v = (self.conditioned(self.critic, base, pol) if self.separate_critic
             else self.value_head(self.conditioned(self.actor_trunk, base, pol)))
        return self.denorm_value(v.squeeze(-1))

    def mean_base(self, base: torch.Tensor, pol: torch.Tensor) -> torch.Tensor:
        """mu_pol from front-end features."""
        return self.mu_head(self.conditioned(self.actor_trunk, base, pol))

    def forward(self, obs: torch.Tensor, pol: torch.Tensor, critic: bool = True,
                critic_obs: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Rows of raw ``obs [R, D]`` with policy ids ``pol [R]`` ->
        (mu [R, A], log_std [R, A], normalised value [R] or None). Feed-forward models only;
        an asymmetric model's critic reads the raw privileged ``critic_obs [R, P]``."""
        cb = self.embed_critic(critic_obs) if critic_obs is not None else None
        return self.heads(self.embed(obs), pol, critic, critic_base=cb)

    def value(self, obs: torch.Tensor, pol: torch.Tensor) -> torch.Tensor:
        """V_pol(obs) in reward units (de-normalised), where ``obs`` is the critic's raw input:
        the policy observation (feed-forward models only), or for an asymmetric model the
        privileged observation ``[R, P]`` (recurrent or not)."""
        if self.asymmetric:
            return self.value_base(self.embed_critic(obs), pol)
        return self.value_base(self.embed(obs), pol)

    def mean_action(self, obs: torch.Tensor, pol: torch.Tensor) -> torch.Tensor:
        """Deterministic action mu_pol(obs). Feed-forward models only."""
        return self.mean_base(self.embed(obs), pol)

    def denorm_value(self, v: torch.Tensor) -> torch.Tensor:
        """Normalised critic output -> reward units."""
        return self.value_rms.unscale(v) if self.normalize_value else v

    def norm_value(self, v: torch.Tensor) -> torch.Tensor:
        """Reward units -> normalised critic units."""
        return self.value_rms.scale(v) if self.normalize_value else v

    @torch.no_grad()
    def noise(self, n: int, generator: Optional[torch.Generator] = None,
              device: Optional[torch.device] = None) -> torch.Tensor:
        """Standard normal exploration noise ``[n, A]`` (float32) drawn from ``generator``;
        drawn outside :meth:`sample_from` so that the latter is a pure function that
        ``torch.compile`` and CUDA-graph capture can take whole (``cpo/models/fast.py``)."""
        return torch.randn((n, self.act_dim), generator=generator,
                           device=device if device is not None else self.log_std.device)

    def sample_from(self, base: torch.Tensor, pol: torch.Tensor, eps: torch.Tensor,
                    critic_base: Optional[torch.Tensor] = None
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pure policy step from front-end features: ``a = mu + sigma * eps``; returns
        (action, log_prob, mu, value in reward units). An asymmetric model's value comes from
        ``critic_base`` (:meth:`embed_critic` of the privileged observation); without it the
        value is 0 (acting for evaluation or export never needs it)."""
        with_value = not self.asymmetric or critic_base is not None
        mu, log_std, v = self.heads(base, pol, critic=with_value, critic_base=critic_base)
        action = mu + torch.exp(log_std) * eps.to(mu.dtype)  # reparameterised Gaussian sample
        logp = gaussian_log_prob(action, mu, log_std)
        value = self.denorm_value(v) if v is not None else torch.zeros_like(logp)
        return action, logp, mu, value

    def policy_step(self, obs: torch.Tensor, pol: torch.Tensor, eps: torch.Tensor,
                    critic_obs: Optional[torch.Tensor] = None
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pure feed-forward policy step on raw ``obs`` with given noise ``eps`` (the unit
        that the rollout fast paths compile or capture); ``critic_obs`` is the raw
        privileged observation of an asymmetric model."""
        cb = self.embed_critic(critic_obs) if critic_obs is not None else None
        return self.sample_from(self.embed(obs), pol, eps, cb)

    def act(self, obs: torch.Tensor, pol: torch.Tensor, generator: Optional[torch.Generator] = None,
            base: Optional[torch.Tensor] = None, critic_obs: Optional[torch.Tensor] = None
            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample a ~ pi_pol(.|obs): returns (action, log_prob, mu, value in reward units).
        Recurrent models pass their LSTM features as ``base``; an asymmetric model takes its
        value from the raw privileged ``critic_obs`` (0 without it)."""
        eps = self.noise(obs.shape[0], generator, obs.device)
        if base is None:
            return self.policy_step(obs, pol, eps, critic_obs)
        cb = self.embed_critic(critic_obs) if critic_obs is not None else None
        return self.sample_from(base, pol, eps, cb)
