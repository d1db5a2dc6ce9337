"""The training loop: collect, learn, log, checkpoint, handle signals and bad numbers."""
from __future__ import annotations

import copy
import math
import os
import signal
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from cpo import checkpoint as ckpt
from cpo import distributed, fast
from cpo.config import TrainConfig, flatten, to_dict
from cpo.evolution import Evolution, describe
from cpo.learner import Learner, lambda_f_at
from cpo.logger import Logger, RunLog, WandbSettings, progress_line, summary_lines
from cpo.nets import EnsembleActorCritic, gaussian_entropy
from cpo.rollout import Rollout


class NonFiniteError(RuntimeError):
    """NaN or inf met in observations, rewards or losses; the run stopped after saving."""


class _BadEnvs(Exception):
    """Raised inside collect() when an env produced non-finite output (nonfinite=stop)."""

    def __init__(self, ids: List[int], quantity: str, t: int) -> None:
        super().__init__(quantity)
        self.ids, self.quantity, self.t = ids, quantity, t


def _nonfinite(obs: torch.Tensor, reward: torch.Tensor, final_obs: torch.Tensor):
    """Per-env masks of non-finite observation, reward and final observation."""
    return (~torch.isfinite(obs).all(-1), ~torch.isfinite(reward), ~torch.isfinite(final_obs).all(-1))


def _describe(masks, names=("observation", "reward", "final observation")) -> Tuple[List[int], str]:
    bad = masks[0] | masks[1] | masks[2]
    ids = torch.nonzero(bad).flatten()[:20].tolist()
    what = [n for n, m in zip(names, masks) if bool(m.any())]
    return ids, " and ".join(what)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu. ``cuda`` / ``cuda:<i>`` on a machine without
    that GPU fails here, before any env or model is built, with a config error naming the key
    (``validate`` does not check it, so that configs for a GPU machine validate anywhere)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        from cpo.config import ConfigError

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device={name!r}: no CUDA device is available here (torch "
                              f"{torch.__version__}, torch.cuda.is_available() is False); use device=cpu or auto")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"device={name!r}: this machine has {count} CUDA device(s), indices 0..{count - 1}")
    return dev


def check_privileged_critic(cfg: TrainConfig, privileged_dim: int) -> None:
    """An env that gives the critic a privileged observation needs ``net.separate_critic``
    (the shared actor trunk only sees policy observations): a config error naming the key."""
    if privileged_dim > 0 and not cfg.net.separate_critic:
        from cpo.config import ConfigError

        raise ConfigError(f"net.separate_critic={cfg.net.separate_critic}: env {cfg.env.name!r} gives the "
                          f"critic a privileged observation (privileged_dim={privileged_dim}), which needs "
                          "its own network: set net.separate_critic=true")


def build_model(cfg: TrainConfig, obs_dim: int, act_dim: int,
                privileged_dim: int = 0) -> EnsembleActorCritic:
    """The ensemble actor-critic described by ``cfg`` (seeded by ``cfg.seed``); with
    ``privileged_dim > 0`` (the env's, see envs/base.py) the critic reads the privileged
    observation, which needs ``net.separate_critic=true``."""
    n, a = cfg.net, cfg.algo
    check_privileged_critic(cfg, privileged_dim)
    return EnsembleActorCritic(
        obs_dim, act_dim, num_policies=a.num_policies, latent_dim=a.latent_dim,
        actor_hidden=list(n.actor_hidden), critic_hidden=list(n.critic_hidden),
        separate_critic=n.separate_critic, activation=n.activation, init_log_std=n.init_log_std,
        normalize_obs=n.normalize_obs, normalize_value=n.normalize_value, obs_clip=n.obs_clip,
        rnn_hidden=n.rnn_hidden, privileged_dim=privileged_dim, seed=cfg.seed)


