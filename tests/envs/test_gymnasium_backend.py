"""The gymnasium backend (envs/gymnasium.py) against gymnasium's own envs stepped by hand.

Every adapter check compares, with exact equality, the adapter's tensors with single
``gym.make`` copies stepped with the same seeds and the same (rescaled) actions and reset by
hand when an episode ends: observations (flattened), rewards, terminated/truncated, final
observations and success. A tiny in-test env (dict observation, asymmetric action bounds,
``is_success``) covers the structure without any simulator; Pendulum-v1 needs only
gymnasium; MuJoCo (HalfCheetah-v5, Ant-v5) and gymnasium-robotics (FetchPush-v4,
HandManipulateBlock-v1) tests are skipped with the reason when those packages are absent.
"""
from __future__ import annotations

import importlib.util
import os
import types
from typing import Any, Dict, Optional

import gymnasium as gym
import numpy as np
import pytest
import torch

from envs import registry
from envs.registry import EnvConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAS_SAME_STEP = hasattr(gym.vector, "AutoresetMode")
pytestmark = pytest.mark.skipif(not HAS_SAME_STEP, reason=f"the gymnasium backend needs gymnasium>=1.1 "
                                f"(installed: {gym.__version__})")


def _has_mujoco() -> bool:
    return importlib.util.find_spec("mujoco") is not None


def _has_robotics() -> bool:
    return _has_mujoco() and importlib.util.find_spec("gymnasium_robotics") is not None


needs_mujoco = pytest.mark.skipif(not _has_mujoco(), reason='mujoco is not installed (pip install -e ".[mujoco]")')
needs_robotics = pytest.mark.skipif(not _has_robotics(),
                                    reason='gymnasium-robotics is not installed (pip install -e ".[robotics]")')


