"""The Isaac Gym adapter (``envs/isaacgym.py``) against a model of IsaacGymEnvs' semantics
(``tests/isaacgym_double.py``), its error messages without Isaac Gym, the paper presets, and a
type check of the adapter against ``isaacgym-stubs``. Isaac Gym itself cannot run here (it
needs Python 3.8 and NVIDIA's tarball); CUDA checks skip without a GPU."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import types
from typing import Any

import pytest
import torch

from cpo.utils.config import ConfigError, TrainConfig, validate
from envs import registry
from envs.registry import EnvConfigError
from tests import isaacgym_double as D

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONF = os.path.join(ROOT, "conf")
REAL_ISAACGYM = importlib.util.find_spec("isaacgym") is not None


def make(num_envs: int = 8, max_episode_steps: Any = None, seed: int = 0, device: str = "cpu", **params: Any):
    """``registry.make`` of the ``isaacgym`` backend with ``params``."""
    cfg = types.SimpleNamespace(name="isaacgym", num_envs=num_envs, max_episode_steps=max_episode_steps,
                                params=params)
    return registry.make(cfg, device=device, seed=seed)


@pytest.fixture
def double(tmp_path, monkeypatch):
    """The Isaac Gym / IsaacGymEnvs double, installed for one test (isaacgym imported first)."""
    return D.install(str(tmp_path / "site"), monkeypatch)


# ---- without Isaac Gym ------------------------------------------------------------------------
@pytest.mark.skipif(REAL_ISAACGYM, reason="Isaac Gym is installed: the 'absent' messages cannot be shown")
def test_absent_isaacgym_fails_naming_what_to_install(tmp_path):
    """Registered lazily (nothing imported at registration or validation); building fails with
    a message naming Isaac Gym Preview 4 and IsaacGymEnvs, as a config error in a run."""
    from cpo.app import run

    spec = registry.spec("isaacgym")
    assert spec.max_episode_steps == 0 and "isaacgym" not in sys.modules
    registry.check_params("isaacgym", {"task": "ShadowHand"})
    with pytest.raises(EnvConfigError, match=r"Isaac Gym Preview 4.*pip install -e isaacgym/python.*IsaacGymEnvs"):
        make(task="ShadowHand")
    cfg = TrainConfig(device="cpu", max_iterations=1)
    cfg.env.name, cfg.env.num_envs, cfg.env.params = "isaacgym", 6, {"task": "ShadowHand"}
    with pytest.raises(ConfigError, match="Isaac Gym Preview 4"):
        run(cfg, run_dir=str(tmp_path))
    assert "isaacgym" not in sys.modules


@pytest.mark.skipif(REAL_ISAACGYM, reason="Isaac Gym is installed: the 'absent' messages cannot be shown")
def test_train_py_with_a_paper_preset_says_what_to_install(tmp_path):
    """``python train.py experiment=<paper preset>`` (train.py tries ``import isaacgym`` before
    torch for it) ends with one config-error line and exit code 2."""
    proc = subprocess.run([sys.executable, "train.py", "experiment=humanoid_ppo", "log.progress=false",
                           f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "config error: env.name='isaacgym' needs NVIDIA Isaac Gym Preview 4" in proc.stderr


def test_train_py_imports_isaacgym_first_only_when_selected(tmp_path):
    import train

    assert train.isaacgym_requested(["train.py", "experiment=shadow_hand"])
    assert train.isaacgym_requested(["train.py", "+experiment=allegro_kuka_throw_sapg"])
    assert train.isaacgym_requested(["train.py", "env.name=isaacgym", "+env.params.task=Humanoid"])
    assert not train.isaacgym_requested(["train.py", "experiment=anymal", "env.name=cartpole"])
    assert not train.isaacgym_requested(["train.py", "env=cartpole", "algo=ppo"])
    (tmp_path / "resolved_config.yaml").write_text("seed: 0\nenv:\n  name: isaacgym\n  num_envs: 6\n")
    assert train.isaacgym_requested(["train.py", f"resume={tmp_path}"])


def test_torch_imported_before_isaacgym_is_explained(tmp_path, monkeypatch):
    """Isaac Gym refuses to load after torch; the adapter says how to import it first."""
    D.install(str(tmp_path / "site"), monkeypatch, isaacgym_imported=False)
    with pytest.raises(EnvConfigError, match=r"imported before torch.*train\.py"):
        make(task="ReachHand")


# ---- parameters and presets -----------------------------------------------------------------------
@pytest.mark.parametrize("key,value,rule", [
    ("task", "Shadow Hand", "IsaacGymEnvs task config name"),
    ("overrides", ["task.env.numEnvs"], "key=value strings"),
    ("overrides", "task.sim.dt=0.01", "key=value strings"),
    ("physics_engine", "bullet", "physx or flex"),
    ("graphics_device_id", -2, ">= -1"),
])
def test_invalid_params_name_key_value_and_rule(key, value, rule):
    with pytest.raises(EnvConfigError, match=rf"env\.params\.{key}=.*{rule}"):
        registry.check_params("isaacgym", {"task": "ShadowHand", key: value})
    with pytest.raises(EnvConfigError, match="did you mean 'privileged'"):
        registry.check_params("isaacgym", {"privilged": True})


def test_unknown_task_and_subtask_list_what_exists(double):
    with pytest.raises(EnvConfigError, match=r"no task config NoSuchTask\.yaml \(available: .*ReachHand"):
        registry.check_params("isaacgym", {"task": "NoSuchTask"})
    with pytest.raises(EnvConfigError, match=r"no subtask 'fly' .*reorientation, throw"):
        registry.check_params("isaacgym", {"task": "ReachKukaLSTM_fly"})


def test_paper_presets_validate_and_name_isaacgymenvs_tasks():
    """Every CPO paper preset (the _sapg / _ppo ones inherit its env) passes validation (no
    simulator needed for that) and names an IsaacGymEnvs task config, with the Kuka subtask
    as a suffix."""
    from hydra import compose, initialize_config_dir

    from cpo.app import to_train_config
    from envs.isaacgym import split_task

    names = sorted(f[:-5] for f in os.listdir(os.path.join(CONF, "experiment"))
                   if f.endswith(".yaml") and not f.endswith(("_sapg.yaml", "_ppo.yaml")))
    tasks = set()
    for name in names:
        with initialize_config_dir(CONF, version_base="1.3"):
            cfg = to_train_config(compose("config", overrides=[f"experiment={name}"]))
        if importlib.util.find_spec("isaacgymenvs") is None:
            validate(cfg)
        tasks.add(split_task(cfg.env.params["task"]))
    assert tasks == {("ShadowHand", None), ("AllegroHand", None), ("Humanoid", None), ("Anymal", None),
                     ("FrankaCubeStack", None), ("FrankaCubePush", None),
                     ("AllegroKukaLSTM", "regrasping"), ("AllegroKukaLSTM", "reorientation"),
                     ("AllegroKukaLSTM", "throw"), ("AllegroKukaTwoArmsLSTM", "reorientation")}


# ---- the contract against the double -----------------------------------------------------------
def test_spaces_dtypes_and_cpu_placement(double):
    env = make(num_envs=8, task="ReachHand")
    assert (env.num_envs, env.obs_dim, env.act_dim, env.max_episode_steps) == (8, 8, 3, 40)
    assert env.privileged_dim == 0 and env.has_final_obs
    assert env.task.device == "cpu" and env.task.rl_device == "cpu"
    assert env.task.cfg["sim"]["use_gpu_pipeline"] is False  # pipeline=cpu for a CPU run
    obs = env.reset(seed=0)
    assert obs.shape == (8, 8) and obs.dtype == torch.float32 and obs.device.type == "cpu"
    obs, rew, term, trunc, info = env.step(torch.zeros(8, 3))
    assert rew.shape == (8,) and rew.dtype == torch.float32
    assert term.dtype == torch.bool and trunc.dtype == torch.bool
    assert info["final_obs"] is obs and set(info["log"]) == {"consecutive_successes", "success"}
    assert "privileged" not in info
    assert rew.data_ptr() != env.task.rew_buf.data_ptr()  # not the task's reused buffer
    env.close()


def test_reset_flags_every_env_and_takes_one_step(double):
    """Hand-style tasks reset before the action (progress 1 after reset()); locomotion-style
    tasks reset after the physics (progress 0, observation of the fresh state)."""
    env = make(num_envs=6, task="ReachHand")
    env.reset()
    for _ in range(4):
        env.step(torch.rand(6, 3) * 2 - 1)
    calls = double.gym.simulate_calls
    env.reset()
    assert double.gym.simulate_calls == calls + 1
    assert torch.equal(env.task.progress_buf, torch.ones(6, dtype=torch.long))
    assert not env.task.reset_buf.any()
    env.close()
    pole = make(num_envs=6, task="Pole")
    obs = pole.reset()
    assert torch.equal(pole.task.progress_buf, torch.zeros(6, dtype=torch.long))
    assert torch.equal(obs, pole.task.pole.observe(pole.task.pole.state))
    assert obs.abs().max() <= 0.05  # CartPole's fresh states are uniform in [-0.05, 0.05]
    pole.close()


def test_done_rows_return_the_terminal_obs_then_reset_before_the_action(double):
    """ShadowHand-style: the done step returns the terminal observation (= final_obs); the
    next step resets the env first and applies its action to the fresh state."""
    env = make(num_envs=4, task="ReachHand", overrides=["task.env.fallAngle=0.35"])
    env.reset(seed=1)
    env.task.arm.state[:, 0] = 0.0  # first joint straight ...
    push = torch.zeros(4, 3)
    push[:, 0] = 1.0  # ... then +0.1 rad per step: the arm "drops" past 0.35 rad at step 4
    for k in range(4):
        obs, rew, term, trunc, info = env.step(push)
        assert bool(term.any()) == (k == 3), k
    assert term.all() and not trunc.any()
    q1 = torch.atan2(obs[:, 3], obs[:, 0])  # obs = [cos q (3), sin q (3), goal - tip (2)]
    assert (q1.abs() > 0.35).all()  # the terminal observation ...
    assert torch.equal(info["final_obs"], obs)  # ... is also final_obs
    assert env.task.reset_buf.all()  # not reset yet: that happens in the next step
    obs2, _, term2, trunc2, _ = env.step(torch.zeros(4, 3))
    assert not (term2 | trunc2).any()
    assert torch.equal(env.task.progress_buf, torch.ones(4, dtype=torch.long))
    assert (torch.atan2(obs2[:, 3], obs2[:, 0]).abs() <= 0.1 + 1e-6).all()  # fresh state, zero action
    env.close()


def test_done_rows_reset_after_the_physics_in_locomotion_tasks(double):
    """Humanoid-style: the action after a done acts on the terminal state and is lost; the
    returned observation is the fresh state's and its reward is the new episode's."""
    env = make(num_envs=4, task="Pole")
    env.reset(seed=2)
    for _ in range(200):
        obs, rew, term, trunc, info = env.step(torch.ones(4, 1))
        if term.any():
            break
    done = term
    assert done.any() and not trunc.any() and torch.all(rew[done] == -1.0)  # deathCost
    x, theta = obs[done, 0], obs[done, 2]
    assert ((x.abs() > 2.4) | (theta.abs() > 0.2094)).all() and torch.equal(info["final_obs"], obs)
    obs2, rew2, term2, _, _ = env.step(torch.ones(4, 1))
    assert (obs2[done].abs() <= 0.05).all()  # fresh state, the push of this step is lost
    assert torch.all(rew2[done] == 1.0) and not term2[done].any()
    assert torch.equal(env.task.progress_buf[done], torch.zeros(int(done.sum()), dtype=torch.long))
    env.close()


def test_time_outs_are_truncations_even_with_a_failure(double):
    """env.max_episode_steps -> task.env.episodeLength; time_outs -> truncated (bootstrap),
    also when the env fails on its last step (IsaacGymEnvs cannot tell them apart)."""
    env = make(num_envs=3, max_episode_steps=5, task="ReachHand")
    assert env.max_episode_steps == 5 and env.task.max_episode_length == 5
    env.reset(seed=3)  # progress 1 after the reset step; time-out at progress >= 4
    zero = torch.zeros(3, 3)
    for k in range(2):
        _, _, term, trunc, _ = env.step(zero)
        assert not (term | trunc).any(), k
    env.task.arm.state[0, 0] = 2.45  # env 0 also drops (fallAngle 2.5) on the time-out step
    push = zero.clone()
    push[0, 0] = 1.0
    obs, _, term, trunc, info = env.step(push)
    assert trunc.all() and not term.any()
    assert torch.equal(info["final_obs"], obs)
    env.close()


def test_success_counts_are_logged_per_finished_episode(double):
    """Goals reached in the episode (task.successes at the done step) -> log
    consecutive_successes; success = at least one goal. maxConsecutiveSuccesses ends it."""
    env = make(num_envs=4, task="ReachHand",
               overrides=["task.env.successTolerance=5.0", "task.env.maxConsecutiveSuccesses=3"])
    env.reset(seed=4)  # tolerance 5 > reach: every step reaches the goal (1 after the reset step)
    _, _, term, trunc, info = env.step(torch.zeros(4, 3))
    assert not (term | trunc).any() and torch.all(info["log"]["consecutive_successes"] == 2.0)
    _, _, term, trunc, info = env.step(torch.zeros(4, 3))
    assert term.all() and not trunc.any()  # 3 goals: the episode ends as a terminal one
    assert torch.all(info["log"]["consecutive_successes"] == 3.0) and torch.all(info["log"]["success"] == 1.0)
    kept = info["log"]["consecutive_successes"].clone()
    _, _, _, _, info = env.step(torch.zeros(4, 3))  # reset first, then one goal
    assert torch.all(info["log"]["consecutive_successes"] == 1.0) and torch.all(kept == 3.0)
    env.close()


def test_actions_are_clipped_to_the_unit_box_then_to_clip_actions(double):
    env = make(num_envs=4, task="ReachHand")
    env.reset()
    env.step(torch.tensor([[5.0, -5.0, 0.3]] * 4))
    assert torch.equal(env.task.actions[0], torch.tensor([1.0, -1.0, 0.3]))
    env.close()
    env = make(num_envs=4, task="ReachHand", overrides=["task.env.clipActions=0.5", "task.env.clipObservations=0.3"])
    obs = env.reset()
    env.step(torch.tensor([[5.0, -5.0, 0.3]] * 4))
    assert torch.equal(env.task.actions[0], torch.tensor([0.5, -0.5, 0.3]))
    assert obs.abs().max() <= 0.3
    env.close()


def test_asymmetric_states_become_the_privileged_observation(double):
    """privileged=true: obs_dict["states"] (ReachKuka has asymmetric states) is the critic's
    observation; the subtask suffix selects task/env=<subtask> and its class."""
    env = make(num_envs=4, task="ReachKukaLSTM_throw", privileged=True)
    assert type(env.task).__name__ == "ReachKukaThrow" and env.task.subtask == "throw"
    assert env.max_episode_steps == 30 and env.task.max_consecutive_successes == 2  # from env/throw.yaml
    assert env.privileged_dim == env.task.num_states == 13 and env.obs_dim == 8
    env.reset(seed=5)
    states = env.privileged()
    assert torch.equal(states, env.task.states_buf.clamp(-5, 5))
    obs, _, _, _, info = env.step(torch.zeros(4, 3))
    assert torch.equal(info["privileged"], env.privileged()) and info["final_privileged"] is info["privileged"]
    assert torch.equal(info["privileged"][:, -1], env.task.successes)  # the last state entry
    assert torch.equal(obs[:, -2:], info["privileged"][:, -3:-1])  # goal - tip in both views
    env.close()
    env = make(num_envs=4, task="ReachKukaLSTM_reorientation")
    assert env.privileged_dim == 0 and env.max_episode_steps == 50
    env.close()
    with pytest.raises(EnvConfigError, match=r"env\.params\.privileged=True: task 'ReachHand' has no states"):
        make(num_envs=4, task="ReachHand", privileged=True)
    env = make(num_envs=4, task="ReachHand", privileged=True,
               overrides=["task.env.asymmetric_observations=True"])
    assert env.privileged_dim == 13
    env.close()


def test_one_simulation_per_process_and_close(double):
    env = make(task="ReachHand")
    with pytest.raises(EnvConfigError, match="one simulation per process"):
        make(task="Pole")
    destroyed = double.gym.sims_destroyed
    env.close()
    env.close()  # idempotent
    assert double.gym.sims_destroyed == destroyed + 1 and double.vec_task.EXISTING_SIM is None
    make(task="Pole").close()


def test_seeded_runs_repeat(double):
    def trace(seed: int) -> torch.Tensor:
        env = make(num_envs=5, seed=seed, task="ReachHand")
        out = [env.reset(seed=seed)]
        g = torch.Generator().manual_seed(0)
        for _ in range(6):
            out.append(env.step(torch.rand(5, 3, generator=g) * 2 - 1)[0])
        env.close()
        return torch.stack(out)

    a, b, c = trace(3), trace(3), trace(4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_composition_inside_a_running_hydra_app(double):
    """train.py runs inside Hydra: composing IsaacGymEnvs' config must leave our global Hydra
    state and version base as they were."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.version import VersionBase

    with initialize_config_dir(CONF, version_base="1.3"):
        ours, base = GlobalHydra.instance().hydra, VersionBase.instance().getbase()
        env = make(task="Pole")
        assert GlobalHydra.instance().hydra is ours and VersionBase.instance().getbase() == base
        env.close()


