"""Every registered embedded task honours the VecEnv contract of :mod:`envs.base`."""
from __future__ import annotations

import dataclasses
import importlib
import os
import re
import shutil
import subprocess
import types
from typing import Any, Dict, Optional

import numpy as np
import pytest
import torch

from envs import registry
from envs.registry import EnvConfigError

NAMES = registry.names()
EMBEDDED = ["acrobot", "arm_reach", "cartpole", "mountain_car", "pendulum", "point_maze"]

#: one invalid value per task (key, value) besides the shared dtype check
INVALID = {
    "cartpole": ("dtype", "float16"),
    "pendulum": ("g", -9.8),
    "mountain_car": ("goal_velocity", 0.5),
    "acrobot": ("dtype", "half"),
    "point_maze": ("layout", "no_such_maze"),
    "arm_reach": ("num_links", 1),
}


def random_actions(env, steps: int, seed: int = 123, scale: float = 1.5) -> torch.Tensor:
    """``[steps, N, act_dim]`` Gaussian actions (partly outside [-1, 1] on purpose)."""
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(steps, env.num_envs, env.act_dim, generator=g)


def test_all_embedded_tasks_registered():
    assert set(EMBEDDED) <= set(NAMES)


@pytest.mark.parametrize("name", EMBEDDED)
def test_module_docstring_documents_the_task(name):
    spec = registry.spec(name)
    doc = importlib.import_module(spec.factory.__module__).__doc__
    for section in ("Dynamics", "Action", "Observation", "Reward", "Termination",
                    "Time limit", "Success", "olved"):
        assert section in doc, f"{name}: module docstring lacks {section!r}"
    assert spec.solved_return is not None
    for field in dataclasses.fields(spec.params):
        assert field.type is not None


@pytest.mark.parametrize("name", EMBEDDED)
def test_shapes_dtypes_device(make_env, name):
    env = make_env(name, num_envs=8)
    n, d, k = env.num_envs, env.obs_dim, env.act_dim
    assert env.observation_space.shape == (d,) and env.action_space.shape == (k,)
    assert (env.action_space.low == -1).all() and (env.action_space.high == 1).all()
    assert env.max_episode_steps == registry.spec(name).max_episode_steps
    obs = env.reset(seed=1)
    assert obs.shape == (n, d) and obs.dtype == torch.float32 and obs.device == env.device
    for a in random_actions(env, 5):
        obs, rew, term, trunc, info = env.step(a)
        assert obs.shape == (n, d) and obs.dtype == torch.float32
        assert rew.shape == (n,) and rew.dtype == torch.float32
        assert term.shape == (n,) and term.dtype == torch.bool
        assert trunc.shape == (n,) and trunc.dtype == torch.bool
        assert info["final_obs"].shape == (n, d) and info["final_obs"].dtype == torch.float32
        for val in info["log"].values():
            assert val.shape == (n,) and val.is_floating_point()
        for t in (obs, rew, term, trunc, info["final_obs"]):
            assert t.device == env.device
        assert torch.isfinite(obs).all() and torch.isfinite(rew).all()


@pytest.mark.parametrize("name", EMBEDDED)
def test_actions_are_clamped(make_env, name):
    env = make_env(name, num_envs=32)
    env.reset(seed=0)
    a = random_actions(env, 1, scale=3.0)[0]
    saved = env.state_dict()
    out_big = env.step(a)
    env.load_state_dict(saved)
    out_clamped = env.step(a.clamp(-1, 1))
    for x, y in zip(out_big[:4], out_clamped[:4]):
        assert torch.equal(x, y)


@pytest.mark.parametrize("name", EMBEDDED)
def test_autoreset_at_time_limit(make_env, name):
    env = make_env(name, num_envs=64)
    env.reset(seed=2)
    for a in random_actions(env, 3):  # some way into the episode
        env.step(a)
    env.t.fill_(env.max_episode_steps - 1)  # every env is at its last step
    pre_state, gen_state = env.state.clone(), env.gen.get_state()
    a = random_actions(env, 1, seed=9)[0].clamp(-1, 1)
    obs, rew, term, trunc, info = env.step(a)
    # expected: the step from the pre-step state, then fresh states from the same generator
    next_state, exp_rew, exp_term, _ = env.dynamics(pre_state, a)
    env.gen.set_state(gen_state)
    fresh = env.sample_init(env.num_envs)
    assert torch.equal(term, exp_term) and torch.equal(rew, exp_rew)
    assert torch.equal(trunc, ~exp_term)  # every unterminated env is truncated
    assert not (term & trunc).any()
    assert torch.equal(info["final_obs"], env.observe(next_state))
    assert torch.equal(obs, env.observe(fresh))
    assert torch.equal(env.state, fresh) and (env.t == 0).all()


@pytest.mark.parametrize("name", EMBEDDED)
def test_episode_bookkeeping(make_env, name):
    """Never terminated and truncated together; truncation exactly at the limit; final_obs
    equals obs in rows that did not end."""
    limit = 7
    env = make_env(name, num_envs=64, max_episode_steps=limit)
    assert env.max_episode_steps == limit
    env.reset(seed=3)
    length = torch.zeros(env.num_envs, dtype=torch.long)
    for a in random_actions(env, 3 * limit + 2):
        obs, rew, term, trunc, info = env.step(a)
        length += 1
        assert not (term & trunc).any()
        assert torch.equal(trunc, (length == limit) & ~term)
        running = ~(term | trunc)
        assert torch.equal(info["final_obs"][running], obs[running])
        length = torch.where(term | trunc, torch.zeros_like(length), length)


