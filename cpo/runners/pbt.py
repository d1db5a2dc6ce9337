"""Population-based training (PBT, ALGORITHMS.md section 7): P independent PPO learners.

Each member owns an env block (N / P contiguous envs), its weights, observation and value
normalisers, Adam moments and hyperparameters; nothing is shared (no weights, no data, no
statistics). The whole population is stacked (cpo/models/stacked.py), so one device runs it with one
batched forward and backward per minibatch. Every ``pbt.interval_steps`` env steps an
exploit/explore round runs:

1. **rank** the members that have a score (mean episode return over the episodes that ended in
   their last ``pbt.score_window`` iterations that ended any), best first, ties by member id;
2. **exploit**: each of the bottom ``floor(bottom_fraction * V)`` members (at least one; V
   ranked members) draws a member uniformly from the top ``floor(top_fraction * V)`` and copies
   its weights, normalisers, optimiser state and hyperparameters, but only when the score gap
   exceeds ``pbt.threshold`` (``threshold_mode``: relative gap (s_top - s_bottom) /
   max(|s_top|, |s_bottom|), or absolute gap s_top - s_bottom);
3. **explore**: every evolved hyperparameter of a member that copied is multiplied or divided
   (fair coin) by f ~ U[1.1, 1.5] and clamped to its range (``cpo.utils.config.PBT_HYPERPARAMS``);
   gamma and gae_lambda are perturbed through 1 - x (their effective horizon).

Random draws come from one seeded generator, a fixed number per round (a source index, K
factors and K coins for every bottom member, copied or not), so runs are deterministic and
resume exactly. Evolved hyperparameters: ``lr`` (the most sensitive PPO knob; so each member's
learning rate is fixed between rounds, ``algo.lr_schedule=fixed``), ``entropy_coef``
(exploration) and ``clip_eps`` (step size in policy space) by default; ``value_coef``,
``gamma`` and ``gae_lambda`` on request. ``clip_eps`` also clips the member's value update.

Across processes: with ``pbt.shared_dir`` each of ``pbt.num_workers`` processes trains its own
sub-population and, at every round, atomically writes ``worker_<w>.pt`` (scores, weights,
optimiser state, hyperparameters of its members) and reads the other workers' newest files;
it ranks the union and changes only its own members (a remote source is copied from the
file). ``pbt.sync_timeout > 0`` waits for the others to publish the same round first.

Asymmetric critic: on an env with ``privileged_dim > 0`` every member's critic reads the
privileged observation through its own normaliser (cpo/models/stacked.py), as the ensemble's does; the
runner's rollout stores ``privileged`` / ``final_privileged`` (cpo/runners/runner.py), truncated steps
bootstrap from V(final_privileged), exploit copies the critic and ``priv_rms`` with the rest, and
:func:`member_policy` still acts from policy observations only.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from cpo.utils import checkpoint as ckpt
from cpo.algo import losses
from cpo.utils.config import PBT_HYPERPARAMS, ConfigError, PBTConfig, TrainConfig, pbt_range
from cpo.models.ensemble import gaussian_entropy, gaussian_log_prob
from cpo.algo.rollout import Rollout, gae
from cpo.runners.runner import Runner, check_privileged_critic
from cpo.models.stacked import (StackedActorCritic, StackedAdam, StackedLinear, clip_grad_norm_per_member,
                         from_members, to_members)

#: every per-member hyperparameter (evolved or not), in a fixed order
HP_KEYS = tuple(PBT_HYPERPARAMS)
#: the explore step's perturbation factor range, f ~ U[PERTURB_LOW, PERTURB_HIGH]
PERTURB_LOW, PERTURB_HIGH = 1.1, 1.5


def member_seed(seed: int, gid: int) -> int:
    """Seed of member ``gid``'s initial weights: the same member id and run seed give the same
    member whatever the population size or worker layout."""
    return int(seed) * 1_000_003 + int(gid)


# ---------------------------------------------------------------------------- pure arithmetic
def perturb(value: float, kind: str, factor: float, multiply: bool, low: float, high: float) -> float:
    """The explore step for one hyperparameter: ``scale``: x * f or x / f; ``horizon``:
    1 - (1 - x) * f or 1 - (1 - x) / f; then clamped to [low, high]."""
    if kind == "scale":
        new = value * factor if multiply else value / factor
    else:  # perturb 1 - x, the inverse effective horizon
        rest = 1.0 - value
        new = 1.0 - (rest * factor if multiply else rest / factor)
    return min(max(new, low), high)


def score_gap(top: float, bottom: float, mode: str) -> float:
    """Gap between a top and a bottom score: ``absolute``: top - bottom; ``relative``:
    (top - bottom) / max(|top|, |bottom|) (0 when both are 0)."""
    diff = top - bottom
    if mode == "absolute":
        return diff
    scale = max(abs(top), abs(bottom))
    return diff / scale if scale > 0 else 0.0


@dataclass
class Copy:
    """One bottom member's outcome of a round (global member ids)."""

    dst: int
    """The bottom member."""
    src: int
    """The top member it drew."""
    gap: float
    """score_gap(score[src], score[dst]) under the configured mode."""
    copied: bool
    """gap > threshold: dst takes src's state and perturbed hyperparameters."""
    factors: List[float] = field(default_factory=list)
    """Perturbation factor per evolved key (``pbt.mutate`` order), each in [1.1, 1.5]."""
    multiply: List[bool] = field(default_factory=list)
    """Per evolved key: True multiplies by the factor, False divides."""