def _clone_tree(x: Any) -> Any:
    """A copy of nested dicts / lists of tensors (tensors cloned, other values shared)."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, dict):
        return {k: _clone_tree(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_clone_tree(v) for v in x)
    return copy.deepcopy(x)


#: SLURM's ``--signal`` and submitit's timeout/preemption signal (USR2 by default)
_USR_SIGNALS = tuple(getattr(signal, n) for n in ("SIGUSR1", "SIGUSR2") if hasattr(signal, n))


class _Signals:
    """SIGINT/SIGTERM/SIGUSR1/SIGUSR2: the first asks for a checkpoint and a clean exit after
    the current iteration; a second SIGINT exits at once. A SIGUSR1/2 handler that was
    installed before ours (submitit's, which requeues the SLURM job) is called by
    :meth:`chain` once the checkpoint is written."""

    def __init__(self) -> None:
        self.requested: Optional[int] = None
        self._old: Dict[int, Any] = {}
        self._pending: Any = None

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM) + _USR_SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signum

    def restore(self) -> None:
        if self.requested in _USR_SIGNALS and callable(self._old.get(self.requested)):
            self._pending = self._old[self.requested]
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def chain(self) -> None:
        """Pass a SIGUSR1/2 on to the handler installed before ours (after :meth:`restore`)."""
        handler, self._pending = self._pending, None
        if handler is not None:
            handler(self.requested, None)


#: above this many policies the M x M KL heatmap image is not drawn (the diversity/kl/*
#: summaries and per-follower scalars stay)
HEATMAP_MAX_POLICIES = 16

#: runner entries of a checkpoint that belong to one rank (its envs' side) under torchrun
_RANK_LOCAL = ("obs", "ep_ret", "ep_len", "act_gen", "torch_rng", "rnn_state", "priv", "nonfinite_resets")


class Runner:
    """Owns env, model, learner, logger; :meth:`train` runs to ``cfg.max_iterations``."""

    def __init__(self, cfg: TrainConfig, run_dir: str, resume_from: Optional[str] = None,
                 config_yaml: str = "") -> None:
        from envs import registry

        from cpo.config import config_yaml as to_yaml

        self.cfg, self.run_dir = cfg, run_dir
        self.config_yaml = config_yaml or to_yaml(cfg)
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        # torchrun: this process's rank (cpo/distributed.py); one process: the no-op context
        self.dist = distributed.current()
        self.device = self.dist.place(resolve_device(cfg.device))
        seed = self.dist.seed(cfg.seed)  # envs and action noise differ per rank (rank 0: seed)
        torch.manual_seed(seed)
        env_cfg = cfg.env
        if self.dist.enabled:  # env.num_envs is the global N: this rank steps N / world_size
            env_cfg = copy.copy(cfg.env)
            env_cfg.num_envs = cfg.env.num_envs // self.dist.world_size
        try:
            self.env = registry.make(env_cfg, device=self.device, seed=seed)
        except registry.EnvConfigError as err:  # e.g. a simulator that is not installed
            from cpo.config import ConfigError

            raise ConfigError(str(err)) from None
        if cfg.algo.mixed_precision == "fp16" and self.device.type != "cuda":  # (after the env's own errors)
            from cpo.config import ConfigError

            raise ConfigError(f"algo.mixed_precision='fp16': fp16 needs a CUDA device (device={cfg.device} "
                              f"resolves to {self.device}); use bf16 on a CPU")
        # with the env's real sizes, before any model or rollout storage is allocated
        from cpo.config import check_memory

        check_memory(cfg, self.env.obs_dim, self.env.act_dim, self.env.privileged_dim)
        self.model, self.learner = self.build()
        self._join_ranks()
        self._policy_step = fast.policy_step(self.model, cfg.perf, self.device)
        # env blocks: M policies here, P members in the PBT runner (cpo/pbt.py)
        N, M, T = self.env.num_envs, self.model.num_policies, cfg.algo.horizon
        self.M, self.B = M, N // M
        self.pol_env = torch.arange(N, device=self.device) // self.B
        self.act_gen = torch.Generator(device=self.device).manual_seed(seed + 1)
        # asymmetric critic: the env's privileged observation feeds the critic (envs/base.py)
        priv_dim = int(getattr(self.model, "privileged_dim", 0))
        self.storage = Rollout.empty(T, N, self.env.obs_dim, self.env.act_dim, M, self.device,
                                     rnn_hidden=cfg.net.rnn_hidden, privileged_dim=priv_dim)
        self.rnn_state = self.model.initial_state(N) if self.model.is_recurrent else None
        self.ep_ret = torch.zeros(N, device=self.device)
        self.ep_len = torch.zeros(N, device=self.device)
        self.iteration, self.env_steps = 0, 0
        self.best_return = -math.inf
        self.last_best_iteration = -10**9
        self.history: List[float] = []
        self.last_stats: Dict[str, float] = {}
        self._kl: Optional[np.ndarray] = None  # last KL matrix (ensembles only), for the heatmap
        self.nonfinite_resets = 0
        self.obs = self.env.reset(seed=seed)
        self.priv = self.env.privileged() if priv_dim > 0 else None  # critic observation
        if resume_from is not None:
            self.load(resume_from)
        elif cfg.net.normalize_obs:
            self.model.obs_rms.update(self.obs)  # statistics start from the first observations
            if self.priv is not None:
                self.model.priv_rms.update(self.priv)
        if not self.env.has_final_obs and self.dist.is_main:
            print("[cpo] this env gives no final observation: truncated steps bootstrap with V(s_t)")
        self.logger: Optional[Logger] = None
        self.signals = _Signals()
        #: EPO (cpo/evolution.py): the fitness window and the genetic step; None without evolution
        self.evolution: Optional[Evolution] = None
        if cfg.evo.interval_steps > 0 and cfg.pbt.population == 0:
            self.evolution = Evolution(cfg.evo, self.M, self.device, seed=cfg.seed)
            if resume_from is not None and getattr(self, "_evolution_state", None) is not None:
                self.evolution.load_state_dict(self._evolution_state)
        self._texts: List[Tuple[str, str]] = []  # (tag, text) for the logger, e.g. evolution events

    def build(self) -> Tuple[Any, Any]:
        """The model and the learner of this run (the PBT runner in cpo/pbt.py builds a stacked
        population instead)."""
        cfg = self.cfg
        model = build_model(cfg, self.env.obs_dim, self.env.act_dim,
                            self.env.privileged_dim).to(self.device)
        learner = Learner(model, cfg.algo, self.env.num_envs, self.device,
                          cfg.max_iterations, seed=cfg.seed, perf=cfg.perf)
        return model, learner

    def _join_ranks(self) -> None:
        """torchrun: start every rank from rank 0's parameters and buffers, and route the
        normalisers' statistics and the learner's gradients through the process group
        (cpo/distributed.py). Nothing happens with one process."""
        from cpo.nets import RunningMeanStd

        if not self.dist.enabled:
            return
        self.dist.broadcast_module(self.model)
        for module in self.model.modules():  # obs, value (and privileged) normalisers
            if isinstance(module, RunningMeanStd):
                module.sync = self.dist.moments
        self.learner.dist = self.dist
        if self.learner.disc is not None:
            self.dist.broadcast_module(self.learner.disc)

    # ---- collection ---------------------------------------------------------------------
    @torch.no_grad()
    def collect(self) -> Dict[str, torch.Tensor]:
        """Step every env T times with its block's policy; returns per-block episode sums."""
        ro, env, model = self.storage, self.env, self.model
        M = self.M
        z = lambda: torch.zeros(M, device=self.device)  # noqa: E731
        sums: Dict[str, torch.Tensor] = {"return": z(), "length": z(), "count": z()}
        bad = [torch.zeros(env.num_envs, dtype=torch.bool, device=self.device) for _ in range(3)]
        per_step = self.cfg.nonfinite_check == "step"
        ro.log_std.copy_(model.log_std.detach())
        if self.rnn_state is not None:
            ro.h0.copy_(self.rnn_state[0])
            ro.c0.copy_(self.rnn_state[1])
        for t in range(ro.horizon):
            ro.obs[t] = self.obs
            if self.priv is not None:
                ro.privileged[t] = self.priv
            if self.rnn_state is not None:  # the LSTM steps outside the pure policy step
                base, self.rnn_state = model.encode_step(self.obs, self.rnn_state)
                action, logp, mu, value = model.act(self.obs, self.pol_env, self.act_gen, base=base,
                                                    critic_obs=self.priv)
            else:  # the pure step (eager, compiled or CUDA-graph replayed: cpo/fast.py); an
                # asymmetric critic's value reads the privileged observation as a fourth input
                eps = model.noise(env.num_envs, self.act_gen, self.device)
                extra = (self.priv,) if self.priv is not None else ()
                action, logp, mu, value = self._policy_step(self.obs, self.pol_env, eps, *extra)
            obs, reward, term, trunc, info = env.step(action)
            final_obs = info.get("final_obs", obs)
            masks = _nonfinite(obs, reward, final_obs)
            if self.priv is not None:  # privileged obs count as observations for the NaN guard
                priv, final_priv = info["privileged"], info["final_privileged"]
                masks = (masks[0] | ~torch.isfinite(priv).all(-1), masks[1],
                         masks[2] | ~torch.isfinite(final_priv).all(-1))
            if per_step:
                any_bad = masks[0] | masks[1] | masks[2]
                if bool(any_bad.any()):  # the per-step host sync of the NaN guard
                    if self.cfg.nonfinite == "stop":
                        raise _BadEnvs(*_describe(masks), t)
                    # reset the offending envs; their episode ends with no bootstrap
                    obs = torch.where(any_bad.unsqueeze(-1), env.reset_envs(any_bad), obs)
                    final_obs = torch.where(any_bad.unsqueeze(-1), obs, final_obs)
                    if self.priv is not None:
                        priv = torch.where(any_bad.unsqueeze(-1), env.privileged(), priv)
                        final_priv = torch.where(any_bad.unsqueeze(-1), priv, final_priv)
                    reward = torch.where(any_bad, torch.zeros_like(reward), reward)
                    term, trunc = term | any_bad, trunc & ~any_bad
                    self.nonfinite_resets += int(any_bad.sum())
            else:
                bad = [b | m for b, m in zip(bad, masks)]
            if self.rnn_state is not None:  # a new episode starts from a zero memory
                keep = (~(term | trunc)).float().unsqueeze(-1)
                self.rnn_state = (self.rnn_state[0] * keep, self.rnn_state[1] * keep)
            ro.actions[t], ro.logp[t], ro.mu[t], ro.values[t] = action, logp, mu, value
            ro.rewards[t], ro.terminated[t], ro.truncated[t] = reward, term, trunc
            ro.final_obs[t] = final_obs
            if self.priv is not None:
                ro.final_privileged[t] = final_priv
                self.priv = priv
            # episode bookkeeping per block, without host syncs
            self.ep_ret += torch.nan_to_num(reward)
            self.ep_len += 1
            done = (term | trunc).float()
            sums["return"].index_add_(0, self.pol_env, self.ep_ret * done)
            sums["length"].index_add_(0, self.pol_env, self.ep_len * done)
            sums["count"].index_add_(0, self.pol_env, done)
            for key, val in info.get("log", {}).items():
                if key not in sums:
                    sums[key] = z()
                sums[key].index_add_(0, self.pol_env, val.float() * done)
            self.ep_ret *= 1.0 - done
            self.ep_len *= 1.0 - done
            self.obs = obs
        ro.obs[ro.horizon] = self.obs
        if self.priv is not None:
            ro.privileged[ro.horizon] = self.priv
        if not per_step and bool((bad[0] | bad[1] | bad[2]).any()):  # once per iteration
            raise _BadEnvs(*_describe(bad), ro.horizon - 1)
        return sums

    def collect_checked(self, snapshot: Optional[Dict[str, Any]] = None) -> Dict[str, torch.Tensor]:
        """:meth:`collect`; non-finite env output (nonfinite=stop) saves the state at the start
        of the iteration (``snapshot``, taken here when not given) as
        ``checkpoints/last_good.pt`` and raises :class:`NonFiniteError`."""
        snapshot = snapshot if snapshot is not None else self._snapshot()
        found: Optional[_BadEnvs] = None
        try:
            sums = self.collect()
        except _BadEnvs as bad:
            found = bad
        if self.dist.any_true(found is not None):  # torchrun: bad data on any rank stops all
            path = os.path.join(self.run_dir, "checkpoints", "last_good.pt")
            payload = self.state(snapshot)
            if self.dist.is_main:
                ckpt.save(payload, path)
            where, quantity, t = self._bad_report(found)
            self.dist.barrier()  # the file is written before any rank exits
            raise NonFiniteError(
                f"non-finite {quantity} from {where} in iteration {self.iteration + 1}, "
                f"rollout step {t} (env steps {self.env_steps + t * self.env.num_envs * self.dist.world_size}); "
                f"the state at the start of the iteration is saved to {path} "
                f"(resume from it, or set nonfinite=reset to reset such envs and continue)") from None
        return sums

    def _good_state(self) -> Dict[str, Any]:
        """Copies of the model's and the learner's state (parameters, normalisers, optimiser,
        LR, beta, generators) at the start of an iteration: what ``last_good.pt`` holds when
        the update meets a non-finite loss, gradient or parameter."""
        return {"model": _clone_tree(self.model.state_dict()), "learner": _clone_tree(self.learner.state_dict())}

    def _stop_nonfinite(self, good: Dict[str, Any], snapshot: Dict[str, Any], code: int, step: int,
                        steps: int) -> None:
        """Restore the start-of-iteration state, save it as ``checkpoints/last_good.pt`` and
        raise :class:`NonFiniteError` naming the quantity, the iteration and the gradient step."""
        self.model.load_state_dict(good["model"])
        self.learner.load_state_dict(good["learner"])
        path = os.path.join(self.run_dir, "checkpoints", "last_good.pt")
        payload = self.state(snapshot)
        if self.dist.is_main:
            ckpt.save(payload, path)
        self.dist.barrier()
        quantity = {1: "loss", 2: "gradient", 3: "parameter"}.get(code, "loss")
        where = f"in iteration {self.iteration + 1}"
        if steps > 0:  # which gradient step (the PBT learner reports none)
            per_epoch = max(steps // max(int(self.cfg.algo.num_epochs), 1), 1)
            where += (f", minibatch {step % per_epoch} of epoch {step // per_epoch} "
                      f"(gradient step {step + 1} of {steps})")
        raise NonFiniteError(
            f"non-finite {quantity} {where}; the state from the start of the iteration is saved to "
            f"{path} (resume={self.run_dir} continues from it)")

    def _bad_report(self, bad: Optional[_BadEnvs]) -> Tuple[str, str, int]:
        """(which envs, which quantity, rollout step) of the first rank that met non-finite
        data; under torchrun the env ids are global (cpo/distributed.py's layout)."""
        if not self.dist.enabled:
            return f"env ids {bad.ids}", bad.quantity, bad.t
        mine = None
        if bad is not None:
            ids = distributed.global_env_ids(bad.ids, self.dist, self.env.num_envs, self.M)
            mine = (ids, bad.quantity, bad.t)
        rank, (ids, quantity, t) = next((r, x) for r, x in enumerate(self.dist.all_gather(mine))
                                        if x is not None)
        return f"env ids {ids} (global ids; rank {rank})", quantity, t

    # ---- one iteration ----------------------------------------------------------------------
    def step(self) -> Dict[str, float]:
        """Collect, update, and return the iteration's scalar statistics (one host sync)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        snapshot, good = self._snapshot(), self._good_state()
        sums = self.collect_checked(snapshot)
        t1 = time.perf_counter()
        batch = self.learner.build_batch(self.storage, has_final_obs=self.env.has_final_obs)
        diag = self.learner.diagnostics(self.storage, cfg.log.diag_samples)
        disc = self.learner.update_discriminator(self.storage)
        stats = self.learner.update(self.storage, batch)
        nonfinite = float(self.nonfinite_resets)
        if self.dist.enabled:  # one all-reduce: episode sums summed, losses/diagnostics averaged
            sums["_nonfinite"] = torch.tensor(nonfinite, device=self.device)
            sums, (stats, diag, disc) = self.dist.reduce_stats(sums, (stats, diag, disc))
            nonfinite = float(sums.pop("_nonfinite"))
        if "kl_matrix" in diag:  # under torchrun the ranks' mean: beta stays equal on every rank
            self.learner.adapt_beta(diag["kl_matrix"][1:, 0])
        if cfg.net.normalize_obs:  # once per rollout, with raw observations, after the update
            T, N = self.storage.horizon, self.storage.num_envs
            self.model.obs_rms.update(self.storage.obs[:-1].reshape(T * N, -1))
            if self.priv is not None:  # the critic's own normaliser, same schedule
                self.model.priv_rms.update(self.storage.privileged[:-1].reshape(T * N, -1))
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        # ---- the single host sync of the iteration
        host = {k: v.detach().cpu() for k, v in {**sums, **stats, **diag, **disc}.items()}
        if float(host["nonfinite_code"]) > 0:  # restore, save last_good.pt, stop
            self._stop_nonfinite(good, snapshot, int(round(float(host["nonfinite_code"]))),
                                 int(host["nonfinite_step"]), int(host["gradient_steps"]))
        self.iteration += 1
        steps = self.storage.horizon * self.storage.num_envs * self.dist.world_size  # all ranks
        self.env_steps += steps
        out: Dict[str, float] = {}
        for k in ("policy", "value", "entropy", "coupling", "bounds", "approx_kl", "clipfrac",
                  "grad_norm", "explained_variance"):
            out[f"losses/{k}"] = float(host[k])
        count = host["count"]
        metric_keys = [k for k in host if k in sums and k != "count"]
        for m in range(self.M):
            prefix = "rollout/" if m == 0 else f"rollout/policy_{m}/"
            if count[m] > 0:
                for key in metric_keys:
                    name = {"return": "ep_return", "length": "ep_len"}.get(key, key)
                    out[f"{prefix}{name}"] = float(host[key][m] / count[m])
                    if m == 0:
                        out[f"rollout/policy_0/{name}"] = out[f"{prefix}{name}"]
            elif f"{prefix}ep_return" in self.last_stats:  # no episode ended: carry the last value
                for key in metric_keys:
                    name = {"return": "ep_return", "length": "ep_len"}.get(key, key)
                    tag = f"{prefix}{name}"
                    if tag in self.last_stats:
                        out[tag] = self.last_stats[tag]
        log_std = self.model.log_std.detach().cpu()
        ent = gaussian_entropy(log_std)
        for m in range(self.M):
            out[f"rollout/policy_{m}/entropy"] = float(ent[m])
            if self.M > 1:  # log sigma per policy (mean over action dims): exploration width
                out[f"diversity/log_std/policy_{m}"] = float(log_std[m].mean())
        if "ess_overall" in host:
            out["diversity/ess/overall"] = float(host["ess_overall"])
            out["diversity/ess/followers_pooled"] = float(host["ess_followers_pooled"])
            K = host["kl_matrix"].numpy()
            for f in range(1, self.M):
                out[f"diversity/ess/follower_{f}"] = float(host["ess_follower"][f - 1])
                out[f"diversity/is_dev/follower_{f}"] = float(host["is_dev_follower"][f - 1])
                out[f"diversity/kl/leader_to_{f}"] = float(K[0, f])
                out[f"diversity/kl/{f}_to_leader"] = float(K[f, 0])
            self._kl = K
            # summaries that stay readable for a large population (EPO's M = 64)
            off = K + np.diag(np.full(self.M, np.inf))
            out["diversity/kl/offdiag_median"] = float(np.median(K[~np.eye(self.M, dtype=bool)]))
            out["diversity/kl/leader_row_mean"] = float(K[0, 1:].mean())
            out["diversity/followers_nearest_leader"] = float(sum(int(np.argmin(off[f])) == 0
                                                                  for f in range(1, self.M)))
        if "disc_loss" in host:
            out["diversity/disc_loss"] = float(host["disc_loss"])
            out["diversity/disc_acc"] = float(host["disc_acc"])
        out["train/lr"] = float(self.learner.lr)
        if self.M > 1:
            out["train/beta"] = float(self.learner.beta[1:].mean())
            out["train/lambda_f"] = float(lambda_f_at(cfg.algo, (self.iteration - 1) / max(cfg.max_iterations - 1, 1)).mean())
        if self.evolution is not None:
            self._evolve(sums, out)
        out["perf/collect_s"] = t1 - t0
        out["perf/learn_s"] = t2 - t1
        out["perf/sps"] = steps / max(t2 - t0, 1e-9)
        out["perf/env_steps"] = float(self.env_steps)
        if self.cfg.nonfinite == "reset":
            out["perf/nonfinite_resets"] = nonfinite
        self.last_stats = out
        return out

    def _evolve(self, sums: Dict[str, torch.Tensor], out: Dict[str, float]) -> None:
        """EPO: add this iteration's episodes to the fitness window; when an event is due,
        replace the weakest latents (cpo/evolution.py), zero their LSTM state, and log the
        fitness of every policy and who was replaced by whose crossover."""
        evo = self.evolution
        evo.record(sums)
        if not evo.due(self.env_steps):
            return
        record = evo.step(self.model, self.learner.optimizer, self.env_steps)
        if self.rnn_state is not None and record["victims"]:  # a new gene starts from a zero memory
            hit = torch.isin(self.pol_env, torch.tensor(record["victims"], device=self.device))
            keep = (~hit).float().unsqueeze(-1)
            self.rnn_state = (self.rnn_state[0] * keep, self.rnn_state[1] * keep)
        for m, (f, ok) in enumerate(zip(record["fitness"], record["eligible"])):
            if ok:
                out[f"evo/fitness/policy_{m}"] = float(f)
        out["evo/events"] = float(record["event"])
        out["evo/replaced"] = float(len(record["victims"]))
        self._texts.append(("evo/events", describe(record, self.iteration)))

    # ---- the loop -----------------------------------------------------------------------
    def train(self) -> Dict[str, float]:
        """Run to ``max_iterations``; checkpoints periodically, at the end and on signals."""
        cfg = self.cfg
        main = self.dist.is_main  # torchrun: only rank 0 writes files and shows progress
        if main:
            os.makedirs(self.run_dir, exist_ok=True)
        g = cfg.log
        wandb = (WandbSettings(g.wandb_project, g.wandb_entity, g.wandb_group, tuple(g.wandb_tags), g.wandb_mode,
                               name=f"{cfg.algo.name}_{cfg.env.name}_{os.path.basename(os.path.normpath(self.run_dir))}")
                 if g.wandb and main else None)
        self.logger = Logger(self.run_dir, cfg.log.tensorboard and main,
                             # drop events logged after the checkpoint (steps > env_steps)
                             purge_step=self.env_steps + 1 if self.iteration > 0 else None, wandb=wandb,
                             config=flatten(to_dict(cfg)) if wandb is not None else None)
        self.text_log = RunLog(self.run_dir, main)
        self.text_log.write(f"[cpo] {'resuming' if self.iteration else 'starting'} {cfg.algo.name}/{cfg.env.name} "
                            f"at iteration {self.iteration} of {cfg.max_iterations} in {self.run_dir}")
        start_time, start_steps = time.perf_counter(), self.env_steps
        stopped = ""
        if self.iteration == 0:
            self.logger.hparams(flatten(to_dict(cfg)), ["rollout/ep_return", "rollout/success"])
        bar = None
        if cfg.log.progress and main:
            from tqdm import tqdm

            bar = tqdm(total=cfg.max_iterations, initial=self.iteration, unit="it",
                       dynamic_ncols=True, desc=f"{cfg.algo.name}/{cfg.env.name}")
        self.signals.install()
        out: Dict[str, float] = dict(self.last_stats)
        try:
            while self.iteration < cfg.max_iterations:
                out = self.step()
                self.logger.scalars(out, self.env_steps)
                self.text_log.write(progress_line(self.iteration, cfg.max_iterations, out))
                for tag, text in self._texts:
                    self.logger.text(tag, text, self.env_steps)
                    self.text_log.write(text)
                self._texts.clear()
                if (self._kl is not None and self.M <= HEATMAP_MAX_POLICIES
                        and (self.iteration % cfg.log.heatmap_every == 0 or self.iteration == 1)):
                    self.logger.kl_heatmap(self._kl, self.env_steps)
                self._maybe_save_best(out)
                if self.iteration % cfg.log.ckpt_every == 0:
                    self.save()
                if bar is not None:
                    bar.update(1)
                    post = {"sps": f"{out['perf/sps']:.3g}"}
                    if "rollout/ep_return" in out:
                        post["ret"] = f"{out['rollout/ep_return']:.3g}"
                    if "rollout/success" in out:
                        post["succ"] = f"{out['rollout/success']:.2f}"
                    bar.set_postfix(post)
                if self.dist.any_true(self.signals.requested is not None):  # a signal on any rank
                    path = self.save()
                    sig = self.signals.requested or "on another rank"
                    stopped = f"stopped by signal {sig}"
                    self.text_log.say(f"\n[cpo] signal {sig}: checkpoint saved to {path}; exiting")
                    break
            else:
                if self.iteration % cfg.log.ckpt_every != 0:
                    self.save()
        finally:
            self.signals.restore()
            if bar is not None:
                bar.close()
            self.logger.close()
        self._summary(out, time.perf_counter() - start_time, self.env_steps - start_steps, stopped)
        self.signals.chain()  # SIGUSR1/2 under submitit: its handler requeues the SLURM job
        return out

    def _summary(self, out: Dict[str, float], wall_s: float, session_steps: int, stopped: str) -> None:
        """Print the closing summary and append it to ``train.log`` (rank 0)."""
        ckpts = ckpt.list_checkpoints(self.run_dir)
        best = os.path.join(self.run_dir, "checkpoints", "best.pt")
        lines = summary_lines(f"{self.cfg.algo.name}/{self.cfg.env.name}", self.run_dir, out, self.iteration,
                              self.env_steps, wall_s, session_steps, best if os.path.isfile(best) else None,
                              ckpts[-1] if ckpts else None, stopped)
        for line in lines:
            self.text_log.say(line)

    def _maybe_save_best(self, out: Dict[str, float]) -> None:
        ret = out.get("rollout/ep_return")
        if ret is None:
            return
        self.history.append(ret)
        smooth = float(np.mean(self.history[-5:]))
        if smooth > self.best_return and self.iteration - self.last_best_iteration >= 5:
            self.best_return = smooth
            self.last_best_iteration = self.iteration
            self.save(path=os.path.join(self.run_dir, "checkpoints", "best.pt"))

    # ---- checkpoints --------------------------------------------------------------------
    def _snapshot(self) -> Dict[str, Any]:
        """Copies of what collect() changes (env, observations, episode counters, RNG streams),
        taken at the start of an iteration so a failed rollout can still save a good state."""
        return {"env": {k: v.clone() for k, v in self.env.state_dict().items()},
                "obs": self.obs.clone(), "ep_ret": self.ep_ret.clone(), "ep_len": self.ep_len.clone(),
                "act_gen": self.act_gen.get_state(), "torch_rng": torch.get_rng_state(),
                "rnn_state": [x.clone() for x in self.rnn_state] if self.rnn_state is not None else [],
                "priv": [self.priv.clone()] if self.priv is not None else []}

    def state(self, snapshot: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Everything needed to continue exactly (tensors and plain containers only); with a
        ``snapshot`` the rollout-side parts come from it (the start of the iteration)."""
        out = self._state()
        if snapshot is not None:
            out["env"] = snapshot["env"]
            for key in ("obs", "ep_ret", "ep_len", "act_gen", "torch_rng", "rnn_state", "priv"):
                out["runner"][key] = snapshot[key]
        if self.dist.enabled:  # torchrun: every rank's envs, observations and RNG streams
            local = {"env": out["env"], **{k: out["runner"][k] for k in _RANK_LOCAL if k in out["runner"]}}
            out = self.dist.attach_rank_states(out, local)
        return out

    def _state(self) -> Dict[str, Any]:
        out = self._base_state()
        if getattr(self, "evolution", None) is not None:
            out["evolution"] = self.evolution.state_dict()
        return out

    def _base_state(self) -> Dict[str, Any]:
        return {
            "format": ckpt.FORMAT_VERSION,
            "config": self.config_yaml,
            "model": self.model.state_dict(),
            "learner": self.learner.state_dict(),
            "env": self.env.state_dict(),
            "runner": {
                "iteration": self.iteration, "env_steps": self.env_steps,
                "best_return": self.best_return, "last_best_iteration": self.last_best_iteration,
                "history": list(self.history[-10:]), "act_gen": self.act_gen.get_state(),
                "torch_rng": torch.get_rng_state(), "obs": self.obs.clone(),
                "ep_ret": self.ep_ret.clone(), "ep_len": self.ep_len.clone(),
                "last_stats": dict(self.last_stats),
                "rnn_state": list(self.rnn_state) if self.rnn_state is not None else [],
                "priv": [self.priv.clone()] if self.priv is not None else [],  # critic obs
                "nonfinite_resets": self.nonfinite_resets,
            },
        }

    def save(self, path: Optional[str] = None, tag: Optional[str] = None) -> str:
        """Write a checkpoint (periodic by default) and prune old periodic ones."""
        if path is None:
            name = f"{tag}.pt" if tag else f"ckpt_{self.iteration:06d}.pt"
            path = os.path.join(self.run_dir, "checkpoints", name)
        payload = self.state()  # every rank takes part (torchrun gathers rank states)
        if not self.dist.is_main:
            return path
        ckpt.save(payload, path)
        if tag is None and os.path.basename(path).startswith("ckpt_"):
            ckpt.prune(self.run_dir, self.cfg.log.keep_last)
        return path

    def load(self, path: str) -> None:
        """Restore a checkpoint written by :meth:`save`."""
        payload = self._rank_payload(ckpt.load(path, map_location=self.device))
        self.model.load_state_dict(payload["model"])
        self.learner.load_state_dict(payload["learner"])
        if payload["env"]:
            self.env.load_state_dict(payload["env"])
        r = payload["runner"]
        self.iteration, self.env_steps = int(r["iteration"]), int(r["env_steps"])
        self.best_return = float(r["best_return"])
        self.last_best_iteration = int(r["last_best_iteration"])
        self.history = [float(x) for x in r["history"]]
        self.act_gen.set_state(r["act_gen"].cpu())
        torch.set_rng_state(r["torch_rng"].cpu())
        self.obs = r["obs"].to(self.device)
        if self.priv is not None:
            self.priv = r["priv"][0].to(self.device)
        self.ep_ret = r["ep_ret"].to(self.device)
        self.ep_len = r["ep_len"].to(self.device)
        self.last_stats = {k: float(v) for k, v in r["last_stats"].items()}
        if self.rnn_state is not None:
            self.rnn_state = (r["rnn_state"][0].to(self.device), r["rnn_state"][1].to(self.device))
        self.nonfinite_resets = int(r.get("nonfinite_resets", 0))
        self._evolution_state = payload.get("evolution")  # applied once the Evolution exists


    def _rank_payload(self, payload: Dict[str, Any]) -> Dict[str, Any]:
        """A loaded checkpoint with this rank's envs' side in ``env``/``runner`` (torchrun
        checkpoints carry one per rank). Written by a different number of processes, the
        envs' side is kept as freshly seeded here: the run goes on from the stored model,
        optimiser and counters, but not bit for bit. One process on a one-process checkpoint:
        unchanged."""
        stored = int(payload.get("world_size", 1))
        if stored == self.dist.world_size:
            local = self.dist.rank_state(payload)
        else:
            if self.dist.is_main:
                print(f"[cpo] the checkpoint was written by {stored} process(es), this run has "
                      f"{self.dist.world_size}: envs restart from fresh episodes (not an exact resume)")
            fresh = self._state()
            local = {"env": fresh["env"], **{k: fresh["runner"][k] for k in _RANK_LOCAL}}
        if local is not None:
            payload["env"] = local["env"]
            payload["runner"].update({k: v for k, v in local.items() if k != "env"})
        return payload