@pytest.mark.parametrize("name", EMBEDDED)
def test_seeded_determinism(make_env, name):
    def rollout(seed: int) -> torch.Tensor:
        env = make_env(name, num_envs=16, max_episode_steps=6, seed=seed)
        outs = [env.reset()]
        for a in random_actions(env, 15):
            obs, rew, term, trunc, info = env.step(a)
            outs += [obs, rew[:, None], info["final_obs"]]
        return torch.cat(outs, -1)

    assert torch.equal(rollout(5), rollout(5))
    assert not torch.equal(rollout(5), rollout(6))
    env = make_env(name, num_envs=16)
    first = env.reset(seed=11)
    env.step(random_actions(env, 1)[0])
    assert torch.equal(env.reset(seed=11), first)  # reset(seed) re-seeds


@pytest.mark.parametrize("name", EMBEDDED)
def test_state_dict_round_trip(make_env, name):
    env = make_env(name, num_envs=16, max_episode_steps=5, seed=1)
    env.reset()
    acts = random_actions(env, 20)
    for a in acts[:7]:
        env.step(a)
    saved = env.state_dict()
    ref = [torch.cat((o, r[:, None]), -1) for o, r, *_ in (env.step(a) for a in acts[7:])]
    other = make_env(name, num_envs=16, max_episode_steps=5, seed=99)
    other.reset()
    other.load_state_dict(saved)
    got = [torch.cat((o, r[:, None]), -1) for o, r, *_ in (other.step(a) for a in acts[7:])]
    for x, y in zip(ref, got):
        assert torch.equal(x, y)


@dataclasses.dataclass
class _EnvCfg:
    name: str
    num_envs: int = 4
    max_episode_steps: Optional[int] = None
    params: Dict[str, Any] = dataclasses.field(default_factory=dict)


@pytest.mark.parametrize("name", EMBEDDED)
def test_registry_make_with_namespace_and_dataclass(name):
    ns = types.SimpleNamespace(name=name, num_envs=4, max_episode_steps=None, params={})
    for cfg in (ns, _EnvCfg(name)):
        env = registry.make(cfg, device="cpu", seed=0)
        assert env.num_envs == 4 and env.obs_dim >= 1
        assert env.solved_return == registry.spec(name).solved_return
    env = registry.make(_EnvCfg(name, max_episode_steps=3), device=torch.device("cpu"))
    assert env.max_episode_steps == 3


@pytest.mark.parametrize("name", EMBEDDED)
def test_unknown_and_invalid_params_raise(name):
    with pytest.raises(EnvConfigError, match=r"env\.params\.no_such_key="):
        registry.make(_EnvCfg(name, params={"no_such_key": 1}))
    with pytest.raises(EnvConfigError, match=r"env\.params\.dtype='float16'"):
        registry.make(_EnvCfg(name, params={"dtype": "float16"}))
    key, value = INVALID[name]
    with pytest.raises(EnvConfigError, match=re.escape(f"env.params.{key}={value!r}")):
        registry.make(_EnvCfg(name, params={key: value}))
    with pytest.raises(EnvConfigError, match=r"env\.name='carpole'.*did you mean 'cartpole'"):
        registry.make(_EnvCfg("carpole"))


@pytest.mark.parametrize("name", EMBEDDED)
def test_float64_build(make_env, name):
    env = make_env(name, num_envs=4, dtype="float64")
    obs = env.reset(seed=0)
    assert obs.dtype == torch.float64 and env.observation_space.dtype == np.float64
    obs, rew, *_ = env.step(torch.zeros(4, env.act_dim))
    assert obs.dtype == torch.float64 and rew.dtype == torch.float64


@pytest.mark.parametrize("name", EMBEDDED)
def test_render(make_env, name):
    env = make_env(name, num_envs=3)
    env.reset(seed=0)
    env.step(random_actions(env, 1)[0])
    for i in (0, 2):
        img = env.render(i)
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
        assert img.shape[0] >= 64 and img.shape[1] >= 64 and img.std() > 0


@pytest.mark.skipif(shutil.which("vermin") is None, reason="vermin is not installed")
def test_envs_import_on_python_38():
    out = subprocess.run(["vermin", "-t=3.8-", "--no-tips", "--eval-annotations", "--violations",
                          "envs"], cwd=os.path.dirname(os.path.dirname(registry.__file__)),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", EMBEDDED)
def test_cuda_matches_cpu(make_env, name):
    """Same states and actions give the same step on the GPU (float64, so bit-level noise of
    the math libraries stays far below the tolerance); everything stays on the device."""
    cpu = make_env(name, num_envs=256, dtype="float64")
    cfg = types.SimpleNamespace(name=name, num_envs=256, max_episode_steps=None,
                                params={"dtype": "float64"})
    gpu = registry.make(cfg, device="cuda", seed=0)
    assert gpu.state.device.type == "cuda"
    s = cpu.sample_init(256)
    a = random_actions(cpu, 1)[0].clamp(-1, 1)
    ns_c, r_c, t_c, _ = cpu.dynamics(s, a)
    ns_g, r_g, t_g, _ = gpu.dynamics(s.cuda(), a.cuda())
    torch.testing.assert_close(ns_g.cpu(), ns_c, rtol=0, atol=1e-9)
    torch.testing.assert_close(r_g.cpu(), r_c, rtol=0, atol=1e-9)
    assert torch.equal(t_g.cpu(), t_c)
    obs, rew, term, trunc, info = gpu.step(a.cuda())
    for t in (obs, rew, term, trunc, info["final_obs"], *info["log"].values()):
        assert t.device.type == "cuda"
