"""What a task is to the registry: its :class:`TaskSpec` (factory, parameter schema, time limit,
solved threshold) and :class:`EnvConfigError`, the error every env check raises. The embedded
tasks and the simulator adapters import this module; the registry (envs/registry.py) maps
names to their specs, so nothing below imports the registry back."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from envs.base import VecEnv


class EnvConfigError(ValueError):
    """An env config that cannot be built: names the key, the value and the rule."""


@dataclasses.dataclass
class TaskSpec:
    """How to build one task.

    Attributes:
        factory: ``factory(num_envs, device, seed, max_episode_steps, **params) -> VecEnv``.
        params: dataclass type listing the task's own parameters and their defaults.
        max_episode_steps: default time limit (env steps).
        solved_return: mean leader episode return that counts as solved (None if undefined).
        success_threshold: mean success rate that counts as solved (None if undefined).
        description: one line shown in error messages and README.
    """

    factory: Callable[..., VecEnv]
    params: Any
    max_episode_steps: int
    solved_return: Optional[float] = None
    success_threshold: Optional[float] = None
    description: str = ""
