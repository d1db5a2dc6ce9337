"""Collection: every env steps T times with its block's policy into the rollout storage, with
the NaN guard on env output (stop naming the env ids, or reset them)."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import torch

from cpo.utils import checkpoint as ckpt
from cpo.utils import distributed


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


class Collection:
    """Runner mixin: :meth:`collect` and its NaN guard (attributes: the Runner's)."""

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
            else:  # the pure step (eager, compiled or CUDA-graph replayed: cpo/models/fast.py); an
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

    def _bad_report(self, bad: Optional[_BadEnvs]) -> Tuple[str, str, int]:
        """(which envs, which quantity, rollout step) of the first rank that met non-finite
        data; under torchrun the env ids are global (cpo/utils/distributed.py's layout)."""
        if not self.dist.enabled:
            return f"env ids {bad.ids}", bad.quantity, bad.t
        mine = None
        if bad is not None:
            ids = distributed.global_env_ids(bad.ids, self.dist, self.env.num_envs, self.M)
            mine = (ids, bad.quantity, bad.t)
        rank, (ids, quantity, t) = next((r, x) for r, x in enumerate(self.dist.all_gather(mine))
                                        if x is not None)
        return f"env ids {ids} (global ids; rank {rank})", quantity, t
