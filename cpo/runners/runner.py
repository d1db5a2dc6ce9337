"""The training loop of the ensemble learner (PPO, SAPG, CPO, EPO): :class:`Runner` builds
the env, the model and the learner and runs collect -> targets -> update -> log -> checkpoint.
Its collaborators each live in a module of their own: collection and the NaN guard
(``collect``), snapshots and checkpoints (``state``), scalars, EPO events and the summary
(``scalars``), signals (``signals``)."""
from __future__ import annotations

import copy
import math
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from cpo.algo.evolution import Evolution, describe
from cpo.algo.learner import Learner
from cpo.algo.rollout import Rollout
from cpo.models import fast
from cpo.models.ensemble import EnsembleActorCritic
from cpo.runners.collect import Collection
from cpo.runners.log import RunLogging
from cpo.runners.signals import Signals
from cpo.runners.state import RunState
from cpo.utils import distributed
from cpo.utils.config import TrainConfig


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu. ``cuda`` / ``cuda:<i>`` on a machine without
    that GPU fails here, before any env or model is built, with a config error naming the key
    (``validate`` does not check it, so that configs for a GPU machine validate anywhere)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        from cpo.utils.config import ConfigError

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
        from cpo.utils.config import ConfigError

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


class Runner(Collection, RunState, RunLogging):
    """Owns env, model, learner, logger; :meth:`train` runs to ``cfg.max_iterations``."""

    def __init__(self, cfg: TrainConfig, run_dir: str, resume_from: Optional[str] = None,
                 config_yaml: str = "") -> None:
        from envs import registry

        from cpo.utils.config import config_yaml as to_yaml

        self.cfg, self.run_dir = cfg, run_dir
        self.config_yaml = config_yaml or to_yaml(cfg)
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        # torchrun: this process's rank (cpo/utils/distributed.py); one process: the no-op context
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
            from cpo.utils.config import ConfigError

            raise ConfigError(str(err)) from None
        if cfg.algo.mixed_precision == "fp16" and self.device.type != "cuda":  # (after the env's own errors)
            from cpo.utils.config import ConfigError

            raise ConfigError(f"algo.mixed_precision='fp16': fp16 needs a CUDA device (device={cfg.device} "
                              f"resolves to {self.device}); use bf16 on a CPU")
        # with the env's real sizes, before any model or rollout storage is allocated
        from cpo.utils.config import check_memory

        check_memory(cfg, self.env.obs_dim, self.env.act_dim, self.env.privileged_dim)
        self.model, self.learner = self.build()
        self._join_ranks()
        self._policy_step = fast.policy_step(self.model, cfg.perf, self.device)
        # env blocks: M policies here, P members in the PBT runner (cpo/runners/pbt.py)
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
        self.logger: Optional[Any] = None  # cpo.utils.logger.Logger, opened by train()
        self.signals = Signals()
        #: EPO (cpo/algo/evolution.py): the fitness window and the genetic step; None without evolution
        self.evolution: Optional[Evolution] = None
        if cfg.evo.interval_steps > 0 and cfg.pbt.population == 0:
            self.evolution = Evolution(cfg.evo, self.M, self.device, seed=cfg.seed)
            if resume_from is not None and getattr(self, "_evolution_state", None) is not None:
                self.evolution.load_state_dict(self._evolution_state)
        self._texts: List[Tuple[str, str]] = []  # (tag, text) for the logger, e.g. evolution events

    def build(self) -> Tuple[Any, Any]:
        """The model and the learner of this run (the PBT runner in cpo/runners/pbt.py builds a stacked
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
        (cpo/utils/distributed.py). Nothing happens with one process."""
        from cpo.models.normalizer import RunningMeanStd

        if not self.dist.enabled:
            return
        self.dist.broadcast_module(self.model)
        for module in self.model.modules():  # obs, value (and privileged) normalisers
            if isinstance(module, RunningMeanStd):
                module.sync = self.dist.moments
        self.learner.dist = self.dist
        if self.learner.disc is not None:
            self.dist.broadcast_module(self.learner.disc)

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
        out = self._iteration_scalars(host, sums)
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

    # ---- the loop -----------------------------------------------------------------------
    def train(self) -> Dict[str, float]:
        """Run to ``max_iterations``; checkpoints periodically, at the end and on signals."""
        cfg = self.cfg
        bar = self._open_logs()
        start_time, start_steps, stopped = time.perf_counter(), self.env_steps, ""
        self.signals.install()
        out: Dict[str, float] = dict(self.last_stats)
        try:
            while self.iteration < cfg.max_iterations:
                out = self.step()
                self._log_iteration(out, bar)
                self._maybe_save_best(out)
                if self.iteration % cfg.log.ckpt_every == 0:
                    self.save()
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

    def _evolve(self, sums: Dict[str, torch.Tensor], out: Dict[str, float]) -> None:
        """EPO: add this iteration's episodes to the fitness window; when an event is due,
        replace the weakest latents (cpo/algo/evolution.py), zero their LSTM state, and log the
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
