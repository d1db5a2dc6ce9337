"""The batched-tensor environment contract every backend implements.

Every tensor is ``[num_envs, ...]`` on ``env.device``; there is no Python loop over
environments anywhere on the step path.

``reset(seed) -> obs``
    Resets every environment and returns the first observation.
``step(action) -> (obs, reward, terminated, truncated, info)``
    ``action`` is ``[num_envs, act_dim]`` in ``[-1, 1]``; each adapter maps it to the
    simulator's range. Autoreset happens inside ``step``: for an env whose episode ended
    (``terminated | truncated``) the returned ``obs`` is already the first observation of
    the next episode. ``terminated`` (a true terminal state: failure or success) and
    ``truncated`` (a time limit, the state itself is not terminal) are kept apart because
    learning must bootstrap through truncations but not through terminations.

``info`` keys:
    ``final_obs``  ``[num_envs, obs_dim]``: the pre-reset observation for rows whose
                   episode ended this step; for the other rows it equals ``obs``. An
                   adapter that cannot provide it sets ``env.has_final_obs = False`` and
                   the learner falls back to ``V(s_t)`` (and says so once).
    ``log``        ``{name: [num_envs] float}``: per-episode metrics (e.g. ``success``),
                   meaningful only in rows where ``terminated | truncated``; the runner
                   averages them over finished episodes into TensorBoard.
    ``privileged`` ``[num_envs, privileged_dim]``: the critic's observation after the
                   step (post-autoreset, the same tensor as :meth:`VecEnv.privileged`);
                   only when ``privileged_dim > 0``.
    ``final_privileged`` ``[num_envs, privileged_dim]``: the pre-reset critic observation
                   for rows whose episode ended this step, equal to ``privileged`` in the
                   other rows (truncated steps bootstrap the critic from it); only when
                   ``privileged_dim > 0``.

Asymmetric observations (privileged critic)
    A backend with a separate critic observation (Isaac Gym's ``states``, Isaac Lab's and
    mjlab's ``critic`` group, or the true state behind a noisy policy observation) sets
    ``privileged_dim > 0`` and implements :meth:`VecEnv.privileged`, valid after ``reset()``
    and after every ``step()``, plus the two ``info`` keys above, all on ``env.device``. The
    learner then feeds the critic (value heads, with their own running normaliser) the
    privileged observation while the actors see ``obs``; only the actor is exported. With
    ``privileged_dim == 0`` (the default) none of these exist and the critic sees ``obs``.
"""
from __future__ import annotations

import abc
from typing import Any, Dict, Optional, Tuple, Union

import gymnasium as gym
import numpy as np
import torch

StepResult = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Dict[str, Any]]


class VecEnv(abc.ABC):
    """Abstract batched environment: see the module docstring for the contract."""

    num_envs: int
    device: torch.device
    observation_space: gym.spaces.Box  # per env
    action_space: gym.spaces.Box  # per env, always [-1, 1]^act_dim
    max_episode_steps: int
    #: length of the critic's privileged observation; 0 = none (the critic sees ``obs``)
    privileged_dim: int = 0
    has_final_obs: bool = True
    #: mean episode return above which the task counts as solved (None if undefined)
    solved_return: Optional[float] = None

    @property
    def obs_dim(self) -> int:
        """Length of the flat observation vector."""
        return int(np.prod(self.observation_space.shape))

    @property
    def act_dim(self) -> int:
        """Length of the flat action vector."""
        return int(np.prod(self.action_space.shape))

    @abc.abstractmethod
    def reset(self, seed: Optional[int] = None) -> torch.Tensor:
        """Reset all envs (re-seeding them when ``seed`` is given) and return ``obs``."""

    @abc.abstractmethod
    def step(self, action: torch.Tensor) -> StepResult:
        """Advance every env by one step with ``action`` in [-1, 1]; autoreset inside."""

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Full simulator state (tensors only) for exact resume; empty if unsupported."""
        return {}

    def privileged(self) -> torch.Tensor:
        """The current critic observation ``[num_envs, privileged_dim]`` (after ``reset()`` or
        ``step()``); only envs with ``privileged_dim > 0`` implement it."""
        raise NotImplementedError(f"{type(self).__name__} has no privileged observation "
                                  f"(privileged_dim={self.privileged_dim})")

    def reset_envs(self, mask: torch.Tensor) -> torch.Tensor:
        """Reset the envs where ``mask [num_envs]`` is true and return the full ``obs`` (used
        to recover from non-finite simulator output); optional for a backend."""
        raise NotImplementedError(f"{type(self).__name__} cannot reset single envs; use nonfinite=stop")

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Restore a state from :meth:`state_dict`; a no-op when unsupported."""

    def render(self, env_id: int = 0) -> Optional[np.ndarray]:
        """An ``H x W x 3`` uint8 frame of env ``env_id``, or None if it cannot draw."""
        return None

    def close(self) -> None:
        """Release simulator resources."""


