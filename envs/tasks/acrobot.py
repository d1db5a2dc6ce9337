"""``acrobot``: gymnasium's Acrobot-v1 with a continuous torque, batched in torch.

Dynamics
    Exactly ``gymnasium/envs/classic_control/acrobot.py`` (gymnasium 1.x), "book" equations,
    no torque noise: two links (lengths 1, masses 1, centres of mass at 0.5, inertias 1)
    hanging from a fixed pivot, the torque applied at the joint between them. One RK4 step of
    ``dt = 0.2`` s; then both angles are wrapped to [-pi, pi] and the joint speeds clipped to
    ``[-4 pi, 4 pi]`` and ``[-9 pi, 9 pi]``.
Action
    ``a`` in [-1, 1] -> torque ``a``; ``a`` in {-1, 0, +1} reproduces gymnasium's discrete
    actions 0, 1, 2.
Observation
    ``[cos th1, sin th1, cos th2, sin th2, dth1, dth2]``.
Reward
    -1 per step, 0 on the terminating step (as gymnasium).
Termination
    The free end rises above the bar: ``-cos(th1) - cos(th1 + th2) > 1``.
Time limit
    500 steps (Acrobot-v1).
Success / solved
    ``log["success"]`` is 1 when the episode ends by reaching the height. Solved at a mean
    return of -100 (gymnasium's reward threshold).
Initial state
    Each of ``th1, th2, dth1, dth2`` uniform in [-0.1, 0.1].
"""
from __future__ import annotations

import dataclasses
from math import pi
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from envs.spec import TaskSpec
from envs.tasks.common import Canvas, Task, TaskParams

DT = 0.2
LINK_LENGTH_1 = 1.0
LINK_MASS_1 = 1.0
LINK_MASS_2 = 1.0
LINK_COM_POS_1 = 0.5
LINK_COM_POS_2 = 0.5
LINK_MOI = 1.0
MAX_VEL_1 = 4 * pi
MAX_VEL_2 = 9 * pi
GRAVITY = 9.8


def dsdt(s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Time derivative ``[dth1, dth2, ddth1, ddth2]`` of states ``s [N, 4]`` under torque ``a``.

    gymnasium's ``AcrobotEnv._dsdt`` with ``book_or_nips == "book"``, term by term.
    """
    m1, m2, l1 = LINK_MASS_1, LINK_MASS_2, LINK_LENGTH_1
    lc1, lc2, I1, I2, g = LINK_COM_POS_1, LINK_COM_POS_2, LINK_MOI, LINK_MOI, GRAVITY
    theta1, theta2, dtheta1, dtheta2 = s.unbind(-1)
    cos2, sin2 = torch.cos(theta2), torch.sin(theta2)
    # inertia-matrix entries
    d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * cos2) + I1 + I2
    d2 = m2 * (lc2**2 + l1 * lc2 * cos2) + I2
    # gravity on link 2, then Coriolis/centrifugal + gravity terms of joint 1
    phi2 = m2 * lc2 * g * torch.cos(theta1 + theta2 - pi / 2.0)
    phi1 = (-m2 * l1 * lc2 * dtheta2**2 * sin2
            - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * sin2
            + (m1 * lc1 + m2 * l1) * g * torch.cos(theta1 - pi / 2)
            + phi2)
    # joint accelerations ("book" version: includes the dtheta1^2 term)
    ddtheta2 = (a + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * sin2 - phi2) / (
        m2 * lc2**2 + I2 - d2**2 / d1)
    ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
    return torch.stack((dtheta1, dtheta2, ddtheta1, ddtheta2), -1)


def wrap(x: torch.Tensor, m: float, M: float) -> torch.Tensor:
    """gymnasium's ``wrap``: shift ``x`` by whole periods ``M - m`` into ``[m, M]``."""
    diff = M - m
    x = torch.where(x > M, x - diff * torch.ceil((x - M) / diff), x)
    return torch.where(x < m, x + diff * torch.ceil((m - x) / diff), x)


@dataclasses.dataclass
class AcrobotParams(TaskParams):
    """Parameters of ``acrobot`` (only the shared ``dtype``)."""


class Acrobot(Task):
    """Batched continuous-torque Acrobot-v1; see the module docstring."""

    def __init__(self, num_envs: int, device: Any = "cpu", seed: int = 0,
                 max_episode_steps: int = 500, dtype: str = "float32") -> None:
        high = [1.0, 1.0, 1.0, 1.0, MAX_VEL_1, MAX_VEL_2]
        super().__init__(num_envs, device, seed, max_episode_steps,
                         [-h for h in high], high, act_dim=1, dtype=dtype)

    def sample_init(self, n: int) -> torch.Tensor:
        """``[n, 4]`` states uniform in [-0.1, 0.1]."""
        return self.rand(n, 4, -0.1, 0.1)

    def dynamics(self, state: torch.Tensor, action: torch.Tensor
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        """One RK4 step; -1 per step, 0 and terminate when the tip is above the bar."""
        a = action[:, 0].to(state.dtype)
        # classic RK4 over [0, DT] with the torque held constant (gymnasium's ``rk4``)
        dt2 = DT / 2.0
        k1 = dsdt(state, a)
        k2 = dsdt(state + dt2 * k1, a)
        k3 = dsdt(state + dt2 * k2, a)
        k4 = dsdt(state + DT * k3, a)
        ns = state + DT / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        th1, th2, dth1, dth2 = ns.unbind(-1)
        # angles back into [-pi, pi], speeds clipped
        th1, th2 = wrap(th1, -pi, pi), wrap(th2, -pi, pi)
        dth1, dth2 = dth1.clamp(-MAX_VEL_1, MAX_VEL_1), dth2.clamp(-MAX_VEL_2, MAX_VEL_2)
        # the free end's height below the pivot, measured upwards
        terminated = -torch.cos(th1) - torch.cos(th2 + th1) > 1.0
        reward = terminated.to(state.dtype) - 1.0
        log = {"success": terminated.float()}
        return torch.stack((th1, th2, dth1, dth2), -1), reward, terminated, log

    def observe(self, state: torch.Tensor) -> torch.Tensor:
        """``[cos th1, sin th1, cos th2, sin th2, dth1, dth2]``."""
        th1, th2, dth1, dth2 = state.unbind(-1)
        return torch.stack((torch.cos(th1), torch.sin(th1), torch.cos(th2), torch.sin(th2),
                            dth1, dth2), -1)

    def render(self, env_id: int = 0) -> Optional[np.ndarray]:
        """Both links of env ``env_id`` and the target height as a uint8 RGB frame."""
        th1, th2, _, _ = self.host_state(env_id)
        p1 = (np.sin(th1), -np.cos(th1))
        p2 = (p1[0] + np.sin(th1 + th2), p1[1] - np.cos(th1 + th2))
        c = Canvas((-2.2, 2.2), (-2.2, 2.2), width=250)
        c.line((-2.2, 1.0), (2.2, 1.0), 0.02, (0, 0, 0))  # the height to reach
        c.polyline([(0.0, 0.0), p1, p2], 0.15, (0, 204, 204))
        for p in ((0.0, 0.0), p1):
            c.disc(p[0], p[1], 0.08, (204, 204, 0))
        return c.img


#: the registry entry (envs/registry.py registers "acrobot" as "envs.tasks.acrobot:SPEC")
SPEC = TaskSpec(
    factory=Acrobot, params=AcrobotParams, max_episode_steps=500, solved_return=-100.0,
    description="gymnasium Acrobot-v1 with torque a (a in {-1,0,1} is the discrete game)")
