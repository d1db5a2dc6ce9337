"""``mountain_car``: gymnasium's MountainCarContinuous-v0, batched in torch.

Dynamics
    Exactly ``gymnasium/envs/classic_control/continuous_mountain_car.py`` (gymnasium 1.x): a
    car on the curve ``y = sin(3x)``; ``v += 0.0015 * force - 0.0025 * cos(3x)``, ``v`` clipped
    to [-0.07, 0.07], ``x += v`` clipped to [-1.2, 0.6]; hitting the left wall with ``v < 0``
    stops the car.
Action
    ``a`` in [-1, 1] -> force ``a`` (gymnasium's range).
Observation
    ``[position, velocity]``.
Reward
    ``-0.1 * a^2`` every step (gymnasium's ``math.pow(a, 2) * 0.1``), plus 100 on reaching
    the goal.
Termination
    ``position >= 0.45`` and ``velocity >= goal_velocity`` (default 0).
Time limit
    999 steps (MountainCarContinuous-v0).
Success / solved
    ``log["success"]`` is 1 on the step that reaches the goal. Solved at a mean return of 90
    (gymnasium's reward threshold), i.e. reaching the goal nearly always.
Initial state
    Position uniform in [-0.6, -0.4], velocity 0.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from envs.spec import TaskSpec
from envs.tasks.common import Canvas, Task, TaskParams, check_number

MIN_POSITION = -1.2
MAX_POSITION = 0.6
MAX_SPEED = 0.07
GOAL_POSITION = 0.45
POWER = 0.0015


@dataclasses.dataclass
class MountainCarParams(TaskParams):
    """Parameters of ``mountain_car``."""

    goal_velocity: float = 0.0
    """Minimum velocity at the goal position for the episode to end (gymnasium's
    ``goal_velocity``; in [0, 0.07])."""

    def validate(self) -> None:
        """Check ``dtype`` and ``0 <= goal_velocity <= 0.07``."""
        super().validate()
        check_number("goal_velocity", self.goal_velocity, low=0.0, high=MAX_SPEED)


class MountainCar(Task):
    """Batched MountainCarContinuous-v0; see the module docstring."""

    def __init__(self, num_envs: int, device: Any = "cpu", seed: int = 0,
                 max_episode_steps: int = 999, dtype: str = "float32",
                 goal_velocity: float = 0.0) -> None:
        self.goal_velocity = float(goal_velocity)
        super().__init__(num_envs, device, seed, max_episode_steps, [MIN_POSITION, -MAX_SPEED],
                         [MAX_POSITION, MAX_SPEED], act_dim=1, dtype=dtype)

    def sample_init(self, n: int) -> torch.Tensor:
        """``[n, 2]`` states: position in [-0.6, -0.4], velocity 0."""
        pos = self.rand(n, 1, -0.6, -0.4)
        return torch.cat((pos, torch.zeros_like(pos)), -1)

    def dynamics(self, state: torch.Tensor, action: torch.Tensor
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        """One step of the car; +100 and terminate at the goal."""
        position, velocity = state.unbind(-1)
        a = action[:, 0].to(state.dtype)
        force = a.clamp(-1.0, 1.0)
        # engine force minus the slope's gravity component, speed-limited
        velocity = velocity + force * POWER - 0.0025 * torch.cos(3 * position)
        velocity = velocity.clamp(-MAX_SPEED, MAX_SPEED)
        # move, staying on the track
        position = (position + velocity).clamp(MIN_POSITION, MAX_POSITION)
        # an inelastic left wall: the car stops there
        velocity = torch.where((position == MIN_POSITION) & (velocity < 0),
                               torch.zeros_like(velocity), velocity)
        terminated = (position >= GOAL_POSITION) & (velocity >= self.goal_velocity)
        reward = 100.0 * terminated.to(state.dtype) - a.pow(2) * 0.1
        log = {"success": terminated.float()}
        return torch.stack((position, velocity), -1), reward, terminated, log

    def observe(self, state: torch.Tensor) -> torch.Tensor:
        """The state itself: ``[position, velocity]``."""
        return state.clone()

    def render(self, env_id: int = 0) -> Optional[np.ndarray]:
        """Hill, goal flag and car of env ``env_id`` as a ``200 x 300`` uint8 RGB frame
        (gymnasium's drawing: the track is ``y = 0.45 sin(3x) + 0.55``); a few vectorised
        numpy passes, about a millisecond."""
        pos, _ = self.host_state(env_id)
        c = Canvas((MIN_POSITION, MAX_POSITION), (-0.05, 1.15), width=300)
        draw_hill(c, 0.01, (0, 0, 0))
        flag = hill_height(GOAL_POSITION)
        pole = max(0.005, 0.75 / c.scale)  # vertical flag pole: a rectangle, no segment pass
        c.rect(GOAL_POSITION - pole, flag, GOAL_POSITION + pole, flag + 0.1, (0, 0, 0))
        c.rect(GOAL_POSITION, flag + 0.07, GOAL_POSITION + 0.05, flag + 0.1, FLAG_COLOR)
        c.disc(pos, hill_height(pos) + 0.04, 0.04, CAR_COLOR)
        return c.img


#: colours of the car and of the goal flag in :meth:`MountainCar.render`
CAR_COLOR = (50, 50, 200)
FLAG_COLOR = (204, 204, 0)


def hill_height(x: Any) -> Any:
    """Height of the drawn track at position ``x`` (float or array): ``0.45 sin(3x) + 0.55``,
    gymnasium's rendering of the hill (the dynamics only use its slope)."""
    return np.sin(3 * x) * 0.45 + 0.55


def draw_hill(c: Canvas, width: float, color: Tuple[int, int, int]) -> None:
    """Draw the track ``y = hill_height(x)`` with thickness ``width`` (world units; at least
    1.5 pixels) in one pass: a pixel is on it when its vertical distance to the curve, times
    the cosine of the slope (``1 / sqrt(1 + h'(x)^2)``), is within half the width. Curves are
    evaluated once per pixel column, then broadcast over the rows."""
    xs = c.x[0]  # [W] pixel-centre x of every column
    ys = c.y[:, :1]  # [H, 1] pixel-centre y of every row
    h = hill_height(xs)
    cos_slope = 1.0 / np.sqrt(1.0 + (1.35 * np.cos(3 * xs)) ** 2)  # h'(x) = 1.35 cos(3x)
    half = max(width / 2, 0.75 / c.scale)
    c.img[np.abs(ys - h) * cos_slope <= half] = color


#: the registry entry (envs/registry.py registers "mountain_car" as "envs.tasks.mountain_car:SPEC")
SPEC = TaskSpec(
    factory=MountainCar, params=MountainCarParams, max_episode_steps=999, solved_return=90.0,
    success_threshold=0.9,
    description="gymnasium MountainCarContinuous-v0, force a")