# ---- a tiny env with the shapes of the robotics tasks, no simulator -------------------------
class DictGoalEnv(gym.Env):
    """Dict observation (``observation`` = the raw action received, ``achieved_goal`` = step
    count, ``desired_goal`` = a seeded constant), asymmetric action bounds, ``is_success`` =
    1 on even steps; terminates at ``terminate_at`` steps when given. Frames encode the step."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, terminate_at: Optional[int] = None, render_mode: Optional[str] = None) -> None:
        self.observation_space = gym.spaces.Dict({
            "observation": gym.spaces.Box(-np.inf, np.inf, (2,), np.float64),
            "achieved_goal": gym.spaces.Box(-np.inf, np.inf, (1,), np.float64),
            "desired_goal": gym.spaces.Box(-np.inf, np.inf, (1,), np.float64)})
        self.action_space = gym.spaces.Box(np.array([-2.0, 0.0], np.float32),
                                           np.array([2.0, 4.0], np.float32), dtype=np.float32)
        self.terminate_at, self.render_mode = terminate_at, render_mode
        self.t, self.goal, self.last = 0, 0.0, np.zeros(2)

    def _obs(self) -> Dict[str, np.ndarray]:
        return {"observation": self.last.astype(np.float64), "achieved_goal": np.array([float(self.t)]),
                "desired_goal": np.array([self.goal])}

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        self.t, self.last = 0, np.zeros(2)
        self.goal = float(self.np_random.uniform(-1.0, 1.0))
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        self.last = np.asarray(action, np.float64).copy()
        terminated = self.terminate_at is not None and self.t >= self.terminate_at
        return self._obs(), float(self.t), terminated, False, {"is_success": float(self.t % 2 == 0)}

    def render(self):
        return np.full((5, 7, 3), 10 * self.t, np.uint8)  # odd sizes on purpose


TEST_ID = "CpoTestDictGoal-v0"
if TEST_ID not in gym.registry:
    gym.register(TEST_ID, entry_point=DictGoalEnv, max_episode_steps=6)


def make(num_envs: int, max_episode_steps: Optional[int] = None, seed: int = 0, **params: Any):
    """The adapter through the registry (as train.py builds it)."""
    cfg = types.SimpleNamespace(name="gymnasium", num_envs=num_envs, max_episode_steps=max_episode_steps,
                                params=params)
    registry.check_params("gymnasium", params)
    return registry.make(cfg, device="cpu", seed=seed)


def flat(obs: Any) -> np.ndarray:
    """One env's observation flattened like the adapter (Dict keys in the space's sorted order)."""
    if isinstance(obs, dict):
        return np.concatenate([np.asarray(obs[k], np.float32).reshape(-1) for k in sorted(obs)])
    return np.asarray(obs, np.float32).reshape(-1)


def compare_with_reference(env_id: str, num_envs: int, steps: int, max_episode_steps: Optional[int],
                           seed: int = 3, make_kwargs: Optional[Dict[str, Any]] = None,
                           **params: Any) -> Dict[str, Any]:
    """Step the adapter and ``num_envs`` hand-reset ``gym.make`` copies with the same actions;
    assert exact equality of every output; return counts of what happened."""
    env = make(num_envs, max_episode_steps, seed=seed, id=env_id, kwargs=dict(make_kwargs or {}), **params)
    extra = dict(make_kwargs or {})
    if max_episode_steps is not None:
        extra["max_episode_steps"] = max_episode_steps
    refs = [gym.make(env_id, **extra) for _ in range(num_envs)]
    ref_obs = [r.reset(seed=seed + i)[0] for i, r in enumerate(refs)]  # gymnasium's seed + i rule
    obs = env.reset(seed=seed)
    np.testing.assert_array_equal(obs.numpy(), np.stack([flat(o) for o in ref_obs]))
    act_space = refs[0].action_space
    g = torch.Generator().manual_seed(seed)
    counts = {"terminated": 0, "truncated": 0, "success": []}
    for _ in range(steps):
        a = 1.3 * torch.randn(num_envs, env.act_dim, generator=g)  # partly outside [-1, 1]
        obs, rew, term, trunc, info = env.step(a)
        assert obs.dtype == torch.float32 and rew.dtype == torch.float32 and term.dtype == torch.bool
        # the affine map [-1, 1] -> [low, high] = centre + half-range * a, in float32
        low, high = act_space.low.astype(np.float32), act_space.high.astype(np.float32)
        scaled = (high + low) / 2 + (high - low) / 2 * a.clamp(-1, 1).numpy()
        for i, r in enumerate(refs):
            o, rw, te, tr, inf = r.step(scaled[i].astype(act_space.dtype))
            tr = tr and not te
            assert bool(term[i]) == te and bool(trunc[i]) == tr
            assert float(rew[i]) == np.float32(rw)
            np.testing.assert_array_equal(info["final_obs"][i].numpy(), flat(o))
            if te or tr:
                counts["terminated" if te else "truncated"] += 1
                if "is_success" in inf:
                    assert float(info["log"]["success"][i]) == float(inf["is_success"])
                    counts["success"].append(float(inf["is_success"]))
                o, _ = r.reset()
            np.testing.assert_array_equal(obs[i].numpy(), flat(o))
    env.close()
    return counts


# ---- parameters and errors (no simulator) ---------------------------------------------------
def test_registered_lazily_and_params_validated():
    """``gymnasium`` is a registered task; bad parameters fail naming key, value and rule."""
    assert "gymnasium" in registry.names()
    with pytest.raises(EnvConfigError, match=r"env\.params\.id='HalfCheeta-v5' is invalid: is not a "
                                             r"registered gymnasium id.*did you mean 'HalfCheetah-v5'"):
        registry.check_params("gymnasium", {"id": "HalfCheeta-v5"})
    with pytest.raises(EnvConfigError, match=r"env\.params\.id='' is invalid: must name a gymnasium env id"):
        registry.check_params("gymnasium", {})
    with pytest.raises(EnvConfigError, match=r"env\.params\.vectorization='threads' is invalid: must be sync or async"):
        registry.check_params("gymnasium", {"id": TEST_ID, "vectorization": "threads"})
    with pytest.raises(EnvConfigError, match=r"env\.params\.render_mode='human' is invalid"):
        registry.check_params("gymnasium", {"id": TEST_ID, "render_mode": "human"})
    with pytest.raises(EnvConfigError, match=r"env\.params\.imports=\['no_such_module_xyz'\] is invalid: cannot import"):
        registry.check_params("gymnasium", {"id": TEST_ID, "imports": ["no_such_module_xyz"]})
    with pytest.raises(EnvConfigError, match=r"env\.params\.idd=.*did you mean 'id'"):
        registry.check_params("gymnasium", {"idd": TEST_ID})


def test_unknown_id_fails_in_config_validation():
    """Through the training config: one ConfigError line before any env is built."""
    from hydra import compose, initialize_config_dir

    from cpo.app import to_train_config
    from cpo.utils.config import ConfigError, validate

    with initialize_config_dir(os.path.join(ROOT, "conf"), version_base="1.3"):
        cfg = to_train_config(compose("config", overrides=["env.name=gymnasium", "+env.params.id=Antt-v5",
                                                           "env.num_envs=6"]))
    with pytest.raises(ConfigError, match=r"env\.params\.id='Antt-v5'.*did you mean 'Ant-v5'"):
        validate(cfg)


def test_discrete_actions_are_refused():
    """CartPole-v1's Discrete actions cannot feed a Gaussian policy: a clear error."""
    with pytest.raises(EnvConfigError, match=r"env\.params\.id='CartPole-v1' is invalid: its action space "
                                             r"Discrete\(2\) is not a Box"):
        make(2, id="CartPole-v1")


