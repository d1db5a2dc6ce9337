"""``cartpole``: gymnasium's CartPole-v1 with a continuous force, batched in torch.

Dynamics
    Exactly ``gymnasium/envs/classic_control/cartpole.py`` (gymnasium 1.x): a pole hinged on
    a cart on a frictionless track, explicit Euler with ``tau = 0.02`` s, gravity 9.8, cart
    mass 1.0, pole mass 0.1, pole half-length 0.5.
Action
    ``a`` in [-1, 1] -> horizontal force ``10 * a`` N. ``a = +1`` / ``a = -1`` reproduce
    gymnasium's discrete actions 1 (push right) / 0 (push left).
Observation
    ``[x, x_dot, theta, theta_dot]`` (the full state, as gymnasium).
Reward
    +1 every step, the terminating step included (gymnasium's default reward).
Termination
    ``|x| > 2.4`` or ``|theta| > 12 degrees``.
Time limit
    500 steps (CartPole-v1).
Success / solved
    No success metric. Solved at a mean return of 475 (gymnasium's reward threshold).
Initial state
    Each component uniform in [-0.05, 0.05].
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from envs.spec import TaskSpec
from envs.tasks.common import Canvas, Task, TaskParams

# constants exactly as gymnasium's CartPoleEnv.__init__ computes them
GRAVITY = 9.8
MASSCART = 1.0
MASSPOLE = 0.1
TOTAL_MASS = MASSPOLE + MASSCART
LENGTH = 0.5  # half the pole's length
POLEMASS_LENGTH = MASSPOLE * LENGTH
FORCE_MAG = 10.0
TAU = 0.02  # seconds between state updates
THETA_THRESHOLD = 12 * 2 * math.pi / 360
X_THRESHOLD = 2.4
TRACK_HALF_WIDTH = 0.025  # drawn track: metres either side of y = 0 (2 pixels in all)


@dataclasses.dataclass
class CartPoleParams(TaskParams):
    """Parameters of ``cartpole`` (only the shared ``dtype``)."""


class CartPole(Task):
    """Batched continuous-force CartPole-v1; see the module docstring."""

    def __init__(self, num_envs: int, device: Any = "cpu", seed: int = 0,
                 max_episode_steps: int = 500, dtype: str = "float32") -> None:
        high = [X_THRESHOLD * 2, np.inf, THETA_THRESHOLD * 2, np.inf]
        super().__init__(num_envs, device, seed, max_episode_steps,
                         [-h for h in high], high, act_dim=1, dtype=dtype)

    def sample_init(self, n: int) -> torch.Tensor:
        """``[n, 4]`` states uniform in [-0.05, 0.05]."""
        return self.rand(n, 4, -0.05, 0.05)

    def dynamics(self, state: torch.Tensor, action: torch.Tensor
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        """One Euler step of the cart-pole; reward 1, terminate when out of bounds."""
        x, x_dot, theta, theta_dot = state.unbind(-1)
        force = FORCE_MAG * action[:, 0].to(state.dtype)
        costheta, sintheta = torch.cos(theta), torch.sin(theta)
        # pole's reaction on the cart, per unit total mass
        temp = (force + POLEMASS_LENGTH * theta_dot.square() * sintheta) / TOTAL_MASS
        # angular acceleration of the pole (Barto, Sutton & Anderson 1983)
        thetaacc = (GRAVITY * sintheta - costheta * temp) / (
            LENGTH * (4.0 / 3.0 - MASSPOLE * costheta.square() / TOTAL_MASS))
        # linear acceleration of the cart
        xacc = temp - POLEMASS_LENGTH * thetaacc * costheta / TOTAL_MASS
        # explicit Euler (gymnasium's default "euler" integrator): positions use old velocities
        x = x + TAU * x_dot
        x_dot = x_dot + TAU * xacc
        theta = theta + TAU * theta_dot
        theta_dot = theta_dot + TAU * thetaacc
        next_state = torch.stack((x, x_dot, theta, theta_dot), -1)
        terminated = ((x < -X_THRESHOLD) | (x > X_THRESHOLD)
                      | (theta < -THETA_THRESHOLD) | (theta > THETA_THRESHOLD))
        reward = torch.ones_like(x)
        return next_state, reward, terminated, {}

    def observe(self, state: torch.Tensor) -> torch.Tensor:
        """The state itself: ``[x, x_dot, theta, theta_dot]``."""
        return state.clone()

    def render(self, env_id: int = 0) -> Optional[np.ndarray]:
        """Track, cart and pole of env ``env_id`` as a ``110 x 300`` uint8 RGB frame (50 pixels
        per metre). The track is a black line through the cart's centre (y = 0, as gymnasium
        draws it), :data:`TRACK_HALF_WIDTH` thick on each side: rows 79 and 80."""
        x, _, theta, _ = self.host_state(env_id)
        c = Canvas((-X_THRESHOLD * 1.25, X_THRESHOLD * 1.25), (-0.6, 1.6), width=300)
        # +-0.025 m covers the two pixel rows whose centres are at y = +-0.01; the former
        # +-0.01 band fell between pixel centres and drew nothing
        c.rect(-X_THRESHOLD * 1.25, -TRACK_HALF_WIDTH, X_THRESHOLD * 1.25, TRACK_HALF_WIDTH, (0, 0, 0))
        c.rect(x - 0.25, -0.12, x + 0.25, 0.12, (40, 40, 40))  # cart
        tip = (x + 2 * LENGTH * math.sin(theta), 2 * LENGTH * math.cos(theta))
        c.line((x, 0.0), tip, 0.08, (202, 152, 101))  # pole (full length 2 * LENGTH)
        c.disc(x, 0.0, 0.04, (129, 132, 203))  # hinge
        return c.img


#: the registry entry (envs/registry.py registers "cartpole" as "envs.tasks.cartpole:SPEC")
SPEC = TaskSpec(
    factory=CartPole, params=CartPoleParams, max_episode_steps=500, solved_return=475.0,
    description="gymnasium CartPole-v1 with force 10*a (a=+-1 is the discrete game)")
