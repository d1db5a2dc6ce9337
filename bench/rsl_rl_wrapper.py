"""Our batched :class:`envs.base.VecEnv` behind rsl_rl's ``VecEnv`` interface (rsl-rl-lib 5.x).

rsl_rl's ``OnPolicyRunner`` wants ``get_observations() -> TensorDict`` of observation groups,
``step(actions) -> (obs, rewards, dones, extras)`` with ``extras["time_outs"]`` marking the
time-limit ends, and the attributes ``num_envs``, ``num_actions``, ``max_episode_length``,
``episode_length_buf``, ``device`` and ``cfg``. Our contract already autoresets inside
``step`` and keeps terminations and truncations apart, so the wrapper only renames:

* observations go into the single group ``"policy"`` (the runner's ``obs_groups`` maps both
  the actor and the critic to it);
* ``dones = terminated | truncated`` and ``time_outs = truncated`` (rsl_rl bootstraps a
  time-out with ``gamma * V(s_t)`` added to the reward; it never sees ``final_obs``);
* actions go through unchanged: our tasks clamp to [-1, 1] themselves, exactly as they do
  for our own trainer.

The wrapper also sums the returns of finished episodes on the device (no host sync per
step), so that the benchmark reads both trainers' mean episode return the same way: the
mean over the episodes that ended since the last :meth:`pop_mean_return`.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from rsl_rl.env import VecEnv as RslVecEnv
from tensordict import TensorDict

from envs.base import VecEnv


class RslRlEnv(RslVecEnv):
    """Adapter from our VecEnv contract to rsl_rl's VecEnv (see the module docstring)."""

    def __init__(self, env: VecEnv, seed: int = 0, cfg: Optional[Dict[str, Any]] = None) -> None:
        self.env = env
        self.num_envs = int(env.num_envs)
        self.num_actions = int(env.act_dim)
        self.max_episode_length = int(env.max_episode_steps)
        self.device = env.device
        self.cfg = dict(cfg or {})
        self._obs = env.reset(seed=seed)
        # per-env running return and the sums over finished episodes (device tensors)
        self._ep_ret = torch.zeros(self.num_envs, device=self.device)
        self._ret_sum = torch.zeros((), device=self.device)
        self._ret_count = torch.zeros((), device=self.device)
        # our embedded tasks count steps in ``env.t``; other backends get a buffer of our own
        self._own_len = None if hasattr(env, "t") else torch.zeros(self.num_envs, dtype=torch.long,
                                                                    device=self.device)

    @property
    def episode_length_buf(self) -> torch.Tensor:
        """Steps taken in each env's current episode ``[num_envs]`` (rsl_rl may overwrite it to
        randomise initial episode lengths)."""
        return self.env.t if self._own_len is None else self._own_len

    @episode_length_buf.setter
    def episode_length_buf(self, value: torch.Tensor) -> None:
        if self._own_len is None:
            self.env.t = value.to(self.device, torch.long)
        else:
            self._own_len = value.to(self.device, torch.long)

    def _group(self, obs: torch.Tensor) -> TensorDict:
        """``obs [N, D]`` as rsl_rl's TensorDict with the one group ``policy``."""
        return TensorDict({"policy": obs}, batch_size=[self.num_envs])

    def get_observations(self) -> TensorDict:
        """The current observation (after the last autoreset)."""
        return self._group(self._obs)

    def step(self, actions: torch.Tensor) -> Tuple[TensorDict, torch.Tensor, torch.Tensor, Dict[str, Any]]:
        """One step of every env: ``(obs, rewards [N], dones [N] long, {"time_outs": [N] bool})``."""
        obs, reward, terminated, truncated, _info = self.env.step(actions)
        self._obs = obs
        done = terminated | truncated
        if self._own_len is not None:
            self._own_len = torch.where(done, torch.zeros_like(self._own_len), self._own_len + 1)
        # episode bookkeeping on the device: add the reward, fold finished episodes into the sums
        done_f = done.float()
        self._ep_ret += reward
        self._ret_sum += (self._ep_ret * done_f).sum()
        self._ret_count += done_f.sum()
        self._ep_ret *= 1.0 - done_f
        return self._group(obs), reward, done.long(), {"time_outs": truncated}

    def pop_mean_return(self) -> Optional[float]:
        """Mean return of the episodes finished since the last call (None if none ended);
        one host sync."""
        count = float(self._ret_count)
        mean = float(self._ret_sum) / count if count > 0 else None
        self._ret_sum.zero_()
        self._ret_count.zero_()
        return mean
