"""``arm_reach``: a planar arm with many links reaching random targets (dense reward).

Dynamics
    Kinematic: ``num_links`` (default 8) links of equal length ``1 / num_links`` (total reach
    1) in a chain from a fixed base at the origin. The state is the joint angles ``q`` (each
    relative to the previous link; ``q_1`` to the x axis) and the target. A step adds the
    commanded joint velocity: ``q += joint_speed * a``; angles are wrapped to [-pi, pi).
Action
    ``a`` in [-1, 1]^num_links -> joint angle change ``joint_speed * a`` rad per step.
Observation
    ``[cos q (L), sin q (L), end effector (2), target (2), target - end effector (2)]``,
    ``2 L + 6`` values (22 for 8 links).
Reward
    ``-|target - end effector| - action_cost * sum(a^2)`` after the move (as gymnasium's
    Reacher: negative distance plus a control cost).
Termination
    Never; episodes end at the time limit.
Time limit
    100 steps.
Success / solved
    ``log["success"]`` is 1 if the end effector is within ``tolerance`` (0.05, i.e. 5 % of
    the reach) of the target at the last step of the episode; ``log["distance"]`` is that
    final distance. Solved at a success rate >= 0.9 and a mean return >= -15: a
    damped-least-squares controller (a scripted expert) scores about -7.5 with success 1.0;
    random actions (sigma = 1) score about -104 with success 0.001.
Initial state
    Joint angles uniform in [-0.1, 0.1] (a nearly straight arm along +x); the target uniform
    in the annulus ``target_min_radius <= r <= target_max_radius`` (area-uniform, any angle).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from envs.spec import TaskSpec
from envs.tasks.common import Canvas, Task, TaskParams, check_number, require


def forward_kinematics(q: torch.Tensor, link_length: float) -> torch.Tensor:
    """Positions ``[N, L, 2]`` of the end of every link for relative joint angles ``q [N, L]``."""
    phi = torch.cumsum(q, -1)  # absolute angle of each link
    seg = link_length * torch.stack((torch.cos(phi), torch.sin(phi)), -1)  # link vectors
    return torch.cumsum(seg, -2)  # chain them from the base at the origin


@dataclasses.dataclass
class ArmReachParams(TaskParams):
    """Parameters of ``arm_reach``."""

    num_links: int = 8
    """Number of links and joints (>= 2; the task is meant for >= 7)."""
    joint_speed: float = 0.1
    """Largest joint angle change per step, rad (in (0, 1])."""
    tolerance: float = 0.05
    """End-effector distance to the target that counts as success (in (0, 0.5]; reach is 1)."""
    action_cost: float = 0.01
    """Weight of the control cost ``sum(a^2)`` (>= 0)."""
    target_min_radius: float = 0.2
    """Inner radius of the target annulus (>= 0)."""
    target_max_radius: float = 0.9
    """Outer radius of the target annulus (> target_min_radius, <= 1)."""

    def validate(self) -> None:
        """Check every parameter's range."""
        super().validate()
        check_number("num_links", self.num_links, low=2, integer=True)
        check_number("joint_speed", self.joint_speed, low=0.0, high=1.0, open_low=True)
        check_number("tolerance", self.tolerance, low=0.0, high=0.5, open_low=True)
        check_number("action_cost", self.action_cost, low=0.0)
        check_number("target_min_radius", self.target_min_radius, low=0.0)
        check_number("target_max_radius", self.target_max_radius, high=1.0)
        require(self.target_max_radius > self.target_min_radius, "target_max_radius",
                self.target_max_radius, f"must be > target_min_radius={self.target_min_radius}")