def plan_exploit(scores: Sequence[float], ready: Sequence[bool], ids: Sequence[int],
                 cfg: PBTConfig, gen: torch.Generator) -> List[Copy]:
    """Decide a round: rank the ready members (best first, ties by id), take the top and bottom
    fractions, draw a top member for each bottom one and its perturbation factors and coins.

    Draws, always in this order and amount: ``randint(n_top, (n_bot,))`` (sources),
    ``rand(n_bot, K)`` (u, factor = 1.1 + 0.4 u) and ``rand(n_bot, K)`` (coin < 0.5 multiplies),
    with K = len(cfg.mutate). Bottom members are listed from the best of them to the worst.
    Fewer than two ready members: no round, nothing drawn.
    """
    ranked = sorted((i for i in range(len(ids)) if ready[i]), key=lambda i: (-float(scores[i]), ids[i]))
    V = len(ranked)
    if V < 2:
        return []
    n_top = max(1, int(math.floor(cfg.top_fraction * V + 1e-9)))
    n_bot = max(1, int(math.floor(cfg.bottom_fraction * V + 1e-9)))
    top, bottom = ranked[:n_top], ranked[V - n_bot:]  # disjoint: both fractions are <= 0.5
    K = len(cfg.mutate)
    pick = torch.randint(n_top, (n_bot,), generator=gen)
    u = torch.rand(n_bot, K, generator=gen, dtype=torch.float64)
    coin = torch.rand(n_bot, K, generator=gen, dtype=torch.float64)
    factors = PERTURB_LOW + (PERTURB_HIGH - PERTURB_LOW) * u  # f ~ U[1.1, 1.5]
    out = []
    for j, b in enumerate(bottom):  # a handful of members once per round, not a hot path
        s = top[int(pick[j])]
        gap = score_gap(float(scores[s]), float(scores[b]), cfg.threshold_mode)
        out.append(Copy(dst=ids[b], src=ids[s], gap=gap, copied=gap > cfg.threshold,
                        factors=factors[j].tolist(), multiply=(coin[j] < 0.5).tolist()))
    return out


def initial_hyperparameters(cfg: TrainConfig, gids: Sequence[int]) -> Dict[str, List[float]]:
    """Per-member starting values: algo.* for member 0 and for keys not evolved; otherwise
    x * s^u (``horizon`` keys: 1 - (1 - x) * s^u), u ~ U[-1, 1] from a generator seeded by the
    member id, clamped to the key's range (s = pbt.init_spread)."""
    out: Dict[str, List[float]] = {k: [] for k in HP_KEYS}
    for g in gids:
        gen = torch.Generator().manual_seed(member_seed(cfg.seed, g) + 1)
        u = (2.0 * torch.rand(len(HP_KEYS), generator=gen, dtype=torch.float64) - 1.0).tolist()
        for i, key in enumerate(HP_KEYS):
            x = float(getattr(cfg.algo, key))
            if g != 0 and key in cfg.pbt.mutate and cfg.pbt.init_spread > 1.0:
                kind, low, high = pbt_range(cfg.algo, key)
                f = cfg.pbt.init_spread ** u[i]
                x = perturb(x, kind, f, True, low, high)
            out[key].append(x)
    return out