# ---- structure, without a simulator ---------------------------------------------------------
def test_dict_obs_rescaling_final_obs_success_and_limits():
    """Dict flattening order, action rescaling to [(-2, 0), (2, 4)], same-step autoreset with
    final_obs, termination vs truncation, success from is_success, the id's own time limit."""
    env = make(3, id=TEST_ID, kwargs={"terminate_at": 4})
    assert env.obs_dim == 4 and env.act_dim == 2 and env.max_episode_steps == 6
    assert env.observation_space.dtype == np.float32 and env.render_fps == 10
    obs = env.reset(seed=7)
    refs = [DictGoalEnv() for _ in range(3)]
    goals = [r.reset(seed=7 + i)[0]["desired_goal"][0] for i, r in enumerate(refs)]  # seed + i
    assert obs[:, 0].tolist() == [0.0, 0.0, 0.0]  # achieved_goal first (sorted keys)
    assert obs[:, 1].tolist() == [float(np.float32(g)) for g in goals]  # then desired_goal
    a = torch.tensor([[-1.0, -1.0], [0.0, 0.0], [1.0, 5.0]])  # 5.0 is clamped to 1
    for t in range(1, 5):
        obs, rew, term, trunc, info = env.step(a)
        assert rew.tolist() == [float(t)] * 3
        if t < 4:
            assert not term.any() and not trunc.any() and "success" in info["log"]
            assert torch.equal(info["final_obs"], obs)
            assert obs[:, 0].tolist() == [float(t)] * 3
            # raw actions received, in the order observation[0], observation[1] (columns 2, 3)
            assert obs[:, 2:].tolist() == [[-2.0, 0.0], [0.0, 2.0], [2.0, 4.0]]
    # step 4 terminated every copy: final_obs holds step 4, obs the next episode's start
    assert term.tolist() == [True] * 3 and trunc.tolist() == [False] * 3
    assert info["final_obs"][:, 0].tolist() == [4.0] * 3 and obs[:, 0].tolist() == [0.0] * 3
    assert obs[:, 2:].abs().sum() == 0
    assert info["log"]["success"].tolist() == [1.0, 1.0, 1.0]  # step 4 is even
    # the finished episode's goal is in final_obs; the next one continues each copy's RNG
    assert info["final_obs"][:, 1].tolist() == [float(np.float32(g)) for g in goals]
    assert obs[:, 1].tolist() == [float(np.float32(r.reset()[0]["desired_goal"][0])) for r in refs]
    env.close()
    # an explicit env.max_episode_steps overrides the id's limit: truncation after 3 steps
    env = make(2, max_episode_steps=3, id=TEST_ID)
    assert env.max_episode_steps == 3
    env.reset(seed=0)
    for _ in range(3):
        obs, rew, term, trunc, info = env.step(torch.zeros(2, 2))
    assert trunc.tolist() == [True, True] and term.tolist() == [False, False]
    assert info["log"]["success"].tolist() == [0.0, 0.0]  # step 3 is odd
    env.close()