class BatchedTask(VecEnv):
    """Base of the embedded pure-torch tasks.

    A task keeps its whole simulator state in one tensor ``self.state [num_envs, S]`` and
    implements three pure batched functions: :meth:`sample_init` (fresh initial states),
    :meth:`dynamics` (one step) and :meth:`observe`. This class adds time limits,
    autoreset (by ``torch.where`` over all rows, no index sync), seeding through a
    per-env-set ``torch.Generator`` and exact state save/restore.
    """

    def __init__(self, num_envs: int, device: Any = "cpu", seed: int = 0,
                 max_episode_steps: int = 200) -> None:
        self.num_envs = int(num_envs)
        self.device = torch.device(device)
        self.max_episode_steps = int(max_episode_steps)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(int(seed))
        self.state = self.sample_init(self.num_envs)
        self.t = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)

    # ---- what a task implements -------------------------------------------------------
    @abc.abstractmethod
    def sample_init(self, n: int) -> torch.Tensor:
        """``n`` fresh initial states ``[n, S]`` drawn with ``self.gen``."""

    @abc.abstractmethod
    def dynamics(self, state: torch.Tensor, action: torch.Tensor
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        """One step from ``state`` with ``action`` in [-1, 1].

        Returns ``(next_state, reward, terminated, log)`` where ``log`` maps metric names to
        ``[num_envs]`` float tensors read at episode ends (e.g. ``success``).
        """

    @abc.abstractmethod
    def observe(self, state: torch.Tensor) -> torch.Tensor:
        """Observation ``[num_envs, obs_dim]`` of ``state``."""

    # ---- the contract -------------------------------------------------------------------
    def reset(self, seed: Optional[int] = None) -> torch.Tensor:
        """Reset every env; a given ``seed`` re-seeds the task's generator first."""
        if seed is not None:
            self.gen.manual_seed(int(seed))
        self.state = self.sample_init(self.num_envs)
        self.t.zero_()
        return self.observe(self.state)

    def step(self, action: torch.Tensor) -> StepResult:
        """One batched step with autoreset; see :mod:`envs.base` for the outputs."""
        action = action.to(self.device, torch.float32).clamp(-1.0, 1.0)
        next_state, reward, terminated, log = self.dynamics(self.state, action)
        self.t = self.t + 1
        truncated = (self.t >= self.max_episode_steps) & ~terminated
        done = terminated | truncated
        final_obs = self.observe(next_state)
        fresh = self.sample_init(self.num_envs)  # drawn for all rows: no data-dependent shapes
        self.state = torch.where(done.unsqueeze(-1), fresh, next_state)
        self.t = torch.where(done, torch.zeros_like(self.t), self.t)
        obs = self.observe(self.state)
        info: Dict[str, Any] = {"final_obs": final_obs, "log": log}
        return obs, reward, terminated, truncated, info

    def reset_envs(self, mask: torch.Tensor) -> torch.Tensor:
        """Fresh initial states for the rows in ``mask``; returns the observation of all envs."""
        fresh = self.sample_init(self.num_envs)
        self.state = torch.where(mask.unsqueeze(-1), fresh, self.state)
        self.t = torch.where(mask, torch.zeros_like(self.t), self.t)
        return self.observe(self.state)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Simulator state, step counters and generator state: enough for exact resume."""
        return {"state": self.state.clone(), "t": self.t.clone(),
                "gen": self.gen.get_state()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.state = state["state"].to(self.device).clone()
        self.t = state["t"].to(self.device).clone()
        self.gen.set_state(state["gen"].cpu())

    def rand(self, n: int, dim: int, low: Union[float, torch.Tensor] = 0.0,
             high: Union[float, torch.Tensor] = 1.0) -> torch.Tensor:
        """``[n, dim]`` uniform samples in ``[low, high)`` (per column if tensors) from the
        task's generator, in the task's ``dtype`` (float32 unless the task sets one)."""
        dtype = getattr(self, "dtype", torch.float32)
        u = torch.rand(n, dim, generator=self.gen, device=self.device, dtype=dtype)
        return low + (high - low) * u