class ArmReach(Task):
    """Batched kinematic planar arm; see the module docstring."""

    def __init__(self, num_envs: int, device: Any = "cpu", seed: int = 0,
                 max_episode_steps: int = 100, dtype: str = "float32", num_links: int = 8,
                 joint_speed: float = 0.1, tolerance: float = 0.05, action_cost: float = 0.01,
                 target_min_radius: float = 0.2, target_max_radius: float = 0.9) -> None:
        self.num_links = int(num_links)
        self.link_length = 1.0 / self.num_links
        self.joint_speed, self.tolerance = float(joint_speed), float(tolerance)
        self.action_cost = float(action_cost)
        self.r_min, self.r_max = float(target_min_radius), float(target_max_radius)
        L = self.num_links
        high = [1.0] * (2 * L) + [1.0] * 4 + [2.0] * 2
        super().__init__(num_envs, device, seed, max_episode_steps, [-h for h in high], high,
                         act_dim=L, dtype=dtype)

    def sample_init(self, n: int) -> torch.Tensor:
        """``[n, L + 2]``: joint angles in [-0.1, 0.1], then a target in the annulus."""
        q = self.rand(n, self.num_links, -0.1, 0.1)
        u = self.rand(n, 2)
        # area-uniform radius: r^2 uniform between r_min^2 and r_max^2
        r = torch.sqrt(self.r_min ** 2 + (self.r_max ** 2 - self.r_min ** 2) * u[:, 0])
        ang = 2 * math.pi * u[:, 1]
        target = torch.stack((r * torch.cos(ang), r * torch.sin(ang)), -1)
        return torch.cat((q, target), -1)

    def end_effector(self, state: torch.Tensor) -> torch.Tensor:
        """End-effector position ``[N, 2]`` of ``state``."""
        return forward_kinematics(state[:, :self.num_links], self.link_length)[:, -1]

    def dynamics(self, state: torch.Tensor, action: torch.Tensor
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        """Integrate the joint velocities; reward the negative distance to the target."""
        a = action.to(state.dtype)
        q, target = state[:, :self.num_links], state[:, self.num_links:]
        q = q + self.joint_speed * a  # kinematic joint-velocity control
        q = torch.remainder(q + math.pi, 2 * math.pi) - math.pi  # keep angles in [-pi, pi)
        dist = (target - forward_kinematics(q, self.link_length)[:, -1]).norm(dim=-1)
        reward = -dist - self.action_cost * a.square().sum(-1)
        terminated = torch.zeros_like(dist, dtype=torch.bool)
        log = {"success": (dist < self.tolerance).float(), "distance": dist.float()}
        return torch.cat((q, target), -1), reward, terminated, log

    def observe(self, state: torch.Tensor) -> torch.Tensor:
        """``[cos q, sin q, end effector, target, target - end effector]``."""
        q, target = state[:, :self.num_links], state[:, self.num_links:]
        ee = forward_kinematics(q, self.link_length)[:, -1]
        return torch.cat((torch.cos(q), torch.sin(q), ee, target, target - ee), -1)

    def render(self, env_id: int = 0) -> Optional[np.ndarray]:
        """Links, joints, target and tolerance circle of env ``env_id``, uint8 RGB."""
        s = self.host_state(env_id)
        q, target = s[:self.num_links], s[self.num_links:]
        phi = np.cumsum(q)
        pts = np.concatenate([np.zeros((1, 2)), np.cumsum(
            self.link_length * np.stack([np.cos(phi), np.sin(phi)], -1), 0)])
        c = Canvas((-1.1, 1.1), (-1.1, 1.1), width=256)
        c.disc(target[0], target[1], self.tolerance, (170, 230, 170))
        c.disc(target[0], target[1], 0.02, (30, 150, 30))
        c.polyline([tuple(p) for p in pts], 0.03, (60, 60, 160))
        for p in pts[:-1]:
            c.disc(p[0], p[1], 0.025, (30, 30, 30))
        c.disc(pts[-1][0], pts[-1][1], 0.03, (220, 40, 40))
        return c.img


#: the registry entry (envs/registry.py registers "arm_reach" as "envs.tasks.arm_reach:SPEC")
SPEC = TaskSpec(
    factory=ArmReach, params=ArmReachParams, max_episode_steps=100, solved_return=-15.0,
    success_threshold=0.9,
    description="planar arm with num_links (8) links reaching random targets, dense reward")
