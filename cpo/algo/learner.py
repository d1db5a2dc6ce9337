"""One learner for PPO, SAPG and CPO: builds the iteration's batch and runs the update.

The batch has three kinds of rows, all evaluated in one batched forward per minibatch
(ALGORITHMS.md sections 3-6):

* on-policy rows: every block's own transitions with its own latent, GAE targets;
* off-policy rows: follower blocks relabelled with the leader's latent (SAPG/CPO), one-step
  TD targets from the leader's current critic, importance ratio against the stored
  behaviour log-prob;
* coupling rows: the leader's transitions relabelled with each follower's latent (CPO),
  weighted behaviour cloning with w = min(exp(A_f / lambda_f), w_max).

Rows are referenced by index into the rollout (``src``) and carry a policy id (``pol``), so
no observation is copied to build the batch.

Loss reduction (ALGORITHMS.md section 5, as the CPO authors' code does it): every term is
summed over the rows it applies to and divided by the full minibatch size n, which counts
PPO rows and coupling rows alike,

    L = (1/n) [ sum_PPO surr + beta sum_cpl w (-log pi_f) + 0.5 c_v sum_PPO value error
                - sum_PPO c_ent H + c_b sum_PPO bounds ],

so that beta = 1e-3 means what it means in the paper. (Dividing the critic, entropy and
bounds sums by the number of PPO rows instead makes them n / n_PPO = 12/7 times stronger
against the coupling under CPO with M = 6; PPO and SAPG have no coupling rows, n = n_PPO.)

Adaptive learning rate (ALGORITHMS.md section 9, rl_games' semantics): once per mini-epoch,
from that epoch's mean KL(current || reference) over on-policy rows, where each row's
reference (mu, sigma) starts as the rollout's behaviour policy and is refreshed with the
row's own pre-step (mu, sigma) every time its minibatch is trained, so each epoch measures
how far one more pass moved the policy: lr / 1.5 above 2 kl_threshold, lr * 1.5 below
kl_threshold / 2, clamped to [lr_min, lr_max]. ``lr_adapt_every=minibatch`` applies the rule
after every minibatch to that minibatch's KL instead (rl_games' ``legacy`` schedule, which
the authors' Humanoid and Anymal configs use). Unlike the authors' code, the KL leaves out
the leader's off-policy rows: against their behaviour policy (a follower) it measures the
leader-follower divergence, not the size of the update, and would cut the LR every epoch 0.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from cpo.models import fast
from cpo.algo import losses
from cpo.utils.config import AlgoConfig, PerfConfig, num_offpolicy_blocks
from cpo.algo.diagnostics import kl_matrix, mean_abs_deviation, relative_ess
from cpo.algo.discriminator import Discriminator
from cpo.utils.distributed import SINGLE, Dist
from cpo.models.ensemble import EnsembleActorCritic, gaussian_entropy, gaussian_log_prob, one_hot_rows
from cpo.algo.rollout import Rollout, bootstrap_values, gae, td_targets


@dataclass
class UpdateState:
    """What one iteration's gradient steps read and write, all device tensors updated in
    place (:meth:`Learner.minibatch_step`), so that a compiled or captured step
    (``perf.update_step``, cpo/models/fast.py) can hold them as static buffers."""

    obs: torch.Tensor  # [T*N, D] raw observations (rollout storage)
    act: torch.Tensor  # [T*N, A] actions taken
    priv: Optional[torch.Tensor]  # [T*N, P] privileged observations (asymmetric critic) or None
    src: torch.Tensor  # [R] the Batch's fields, by batch row
    pol: torch.Tensor  # [R] policy ids, or their one-hot rows [R, M] for an ensemble (cpo.models.ensemble.per_row)
    logp_old: torch.Tensor
    adv: torch.Tensor
    weight: torch.Tensor
    ent_coef: torch.Tensor
    onp: torch.Tensor  # [R] 1 for on-policy rows
    ret_n: torch.Tensor  # [R] value targets, normalised units
    v_old_n: torch.Tensor  # [R] values before the update, normalised units
    ref_mu: torch.Tensor  # [n_ppo, A] the adaptive LR's reference policy per PPO row
    ref_ls: torch.Tensor
    stats: Dict[str, torch.Tensor]  # sums over gradient steps of the loss terms
    kl_sum: torch.Tensor  # this epoch's sum of KL over on-policy rows, and their count
    kl_rows: torch.Tensor
    kl_epochs: torch.Tensor  # sum over epochs of each epoch's mean KL
    bad_code: torch.Tensor  # first non-finite quantity met (0 none, 1 loss, 2 gradient)
    bad_step: torch.Tensor  # the gradient step it came at
    step: torch.Tensor  # gradient steps taken so far
    coupling_scale: float


@dataclass
class Batch:
    """Row-wise training data of one iteration (length R; see the module docstring)."""

    src: torch.Tensor  # [R] flat rollout index t * N + n
    pol: torch.Tensor  # [R] policy whose latent the row is evaluated with
    is_ppo: torch.Tensor  # [R] float 1 for on- and off-policy PPO rows
    is_onpolicy: torch.Tensor  # [R] float 1 for on-policy rows (KL for the adaptive LR)
    is_coupling: torch.Tensor  # [R] float 1 for coupling rows
    adv: torch.Tensor  # [R] standardised advantage (PPO rows)
    ret: torch.Tensor  # [R] value target in reward units (PPO rows)
    v_old: torch.Tensor  # [R] value before the update in reward units (PPO rows)
    logp_old: torch.Tensor  # [R] behaviour log-prob of the stored action
    weight: torch.Tensor  # [R] beta * w for coupling rows, 0 elsewhere
    ent_coef: torch.Tensor  # [R] entropy coefficient of the row's policy (PPO rows)
    num_minibatches: int  # minibatches per epoch for this batch
    n_ppo: int  # rows are ordered: the first n_ppo are PPO rows (on- then off-policy), then coupling
    #: 1 / (fraction of the leader's envs each follower couples to): a coupling row stands for
    #: this many rows of the full iteration, so subsampling keeps the loss's expected value
    coupling_scale: float = 1.0


def entropy_coefficients(cfg: AlgoConfig) -> torch.Tensor:
    """Per-policy entropy coefficients [M]: the leader gets ``entropy_coef``; follower m gets
    s_ent * 0.5 * (M - m) / (M - 1) (SAPG's diversity schedule)."""
    M = cfg.num_policies
    coef = torch.zeros(M)
    coef[0] = cfg.entropy_coef
    if M > 1:
        m = torch.arange(1, M, dtype=torch.float32)
        coef[1:] = cfg.entropy_scale * 0.5 * (M - m) / (M - 1)
    return coef


def lambda_f_at(cfg: AlgoConfig, progress: float) -> torch.Tensor:
    """Per-follower lambda_f [M - 1] at training ``progress`` in [0, 1]."""
    M = cfg.num_policies
    if cfg.lambda_f_tiers is not None:
        return torch.tensor([float(x) for x in cfg.lambda_f_tiers])
    p = min(max(progress, 0.0), 1.0)
    if cfg.lambda_f_schedule == "linear":
        lam = cfg.lambda_f + (cfg.lambda_f_final - cfg.lambda_f) * p
    elif cfg.lambda_f_schedule == "cosine":
        lam = cfg.lambda_f_final + 0.5 * (cfg.lambda_f - cfg.lambda_f_final) * (1 + math.cos(math.pi * p))
    else:
        lam = cfg.lambda_f
    return torch.full((max(M - 1, 0),), float(lam))


class Learner:
    """Owns the optimiser, the adaptive LR, the coupling weight beta and the discriminator."""

    def __init__(self, model: EnsembleActorCritic, cfg: AlgoConfig, num_envs: int,
                 device: torch.device, max_iterations: int, seed: int = 0,
                 perf: Optional[PerfConfig] = None) -> None:
        self.model, self.cfg, self.device = model, cfg, device
        self.M, self.N = cfg.num_policies, num_envs
        self.B = num_envs // cfg.num_policies
        self.max_iterations = max_iterations
        # the learning rate lives on the device so the adaptive rule needs no host sync
        self.lr = torch.tensor(cfg.lr, dtype=torch.float32, device=device)
        perf = perf if perf is not None else PerfConfig()
        graphed = perf.update_step == "cuda_graph"
        self.optimizer = torch.optim.Adam(model.parameters(), lr=self.lr,
                                          fused=fast.use_fused_adam(perf, device) or None,
                                          capturable=graphed)  # a CUDA graph replays its step
        #: the minibatch loss (heads forward + every loss term), compiled whole with
        #: ``perf.compile=update|all`` so that its elementwise tail fuses and its backward
        #: is one AOTAutograd graph
        self.autocast_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.mixed_precision]
        self.loss_fn = fast.compiled(functools.partial(minibatch_loss, model, cfg, device.type, self.autocast_dtype),
                                     perf.compile in ("update", "all"))
        self.gen = torch.Generator(device=device).manual_seed(seed + 7919)
        #: fp16 autocast needs loss scaling (gradients below fp16's range would vanish); bf16
        #: and fp32 do not
        self.scaler = torch.amp.GradScaler(device.type) if cfg.mixed_precision == "fp16" else None
        self.beta = torch.full((self.M,), float(cfg.beta), device=device)
        self.beta[0] = 0.0  # the leader has no coupling term
        self.ent_coef = entropy_coefficients(cfg).to(device)
        self.pol_env = torch.arange(num_envs, device=device) // self.B  # block of each env
        self.disc: Optional[Discriminator] = None
        self.disc_opt: Optional[torch.optim.Optimizer] = None
        if cfg.lambda_adv > 0 and self.M > 1:
            self.disc = Discriminator(model.obs_dim, model.act_dim, self.M, cfg.disc_hidden).to(device)
            self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=cfg.disc_lr)
        self.iteration = 0
        self._base: Optional[torch.Tensor] = None
        self._base_of: Optional[int] = None
        #: the process group under torchrun (gradients, advantage statistics and the adaptive
        #: LR's KL are averaged over ranks); the runner sets it, one process keeps the no-op
        self.dist: Dist = SINGLE
        #: perf.update_step=compile|cuda_graph: the whole minibatch step compiled or captured
        self.whole_step = fast.WholeStep(self, perf.update_step) if perf.update_step != "eager" else None

    # ---- targets -----------------------------------------------------------------------
    @torch.no_grad()
    def build_batch(self, ro: Rollout, has_final_obs: bool = True) -> Batch:
        """Rewards, targets and the row layout of one iteration (before any gradient step)."""
        cfg, model, M, B, N = self.cfg, self.model, self.M, self.B, self.N
        T = ro.horizon
        dev = self.device
        r_env = ro.rewards * cfg.reward_scale
        r_own = r_env
        if self.disc is not None:
            # followers get lambda_adv * (log q(z=f|s,a) - log 1/M) on their own rows only
            obs_n = model.obs_rms.normalize(ro.obs[:-1]).reshape(T * N, -1)
            label = self.pol_env.repeat(T)
            bonus = self.disc.bonus(obs_n, ro.actions.reshape(T * N, -1), label).view(T, N)
            r_own = r_env + cfg.lambda_adv * bonus * (self.pol_env > 0).float()
        base, final_base = self.front_end(ro)
        self._base, self._base_of = base, id(ro)  # reused by diagnostics() before the update
        cbase, final_cbase = self.critic_front_end(ro, base, final_base)
        # ---- on-policy rows: GAE with each block's own critic
        _, v_next = bootstrap_values(model.value_base, cbase, final_cbase, ro.truncated, self.pol_env,
                                     values=ro.values, has_final_obs=has_final_obs)
        adv_own, ret_own = gae(r_own, ro.values, v_next, ro.terminated, ro.truncated,
                               cfg.gamma, cfg.gae_lambda)
        if cfg.lambda_ppo > 0 and M > 1:
            # reverse-KL shaping: A_f - lambda_ppo * (log pi_f(a|s) - log pi_L(a|s))
            flat = base[:-1].reshape(T * N, -1)
            mu_l = model.mean_base(flat, torch.zeros_like(self.pol_env.repeat(T)))
            logp_l = gaussian_log_prob(ro.actions.reshape(T * N, -1), mu_l,
                                       model.log_std[0].expand_as(mu_l)).view(T, N)
            adv_own = adv_own - cfg.lambda_ppo * (ro.logp - logp_l) * (self.pol_env > 0).float()
        src_own = torch.arange(T * N, device=dev)
        parts_adv = [adv_own.reshape(-1)]
        parts = dict(src=[src_own], pol=[self.pol_env.repeat(T)], ret=[ret_own.reshape(-1)],
                     v_old=[ro.values.reshape(-1)], kind=[torch.zeros(T * N, dtype=torch.long, device=dev)])
        # ---- relabelled columns: off-policy (follower blocks -> leader) and coupling (leader -> followers)
        n_off = num_offpolicy_blocks(cfg)
        cols, pols, kinds = [], [], []
        if n_off > 0:
            blocks = torch.randperm(M - 1, generator=self.gen, device=dev)[:n_off] + 1
            c = (blocks.unsqueeze(1) * B + torch.arange(B, device=dev)).reshape(-1)
            cols.append(c)
            pols.append(torch.zeros_like(c))
            kinds.append(torch.ones_like(c))
        lam_row = None
        cpl_scale = 1.0
        if M > 1 and (float(self.beta.max()) > 0 or cfg.beta_adapt):
            k = max(1, int(round(cfg.coupling_fraction * B)))
            cpl_scale = B / k  # each sampled leader env stands for B / k of them
            if k < B:  # each follower couples to its own random subset of the leader's envs
                scores = torch.rand(M - 1, B, generator=self.gen, device=dev)
                c = scores.argsort(dim=1)[:, :k]
            else:
                c = torch.arange(B, device=dev).expand(M - 1, B)
            p = torch.arange(1, M, device=dev).unsqueeze(1).expand_as(c)
            cols.append(c.reshape(-1))
            pols.append(p.reshape(-1))
            kinds.append(torch.full_like(c.reshape(-1), 2))
            lam = lambda_f_at(cfg, self.iteration / max(self.max_iterations - 1, 1)).to(dev)
            lam_row = lam[p.reshape(-1) - 1]
        if cols:
            col, pol, kind = torch.cat(cols), torch.cat(pols), torch.cat(kinds)
            v, v_next = bootstrap_values(model.value_base, cbase[:, col], final_cbase[:, col],
                                         ro.truncated[:, col], pol, has_final_obs=has_final_obs)
            # one-step TD with the current critic of the row's latent: y = r + gamma V(s')(1 - term)
            y = td_targets(r_env[:, col], v_next, ro.terminated[:, col], cfg.gamma)
            parts_adv.append((y - v).reshape(-1))
            parts["src"].append((torch.arange(T, device=dev).unsqueeze(1) * N + col).reshape(-1))
            parts["pol"].append(pol.repeat(T))
            parts["ret"].append(y.reshape(-1))
            parts["v_old"].append(v.reshape(-1))
            parts["kind"].append(kind.repeat(T))
        adv = torch.cat(parts_adv)
        cat = {k: torch.cat(v) for k, v in parts.items()}
        kind = cat["kind"]
        if cfg.normalize_advantage:
            # one mean/std over every advantage of the iteration (PPO, off-policy, coupling),
            # pooled over every rank's advantages under torchrun
            adv_mean, adv_std = self.dist.mean_std(adv)
            adv = (adv - adv_mean) / (adv_std + 1e-8)
        is_cpl = (kind == 2).float()
        weight = torch.zeros_like(adv)
        if lam_row is not None:
            lam_rows = lam_row.repeat(T)
            w = losses.coupling_weights(adv[kind == 2], lam_rows, cfg.weight_max)
            weight[kind == 2] = w * self.beta[cat["pol"][kind == 2]]
        pol = cat["pol"]
        ent = self.ent_coef[pol] * (kind == 0).float()
        if cfg.minibatch_mode == "count":  # as many gradient steps as PPO, larger minibatches
            num_mb = cfg.num_minibatches
        else:  # minibatch size fixed by the on-policy batch; extra rows add minibatches
            mb_size = T * N // cfg.num_minibatches
            num_mb = max(1, int(round(adv.numel() / mb_size)))
        # rows ordered by kind (on-policy, off-policy, coupling): the first n_ppo are PPO rows
        order = torch.argsort(kind, stable=True)
        src = cat["src"][order]
        return Batch(src=src, pol=pol[order], is_ppo=(kind[order] < 2).float(),
                     is_onpolicy=(kind[order] == 0).float(), is_coupling=is_cpl[order], adv=adv[order],
                     ret=cat["ret"][order], v_old=cat["v_old"][order], logp_old=ro.logp.reshape(-1)[src],
                     weight=weight[order], ent_coef=ent[order], num_minibatches=num_mb,
                     n_ppo=T * N + T * (n_off * B if n_off > 0 else 0), coupling_scale=cpl_scale)

    @torch.no_grad()
    def critic_front_end(self, ro: Rollout, base: torch.Tensor, final_base: torch.Tensor):
        """Critic features ``[T + 1, N, F_c]`` and ``[T, N, F_c]``: the actor's front-end
        features, or with an asymmetric critic the normalised privileged observations (so that
        truncated steps bootstrap from ``final_privileged``)."""
        if not self.model.asymmetric:
            return base, final_base
        return self.model.embed_critic(ro.privileged), self.model.embed_critic(ro.final_privileged)

    @torch.no_grad()
    def front_end(self, ro: Rollout):
        """Front-end features of every stored observation, ``[T + 1, N, F]``, and of the final
        observations ``[T, N, F]``: normalised observations, or LSTM features run over the
        rollout from its stored start state (a final observation continues its episode's
        memory: it is encoded from the state before the reset)."""
        model = self.model
        if not model.is_recurrent:
            return model.embed(ro.obs), model.embed(ro.final_obs)
        T, N = ro.horizon, ro.num_envs
        dones = ro.terminated | ro.truncated
        feats, (hs, cs) = model.encode_seq(ro.obs, (ro.h0, ro.c0), dones)
        fin, _ = model.encode_step(ro.final_obs.reshape(T * N, -1),
                                   (hs[:T].reshape(T * N, -1), cs[:T].reshape(T * N, -1)))
        return feats, fin.view(T, N, -1)

    def _minibatches(self, ro: Rollout, batch: Batch):
        """Yield ``(row indices, front-end features of those rows or None, n PPO rows)`` for
        one epoch; in every minibatch the PPO rows come first (the critic runs on them only).

        Feed-forward: PPO rows and coupling rows are reshuffled separately and split into the
        same number of chunks, so every minibatch mixes them in the proportion of the whole
        iteration (the weighting ALGORITHMS.md section 5 relies on) with no host sync.
        Recurrent: env columns are shuffled and split; a minibatch holds every row (on-policy,
        off-policy and coupling) whose source column is in its group, and the LSTM is re-run
        with gradients over those columns' whole sequences from their stored start state."""
        R, n_ppo = batch.src.numel(), batch.n_ppo
        if not self.model.is_recurrent:
            ppo = torch.randperm(n_ppo, generator=self.gen, device=self.device)
            cpl = torch.randperm(R - n_ppo, generator=self.gen, device=self.device) + n_ppo
            for a, b in zip(ppo.tensor_split(batch.num_minibatches), cpl.tensor_split(batch.num_minibatches)):
                yield torch.cat([a, b]), None, a.numel()
            return
        T, N = ro.horizon, ro.num_envs
        groups = min(self.cfg.num_minibatches, N)
        perm = torch.randperm(N, generator=self.gen, device=self.device)
        group_of_col = torch.empty(N, dtype=torch.long, device=self.device)
        group_of_col[perm] = torch.arange(N, device=self.device) * groups // N
        pos_of_col = torch.empty(N, dtype=torch.long, device=self.device)
        col = batch.src % N
        # sort rows by (group, coupling?) so that each group's PPO rows come first
        key = group_of_col[col] * 2 + (torch.arange(R, device=self.device) >= n_ppo).long()
        order = torch.argsort(key, stable=True)
        counts = torch.bincount(key, minlength=2 * groups).tolist()  # one sync per epoch
        sizes = [counts[2 * g] + counts[2 * g + 1] for g in range(groups)]
        col_sizes = torch.bincount(group_of_col, minlength=groups).tolist()
        dones = ro.terminated | ro.truncated
        start_r = start_c = 0
        for g in range(groups):
            cols = perm[start_c:start_c + col_sizes[g]]
            pos_of_col[cols] = torch.arange(cols.numel(), device=self.device)
            idx = order[start_r:start_r + sizes[g]]
            start_r += sizes[g]
            start_c += col_sizes[g]
            with self._autocast():
                feats, _ = self.model.encode_seq(ro.obs[:T, cols], (ro.h0[cols], ro.c0[cols]), dones[:, cols])
            src = batch.src[idx]
            yield idx, feats[src // N, pos_of_col[src % N]], counts[2 * g]

    # ---- the update ---------------------------------------------------------------------
    def _autocast(self):
        return autocast(self.device.type, self.autocast_dtype)

    def update(self, ro: Rollout, batch: Batch) -> Dict[str, torch.Tensor]:
        """``num_epochs`` passes of shuffled minibatches; returns statistics averaged over all
        minibatches (device tensors: the caller syncs once)."""
        cfg, model = self.cfg, self.model
        # value targets live in normalised units: update the statistics once, before the epochs
        if model.normalize_value:
            model.value_rms.update(batch.ret[batch.is_ppo > 0])
        st = self._update_state(ro, batch)
        if self.whole_step is not None:  # the static buffers a captured graph reads
            st = self.whole_step.load(st)
        for _ in range(cfg.num_epochs):
            st.kl_sum.zero_()
            st.kl_rows.zero_()
            for idx, base, k in self._minibatches(ro, batch):
                if self.whole_step is None or not self.whole_step(st, idx, base, k):
                    self.minibatch_step(st, idx, base, k)
            with torch.no_grad():  # once per mini-epoch, from the epoch's mean KL (no host sync)
                kl = st.kl_sum / st.kl_rows.clamp(min=1.0)
                st.kl_epochs += kl
                if cfg.lr_schedule == "adaptive" and cfg.lr_adapt_every == "epoch":
                    self.lr.copy_(adaptive_lr(self.lr, kl, cfg.kl_threshold, cfg.lr_min, cfg.lr_max))
        steps = st.step.clamp(min=1).float()
        with torch.no_grad():  # a parameter the steps left non-finite (e.g. an overflowing update)
            params_ok = torch.stack([torch.isfinite(p.detach()).all() for p in model.parameters()]).all()
            bad_step = torch.where((st.bad_code == 0) & ~params_ok, st.step - 1, st.bad_step)
            bad_code = torch.where((st.bad_code == 0) & ~params_ok, 3, st.bad_code)
        out = {k: v / steps for k, v in st.stats.items()}
        out["approx_kl"] = st.kl_epochs / cfg.num_epochs
        out["nonfinite_code"], out["nonfinite_step"] = bad_code.float(), bad_step.float()
        out["gradient_steps"] = st.step.float()
        out["explained_variance"] = explained_variance(batch.v_old[batch.is_onpolicy > 0],
                                                       batch.ret[batch.is_onpolicy > 0])
        if cfg.lr_schedule == "linear":
            frac = 1.0 - (self.iteration + 1) / self.max_iterations
            self.lr.fill_(max(cfg.lr * frac, cfg.lr_min))
        self.iteration += 1
        self._base, self._base_of = None, None  # parameters changed: features are stale
        return out

    @torch.no_grad()
    def _update_state(self, ro: Rollout, batch: Batch) -> "UpdateState":
        """The iteration's row inputs (rollout views, batch fields, normalised targets) and
        fresh accumulators, as one :class:`UpdateState`."""
        model = self.model
        T, N = ro.horizon, ro.num_envs
        mu_old = ro.mu.reshape(T * N, -1)
        # the adaptive LR's reference policy per PPO row of the batch: the behaviour (mu,
        # log sigma) at first, then each row's own pre-step (mu, log sigma) from the last time
        # its minibatch was trained (rl_games' update_mu_sigma); indexed by batch row, which
        # is unique, unlike the rollout index that an off-policy row shares with its twin
        behaviour = self.pol_env.index_select(0, batch.src[:batch.n_ppo] % N)  # block of each row
        z = lambda dtype=torch.float32: torch.zeros((), dtype=dtype, device=self.device)  # noqa: E731
        return UpdateState(
            obs=ro.obs[:-1].reshape(T * N, -1), act=ro.actions.reshape(T * N, -1),
            # asymmetric critic: raw privileged observations of the same rows (critic input)
            priv=ro.privileged[:-1].reshape(T * N, -1) if model.asymmetric else None,
            # an ensemble's rows select their latent bias and log-std through one-hot GEMMs
            src=batch.src, pol=one_hot_rows(batch.pol, self.M) if self.M > 1 else batch.pol,
            logp_old=batch.logp_old, adv=batch.adv, weight=batch.weight,
            ent_coef=batch.ent_coef, onp=batch.is_onpolicy,
            ret_n=model.norm_value(batch.ret), v_old_n=model.norm_value(batch.v_old),
            ref_mu=mu_old.index_select(0, batch.src[:batch.n_ppo]).clone(),
            ref_ls=ro.log_std.index_select(0, behaviour),
            stats={k: z() for k in ("policy", "value", "entropy", "coupling", "bounds", "clipfrac", "grad_norm")},
            kl_sum=z(), kl_rows=z(), kl_epochs=z(), bad_code=z(torch.long), bad_step=z(torch.long),
            step=z(torch.long), coupling_scale=batch.coupling_scale)

    def minibatch_step(self, st: "UpdateState", idx: torch.Tensor, base: Optional[torch.Tensor], k: int) -> None:
        """One gradient step on the batch rows ``idx`` (``idx[:k]`` PPO rows, the rest coupling
        rows; ``base``: their LSTM features, or None to embed the observations): the loss,
        backward, clip, Adam, the KL reference refresh and the statistics, all in place on
        ``st`` and without a host sync (the unit ``perf.update_step`` compiles or captures)."""
        cfg, model = self.cfg, self.model
        src, pol = st.src.index_select(0, idx), st.pol.index_select(0, idx)
        pidx = idx[:k]
        with self._autocast():
            if base is None:
                base = model.embed(st.obs.index_select(0, src))
            cb = model.embed_critic(st.priv.index_select(0, src[:k])) if st.priv is not None else None
        loss, terms = self.loss_fn(
            base, cb, pol, k, st.act.index_select(0, src), st.logp_old.index_select(0, pidx),
            st.adv.index_select(0, pidx), st.weight.index_select(0, idx[k:]),
            st.v_old_n.index_select(0, pidx), st.ret_n.index_select(0, pidx),
            st.ent_coef.index_select(0, pidx), st.onp.index_select(0, pidx),
            st.ref_mu.index_select(0, pidx), st.ref_ls.index_select(0, pidx), st.coupling_scale)
        if self.whole_step is None or not self.whole_step.capturing:
            self.optimizer.zero_grad(set_to_none=True)  # (a captured graph overwrites its gradients)
        if self.scaler is not None:  # fp16: scale the loss so small gradients survive
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        mb_kl, mb_rows = terms.pop("kl_sum"), terms.pop("kl_rows")
        # torchrun: gradients averaged over ranks in one bucket that also sums the KL parts
        # (fp16: the scaled gradients, so that an overflow on any rank is seen by every rank's
        # unscale_ below and all ranks skip the step together)
        mb_kl, mb_rows = self.dist.sync_grads(model.parameters(), (mb_kl, mb_rows))
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        if self.scaler is not None:  # skips the step (and lowers the scale) on inf gradients
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        with torch.no_grad():
            # the first non-finite quantity (1 loss, 2 gradient) and the step it came at
            code = torch.where(~torch.isfinite(loss.detach()), 1,
                               torch.where(torch.isfinite(grad_norm) | (self.scaler is not None), 0, 2))
            first = (st.bad_code == 0) & (code > 0)
            st.bad_step.copy_(torch.where(first, st.step, st.bad_step))
            st.bad_code.copy_(torch.where(first, code, st.bad_code))
            # refresh the reference of these rows with their pre-step policy
            st.ref_mu.index_copy_(0, pidx, terms.pop("mu").to(st.ref_mu.dtype))
            st.ref_ls.index_copy_(0, pidx, terms.pop("log_std").to(st.ref_ls.dtype))
            st.kl_sum += mb_kl
            st.kl_rows += mb_rows
            if cfg.lr_schedule == "adaptive" and cfg.lr_adapt_every == "minibatch":
                # rl_games' legacy rule (the authors' Humanoid and Anymal runs)
                kl_mb = mb_kl / mb_rows.clamp(min=1.0)
                self.lr.copy_(adaptive_lr(self.lr, kl_mb, cfg.kl_threshold, cfg.lr_min, cfg.lr_max))
            # (an fp16 step the scaler skipped has an inf norm: it does not enter the mean)
            terms["grad_norm"] = torch.where(torch.isfinite(grad_norm), grad_norm, torch.zeros_like(grad_norm))
            for key, val in terms.items():
                st.stats[key] += val.detach().float()
            st.step += 1

    # ---- discriminator -----------------------------------------------------------------
    def update_discriminator(self, ro: Rollout) -> Dict[str, torch.Tensor]:
        """``disc_steps`` cross-entropy steps on random rows of this rollout, labelled by block."""
        if self.disc is None:
            return {}
        T, N = ro.horizon, ro.num_envs
        obs_n = self.model.obs_rms.normalize(ro.obs[:-1].reshape(T * N, -1))
        act = ro.actions.reshape(T * N, -1)
        label = self.pol_env.repeat(T)
        tot_loss = torch.zeros((), device=self.device)
        tot_acc = torch.zeros((), device=self.device)
        for _ in range(self.cfg.disc_steps):
            idx = torch.randint(T * N, (min(self.cfg.disc_batch, T * N),), generator=self.gen,
                                device=self.device)
            ce, acc = self.disc.loss(obs_n[idx], act[idx], label[idx])
            self.disc_opt.zero_grad(set_to_none=True)
            ce.backward()
            self.dist.sync_grads(self.disc.parameters())  # torchrun: one discriminator for all ranks
            self.disc_opt.step()
            tot_loss += ce.detach()
            tot_acc += acc
        return {"disc_loss": tot_loss / self.cfg.disc_steps, "disc_acc": tot_acc / self.cfg.disc_steps}

    # ---- diagnostics -------------------------------------------------------------------
    @torch.no_grad()
    def diagnostics(self, ro: Rollout, samples: int) -> Dict[str, torch.Tensor]:
        """Importance-sampling health from the leader's view, rho = pi_L(a|s) / mu_m(a|s) on
        ``samples`` rows of every block m (ALGORITHMS.md section 8), and the KL matrix over
        states from all blocks (device tensors):

        * ``ess_follower`` / ``is_dev_follower`` ``[M - 1]``: relative ESS and mean |rho - 1|
          of each follower's rows;
        * ``ess_overall``: the paper's overall ESS, pooled over the rows of all M policies
          (the leader's own rows included: their rho is 1 before the update);
        * ``ess_followers_pooled``: the same pooled over the followers' rows only;
        * ``kl_matrix`` ``[M, M]``: K[i, j] = E_s KL(pi_i || pi_j)."""
        model, M, B = self.model, self.M, self.B
        T, N = ro.horizon, ro.num_envs
        out: Dict[str, torch.Tensor] = {}
        if M == 1:
            return out
        base = self._base if self._base_of == id(ro) else None
        obs = (base if base is not None else self.front_end(ro)[0])[:-1]  # front-end features
        # block m's rows seen by the leader: rho = pi_L(a|s) / mu_m(a|s), k rows per block
        k = min(samples, T * B)
        idx = torch.randint(T * B, (M, k), generator=self.gen, device=self.device)
        t_i = idx // B
        n_i = (torch.arange(M, device=self.device).unsqueeze(1) * B) + idx % B
        o = obs[t_i, n_i].reshape(M * k, -1)
        a = ro.actions[t_i, n_i].reshape(M * k, -1)
        mu_l = model.mean_base(o, torch.zeros(M * k, dtype=torch.long, device=self.device))
        logp_l = gaussian_log_prob(a, mu_l, model.log_std[0].expand_as(mu_l))
        log_rho = (logp_l - ro.logp[t_i, n_i].reshape(-1)).view(M, k)
        out["ess_follower"] = relative_ess(log_rho[1:])  # [M - 1]
        out["is_dev_follower"] = mean_abs_deviation(log_rho[1:])
        out["ess_overall"] = relative_ess(log_rho.reshape(-1))
        out["ess_followers_pooled"] = relative_ess(log_rho[1:].reshape(-1))
        # KL matrix on states from all blocks, every policy evaluated on every state
        s = min(samples, T * N)
        flat = torch.randint(T * N, (s,), generator=self.gen, device=self.device)
        states = obs.reshape(T * N, -1)[flat]
        pols = torch.arange(M, device=self.device).repeat_interleave(s)
        mu_all = model.mean_base(states.repeat(M, 1), pols).view(M, s, -1)
        out["kl_matrix"] = kl_matrix(mu_all, model.log_std.detach())
        return out

    def adapt_beta(self, kl_to_leader: torch.Tensor) -> None:
        """Dual ascent on beta per follower: log beta_f += beta_lr * (KL_f / kl_target - 1)."""
        if not self.cfg.beta_adapt or self.M == 1:
            return
        step = self.cfg.beta_lr * (kl_to_leader / self.cfg.kl_target - 1.0)
        self.beta[1:] = (self.beta[1:] * torch.exp(step.clamp(-2.0, 2.0))).clamp(1e-8, 1e3)

    # ---- state -------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, object]:
        """Optimiser, LR, beta, generator and discriminator state for exact resume."""
        sd: Dict[str, object] = {"optimizer": self.optimizer.state_dict(), "lr": self.lr.clone(),
                                 "beta": self.beta.clone(), "gen": self.gen.get_state(),
                                 "iteration": self.iteration}
        if self.scaler is not None:
            sd["scaler"] = self.scaler.state_dict()
        if self.disc is not None:
            sd["disc"] = self.disc.state_dict()
            sd["disc_opt"] = self.disc_opt.state_dict()
        return sd

    def load_state_dict(self, sd: Dict[str, object]) -> None:
        """Restore :meth:`state_dict`."""
        self.optimizer.load_state_dict(sd["optimizer"])
        # the stored LR, within the (possibly lowered, see RESUMABLE_KEYS) bounds of this run
        self.lr.copy_(sd["lr"].clamp(self.cfg.lr_min, self.cfg.lr_max))
        graphed = self.whole_step is not None and self.whole_step.mode == "cuda_graph"
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
            # the checkpoint's flag is the run's that wrote it: a CUDA graph needs capturable
            # Adam, whose step counters live on the device
            group["capturable"] = graphed
            for p in group["params"]:
                st = self.optimizer.state.get(p, {})
                if graphed and torch.is_tensor(st.get("step")):
                    st["step"] = st["step"].to(device=p.device, dtype=torch.float32)
        self.beta.copy_(sd["beta"])
        self.gen.set_state(sd["gen"])
        self.iteration = int(sd["iteration"])
        if self.scaler is not None and "scaler" in sd:
            self.scaler.load_state_dict(sd["scaler"])
        if self.disc is not None:
            self.disc.load_state_dict(sd["disc"])
            self.disc_opt.load_state_dict(sd["disc_opt"])


def autocast(device_type: str, dtype: Optional[torch.dtype]):
    """``torch.autocast`` to ``dtype`` (algo.mixed_precision), or a disabled one for None; the
    one context both the update's front end and :func:`minibatch_loss` use (torch.compile
    traces it)."""
    return torch.autocast(device_type=device_type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def minibatch_loss(model: EnsembleActorCritic, cfg: AlgoConfig, device_type: str,
                   autocast_dtype: Optional[torch.dtype], base: torch.Tensor, cb: Optional[torch.Tensor],
                   pol: torch.Tensor, k: int, act: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor,
                   weight: torch.Tensor, v_old_n: torch.Tensor, ret_n: torch.Tensor, ent_coef: torch.Tensor,
                   onp: torch.Tensor, mu_old: torch.Tensor, log_std_old: torch.Tensor,
                   coupling_scale: float) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The loss of one minibatch and its statistics: a pure function of the gathered rows.

    Rows ``[:k]`` are PPO rows (on- and off-policy; ``logp_old``, ``adv``, ``v_old_n``,
    ``ret_n``, ``ent_coef`` hold theirs), rows ``[k:]`` coupling rows (``weight`` = beta * w).
    ``base``/``cb``: actor / privileged-critic features; ``onp``: 1 for on-policy rows among
    the PPO rows; ``mu_old``/``log_std_old``: the adaptive LR's reference policy of the PPO rows.
    L = (1/n) [sum_PPO surr + s sum_cpl beta w (-log pi_f) + 0.5 c_v sum_PPO(value error)
    - sum_PPO(c_ent H) + c_b sum_PPO(bounds)], with n = k + (R - k) s the minibatch size the
    rows stand for (s = 1/coupling_fraction): every term divided by the full minibatch size,
    as the authors do (ALGORITHMS.md section 5).
    Statistics: the loss terms, ``clipfrac``, on-policy ``entropy``, ``kl_sum``/``kl_rows``
    (sum of KL(current || reference) over on-policy rows and their count), and the PPO rows'
    pre-step ``mu``/``log_std`` (the next reference). ``perf.compile=update`` compiles this
    whole function (forward and, through AOTAutograd, its backward)."""
    with autocast(device_type, autocast_dtype):
        mu, log_std, v = model.heads(base, pol, n_critic=k, critic_base=cb)
    mu, v = mu.float(), v.float()
    logp = gaussian_log_prob(act, mu, log_std)
    # the minibatch size with every coupling row (k PPO rows + c / f coupling rows): every
    # term below is a sum over its rows divided by n (ALGORITHMS.md section 5)
    n = k + (mu.shape[0] - k) * coupling_scale
    # clipped surrogate on PPO rows (on-policy: GAE; off-policy: importance-sampled, TD)
    surr, ratio = losses.ppo_surrogate(logp[:k], logp_old, adv, cfg.clip_eps)
    policy_loss = surr.sum() / n
    # beta * w * (-log pi_f(a_L|s_L)) on coupling rows (weight already holds beta * w); a
    # subsample's sum times 1 / f estimates the full iteration's sum without bias
    coupling = losses.coupling_loss(logp[k:], weight).sum() * coupling_scale / n
    # critic (normalised units), entropy bonus (on-policy rows carry c_ent of their policy,
    # relabelled rows 0) and the bounds penalty: PPO rows only, still divided by n
    value_loss = losses.value_loss(v, v_old_n, ret_n, cfg.clip_eps, cfg.clip_value).sum() / n
    ent = gaussian_entropy(log_std)
    entropy = (ent_coef * ent[:k]).sum() / n
    bounds = losses.bounds_loss(mu[:k]).sum() / n
    loss = policy_loss + coupling + 0.5 * cfg.value_coef * value_loss - entropy + cfg.bounds_coef * bounds
    with torch.no_grad():
        # KL(current || reference) on on-policy rows drives the adaptive learning rate (the
        # direction rl_games' policy_kl takes)
        mu_k, ls_k = mu[:k].detach(), log_std[:k].detach()
        kl = losses.gaussian_kl(mu_k, ls_k, mu_old, log_std_old)
        terms = {"policy": policy_loss.detach(), "value": value_loss.detach(),
                 "entropy": (ent[:k] * onp).sum() / onp.sum().clamp(min=1.0),
                 "coupling": coupling.detach(), "bounds": bounds.detach(),
                 "clipfrac": ((ratio - 1.0).abs() > cfg.clip_eps).float().sum() / max(k, 1),
                 "kl_sum": (kl * onp).sum(), "kl_rows": onp.sum(), "mu": mu_k, "log_std": ls_k}
    return loss, terms


def adaptive_lr(lr: torch.Tensor, kl: torch.Tensor, threshold: float, lr_min: float,
                lr_max: float) -> torch.Tensor:
    """rl_games' adaptive rule on device tensors: lr / 1.5 when ``kl`` > 2 ``threshold``,
    lr * 1.5 when ``kl`` < ``threshold`` / 2, else unchanged; clamped to [lr_min, lr_max]."""
    new = torch.where(kl > 2.0 * threshold, lr / 1.5, torch.where(kl < 0.5 * threshold, lr * 1.5, lr))
    return new.clamp(lr_min, lr_max)


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - Var[target - pred] / Var[target] (1 is perfect, 0 no better than a constant)."""
    var = target.var()
    return 1.0 - (target - pred).var() / var.clamp(min=1e-8)
