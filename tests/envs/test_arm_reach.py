"""arm_reach: forward kinematics by hand, success at the target, attainable threshold."""
from __future__ import annotations

import math

import pytest
import torch

from envs import registry
from envs.tasks.arm_reach import forward_kinematics


def test_forward_kinematics_by_hand():
    # two links of 0.5: up, then a right angle clockwise -> (0, 0.5), then (0.5, 0.5)
    q = torch.tensor([[math.pi / 2, -math.pi / 2]])
    assert forward_kinematics(q, 0.5)[0].flatten().tolist() == pytest.approx(
        [0.0, 0.5, 0.5, 0.5], abs=1e-6)
    # three links of 1/3 folding left twice: (1/3, 0), (1/3, 1/3), (0, 1/3)
    q = torch.tensor([[0.0, math.pi / 2, math.pi / 2]])
    third = 1 / 3
    assert forward_kinematics(q, third)[0].flatten().tolist() == pytest.approx(
        [third, 0.0, third, third, 0.0, third], abs=1e-6)
    # straight arm: the reach is the sum of the link lengths, at any base angle
    q = torch.tensor([[0.3, 0.0, 0.0, 0.0]])
    ee = forward_kinematics(q, 0.25)[0, -1]
    assert ee.tolist() == pytest.approx([math.cos(0.3), math.sin(0.3)], abs=1e-6)


def test_observation_and_joint_velocity_control(make_env):
    env = make_env("arm_reach", num_envs=1, num_links=3, joint_speed=0.2)
    assert env.obs_dim == 2 * 3 + 6 and env.act_dim == 3
    env.state = torch.tensor([[0.0, math.pi / 2, math.pi / 2, 0.1, 0.2]])
    obs, rew, *_ = env.step(torch.tensor([[0.0, 0.0, 0.0]]))
    third = 1 / 3
    assert obs[0, :6].tolist() == pytest.approx([1, 0, 0, 0, 1, 1], abs=1e-6)  # cos, sin q
    assert obs[0, 6:].tolist() == pytest.approx(
        [0.0, third, 0.1, 0.2, 0.1, 0.2 - third], abs=1e-6)  # ee, target, target - ee
    assert rew.item() == pytest.approx(-math.hypot(0.1, 0.2 - third), abs=1e-6)
    obs, rew, *_ = env.step(torch.tensor([[1.0, -0.5, 0.0]]))
    assert env.state[0, :3].tolist() == pytest.approx([0.2, math.pi / 2 - 0.1, math.pi / 2])
    # the control cost: action_cost * sum(a^2)
    dist = torch.linalg.norm(obs[0, -2:]).item()
    assert rew.item() == pytest.approx(-dist - 0.01 * 1.25, abs=1e-6)


def test_success_is_logged_at_the_target(make_env):
    env = make_env("arm_reach", num_envs=3, max_episode_steps=4)
    env.reset(seed=0)
    q = torch.zeros(3, env.num_links)
    ee = forward_kinematics(q, env.link_length)[:, -1]
    target = ee + torch.tensor([[0.0, 0.0], [0.0, 0.04], [0.0, 0.2]])  # at, inside tol, far
    env.state = torch.cat((q, target), -1)
    env.t.fill_(env.max_episode_steps - 1)
    _, rew, term, trunc, info = env.step(torch.zeros(3, env.num_links))
    assert not term.any() and trunc.all()
    assert info["log"]["success"].tolist() == [1.0, 1.0, 0.0]
    assert info["log"]["distance"].tolist() == pytest.approx([0.0, 0.04, 0.2], abs=1e-6)
    assert rew.tolist() == pytest.approx([0.0, -0.04, -0.2], abs=1e-6)


def test_targets_fill_the_annulus(make_env):
    env = make_env("arm_reach", num_envs=8192)
    s = env.sample_init(8192)
    r = s[:, env.num_links:].norm(dim=-1)
    assert r.min().item() >= 0.2 - 1e-6 and r.max().item() <= 0.9 + 1e-6
    # area-uniform: E[r^2] = (r_min^2 + r_max^2) / 2
    assert (r ** 2).mean().item() == pytest.approx((0.2 ** 2 + 0.9 ** 2) / 2, abs=0.01)
    ang = torch.atan2(s[:, -1], s[:, -2])
    assert (ang > 2.5).any() and (ang < -2.5).any()  # targets behind the base too
    assert s[:, :env.num_links].abs().max().item() <= 0.1


def jacobian(q: torch.Tensor, link: float) -> torch.Tensor:
    """``[N, 2, L]`` d(end effector) / dq of the planar chain."""
    phi = torch.cumsum(q, -1)
    seg = link * torch.stack((torch.cos(phi), torch.sin(phi)), -1)
    tail = torch.flip(torch.cumsum(torch.flip(seg, [1]), 1), [1])  # from joint j to the tip
    return torch.stack((-tail[..., 1], tail[..., 0]), 1)


def test_scripted_controller_meets_the_solved_threshold(make_env):
    """A damped-least-squares controller solves the default task: the documented threshold
    is attainable, and random actions are far from it."""
    env = make_env("arm_reach", num_envs=512)
    spec = registry.spec("arm_reach")
    env.reset(seed=0)
    ret = torch.zeros(env.num_envs)
    for _ in range(env.max_episode_steps):
        q, tgt = env.state[:, :env.num_links], env.state[:, env.num_links:]
        J = jacobian(q, env.link_length)
        err = (tgt - env.end_effector(env.state)).unsqueeze(-1)
        Jt = J.transpose(1, 2)
        dq = Jt @ torch.linalg.solve(J @ Jt + 0.05 * torch.eye(2), err)  # damped least squares
        _, rew, _, trunc, info = env.step(dq.squeeze(-1) / env.joint_speed)
        ret += rew
    assert trunc.all()
    assert info["log"]["success"].mean().item() >= spec.success_threshold
    assert ret.mean().item() >= spec.solved_return
    g = torch.Generator().manual_seed(0)
    env.reset(seed=1)
    ret.zero_()
    for _ in range(env.max_episode_steps):
        _, rew, _, _, info = env.step(torch.randn(env.num_envs, env.num_links, generator=g))
        ret += rew
    assert ret.mean().item() < 3 * spec.solved_return
    assert info["log"]["success"].mean().item() < 0.05
