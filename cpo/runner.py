"""The training loop: collect, learn, log, checkpoint, handle signals and bad numbers."""
from __future__ import annotations

import math
import os
import signal
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from cpo import checkpoint as ckpt
from cpo import fast
from cpo.config import TrainConfig, flatten, to_dict
from cpo.learner import Learner, lambda_f_at
from cpo.logger import Logger
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
    """``auto`` -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(cfg: TrainConfig, obs_dim: int, act_dim: int) -> EnsembleActorCritic:
    """The ensemble actor-critic described by ``cfg`` (seeded by ``cfg.seed``)."""
    n, a = cfg.net, cfg.algo
    return EnsembleActorCritic(
        obs_dim, act_dim, num_policies=a.num_policies, latent_dim=a.latent_dim,
        actor_hidden=list(n.actor_hidden), critic_hidden=list(n.critic_hidden),
        separate_critic=n.separate_critic, activation=n.activation, init_log_std=n.init_log_std,
        normalize_obs=n.normalize_obs, normalize_value=n.normalize_value, obs_clip=n.obs_clip,
        rnn_hidden=n.rnn_hidden, seed=cfg.seed)


class _Signals:
    """SIGINT/SIGTERM: the first asks for a checkpoint and a clean exit after the current
    iteration; a second SIGINT exits at once."""

    def __init__(self) -> None:
        self.requested: Optional[int] = None
        self._old: Dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signum

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


class Runner:
    """Owns env, model, learner, logger; :meth:`train` runs to ``cfg.max_iterations``."""

    def __init__(self, cfg: TrainConfig, run_dir: str, resume_from: Optional[str] = None,
                 config_yaml: str = "") -> None:
        from envs import registry

        from cpo.app import config_yaml as to_yaml

        self.cfg, self.run_dir = cfg, run_dir
        self.config_yaml = config_yaml or to_yaml(cfg)
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.env = registry.make(cfg.env, device=self.device, seed=cfg.seed)
        self.model = build_model(cfg, self.env.obs_dim, self.env.act_dim).to(self.device)
        self.learner = Learner(self.model, cfg.algo, self.env.num_envs, self.device,
                               cfg.max_iterations, seed=cfg.seed, perf=cfg.perf)
        self._policy_step = fast.policy_step(self.model, cfg.perf, self.device)
        N, M, T = self.env.num_envs, cfg.algo.num_policies, cfg.algo.horizon
        self.M, self.B = M, N // M
        self.pol_env = torch.arange(N, device=self.device) // self.B
        self.act_gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        self.storage = Rollout.empty(T, N, self.env.obs_dim, self.env.act_dim, M, self.device,
                                     rnn_hidden=cfg.net.rnn_hidden)
        self.rnn_state = self.model.initial_state(N) if self.model.is_recurrent else None
        self.ep_ret = torch.zeros(N, device=self.device)
        self.ep_len = torch.zeros(N, device=self.device)
        self.iteration, self.env_steps = 0, 0
        self.best_return = -math.inf
        self.last_best_iteration = -10**9
        self.history: List[float] = []
        self.last_stats: Dict[str, float] = {}
        self.nonfinite_resets = 0
        self.obs = self.env.reset(seed=cfg.seed)
        if resume_from is not None:
            self.load(resume_from)
        elif cfg.net.normalize_obs:
            self.model.obs_rms.update(self.obs)  # statistics start from the first observations
        if not self.env.has_final_obs:
            print("[cpo] this env gives no final observation: truncated steps bootstrap with V(s_t)")
        self.logger: Optional[Logger] = None
        self.signals = _Signals()

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
            if self.rnn_state is not None:
                base, self.rnn_state = model.encode_step(self.obs, self.rnn_state)
                action, logp, mu, value = model.act(self.obs, self.pol_env, self.act_gen, base=base)
            else:  # the pure step (eager, compiled or CUDA-graph replayed: cpo/fast.py)
                eps = model.noise(env.num_envs, self.act_gen, self.device)
                action, logp, mu, value = self._policy_step(self.obs, self.pol_env, eps)
            obs, reward, term, trunc, info = env.step(action)
            final_obs = info.get("final_obs", obs)
            masks = _nonfinite(obs, reward, final_obs)
            if per_step:
                any_bad = masks[0] | masks[1] | masks[2]
                if bool(any_bad.any()):  # the per-step host sync of the NaN guard
                    if self.cfg.nonfinite == "stop":
                        raise _BadEnvs(*_describe(masks), t)
                    # reset the offending envs; their episode ends with no bootstrap
                    obs = torch.where(any_bad.unsqueeze(-1), env.reset_envs(any_bad), obs)
                    final_obs = torch.where(any_bad.unsqueeze(-1), obs, final_obs)
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
        if not per_step and bool((bad[0] | bad[1] | bad[2]).any()):  # once per iteration
            raise _BadEnvs(*_describe(bad), ro.horizon - 1)
        return sums

    # ---- one iteration ----------------------------------------------------------------------
    def step(self) -> Dict[str, float]:
        """Collect, update, and return the iteration's scalar statistics (one host sync)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        snapshot = self._snapshot()
        try:
            sums = self.collect()
        except _BadEnvs as bad:
            path = os.path.join(self.run_dir, "checkpoints", "last_good.pt")
            ckpt.save(self.state(snapshot), path)
            raise NonFiniteError(
                f"non-finite {bad.quantity} from env ids {bad.ids} at iteration {self.iteration}, "
                f"rollout step {bad.t} (env steps {self.env_steps + bad.t * self.env.num_envs}); "
                f"the state at the start of the iteration is saved to {path} "
                f"(resume from it, or set nonfinite=reset to reset such envs and continue)") from None
        t1 = time.perf_counter()
        batch = self.learner.build_batch(self.storage, has_final_obs=self.env.has_final_obs)
        diag = self.learner.diagnostics(self.storage, cfg.log.diag_samples)
        disc = self.learner.update_discriminator(self.storage)
        stats = self.learner.update(self.storage, batch)
        if "kl_matrix" in diag:
            self.learner.adapt_beta(diag["kl_matrix"][1:, 0])
        if cfg.net.normalize_obs:  # once per rollout, with raw observations, after the update
            T, N = self.storage.horizon, self.storage.num_envs
            self.model.obs_rms.update(self.storage.obs[:-1].reshape(T * N, -1))
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        self.iteration += 1
        steps = self.storage.horizon * self.storage.num_envs
        self.env_steps += steps
        # ---- the single host sync of the iteration
        host = {k: v.detach().cpu() for k, v in {**sums, **stats, **diag, **disc}.items()}
        out: Dict[str, float] = {}
        for k in ("policy", "value", "entropy", "coupling", "bounds", "approx_kl", "clipfrac",
                  "grad_norm", "explained_variance"):
            out[f"losses/{k}"] = float(host[k])
        if not all(math.isfinite(out[f"losses/{k}"]) for k in ("policy", "value", "coupling")):
            path = self.save(tag="last_good")
            raise NonFiniteError(f"non-finite loss at iteration {self.iteration}: "
                                 f"{ {k: v for k, v in out.items() if not math.isfinite(v)} }; "
                                 f"checkpoint saved to {path}")
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
        ent = gaussian_entropy(self.model.log_std.detach().cpu())
        for m in range(self.M):
            out[f"rollout/policy_{m}/entropy"] = float(ent[m])
        if "ess_overall" in host:
            out["diversity/ess/overall"] = float(host["ess_overall"])
            K = host["kl_matrix"].numpy()
            for f in range(1, self.M):
                out[f"diversity/ess/follower_{f}"] = float(host["ess_follower"][f - 1])
                out[f"diversity/is_dev/follower_{f}"] = float(host["is_dev_follower"][f - 1])
                out[f"diversity/kl/leader_to_{f}"] = float(K[0, f])
                out[f"diversity/kl/{f}_to_leader"] = float(K[f, 0])
            self._kl = K
        if "disc_loss" in host:
            out["diversity/disc_loss"] = float(host["disc_loss"])
            out["diversity/disc_acc"] = float(host["disc_acc"])
        out["train/lr"] = float(self.learner.lr)
        if self.M > 1:
            out["train/beta"] = float(self.learner.beta[1:].mean())
            out["train/lambda_f"] = float(lambda_f_at(cfg.algo, (self.iteration - 1) / max(cfg.max_iterations - 1, 1)).mean())
        out["perf/collect_s"] = t1 - t0
        out["perf/learn_s"] = t2 - t1
        out["perf/sps"] = steps / max(t2 - t0, 1e-9)
        out["perf/env_steps"] = float(self.env_steps)
        if self.cfg.nonfinite == "reset":
            out["perf/nonfinite_resets"] = float(self.nonfinite_resets)
        self.last_stats = out
        return out

    # ---- the loop -----------------------------------------------------------------------
    def train(self) -> Dict[str, float]:
        """Run to ``max_iterations``; checkpoints periodically, at the end and on signals."""
        cfg = self.cfg
        os.makedirs(self.run_dir, exist_ok=True)
        self.logger = Logger(self.run_dir, cfg.log.tensorboard,
                             purge_step=self.env_steps if self.iteration > 0 else None)
        if self.iteration == 0:
            self.logger.hparams(flatten(to_dict(cfg)), ["rollout/ep_return", "rollout/success"])
        bar = None
        if cfg.log.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.max_iterations, initial=self.iteration, unit="it",
                       dynamic_ncols=True, desc=f"{cfg.algo.name}/{cfg.env.name}")
        self.signals.install()
        out: Dict[str, float] = dict(self.last_stats)
        try:
            while self.iteration < cfg.max_iterations:
                out = self.step()
                self.logger.scalars(out, self.env_steps)
                if self.M > 1 and (self.iteration % cfg.log.heatmap_every == 0 or self.iteration == 1):
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
                if self.signals.requested is not None:
                    path = self.save()
                    print(f"\n[cpo] signal {self.signals.requested}: checkpoint saved to {path}; exiting")
                    break
            else:
                if self.iteration % cfg.log.ckpt_every != 0:
                    self.save()
        finally:
            self.signals.restore()
            if bar is not None:
                bar.close()
            self.logger.close()
        return out

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
                "rnn_state": [x.clone() for x in self.rnn_state] if self.rnn_state is not None else []}

    def state(self, snapshot: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Everything needed to continue exactly (tensors and plain containers only); with a
        ``snapshot`` the rollout-side parts come from it (the start of the iteration)."""
        out = self._state()
        if snapshot is not None:
            out["env"] = snapshot["env"]
            for key in ("obs", "ep_ret", "ep_len", "act_gen", "torch_rng", "rnn_state"):
                out["runner"][key] = snapshot[key]
        return out

    def _state(self) -> Dict[str, Any]:
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
                "nonfinite_resets": self.nonfinite_resets,
            },
        }

    def save(self, path: Optional[str] = None, tag: Optional[str] = None) -> str:
        """Write a checkpoint (periodic by default) and prune old periodic ones."""
        if path is None:
            name = f"{tag}.pt" if tag else f"ckpt_{self.iteration:06d}.pt"
            path = os.path.join(self.run_dir, "checkpoints", name)
        ckpt.save(self.state(), path)
        if tag is None and os.path.basename(path).startswith("ckpt_"):
            ckpt.prune(self.run_dir, self.cfg.log.keep_last)
        return path

    def load(self, path: str) -> None:
        """Restore a checkpoint written by :meth:`save`."""
        payload = ckpt.load(path, map_location=self.device)
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
        self.ep_ret = r["ep_ret"].to(self.device)
        self.ep_len = r["ep_len"].to(self.device)
        self.last_stats = {k: float(v) for k, v in r["last_stats"].items()}
        if self.rnn_state is not None:
            self.rnn_state = (r["rnn_state"][0].to(self.device), r["rnn_state"][1].to(self.device))
        self.nonfinite_resets = int(r.get("nonfinite_resets", 0))

