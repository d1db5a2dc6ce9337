"""``pendulum``: gymnasium's Pendulum-v1, batched in torch.

Dynamics
    Exactly ``gymnasium/envs/classic_control/pendulum.py`` (gymnasium 1.x): a rigid rod
    (m = 1, l = 1, gravity ``g``, default 10) swinging about a fixed pivot, semi-implicit Euler
    with ``dt = 0.05`` s; the angular velocity is clipped to [-8, 8]. ``theta = 0`` is upright.
Action
    ``a`` in [-1, 1] -> torque ``u = 2 * a`` (gymnasium's range [-2, 2]).
Observation
    ``[cos(theta), sin(theta), theta_dot]``.
Reward
    ``-(normalize(theta)^2 + 0.1 * theta_dot^2 + 0.001 * u^2)`` of the state *before* the
    step, ``normalize`` mapping angles to [-pi, pi) (as gymnasium).
Termination
    Never (only the time limit ends an episode).
Time limit
    200 steps (Pendulum-v1).
Success / solved
    No success metric. Solved at a mean return of -200 (the usual threshold; gymnasium
    defines none).
Initial state
    ``theta`` uniform in [-pi, pi], ``theta_dot`` uniform in [-1, 1].
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from envs.spec import TaskSpec
from envs.tasks.common import Canvas, Task, TaskParams, check_number

MAX_SPEED = 8.0
MAX_TORQUE = 2.0
DT = 0.05
MASS = 1.0
LENGTH = 1.0


def angle_normalize(x: torch.Tensor) -> torch.Tensor:
    """Map angles to [-pi, pi) with Python's modulo semantics, as gymnasium does."""
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


@dataclasses.dataclass
class PendulumParams(TaskParams):
    """Parameters of ``pendulum``."""

    g: float = 10.0
    """Gravitational acceleration in m/s^2 (gymnasium's ``g``; > 0)."""

    def validate(self) -> None:
        """Check ``dtype`` and ``g > 0``."""
        super().validate()
        check_number("g", self.g, low=0.0, open_low=True)


class Pendulum(Task):
    """Batched Pendulum-v1; see the module docstring."""

    def __init__(self, num_envs: int, device: Any = "cpu", seed: int = 0,
                 max_episode_steps: int = 200, dtype: str = "float32", g: float = 10.0) -> None:
        self.g = float(g)
        high = [1.0, 1.0, MAX_SPEED]
        super().__init__(num_envs, device, seed, max_episode_steps,
                         [-h for h in high], high, act_dim=1, dtype=dtype)

    def sample_init(self, n: int) -> torch.Tensor:
        """``[n, 2]`` states: angle in [-pi, pi], angular velocity in [-1, 1]."""
        return self.rand(n, 2, -1.0, 1.0) * self.tensor([math.pi, 1.0])

    def dynamics(self, state: torch.Tensor, action: torch.Tensor
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        """One semi-implicit Euler step; cost of the pre-step state and torque."""
        th, thdot = state.unbind(-1)
        u = (MAX_TORQUE * action[:, 0].to(state.dtype)).clamp(-MAX_TORQUE, MAX_TORQUE)
        # quadratic cost: angle from upright, angular speed, torque
        costs = angle_normalize(th) ** 2 + 0.1 * thdot ** 2 + 0.001 * (u ** 2)
        # angular acceleration from gravity and torque, then clip the speed
        newthdot = thdot + (3 * self.g / (2 * LENGTH) * torch.sin(th)
                            + 3.0 / (MASS * LENGTH ** 2) * u) * DT
        newthdot = newthdot.clamp(-MAX_SPEED, MAX_SPEED)
        # the angle moves with the *new* velocity (semi-implicit Euler)
        newth = th + newthdot * DT
        terminated = torch.zeros_like(th, dtype=torch.bool)
        return torch.stack((newth, newthdot), -1), -costs, terminated, {}

    def observe(self, state: torch.Tensor) -> torch.Tensor:
        """``[cos(theta), sin(theta), theta_dot]``."""
        th, thdot = state.unbind(-1)
        return torch.stack((torch.cos(th), torch.sin(th), thdot), -1)

    def render(self, env_id: int = 0) -> Optional[np.ndarray]:
        """The rod of env ``env_id`` (upright = up) as a uint8 RGB frame."""
        th, _ = self.host_state(env_id)
        c = Canvas((-1.2, 1.2), (-1.2, 1.2), width=240)
        c.line((0.0, 0.0), (math.sin(th), math.cos(th)), 0.2, (204, 77, 77))
        c.disc(0.0, 0.0, 0.05, (0, 0, 0))
        return c.img


#: the registry entry (envs/registry.py registers "pendulum" as "envs.tasks.pendulum:SPEC")
SPEC = TaskSpec(
    factory=Pendulum, params=PendulumParams, max_episode_steps=200, solved_return=-200.0,
    description="gymnasium Pendulum-v1, torque 2*a")