def test_dict_env_matches_reference_and_async():
    """The same checks against hand-stepped copies, sync and async (worker processes)."""
    for vec in ("sync", "async"):
        counts = compare_with_reference(TEST_ID, 3, 14, None, vectorization=vec,
                                        make_kwargs={"terminate_at": 5})
        assert counts["terminated"] == 6 and counts["truncated"] == 0
        assert counts["success"] == [0.0] * 6  # step 5 is odd


def test_reset_envs_resets_only_masked_rows():
    """nonfinite=reset support: gymnasium's reset_mask resets just the masked copies."""
    env = make(3, id=TEST_ID)
    env.reset(seed=1)
    for _ in range(2):
        obs, *_ = env.step(torch.zeros(3, 2))
    obs = env.reset_envs(torch.tensor([False, True, False]))
    assert obs[:, 0].tolist() == [2.0, 0.0, 2.0]
    env.close()


def test_render_frames_and_video(tmp_path):
    """render(env_id) returns the copy's frame; eval's video writer pads odd sizes to even."""
    pytest.importorskip("imageio_ffmpeg", reason='video needs imageio-ffmpeg (pip install -e ".[video]")')
    import imageio.v2 as imageio

    from cpo.utils.config import TrainConfig
    from cpo.tools.evaluation import record_video
    from cpo.runners.runner import build_model

    env = make(2, id=TEST_ID, render_mode="rgb_array")
    env.reset(seed=0)
    env.step(torch.zeros(2, 2))
    frame = env.render(1)
    assert frame.shape == (5, 7, 3) and frame.dtype == np.uint8 and int(frame[0, 0, 0]) == 10
    assert make(1, id=TEST_ID).render(0) is None  # no render_mode: no frames
    cfg = TrainConfig()
    cfg.env.name, cfg.env.num_envs, cfg.env.params = "gymnasium", 1, {"id": TEST_ID}
    model = build_model(cfg, env.obs_dim, env.act_dim)
    env.close()
    out = record_video(model, cfg, str(tmp_path / "v.mp4"), episodes=2)  # 2 x 6 steps (the id's limit)
    assert out["frames"] == 12 and out["episode_lengths"] == [6, 6] and out["size"] == [6, 8]
    assert out["fps"] == 10  # the env's render_fps
    reader = imageio.get_reader(out["path"])
    assert reader.count_frames() == 12 and reader.get_data(0).shape == (6, 8, 3)


def test_pendulum_matches_gymnasium_and_trains():
    """Pendulum-v1 (bounds [-2, 2], needs only gymnasium) equals hand-stepped copies exactly,
    and PPO runs through the Runner with the right episode length."""
    counts = compare_with_reference("Pendulum-v1", 3, 25, 10)
    assert counts["truncated"] == 6 and counts["terminated"] == 0
    from cpo.runners.runner import Runner
    from tests.test_config import composed

    cfg = composed("algo=ppo", "env.name=gymnasium", "+env.params.id=Pendulum-v1", "env.num_envs=4",
                   "env.max_episode_steps=10", "algo.horizon=20", "algo.num_minibatches=2",
                   "max_iterations=2", "log.progress=false", "log.tensorboard=false", "device=cpu")
    import tempfile

    runner = Runner(cfg, tempfile.mkdtemp(prefix="gym_pendulum_"))
    out = runner.train()
    assert runner.env_steps == 2 * 4 * 20 and out["rollout/ep_len"] == 10.0
    assert all(np.isfinite(out[f"losses/{k}"]) for k in ("policy", "value"))
    runner.env.close()


