"""The classic-control ports step exactly like gymnasium's own envs.

For each port: many random states spread over the whole state space (not only initial
states) and actions; gymnasium's ``env.unwrapped.state`` is set to each state and stepped
once; ours steps all of them at once through ``dynamics`` + ``observe`` in float64.
Observation, reward and termination must agree to 1e-5 (gymnasium returns float32
observations, so that is the precision of the comparison), the raw next state much closer.
"""
from __future__ import annotations

from typing import Callable, List, Tuple

import numpy as np
import pytest
import torch
from gymnasium.envs.classic_control.acrobot import AcrobotEnv
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from gymnasium.envs.classic_control.continuous_mountain_car import Continuous_MountainCarEnv
from gymnasium.envs.classic_control.pendulum import PendulumEnv

N = 300  # random states per port
PI = np.pi


def uniform_states(rng: np.random.Generator, low: List[float], high: List[float]) -> np.ndarray:
    """``[N, S]`` states uniform in the box ``[low, high]``."""
    return rng.uniform(low, high, size=(N, len(low)))


def ours(env, states: np.ndarray, actions: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Our batched step from ``states``: (obs, reward, terminated, next_state) as numpy."""
    s = torch.as_tensor(states, dtype=torch.float64)
    a = torch.as_tensor(actions, dtype=torch.float32).reshape(N, 1)  # actions arrive as float32
    ns, r, term, _ = env.dynamics(s, a)
    return env.observe(ns).numpy(), r.numpy(), term.numpy(), ns.numpy()


def theirs(genv, states: np.ndarray, actions: np.ndarray,
           set_state: Callable, gym_action: Callable) -> Tuple[np.ndarray, ...]:
    """gymnasium's step from each state in turn: (obs, reward, terminated, next_state)."""
    obs, rew, term, nxt = [], [], [], []
    for s, a in zip(states, actions):
        set_state(genv, s, a)
        o, r, t, trunc, _ = genv.step(gym_action(a))
        assert not trunc
        obs.append(o)
        rew.append(r)
        term.append(t)
        nxt.append(np.array(genv.state, np.float64))
    return np.array(obs, np.float64), np.array(rew), np.array(term), np.array(nxt)


def assert_agree(mine: Tuple[np.ndarray, ...], ref: Tuple[np.ndarray, ...],
                 state_tol: float) -> None:
    """Observation and reward to 1e-5, termination exactly, next state to ``state_tol``."""
    obs, rew, term, nxt = mine
    gobs, grew, gterm, gnxt = ref
    np.testing.assert_allclose(obs, gobs, rtol=0, atol=1e-5)
    np.testing.assert_allclose(rew, grew, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(term, gterm)
    np.testing.assert_allclose(nxt, gnxt, rtol=0, atol=state_tol)


def test_cartpole_matches_gymnasium(make_env):
    env = make_env("cartpole", num_envs=N, dtype="float64")
    rng = np.random.default_rng(0)
    # past the termination bounds too, so that both outcomes occur
    states = uniform_states(rng, [-2.5, -3.0, -0.22, -3.5], [2.5, 3.0, 0.22, 3.5])
    genv = CartPoleEnv()
    genv.reset(seed=0)

    def set_state(g, s, a):
        g.state = s.copy()
        g.steps_beyond_terminated = None
        g.force_mag = 10.0 * abs(float(a))  # a = +-1 is the stock game; else a scaled force

    discrete = rng.choice([-1.0, 1.0], size=N).astype(np.float32)
    ref = theirs(genv, states, discrete, set_state, lambda a: int(a > 0))
    assert ref[2].any() and not ref[2].all()
    assert_agree(ours(env, states, discrete), ref, 1e-9)
    # continuous forces: gymnasium's force_mag scaled to |a|, direction from the sign
    cont = rng.uniform(-1, 1, size=N).astype(np.float32)
    ref = theirs(genv, states, cont, set_state, lambda a: int(a > 0))
    assert_agree(ours(env, states, cont), ref, 1e-9)


def test_pendulum_matches_gymnasium(make_env):
    env = make_env("pendulum", num_envs=N, dtype="float64")
    rng = np.random.default_rng(1)
    # angles beyond [-pi, pi] exercise angle_normalize; speeds over the whole clip range
    states = uniform_states(rng, [-2 * PI, -8.0], [2 * PI, 8.0])
    actions = rng.uniform(-1, 1, size=N).astype(np.float32)
    genv = PendulumEnv()
    genv.reset(seed=0)

    def set_state(g, s, a):
        g.state = s.copy()

    ref = theirs(genv, states, actions, set_state,
                 lambda a: np.array([2.0 * a], np.float32))
    # gymnasium computes the torque terms in float32 (u is float32): 1e-6 on the state
    assert_agree(ours(env, states, actions), ref, 1e-6)


def test_mountain_car_matches_gymnasium(make_env):
    env = make_env("mountain_car", num_envs=N, dtype="float64")
    rng = np.random.default_rng(2)
    states = uniform_states(rng, [-1.2, -0.07], [0.6, 0.07]).astype(np.float32)
    states[:20, 0] = rng.uniform(-1.2, -1.15, 20)  # at the left wall: the stop rule
    states[:20, 1] = -0.07
    states[20:60, 0] = rng.uniform(0.38, 0.45, 40)  # near the goal: termination
    states[20:60, 1] = rng.uniform(0.0, 0.07, 40)
    states = states.astype(np.float32)  # gymnasium keeps this state in float32
    actions = rng.uniform(-1, 1, size=N).astype(np.float32)
    genv = Continuous_MountainCarEnv()
    genv.reset(seed=0)

    def set_state(g, s, a):
        g.state = s.copy()

    ref = theirs(genv, states, actions, set_state, lambda a: np.array([a], np.float32))
    assert ref[2].any() and not ref[2].all()
    assert (ref[3][:20, 1] == 0).all()  # the wall stop really happened
    # gymnasium steps this one in float32: compare the state to float32 precision
    assert_agree(ours(env, states.astype(np.float64), actions), ref, 1e-6)


def test_acrobot_matches_gymnasium(make_env):
    env = make_env("acrobot", num_envs=N, dtype="float64")
    rng = np.random.default_rng(3)
    states = uniform_states(rng, [-PI, -PI, -4 * PI, -9 * PI], [PI, PI, 4 * PI, 9 * PI])
    genv = AcrobotEnv()
    genv.reset(seed=0)

    def set_state(g, s, a):
        g.state = s.copy()

    discrete = rng.choice([-1.0, 0.0, 1.0], size=N).astype(np.float32)
    ref = theirs(genv, states, discrete, set_state, lambda a: int(a) + 1)
    assert ref[2].any() and not ref[2].all()
    assert_agree(ours(env, states, discrete), ref, 1e-8)

    # continuous torques: gymnasium's torque table holds the one value, action index 0
    cont = rng.uniform(-1, 1, size=N).astype(np.float32)

    def set_state_cont(g, s, a):
        g.state = s.copy()
        g.AVAIL_TORQUE = [float(a)]

    ref = theirs(genv, states, cont, set_state_cont, lambda a: 0)
    assert_agree(ours(env, states, cont), ref, 1e-8)


@pytest.mark.parametrize("name,low,high", [
    ("cartpole", [-2.4, -2.0, -0.2, -2.0], [2.4, 2.0, 0.2, 2.0]),
    ("pendulum", [-PI, -6.0], [PI, 6.0]),
    ("mountain_car", [-1.1, -0.05], [0.4, 0.05]),
    ("acrobot", [-PI, -PI, -10.0, -25.0], [PI, PI, 10.0, 25.0]),
])
def test_float32_default_is_close_to_float64(make_env, name, low, high):
    """The default float32 build follows the float64 reference to float32 precision."""
    rng = np.random.default_rng(4)
    states = uniform_states(rng, low, high)
    actions = rng.uniform(-1, 1, size=N).astype(np.float32)
    e64 = make_env(name, num_envs=N, dtype="float64")
    e32 = make_env(name, num_envs=N)
    obs64, r64, _, _ = ours(e64, states, actions)
    s32 = torch.as_tensor(states, dtype=torch.float32)
    ns, r32, _, _ = e32.dynamics(s32, torch.as_tensor(actions).reshape(N, 1))
    obs32 = e32.observe(ns)
    assert obs32.dtype == torch.float32 and r32.dtype == torch.float32
    np.testing.assert_allclose(obs32.double().numpy(), obs64, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(r32.double().numpy(), r64, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,low,high", [
    ("cartpole", [-0.05] * 4, [0.05] * 4),
    ("pendulum", [-PI, -1.0], [PI, 1.0]),
    ("mountain_car", [-0.6, 0.0], [-0.4, 0.0]),
    ("acrobot", [-0.1] * 4, [0.1] * 4),
])
def test_initial_states_match_gymnasium_reset_bounds(make_env, name, low, high):
    env = make_env(name, num_envs=4096)
    s = env.sample_init(4096).double().numpy()
    assert (s >= np.array(low) - 1e-7).all() and (s <= np.array(high) + 1e-7).all()
    spread = s.max(0) - s.min(0)
    np.testing.assert_allclose(spread, np.array(high) - np.array(low), rtol=0.02, atol=1e-9)