def member_policy(cfg: TrainConfig, model: StackedActorCritic, p: int):
    """Member ``p`` as a one-policy :class:`cpo.models.ensemble.EnsembleActorCritic` (latent_dim 0) holding
    its weights, log-std and normalisers: the network cpo.tools.evaluation evaluates and exports. An
    asymmetric member keeps its privileged critic and ``priv_rms`` (so ``value`` reads
    privileged observations); acting, evaluation and export read policy observations only."""
    import copy

    from cpo.runners.runner import build_model

    one = copy.deepcopy(cfg)
    one.algo.num_policies, one.algo.latent_dim = 1, 0
    net = build_model(one, model.obs_dim, model.act_dim, model.privileged_dim)
    src: Dict[str, torch.Tensor] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, StackedLinear):
            # same Sequential indices as cpo.models.ensemble.mlp; the heads are one-layer Sequentials there
            key = {"mu_head": "mu_head.0", "value_head": "value_head.0"}.get(
                name, name.replace("actor.", "actor_trunk.", 1))
            src[key + ".weight"] = mod.weight[p].t()  # [in, out] -> nn.Linear's [out, in]
            src[key + ".bias"] = mod.bias[p, 0]
    src["log_std"] = model.log_std[p:p + 1]
    for rms in ("obs_rms", "value_rms") + (("priv_rms",) if model.asymmetric else ()):
        for k in ("mean", "var", "count"):
            src[f"{rms}.{k}"] = getattr(getattr(model, rms), k)[p]
    sd = net.state_dict()
    for k, v in src.items():
        if k not in sd or sd[k].shape != v.shape:
            raise RuntimeError(f"member_policy: {k} {tuple(v.shape)} has no counterpart in the "
                               "one-policy network")
        sd[k] = v.detach().clone().to(sd[k].dtype)
    net.load_state_dict(sd)
    return net


def checkpoint_policy(payload: Dict[str, Any], cfg: TrainConfig, obs_dim: int, act_dim: int,
                      member: Optional[int] = None) -> Tuple[Any, int]:
    """(one-policy network, global member id) from a PBT checkpoint ``payload``: ``member`` by
    global id, or by default the member with the best score in the checkpoint's windows (for
    cpo.tools.evaluation, which evaluates and exports policy 0 of a network). The privileged critic's
    input size of an asymmetric run is read from the stored ``priv_rms`` statistics."""
    P = cfg.pbt.population
    gids = [int(g) for g in payload["learner"]["gids"]]
    priv = payload["model"].get("priv_rms.mean")
    model = StackedActorCritic(obs_dim, act_dim, P, list(cfg.net.actor_hidden), list(cfg.net.critic_hidden),
                               separate_critic=cfg.net.separate_critic, activation=cfg.net.activation,
                               normalize_obs=cfg.net.normalize_obs, normalize_value=cfg.net.normalize_value,
                               obs_clip=cfg.net.obs_clip,
                               privileged_dim=int(priv.shape[-1]) if priv is not None else 0)
    model.load_state_dict(payload["model"])
    if member is None:  # best windowed score; members without one rank last
        cnt = payload["learner"]["ep_cnt"].sum(0)
        score = payload["learner"]["ep_sum"].sum(0) / cnt.clamp(min=1.0)
        p = int(torch.where(cnt > 0, score, torch.full_like(score, -math.inf)).argmax())
    else:
        if int(member) not in gids:
            raise ValueError(f"member={member}: this checkpoint holds members {gids}")
        p = gids.index(int(member))
    return member_policy(cfg, model, p), gids[p]


# ---------------------------------------------------------------------------- shared directory
class SharedDir:
    """The files through which the worker processes of one population exchange members.

    ``worker_<w>.pt`` is written atomically (cpo.utils.checkpoint.save) and read weights-only;
    a worker only ever writes its own file.
    """

    def __init__(self, path: str, worker_id: int, num_workers: int) -> None:
        self.path, self.worker_id, self.num_workers = path, int(worker_id), int(num_workers)
        os.makedirs(path, exist_ok=True)

    def file(self, worker: int) -> str:
        """Path of ``worker``'s file."""
        return os.path.join(self.path, f"worker_{worker:04d}.pt")

    def publish(self, payload: Dict[str, Any]) -> None:
        """Replace this worker's file with ``payload``."""
        ckpt.save(payload, self.file(self.worker_id))

    def read_others(self, min_round: int = 0, timeout: float = 0.0) -> Dict[int, Dict[str, Any]]:
        """The other workers' newest payloads; with ``timeout > 0`` wait up to that many
        seconds until every other worker has published round ``min_round`` or later."""
        deadline = time.monotonic() + timeout
        while True:
            out: Dict[int, Dict[str, Any]] = {}
            for w in range(self.num_workers):
                if w == self.worker_id or not os.path.isfile(self.file(w)):
                    continue
                try:
                    out[w] = ckpt.load(self.file(w))
                except ckpt.CheckpointError as err:  # a foreign file: ignore it, say why
                    print(f"[pbt] skipping {self.file(w)}: {err}")
            done = all(w in out and int(out[w]["round"]) >= min_round
                       for w in range(self.num_workers) if w != self.worker_id)
            if timeout <= 0 or done or time.monotonic() >= deadline:
                return out
            time.sleep(0.05)