# ---- MuJoCo ---------------------------------------------------------------------------------
@needs_mujoco
def test_halfcheetah_matches_gymnasium():
    """HalfCheetah-v5 (never terminates): 3 copies x 120 steps, truncated at 50."""
    counts = compare_with_reference("HalfCheetah-v5", 3, 120, 50)
    assert counts["truncated"] == 6 and counts["terminated"] == 0
    env = make(2, id="HalfCheetah-v5")
    assert (env.obs_dim, env.act_dim, env.max_episode_steps, env.solved_return) == (17, 6, 1000, 4800.0)
    env.close()


@needs_mujoco
def test_ant_async_matches_gymnasium():
    """Ant-v5 in worker processes (async): 2 copies x 150 steps, truncated at 40; an Ant
    that falls (unhealthy torso height) terminates instead."""
    counts = compare_with_reference("Ant-v5", 2, 150, 40, vectorization="async")
    assert counts["terminated"] + counts["truncated"] >= 6
    env = make(2, id="Ant-v5")
    assert (env.obs_dim, env.act_dim) == (105, 8)
    env.close()


@needs_mujoco
def test_halfcheetah_preset_trains_one_iteration():
    """conf/env/gym_halfcheetah.yaml composes, validates and runs one PPO iteration."""
    from cpo.runners.runner import Runner
    from tests.test_config import composed

    cfg = composed("algo=ppo", "env=gym_halfcheetah", "max_iterations=1", "log.progress=false",
                   "log.tensorboard=false", "device=cpu")
    import tempfile

    runner = Runner(cfg, tempfile.mkdtemp(prefix="gym_cheetah_"))
    out = runner.train()
    assert runner.env_steps == cfg.env.num_envs * cfg.algo.horizon
    assert np.isfinite(out["losses/policy"])
    runner.env.close()


# ---- gymnasium-robotics ---------------------------------------------------------------------
@needs_robotics
@pytest.mark.parametrize("env_id,obs_dim,act_dim", [("FetchPush-v4", 31, 4),
                                                    ("HandManipulateBlock-v1", 75, 20)])
def test_robotics_dict_obs_and_success_match(env_id, obs_dim, act_dim):
    """Fetch push and the Shadow hand's block reorientation: dict observations flattened
    (achieved_goal, desired_goal, observation), success from is_success at episode ends."""
    counts = compare_with_reference(env_id, 2, 24, 8, imports=["gymnasium_robotics"])
    assert counts["truncated"] == 6 and len(counts["success"]) == 6
    assert set(counts["success"]) <= {0.0, 1.0}
    env = make(2, id=env_id, imports=["gymnasium_robotics"])
    assert (env.obs_dim, env.act_dim) == (obs_dim, act_dim)
    env.close()


@needs_robotics
def test_robotics_id_needs_its_import():
    """A robotics id without env.params.imports fails naming the fix (in a fresh process,
    where gymnasium_robotics has not registered its ids yet)."""
    import subprocess
    import sys

    code = ("from envs import registry\n"
            "try:\n registry.check_params('gymnasium', {'id': 'FetchPush-v4'})\n"
            "except registry.EnvConfigError as e:\n print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True).stdout
    assert "env.params.id='FetchPush-v4' is invalid: is not a registered gymnasium id" in out
    assert "env.params.imports=[gymnasium_robotics]" in out