def test_training_end_to_end_with_privileged_critic_and_truncation_bootstrap(double, tmp_path):
    """PPO through the runner on the double (privileged critic, time limit 4): the rollout's
    final_obs on done rows is the next stored obs (IsaacGymEnvs' terminal obs), and every value
    target (lambda = 0) is r + gamma * (1 - terminated) * V(final_privileged)."""
    from cpo.runners.runner import Runner

    cfg = TrainConfig(seed=0, device="cpu", max_iterations=2, torch_threads=1)
    cfg.env.name, cfg.env.num_envs, cfg.env.max_episode_steps = "isaacgym", 12, 4
    cfg.env.params = {"task": "ReachKukaLSTM_throw", "privileged": True}
    cfg.algo.horizon, cfg.algo.num_minibatches, cfg.algo.num_epochs, cfg.algo.gae_lambda = 8, 2, 1, 0.0
    cfg.net.actor_hidden, cfg.net.critic_hidden = [16], [16]
    cfg.log.progress, cfg.log.tensorboard = False, False
    r = Runner(cfg, str(tmp_path))
    assert r.model.asymmetric and r.model.critic[0].in_features == 13 + cfg.algo.latent_dim
    out = r.step()
    r.collect()  # a fresh rollout with the current model (its stored values are current)
    ro = r.storage
    done = ro.terminated | ro.truncated
    assert ro.truncated.any() and "rollout/consecutive_successes" in out and "rollout/success" in out
    assert torch.equal(ro.final_obs[done], ro.obs[1:][done])
    assert torch.equal(ro.final_privileged, ro.privileged[1:])
    batch = r.learner.build_batch(ro)
    T, N = ro.horizon, ro.num_envs
    with torch.no_grad():
        v_next = r.model.value(ro.final_privileged.reshape(T * N, -1), r.pol_env.repeat(T))
    want = ro.rewards.reshape(-1) + cfg.algo.gamma * (~ro.terminated).float().reshape(-1) * v_next
    assert torch.allclose(batch.ret[:T * N], want, atol=1e-5)
    r.env.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (Isaac Gym's GPU pipeline)")
def test_cuda_run_keeps_every_tensor_on_the_gpu(double):
    env = make(num_envs=4, device="cuda", task="ReachKukaLSTM_throw", privileged=True)
    assert env.task.device == "cuda:0" and env.task.cfg["sim"]["use_gpu_pipeline"] is True
    obs = env.reset()
    obs, rew, term, trunc, info = env.step(torch.zeros(4, 3, device="cuda"))
    for t in (obs, rew, term, trunc, info["final_obs"], info["privileged"], *info["log"].values()):
        assert t.device.type == "cuda"
    env.close()


# ---- static checks ------------------------------------------------------------------------------
MYPY_INI = """\
[mypy]
follow_imports = silent
ignore_missing_imports = True
warn_unused_ignores = True
[mypy-envs.isaacgym]
disallow_untyped_defs = True
check_untyped_defs = True
[mypy-isaacgym.*]
ignore_errors = True
[mypy-torch.*,numpy.*,gymnasium.*,hydra.*,omegaconf.*]
follow_imports = skip
"""


def test_adapter_type_checks_against_isaacgym_stubs(tmp_path):
    """mypy checks envs/isaacgym.py against the ``isaacgym-stubs`` package (gymapi): the
    stubs' ``isaacgym-stubs/__init__.py`` is no stub and two properties are named ``lambda``,
    so a patched copy is made here (``__init__.pyi``, ``lambda`` -> ``lambda_``). torch, numpy,
    Hydra and gymnasium are taken as untyped to keep this fast."""
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[test]')")
    found = [os.path.join(p, "isaacgym-stubs", "gymapi.pyi") for p in sys.path]
    stubs = next((p for p in found if os.path.isfile(p)), None)
    if stubs is None:
        pytest.skip("isaacgym-stubs is not installed (pip install isaacgym-stubs)")
    typings = tmp_path / "typings" / "isaacgym"
    typings.mkdir(parents=True)
    with open(stubs) as f:
        text = f.read()
    (typings / "gymapi.pyi").write_text(text.replace("def lambda(", "def lambda_("))
    (typings / "__init__.pyi").write_text("from . import gymapi as gymapi\n")
    (tmp_path / "mypy.ini").write_text(MYPY_INI)
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(tmp_path / "mypy.ini"),
                           "--no-incremental", "--cache-dir", os.devnull, "envs/isaacgym.py"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MYPYPATH": str(tmp_path / "typings")})
    assert proc.returncode == 0 and "Success" in proc.stdout, proc.stdout + proc.stderr