# ---------------------------------------------------------------------------- the learner
@dataclass
class MemberBatch:
    """One iteration's training data in member order, every tensor ``[P, T * B, ...]``."""

    obs: torch.Tensor  # raw observations
    act: torch.Tensor
    logp_old: torch.Tensor  # behaviour log-prob
    mu_old: torch.Tensor  # behaviour mean
    log_std_old: torch.Tensor  # [P, A] behaviour log-std
    adv: torch.Tensor  # advantages, standardised per member
    ret: torch.Tensor  # value targets in reward units
    v_old: torch.Tensor  # values at collection, reward units
    critic_obs: Optional[torch.Tensor] = None  # raw privileged observations (asymmetric critic)


class PBTLearner:
    """PPO updates of every member at once, the score windows and the exploit/explore rounds.

    ``hp[key]`` is a ``[P]`` tensor per hyperparameter (evolved or not); the optimiser reads
    ``hp["lr"]`` in place.
    """

    def __init__(self, model: StackedActorCritic, cfg: TrainConfig, gids: Sequence[int],
                 device: torch.device) -> None:
        self.model, self.cfg, self.device = model, cfg, device
        self.algo, self.pcfg = cfg.algo, cfg.pbt
        self.P = model.num_policies
        self.gids = [int(g) for g in gids]
        init = initial_hyperparameters(cfg, self.gids)
        self.hp = {k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in init.items()}
        self.optimizer = StackedAdam(list(model.parameters()), self.hp["lr"])
        self.gen = torch.Generator(device=device).manual_seed(cfg.seed + 7919)  # minibatches
        self.pbt_gen = torch.Generator().manual_seed(cfg.seed + 104729 * (cfg.pbt.worker_id + 1))
        W = cfg.pbt.score_window
        self.ep_sum = torch.zeros(W, self.P, dtype=torch.float64, device=device)
        self.ep_cnt = torch.zeros(W, self.P, dtype=torch.float64, device=device)
        self.ring_pos = torch.zeros(self.P, dtype=torch.long, device=device)  # per member
        self.rounds = 0
        self.next_round = int(cfg.pbt.interval_steps)
        self.iteration = 0

    # ---- targets -------------------------------------------------------------------------
    @torch.no_grad()
    def build_batch(self, ro: Rollout, has_final_obs: bool = True) -> MemberBatch:
        """GAE targets with each member's own critic, gamma and lambda; advantages standardised
        per member (its own mean and std). An asymmetric critic reads the rollout's privileged
        observations, and truncated steps bootstrap from V(final_privileged)."""
        model, P = self.model, self.P
        T, N = ro.horizon, ro.num_envs
        B = N // P
        r = ro.rewards * self.algo.reward_scale
        # the critic's raw inputs: policy observations, or the privileged ones (asymmetric)
        c_obs, c_final = ((ro.privileged, ro.final_privileged) if model.asymmetric
                          else (ro.obs, ro.final_obs))
        # V(s'_t): the next stored value, V(s_T) after the last step, V(final_obs) where truncated
        v_last = model.value(c_obs[T].reshape(P, B, -1)).reshape(1, N)
        next_v = torch.cat([ro.values[1:], v_last], dim=0)
        if has_final_obs:  # one critic pass over all final observations: no index sync
            v_final = from_members(model.value(to_members(c_final, P)), T)
            next_v = torch.where(ro.truncated, v_final, next_v)
        else:
            next_v = torch.where(ro.truncated, ro.values, next_v)
        # each env discounts with its member's gamma and lambda ([N] broadcast over time)
        gamma = self.hp["gamma"].repeat_interleave(B)
        lam = self.hp["gae_lambda"].repeat_interleave(B)
        adv, ret = gae(r, ro.values, next_v, ro.terminated, ro.truncated, gamma, lam)
        adv = to_members(adv, P)
        if self.algo.normalize_advantage:  # per member: never mixes two members' data
            adv = (adv - adv.mean(1, keepdim=True)) / (adv.std(1, keepdim=True) + 1e-8)
        return MemberBatch(obs=to_members(ro.obs[:-1], P), act=to_members(ro.actions, P),
                           logp_old=to_members(ro.logp, P), mu_old=to_members(ro.mu, P),
                           log_std_old=ro.log_std.clone(), adv=adv, ret=to_members(ret, P),
                           v_old=to_members(ro.values, P),
                           critic_obs=to_members(c_obs[:-1], P) if model.asymmetric else None)

    # ---- the update ----------------------------------------------------------------------
    def permutations(self, rows: int) -> torch.Tensor:
        """One independent shuffle of ``rows`` per member and epoch, ``[epochs, P, rows]``."""
        E = self.algo.num_epochs
        keys = torch.rand(E, self.P, rows, generator=self.gen, device=self.device)
        return keys.argsort(dim=-1)

    def update(self, batch: MemberBatch, perms: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """``num_epochs`` passes of ``num_minibatches`` minibatches, every member on its own rows
        with its own hyperparameters, gradient clip and Adam step. Returns per-member
        statistics ``[P]`` averaged over the minibatches (device tensors)."""
        a, model, P = self.algo, self.model, self.P
        R = batch.adv.shape[1]
        mb = R // a.num_minibatches
        perms = self.permutations(R) if perms is None else perms
        if model.normalize_value:  # each member's return statistics, once before the epochs
            model.value_rms.update_members(batch.ret)
        ret_n, v_old_n = model.norm_value(batch.ret), model.norm_value(batch.v_old)
        clip = self.hp["clip_eps"].view(P, 1)  # per-member epsilon, broadcast over rows
        keys = ("policy", "value", "entropy", "bounds", "approx_kl", "clipfrac", "grad_norm")
        stats = {k: torch.zeros(P, device=self.device) for k in keys}
        params = self.optimizer.params
        steps = 0
        for e in range(a.num_epochs):
            for idx in perms[e].split(mb, dim=1):  # [P, mb]: member p's own rows
                def take(x: torch.Tensor) -> torch.Tensor:
                    i = idx.view(P, -1, *([1] * (x.dim() - 2))).expand(P, idx.shape[1], *x.shape[2:])
                    return torch.gather(x, 1, i)

                # an asymmetric critic reads the same rows' privileged observations
                cx = model.embed_critic(take(batch.critic_obs)) if model.asymmetric else None
                mu, log_std, v = model.heads(model.embed(take(batch.obs)), critic_x=cx)
                logp = gaussian_log_prob(take(batch.act), mu, log_std.unsqueeze(1))  # [P, mb]
                adv = take(batch.adv)
                # clipped surrogate with each member's epsilon, mean over its rows -> [P]
                surr, ratio = losses.ppo_surrogate(logp, take(batch.logp_old), adv, clip)
                policy = surr.mean(1)
                value = losses.value_loss(v, take(v_old_n), take(ret_n), clip, a.clip_value).mean(1)
                ent = gaussian_entropy(log_std)  # [P], state-independent
                bounds = losses.bounds_loss(mu).mean(1)
                # member p's loss: its own coefficients; the sum over members keeps gradients apart
                loss = (policy + 0.5 * self.hp["value_coef"] * value - self.hp["entropy_coef"] * ent
                        + a.bounds_coef * bounds)
                self.optimizer.zero_grad()
                loss.sum().backward()
                grad_norm = clip_grad_norm_per_member(params, a.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    kl = losses.gaussian_kl(take(batch.mu_old), batch.log_std_old.unsqueeze(1),
                                            mu.detach(), log_std.detach().unsqueeze(1)).mean(1)
                    clipfrac = ((ratio - 1.0).abs() > clip).float().mean(1)
                    for k, val in (("policy", policy), ("value", value), ("entropy", ent),
                                   ("bounds", bounds), ("approx_kl", kl), ("clipfrac", clipfrac),
                                   ("grad_norm", grad_norm)):
                        stats[k] += val.detach().float()
                steps += 1
        out = {k: val / steps for k, val in stats.items()}
        # 1 - Var[ret - v_old] / Var[ret] per member (statistics only)
        out["explained_variance"] = 1.0 - ((batch.ret - batch.v_old).var(1)
                                           / batch.ret.var(1).clamp(min=1e-8))
        self.iteration += 1
        return out

    # ---- scores --------------------------------------------------------------------------
    def record_episodes(self, returns: torch.Tensor, counts: torch.Tensor) -> None:
        """Fold one iteration's per-member sums of finished-episode returns and episode counts
        (``[P]`` each) into the score windows. A member's window holds its last
        ``score_window`` iterations in which at least one of its episodes ended, so long
        episodes (several iterations each) still give every member a score."""
        cols = torch.arange(self.P, device=self.device)
        has = counts > 0
        # write slot ring_pos[p] of member p only where an episode ended, then advance it
        self.ep_sum[self.ring_pos, cols] = torch.where(has, returns.to(torch.float64),
                                                       self.ep_sum[self.ring_pos, cols])
        self.ep_cnt[self.ring_pos, cols] = torch.where(has, counts.to(torch.float64),
                                                       self.ep_cnt[self.ring_pos, cols])
        self.ring_pos = (self.ring_pos + has.long()) % self.ep_sum.shape[0]

    def scores(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(score ``[P]``: mean return of the episodes in the window, ready ``[P]``: at least one
        episode in the window), on the CPU."""
        cnt = self.ep_cnt.sum(0)
        score = self.ep_sum.sum(0) / cnt.clamp(min=1.0)
        return score.cpu(), (cnt > 0).cpu()

    # ---- exploit / explore ---------------------------------------------------------------
    def payload(self, env_steps: int) -> Dict[str, Any]:
        """What this worker publishes: its members' ids, scores, state and hyperparameters."""
        score, ready = self.scores()
        return {"format": ckpt.FORMAT_VERSION, "worker": self.pcfg.worker_id, "round": self.rounds + 1,
                "env_steps": int(env_steps), "member_ids": torch.tensor(self.gids),
                "scores": score, "ready": ready,
                "model": {k: v.detach().cpu() for k, v in self.model.member_tensors().items()},
                "optimizer": [t.cpu() for t in self.optimizer.tensors()],
                "hp": {k: v.cpu() for k, v in self.hp.items()}}

    def member_state(self) -> List[torch.Tensor]:
        """Every tensor a member owns (weights, normalisers, Adam moments and step count,
        hyperparameters), member dimension first: what an exploit copies."""
        return (list(self.model.member_tensors().values()) + self.optimizer.tensors()
                + [self.hp[k] for k in HP_KEYS])

    @torch.no_grad()
    def exploit_round(self, env_steps: int, shared: Optional[SharedDir] = None) -> Dict[str, Any]:
        """Run one round (module docstring): publish and read the shared directory when there is
        one, rank, copy, perturb, reset the copiers' score windows. Returns the round's record
        (JSON-ready)."""
        score, ready = self.scores()
        ids, scores, readys = list(self.gids), score.tolist(), ready.tolist()
        remote: Dict[int, Tuple[Dict[str, Any], int]] = {}
        if shared is not None:
            shared.publish(self.payload(env_steps))
            for payload in shared.read_others(self.rounds + 1, self.pcfg.sync_timeout).values():
                for j, g in enumerate(payload["member_ids"].tolist()):
                    remote[int(g)] = (payload, j)
                    ids.append(int(g))
                    scores.append(float(payload["scores"][j]))
                    readys.append(bool(payload["ready"][j]))
        before = {k: v.tolist() for k, v in self.hp.items()}
        hp_of = {g: {k: before[k][p] for k in self.pcfg.mutate} for p, g in enumerate(self.gids)}
        for g, (payload, j) in remote.items():
            hp_of[g] = {k: float(payload["hp"][k][j]) for k in self.pcfg.mutate}
        copies = plan_exploit(scores, readys, ids, self.pcfg, self.pbt_gen)
        local = {g: p for p, g in enumerate(self.gids)}
        mine = [c for c in copies if c.copied and c.dst in local]
        self._copy(mine, local, remote)
        for c in mine:  # explore: perturb the copied hyperparameters
            p = local[c.dst]
            for key, f, up in zip(self.pcfg.mutate, c.factors, c.multiply):
                kind, low, high = pbt_range(self.algo, key)
                self.hp[key][p] = perturb(float(self.hp[key][p]), kind, f, up, low, high)
            self.ep_sum[:, p] = 0.0  # its episodes were another policy's: a fresh window
            self.ep_cnt[:, p] = 0.0
        self.rounds += 1
        self.next_round = (env_steps // self.pcfg.interval_steps + 1) * self.pcfg.interval_steps
        return {"round": self.rounds, "env_steps": int(env_steps), "worker": self.pcfg.worker_id,
                "ranked": {str(g): (s if r else None) for g, s, r in zip(ids, scores, readys)},
                "copies": [{"dst": c.dst, "src": c.src, "gap": c.gap, "copied": c.copied,
                            "local": c.dst in local, "factors": c.factors, "multiply": c.multiply,
                            "hp_dst_before": hp_of[c.dst], "hp_src": hp_of[c.src],
                            "hp_dst_after": {k: float(self.hp[k][local[c.dst]]) for k in self.pcfg.mutate}
                            if c.dst in local else None} for c in copies]}

    def _copy(self, copies: List[Copy], local: Dict[int, int],
              remote: Dict[int, Tuple[Dict[str, Any], int]]) -> None:
        """Overwrite each copier's state with its source's: local sources with one gather per
        tensor, remote ones from the source worker's file."""
        src_index = torch.arange(self.P, device=self.device)
        from_file = []
        for c in copies:
            if c.src in local:
                src_index[local[c.dst]] = local[c.src]
            else:
                from_file.append(c)
        if len(from_file) < len(copies):
            for t in self.member_state():  # gather from a snapshot: sources are never copiers
                t.copy_(t[src_index.to(t.device)])
        for c in from_file:
            payload, j = remote[c.src]
            p = local[c.dst]
            named = self.model.member_tensors()
            for name, t in named.items():  # check every tensor before overwriting any
                if name not in payload["model"]:
                    raise RuntimeError(
                        f"pbt: worker {payload['worker']}'s members have no tensor {name}: the workers "
                        "of one population must share the task (privileged observations included) "
                        "and the network sizes")
                self._check_shape(name, t, payload["model"][name], payload)
            for name, t in named.items():
                t[p] = payload["model"][name][j].to(t.device, t.dtype)
            for t, s in zip(self.optimizer.tensors(), payload["optimizer"]):
                t[p] = s[j].to(t.device, t.dtype)
            for k in HP_KEYS:
                self.hp[k][p] = float(payload["hp"][k][j])

    @staticmethod
    def _check_shape(name: str, mine: torch.Tensor, theirs: torch.Tensor, payload: Dict[str, Any]) -> None:
        if tuple(mine.shape[1:]) != tuple(theirs.shape[1:]):
            raise RuntimeError(
                f"pbt: worker {payload['worker']}'s member tensor {name} has shape "
                f"{tuple(theirs.shape[1:])} per member, this worker's {tuple(mine.shape[1:])}: the "
                "workers of one population must share the task and the network sizes")

    # ---- state ---------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Optimiser, hyperparameters, generators, score windows and round counters."""
        return {"optimizer": self.optimizer.state_dict(),
                "hp": {k: v.clone() for k, v in self.hp.items()},
                "gen": self.gen.get_state(), "pbt_gen": self.pbt_gen.get_state(),
                "ep_sum": self.ep_sum.clone(), "ep_cnt": self.ep_cnt.clone(),
                "ring_pos": self.ring_pos.clone(), "rounds": self.rounds, "next_round": self.next_round,
                "iteration": self.iteration, "gids": list(self.gids)}

    def load_state_dict(self, sd: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (in place: the optimiser keeps reading ``hp["lr"]``)."""
        self.optimizer.load_state_dict(sd["optimizer"])
        for k in HP_KEYS:
            self.hp[k].copy_(sd["hp"][k])
        self.gen.set_state(sd["gen"].cpu())
        self.pbt_gen.set_state(sd["pbt_gen"].cpu())
        self.ep_sum.copy_(sd["ep_sum"])
        self.ep_cnt.copy_(sd["ep_cnt"])
        self.ring_pos.copy_(sd["ring_pos"])
        self.rounds = int(sd["rounds"])
        self.next_round, self.iteration = int(sd["next_round"]), int(sd["iteration"])


# ---------------------------------------------------------------------------- the runner
class PBTRunner(Runner):
    """The training loop of :class:`cpo.runners.runner.Runner` (collect, NaN guard, checkpoints,
    signals, TensorBoard) with a stacked population and exploit/explore rounds.

    TensorBoard: ``pbt/member_<g>/`` per member (global id g): ``ep_return``, ``ep_len`` and the
    task's episode metrics (this iteration), ``score`` (windowed), ``entropy`` and every
    evolved hyperparameter; at rounds ``pbt/member_<g>/copied_from`` (source id, -1 none) and
    ``pbt/exploits``; ``pbt/best_score``, ``pbt/best_member``, ``pbt/mean_score``.
    ``rollout/ep_return`` is the best member's score (the population's best return);
    ``losses/*`` are means over members. Rounds are also appended to ``pbt_events.jsonl``.
    """

    EVENTS = "pbt_events.jsonl"

    def build(self) -> Tuple[StackedActorCritic, PBTLearner]:
        """The stacked population and its learner."""
        cfg, n = self.cfg, self.cfg.net
        P = cfg.pbt.population
        if self.dist.enabled:
            raise ConfigError(f"pbt.population={P}: PBT does not run under torchrun; start one "
                              "process per worker with pbt.shared_dir, pbt.num_workers, pbt.worker_id")
        gids = [cfg.pbt.worker_id * P + i for i in range(P)]
        priv_dim = int(self.env.privileged_dim)  # > 0: the members' critics read privileged obs
        check_privileged_critic(cfg, priv_dim)
        model = StackedActorCritic(
            self.env.obs_dim, self.env.act_dim, P, list(n.actor_hidden), list(n.critic_hidden),
            separate_critic=n.separate_critic, activation=n.activation, init_log_std=n.init_log_std,
            normalize_obs=n.normalize_obs, normalize_value=n.normalize_value, obs_clip=n.obs_clip,
            member_seeds=[member_seed(cfg.seed, g) for g in gids],
            privileged_dim=priv_dim).to(self.device)
        self.shared = (SharedDir(cfg.pbt.shared_dir, cfg.pbt.worker_id, cfg.pbt.num_workers)
                       if cfg.pbt.shared_dir else None)
        return model, PBTLearner(model, cfg, gids, self.device)

    def step(self) -> Dict[str, float]:
        """Collect, update every member, maybe run a round; the iteration's scalars."""
        cfg, L = self.cfg, self.learner
        t0 = time.perf_counter()
        snapshot, good = self._snapshot(), self._good_state()
        sums = self.collect_checked(snapshot)
        t1 = time.perf_counter()
        batch = L.build_batch(self.storage, has_final_obs=self.env.has_final_obs)
        stats = L.update(batch)
        with torch.no_grad():  # a non-finite loss or parameter: restore, save last_good.pt, stop
            loss_ok = torch.isfinite(torch.stack([stats["policy"].sum(), stats["value"].sum()])).all()
            params_ok = torch.stack([torch.isfinite(p.detach()).all() for p in self.model.parameters()]).all()
        if not bool(loss_ok & params_ok):
            self._stop_nonfinite(good, snapshot, 1 if not bool(loss_ok) else 3, 0, 0)
        if cfg.net.normalize_obs:  # once per rollout, raw observations, each member its own block
            self.model.obs_rms.update(self.storage.obs[:-1])
            if self.model.asymmetric:  # the critic's own normaliser, same schedule
                self.model.priv_rms.update(self.storage.privileged[:-1])
        L.record_episodes(sums["return"], sums["count"])
        self.iteration += 1
        steps = self.storage.horizon * self.storage.num_envs
        self.env_steps += steps
        record = None
        if self.env_steps >= L.next_round:
            record = L.exploit_round(self.env_steps, self.shared)
            self._write_event(record)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        out = self._scalars(sums, stats, record)
        out["perf/collect_s"] = t1 - t0
        out["perf/learn_s"] = t2 - t1
        out["perf/sps"] = steps / max(t2 - t0, 1e-9)
        out["perf/env_steps"] = float(self.env_steps)
        if cfg.nonfinite == "reset":
            out["perf/nonfinite_resets"] = float(self.nonfinite_resets)
        self.last_stats = out
        return out

    def _scalars(self, sums: Dict[str, torch.Tensor], stats: Dict[str, torch.Tensor],
                 record: Optional[Dict[str, Any]]) -> Dict[str, float]:
        """The iteration's TensorBoard scalars (one host transfer of every per-member tensor)."""
        L = self.learner
        host = {k: v.detach().cpu() for k, v in {**sums, **stats}.items()}
        out: Dict[str, float] = {}
        for k in ("policy", "value", "entropy", "bounds", "approx_kl", "clipfrac", "grad_norm",
                  "explained_variance"):
            out[f"losses/{k}"] = float(host[k].mean())
        score, ready = L.scores()
        hp = {k: L.hp[k].cpu() for k in self.cfg.pbt.mutate}
        count = host["count"]
        metrics = [k for k in sums if k != "count"]
        for p, g in enumerate(L.gids):
            pre = f"pbt/member_{g}/"
            for key in metrics:
                name = {"return": "ep_return", "length": "ep_len"}.get(key, key)
                if count[p] > 0:
                    out[pre + name] = float(host[key][p] / count[p])
                elif pre + name in self.last_stats:  # no episode ended: carry the last value
                    out[pre + name] = self.last_stats[pre + name]
            if ready[p]:
                out[pre + "score"] = float(score[p])
            out[pre + "entropy"] = float(host["entropy"][p])
            for k, v in hp.items():
                out[pre + k] = float(v[p])
            if record is not None:
                src = [c["src"] for c in record["copies"] if c["dst"] == g and c["copied"]]
                out[pre + "copied_from"] = float(src[0]) if src else -1.0
        if bool(ready.any()):
            best = int(torch.where(ready, score, torch.full_like(score, -math.inf)).argmax())
            out["pbt/best_score"] = float(score[best])
            out["pbt/best_member"] = float(L.gids[best])
            out["pbt/mean_score"] = float(score[ready].mean())
            out["rollout/ep_return"] = float(score[best])
            tag = f"pbt/member_{L.gids[best]}/success"
            if tag in out:
                out["rollout/success"] = out[tag]
        else:
            for tag in ("pbt/best_score", "pbt/best_member", "pbt/mean_score", "rollout/ep_return",
                        "rollout/success"):
                if tag in self.last_stats:
                    out[tag] = self.last_stats[tag]
        if record is not None:
            out["pbt/exploits"] = float(sum(1 for c in record["copies"] if c["copied"] and c["local"]))
        return out

    # ---- the round log -------------------------------------------------------------------
    def _write_event(self, record: Dict[str, Any]) -> None:
        os.makedirs(self.run_dir, exist_ok=True)
        record = dict(record, iteration=self.iteration)
        with open(os.path.join(self.run_dir, self.EVENTS), "a") as f:
            f.write(json.dumps(record) + "\n")

    def load(self, path: str) -> None:
        """Restore a checkpoint and drop the round records written after it."""
        super().load(path)
        events = os.path.join(self.run_dir, self.EVENTS)
        if os.path.isfile(events):
            with open(events) as f:
                keep = [line for line in f if line.strip() and json.loads(line)["env_steps"] <= self.env_steps]
            with open(events, "w") as f:
                f.writelines(keep)
