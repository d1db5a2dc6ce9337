"""Small deterministic tasks for fast tests of the learner and the runner."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import gymnasium as gym
import numpy as np
import torch

from envs import registry
from envs.base import BatchedTask


class LineTask(BatchedTask):
    """A point on a line: x' = x + 0.2 a, reward -|x'|; terminated when |x'| > 2 (failure),
    success logged when |x| < 0.1 at the episode end; time limit from the config."""

    def __init__(self, num_envs: int, device="cpu", seed: int = 0, max_episode_steps: int = 20,
                 dim: int = 2) -> None:
        self.dim = dim
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (dim,), np.float32)
        super().__init__(num_envs, device, seed, max_episode_steps)

    def sample_init(self, n: int) -> torch.Tensor:
        return self.rand(n, self.dim, -1.0, 1.0)

    def dynamics(self, state: torch.Tensor, action: torch.Tensor
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        nxt = state + 0.2 * action
        dist = nxt.norm(dim=-1)
        return nxt, -dist, dist > 2.0, {"success": (dist < 0.1).float()}

    def observe(self, state: torch.Tensor) -> torch.Tensor:
        return state.clone()


@dataclass
class LineParams:
    """Parameters of the test task."""

    dim: int = 2
    """Dimension of the line (>= 1)."""


registry.register("test_line", registry.TaskSpec(
    factory=LineTask, params=LineParams, max_episode_steps=20, solved_return=-3.0,
    description="test-only point on a line"))


class NaNLineTask(LineTask):
    """LineTask whose envs ``bad_ids`` return a NaN observation at env step ``nan_step``
    (counted from construction) and every ``nan_every`` steps after it (0: once)."""

    def __init__(self, num_envs: int, device="cpu", seed: int = 0, max_episode_steps: int = 20,
                 dim: int = 2, nan_step: int = 5, nan_every: int = 0, bad_ids: tuple = (3, 7)) -> None:
        self.nan_step, self.nan_every, self.bad_ids = nan_step, nan_every, list(bad_ids)
        self.steps = 0
        super().__init__(num_envs, device, seed, max_episode_steps, dim)

    def step(self, action):
        obs, reward, term, trunc, info = super().step(action)
        self.steps += 1
        k = self.steps - self.nan_step
        if k == 0 or (self.nan_every and k > 0 and k % self.nan_every == 0):
            obs = obs.clone()
            obs[self.bad_ids, 0] = float("nan")
        return obs, reward, term, trunc, info


@dataclass
class NaNLineParams(LineParams):
    """Parameters of the NaN-injecting test task."""

    nan_step: int = 5
    """Env step at which the bad envs first return NaN."""
    nan_every: int = 0
    """Repeat the injection every this many steps (0: once)."""


registry.register("test_nan_line", registry.TaskSpec(
    factory=NaNLineTask, params=NaNLineParams, max_episode_steps=20, solved_return=-3.0,
    description="test-only line task that injects NaN observations"))
