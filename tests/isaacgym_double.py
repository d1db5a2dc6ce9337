"""A test double of Isaac Gym + IsaacGymEnvs, faithful to ``VecTask``'s step/reset semantics.

Isaac Gym Preview 4 runs only on Python 3.8 with NVIDIA's tarball, so the adapter
(``envs/isaacgym.py``) is tested against this model instead. :func:`install` puts fake
``isaacgym`` and ``isaacgymenvs`` modules into ``sys.modules`` and writes a small IsaacGymEnvs
config tree (``config.yaml``, ``task/*.yaml``, ``task/env/*.yaml``, ``train/*.yaml``, with the
same interpolations and resolvers as the real one) so that the adapter's own code path runs
unchanged: Hydra composition, ``isaacgym_task_map``, ``set_seed``, ``EXISTING_SIM``.

What the model reproduces (see the module docstring of ``envs/isaacgym.py``):

* :class:`VecTask`: buffers as ``allocate_buffers`` makes them (``reset_buf`` starts at 1),
  ``step`` = clamp to ``clipActions``, ``pre_physics_step``, ``controlFrequencyInv`` physics
  steps, ``post_physics_step``, then ``time_outs = (progress >= max_len - 1) & reset``,
  ``obs_dict["obs"]`` (clamped to ``clipObservations``) and ``obs_dict["states"]`` only when
  ``numStates > 0``; ``reset()`` only returns the buffers; one simulation per process
  (``EXISTING_SIM``); devices (``use_gpu_pipeline`` forced off for a CPU sim, outputs on
  ``rl_device``).
* Two reset placements: :class:`ReachHand` resets flagged envs at the start of
  ``pre_physics_step`` (ShadowHand / AllegroHand / AllegroKuka), counts goals in
  ``successes``, moves the goal on success, zeroes ``progress_buf`` on success when
  ``maxConsecutiveSuccesses > 0``, ends the episode when the arm "drops" (first joint beyond
  ``fallAngle``) or after ``maxConsecutiveSuccesses`` goals, keeps upstream's scalar moving
  average ``extras["consecutive_successes"]`` and optionally asymmetric ``states``.
  :class:`Pole` resets in ``post_physics_step`` after the physics and before computing
  observations (Humanoid / Anymal / Franka): the action of the step after a done acts on the
  terminal state and the returned observation is the fresh state's.
* Subtasks: ``ReachKuka`` / ``ReachKukaLSTM`` pick a class by ``task.env.subtask`` from
  ``task/env/<subtask>.yaml``, like ``resolve_allegro_kuka``.
* Randomness: the physics generators are seeded from the global torch generator when the
  task is built, as IsaacGymEnvs' tasks draw from the global generator seeded by ``set_seed``.

The "physics" are embedded tasks (``envs/tasks``): a planar arm and a cart-pole.
"""
from __future__ import annotations

import importlib.machinery
import math
import os
import random
import sys
import types
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from envs.tasks.arm_reach import ArmReach
from envs.tasks.cartpole import THETA_THRESHOLD, X_THRESHOLD, CartPole

VEC_TASK = "isaacgymenvs.tasks.base.vec_task"


# ---- isaacgym.gymapi ------------------------------------------------------------------------
class FakeSim:
    """A simulation handle: ``simulate`` runs the physics callbacks the task attached."""

    def __init__(self) -> None:
        self.callbacks: List[Callable[[], None]] = []
        self.destroyed = False
        self.prepared = False


class FakeGym:
    """The few ``gymapi.Gym`` calls VecTask makes; counts them for the tests."""

    def __init__(self) -> None:
        self.simulate_calls = 0
        self.sims_created = 0
        self.sims_destroyed = 0

    def create_sim(self, compute_device: int, graphics_device: int, physics_engine: int,
                   sim_params: Any) -> FakeSim:
        """A new simulation handle."""
        self.sims_created += 1
        return FakeSim()

    def prepare_sim(self, sim: FakeSim) -> bool:
        """Mark ``sim`` ready to step."""
        sim.prepared = True
        return True

    def simulate(self, sim: FakeSim) -> None:
        """One physics step of every task attached to ``sim``."""
        assert sim.prepared and not sim.destroyed, "simulate() on a sim that is not prepared or destroyed"
        self.simulate_calls += 1
        for step in sim.callbacks:
            step()

    def fetch_results(self, sim: FakeSim, wait: bool) -> None:
        """No-op (results are in place at once)."""

    def destroy_sim(self, sim: FakeSim) -> None:
        """Free ``sim``; stepping it afterwards fails."""
        sim.destroyed = True
        self.sims_destroyed += 1

    def destroy_viewer(self, viewer: Any) -> None:
        """No-op (the double is headless)."""


SIM_PHYSX, SIM_FLEX = 0, 1


# ---- isaacgymenvs.utils.utils ---------------------------------------------------------------
def set_seed(seed: int, torch_deterministic: bool = False, rank: int = 0) -> int:
    """IsaacGymEnvs' seeding: python, numpy and torch global generators (seed -1: random)."""
    if seed == -1:
        seed = 42 + rank if torch_deterministic else int(np.random.randint(0, 10000))
    else:
        seed = seed + rank
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    return seed


# ---- isaacgymenvs.tasks.base.vec_task ----------------------------------------------------------
class VecTask:
    """Model of IsaacGymEnvs' ``VecTask`` (Env + VecTask); subclasses set ``self.cfg`` and the
    ``numObservations`` / ``numStates`` / ``numActions`` entries before calling ``__init__``."""

    def __init__(self, config: Dict[str, Any], rl_device: str, sim_device: str,
                 graphics_device_id: int, headless: bool, virtual_screen_capture: bool = False,
                 force_render: bool = False) -> None:
        split = sim_device.split(":")
        self.device_type = split[0]
        self.device_id = int(split[1]) if len(split) > 1 else 0
        self.device = "cpu"
        if config["sim"]["use_gpu_pipeline"]:
            if self.device_type.lower() in ("cuda", "gpu"):
                self.device = f"cuda:{self.device_id}"
            else:  # "GPU Pipeline can only be used with GPU simulation. Forcing CPU Pipeline."
                config["sim"]["use_gpu_pipeline"] = False
        self.rl_device = rl_device
        self.headless = headless
        cameras = config["env"].get("enableCameraSensors", False)
        self.graphics_device_id = -1 if (not cameras and headless) else graphics_device_id
        self.num_environments = config["env"]["numEnvs"]
        self.num_agents = config["env"].get("numAgents", 1)
        self.num_observations = config["env"].get("numObservations", 0)
        self.num_states = config["env"].get("numStates", 0)
        self.num_actions = config["env"]["numActions"]
        self.control_freq_inv = config["env"].get("controlFrequencyInv", 1)
        self.clip_obs = config["env"].get("clipObservations", math.inf)
        self.clip_actions = config["env"].get("clipActions", math.inf)
        self.control_steps = 0
        self.virtual_screen_capture, self.force_render = virtual_screen_capture, force_render
        self.physics_engine = SIM_PHYSX if self.cfg["physics_engine"] == "physx" else SIM_FLEX
        self.sim_params = types.SimpleNamespace(dt=config["sim"]["dt"],
                                                use_gpu_pipeline=config["sim"]["use_gpu_pipeline"])
        self.dt = float(config["sim"]["dt"])
        self.gym = acquire_gym()
        self.sim_initialized = False
        self.create_sim()
        self.gym.prepare_sim(self.sim)
        self.sim_initialized = True
        self.viewer = None  # headless only in the double
        self.allocate_buffers()
        self.obs_dict: Dict[str, torch.Tensor] = {}

    @property
    def num_envs(self) -> int:
        """``numEnvs``."""
        return self.num_environments

    @property
    def num_obs(self) -> int:
        """``numObservations``."""
        return self.num_observations

    @property
    def num_acts(self) -> int:
        """``numActions``."""
        return self.num_actions

    def allocate_buffers(self) -> None:
        """obs/states/reward buffers at 0, ``reset_buf`` at 1 (everything resets first)."""
        n, dev = self.num_envs, self.device
        self.obs_buf = torch.zeros((n, self.num_obs), device=dev, dtype=torch.float)
        self.states_buf = torch.zeros((n, self.num_states), device=dev, dtype=torch.float)
        self.rew_buf = torch.zeros(n, device=dev, dtype=torch.float)
        self.reset_buf = torch.ones(n, device=dev, dtype=torch.long)
        self.timeout_buf = torch.zeros(n, device=dev, dtype=torch.long)
        self.progress_buf = torch.zeros(n, device=dev, dtype=torch.long)
        self.randomize_buf = torch.zeros(n, device=dev, dtype=torch.long)
        self.extras: Dict[str, Any] = {}

    def create_sim(self, compute_device: int, graphics_device: int, physics_engine: int,
                   sim_params: Any) -> FakeSim:
        """One simulation per process, as ``_create_sim_once``."""
        vt = sys.modules[VEC_TASK]
        if vt.EXISTING_SIM is None:
            vt.EXISTING_SIM = self.gym.create_sim(compute_device, graphics_device, physics_engine, sim_params)
        return vt.EXISTING_SIM

    def get_state(self) -> torch.Tensor:
        """``states_buf`` clamped to ``clipObservations``, on ``rl_device``."""
        return torch.clamp(self.states_buf, -self.clip_obs, self.clip_obs).to(self.rl_device)

    def step(self, actions: torch.Tensor):
        """VecTask.step: clamp, pre-physics, simulate, post-physics, time-outs, obs_dict."""
        action_tensor = torch.clamp(actions, -self.clip_actions, self.clip_actions)
        self.pre_physics_step(action_tensor)
        for _ in range(self.control_freq_inv):
            self.gym.simulate(self.sim)
        if self.device == "cpu":
            self.gym.fetch_results(self.sim, True)
        self.post_physics_step()
        self.control_steps += 1
        # time-out: the episode length is reached AND the env is flagged for reset
        self.timeout_buf = (self.progress_buf >= self.max_episode_length - 1) & (self.reset_buf != 0)
        self.extras["time_outs"] = self.timeout_buf.to(self.rl_device)
        self.obs_dict["obs"] = torch.clamp(self.obs_buf, -self.clip_obs, self.clip_obs).to(self.rl_device)
        if self.num_states > 0:
            self.obs_dict["states"] = self.get_state()
        return self.obs_dict, self.rew_buf.to(self.rl_device), self.reset_buf.to(self.rl_device), self.extras

    def zero_actions(self) -> torch.Tensor:
        """Zero actions on ``rl_device``."""
        return torch.zeros([self.num_envs, self.num_actions], dtype=torch.float32, device=self.rl_device)

    def reset(self) -> Dict[str, torch.Tensor]:
        """Resets nothing: the current buffers (as IsaacGymEnvs)."""
        self.obs_dict["obs"] = torch.clamp(self.obs_buf, -self.clip_obs, self.clip_obs).to(self.rl_device)
        if self.num_states > 0:
            self.obs_dict["states"] = self.get_state()
        return self.obs_dict

    def _physics_generator_seed(self) -> int:
        """Physics noise follows the global torch generator (seeded by set_seed)."""
        return int(torch.randint(0, 2 ** 31 - 1, (1,)).item())


# ---- tasks ---------------------------------------------------------------------------------
class ReachHand(VecTask):
    """Goal-reaching "hand" (ShadowHand / AllegroHand / AllegroKuka reset placement): an arm of
    ``numLinks`` joints reaches successive goals. Observation ``[cos q, sin q, goal - tip]``;
    states ``[cos q, sin q, tip, goal, goal - tip, successes]`` when asymmetric."""

    subtask: Optional[str] = None

    def __init__(self, cfg: Dict[str, Any], rl_device: str, sim_device: str, graphics_device_id: int,
                 headless: bool, virtual_screen_capture: bool = False, force_render: bool = False) -> None:
        self.cfg = cfg
        e = cfg["env"]
        self.max_episode_length = int(e["episodeLength"])
        self.num_links = int(e["numLinks"])
        self.success_tolerance = float(e["successTolerance"])
        self.fall_angle = float(e["fallAngle"])
        self.reach_goal_bonus = float(e["reachGoalBonus"])
        self.max_consecutive_successes = int(e["maxConsecutiveSuccesses"])
        self.av_factor = float(e.get("averFactor", 0.1))
        self.asymmetric_obs = bool(e["asymmetric_observations"])
        L = self.num_links
        self.cfg["env"]["numObservations"] = 2 * L + 2
        self.cfg["env"]["numStates"] = 2 * L + 7 if self.asymmetric_obs else 0
        self.cfg["env"]["numActions"] = L
        super().__init__(config=self.cfg, rl_device=rl_device, sim_device=sim_device,
                         graphics_device_id=graphics_device_id, headless=headless,
                         virtual_screen_capture=virtual_screen_capture, force_render=force_render)
        self.successes = torch.zeros(self.num_envs, dtype=torch.float, device=self.device)
        self.consecutive_successes = torch.zeros(1, dtype=torch.float, device=self.device)
        self.reset_goal_buf = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self.actions = torch.zeros(self.num_envs, L, device=self.device)

    def create_sim(self) -> None:  # type: ignore[override]
        """The shared simulation plus this task's arm physics."""
        self.sim = super().create_sim(self.device_id, self.graphics_device_id, self.physics_engine, self.sim_params)
        self.arm = ArmReach(self.num_envs, device=self.device, seed=self._physics_generator_seed(),
                            max_episode_steps=10 ** 9, num_links=self.num_links)
        self.control = torch.zeros(self.num_envs, self.num_links, device=self.device)
        self.sim.callbacks.append(self._physics)

    def _physics(self) -> None:
        """The arm moves by the joint-velocity command."""
        self.arm.state = self.arm.dynamics(self.arm.state, self.control)[0]

    def reset_target_pose(self, env_ids: torch.Tensor) -> None:
        """New goals for ``env_ids``."""
        self.arm.state[env_ids, self.num_links:] = self.arm.sample_init(len(env_ids))[:, self.num_links:]
        self.reset_goal_buf[env_ids] = 0

    def reset_idx(self, env_ids: torch.Tensor, goal_env_ids: torch.Tensor) -> None:
        """Fresh arm, goal and counters for ``env_ids``."""
        self.reset_target_pose(env_ids)
        self.arm.state[env_ids, :self.num_links] = self.arm.sample_init(len(env_ids))[:, :self.num_links]
        self.progress_buf[env_ids] = 0
        self.reset_buf[env_ids] = 0
        self.successes[env_ids] = 0

    def pre_physics_step(self, actions: torch.Tensor) -> None:
        """Reset flagged envs and goals, then apply the actions."""
        env_ids = self.reset_buf.nonzero(as_tuple=False).squeeze(-1)
        goal_env_ids = self.reset_goal_buf.nonzero(as_tuple=False).squeeze(-1)
        if len(goal_env_ids) > 0:
            self.reset_target_pose(goal_env_ids)
        if len(env_ids) > 0:  # envs flagged at the previous step are reset before the action
            self.reset_idx(env_ids, goal_env_ids)
        self.actions = actions.clone().to(self.device)
        self.control = self.actions

    def post_physics_step(self) -> None:
        """Count the step, then observations and rewards (no reset here)."""
        self.progress_buf += 1
        self.randomize_buf += 1
        self.compute_observations()
        self.compute_reward(self.actions)

    def compute_observations(self) -> None:
        """Policy observation and (asymmetric) states from the arm."""
        full = self.arm.observe(self.arm.state)  # [cos q, sin q, tip, goal, goal - tip]
        L = self.num_links
        self.obs_buf[:] = torch.cat([full[:, :2 * L], full[:, -2:]], dim=-1)
        if self.asymmetric_obs:
            self.states_buf[:] = torch.cat([full, self.successes.unsqueeze(-1)], dim=-1)

    def compute_reward(self, actions: torch.Tensor) -> None:
        """Distance reward, goal successes and the reset rules of the hand tasks."""
        L = self.num_links
        tip = self.arm.end_effector(self.arm.state)
        dist = (self.arm.state[:, L:] - tip).norm(dim=-1)
        reached = dist <= self.success_tolerance
        goal_resets = torch.where(reached, torch.ones_like(self.reset_goal_buf), self.reset_goal_buf)
        successes = self.successes + goal_resets
        reward = -dist - 0.01 * actions.square().sum(-1)
        reward = torch.where(goal_resets == 1, reward + self.reach_goal_bonus, reward)
        resets = torch.where(self.arm.state[:, 0].abs() > self.fall_angle, torch.ones_like(self.reset_buf),
                             self.reset_buf)  # the "object" fell
        progress = self.progress_buf
        if self.max_consecutive_successes > 0:
            progress = torch.where(reached, torch.zeros_like(progress), progress)
            resets = torch.where(successes >= self.max_consecutive_successes, torch.ones_like(resets), resets)
        resets = torch.where(progress >= self.max_episode_length - 1, torch.ones_like(resets), resets)
        num_resets = resets.sum()
        finished = (successes * resets.float()).sum()
        cons = torch.where(num_resets > 0,
                           self.av_factor * finished / num_resets.clamp(min=1)
                           + (1.0 - self.av_factor) * self.consecutive_successes,
                           self.consecutive_successes)
        self.rew_buf[:], self.reset_buf[:], self.reset_goal_buf[:] = reward, resets, goal_resets
        self.progress_buf[:], self.successes[:], self.consecutive_successes[:] = progress, successes, cons
        self.extras["consecutive_successes"] = self.consecutive_successes.mean()


class ReachKukaReorientation(ReachHand):
    """``ReachKuka`` with ``task.env.subtask: reorientation``."""

    subtask = "reorientation"


class ReachKukaThrow(ReachHand):
    """``ReachKuka`` with ``task.env.subtask: throw``."""

    subtask = "throw"


def resolve_reach_kuka(cfg: Dict[str, Any], *args: Any, **kwargs: Any) -> ReachHand:
    """The class for ``cfg["env"]["subtask"]``, as IsaacGymEnvs' ``resolve_allegro_kuka``."""
    subtask_map = {"reorientation": ReachKukaReorientation, "throw": ReachKukaThrow}
    name = cfg["env"]["subtask"]
    if name not in subtask_map:
        raise ValueError(f"Unknown subtask={name} in {subtask_map}")
    return subtask_map[name](cfg, *args, **kwargs)


class Pole(VecTask):
    """Cart-pole "locomotion" task with Humanoid / Anymal / Franka reset placement: flagged envs
    are reset in ``post_physics_step`` after the physics. Reward 1 while up, ``deathCost`` on
    the step it falls; observation = the state."""

    def __init__(self, cfg: Dict[str, Any], rl_device: str, sim_device: str, graphics_device_id: int,
                 headless: bool, virtual_screen_capture: bool = False, force_render: bool = False) -> None:
        self.cfg = cfg
        self.max_episode_length = int(cfg["env"]["episodeLength"])
        self.death_cost = float(cfg["env"]["deathCost"])
        self.cfg["env"]["numObservations"] = 4
        self.cfg["env"]["numActions"] = 1
        super().__init__(config=self.cfg, rl_device=rl_device, sim_device=sim_device,
                         graphics_device_id=graphics_device_id, headless=headless,
                         virtual_screen_capture=virtual_screen_capture, force_render=force_render)
        self.actions = torch.zeros(self.num_envs, 1, device=self.device)

    def create_sim(self) -> None:  # type: ignore[override]
        """The shared simulation plus this task's cart-pole physics."""
        self.sim = super().create_sim(self.device_id, self.graphics_device_id, self.physics_engine, self.sim_params)
        self.pole = CartPole(self.num_envs, device=self.device, seed=self._physics_generator_seed())
        self.control = torch.zeros(self.num_envs, 1, device=self.device)
        self.sim.callbacks.append(self._physics)

    def _physics(self) -> None:
        """The cart-pole moves by the force command."""
        self.pole.state = self.pole.dynamics(self.pole.state, self.control)[0]

    def reset_idx(self, env_ids: torch.Tensor) -> None:
        """Fresh cart-pole states for ``env_ids``."""
        self.pole.state[env_ids] = self.pole.sample_init(len(env_ids))
        self.progress_buf[env_ids] = 0
        self.reset_buf[env_ids] = 0

    def pre_physics_step(self, actions: torch.Tensor) -> None:
        """Apply the actions (no reset here)."""
        self.actions = actions.to(self.device).clone()
        self.control = self.actions

    def post_physics_step(self) -> None:
        """Count the step, reset flagged envs after the physics, then observe and reward."""
        self.progress_buf += 1
        self.randomize_buf += 1
        env_ids = self.reset_buf.nonzero(as_tuple=False).flatten()
        if len(env_ids) > 0:  # envs flagged at the previous step: reset after the physics
            self.reset_idx(env_ids)
        self.compute_observations()
        self.compute_reward()

    def compute_observations(self) -> None:
        """The cart-pole state."""
        self.obs_buf[:] = self.pole.observe(self.pole.state)

    def compute_reward(self) -> None:
        """1 while up, deathCost when fallen; fall and time-limit resets."""
        x, theta = self.obs_buf[:, 0], self.obs_buf[:, 2]
        fallen = (x.abs() > X_THRESHOLD) | (theta.abs() > THETA_THRESHOLD)
        reward = torch.where(fallen, torch.full_like(x, self.death_cost), torch.ones_like(x))
        reset = torch.where(fallen, torch.ones_like(self.reset_buf), self.reset_buf)
        reset = torch.where(self.progress_buf >= self.max_episode_length - 1, torch.ones_like(reset), reset)
        self.rew_buf[:], self.reset_buf[:] = reward, reset


TASK_MAP = {"ReachHand": ReachHand, "ReachKuka": resolve_reach_kuka, "Pole": Pole}

_FAKE_GYM = FakeGym()


def acquire_gym() -> FakeGym:
    """The process-wide gym handle (``gymapi.acquire_gym``)."""
    return _FAKE_GYM


# ---- config tree ----------------------------------------------------------------------------
CONFIGS = {
    "config.yaml": """\
# root config of the double, shaped like IsaacGymEnvs' cfg/config.yaml
task_name: ${task.name}
experiment: ''
num_envs: ''
seed: 42
torch_deterministic: False
max_iterations: ''
physics_engine: 'physx'
pipeline: 'gpu'
sim_device: 'cuda:0'
rl_device: 'cuda:0'
graphics_device_id: 0
num_threads: 4
headless: False
defaults:
  - task: ReachHand
  - train: ${task}PPO
  - _self_
""",
    "task/ReachHand.yaml": """\
name: ReachHand
physics_engine: ${..physics_engine}
env:
  numEnvs: ${resolve_default:64,${...num_envs}}
  episodeLength: 40
  clipObservations: 5.0
  clipActions: 1.0
  numLinks: 3
  successTolerance: 0.05
  fallAngle: 2.5
  reachGoalBonus: 10.0
  maxConsecutiveSuccesses: 0
  averFactor: 0.1
  asymmetric_observations: False
  controlFrequencyInv: 1
sim:
  dt: 0.0166
  substeps: 2
  up_axis: "z"
  use_gpu_pipeline: ${eq:${...pipeline},"gpu"}
  gravity: [0.0, 0.0, -9.81]
""",
    "task/ReachKuka.yaml": """\
defaults:
  - ReachHand
  - _self_
  - env: reorientation
name: ReachKuka
env:
  subtask: ""
  asymmetric_observations: True
""",
    "task/ReachKukaLSTM.yaml": """\
defaults:
  - ReachKuka
  - _self_
""",
    "task/env/reorientation.yaml": """\
subtask: "reorientation"
episodeLength: 50
""",
    "task/env/throw.yaml": """\
subtask: "throw"
episodeLength: 30
maxConsecutiveSuccesses: 2
""",
    "task/Pole.yaml": """\
name: Pole
physics_engine: ${..physics_engine}
env:
  numEnvs: ${resolve_default:64,${...num_envs}}
  episodeLength: 30
  clipObservations: 5.0
  clipActions: 1.0
  deathCost: -1.0
sim:
  dt: 0.02
  up_axis: "z"
  use_gpu_pipeline: ${eq:${...pipeline},"gpu"}
""",
    "train/ReachHandPPO.yaml": "params:\n  config:\n    name: ReachHand\n",
    "train/ReachKukaPPO.yaml": "params:\n  config:\n    name: ReachKuka\n",
    "train/ReachKukaLSTMPPO.yaml": "params:\n  config:\n    name: ReachKukaLSTM\n",
    "train/PolePPO.yaml": "params:\n  config:\n    name: Pole\n",
}


def write_configs(cfg_dir: str) -> None:
    """Write the double's IsaacGymEnvs config tree into ``cfg_dir``."""
    for rel, text in CONFIGS.items():
        path = os.path.join(cfg_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


def register_resolvers() -> None:
    """The OmegaConf resolvers that importing ``isaacgymenvs`` registers."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("eq", lambda x, y: x.lower() == y.lower(), replace=True)
    OmegaConf.register_new_resolver("contains", lambda x, y: x.lower() in y.lower(), replace=True)
    OmegaConf.register_new_resolver("if", lambda pred, a, b: a if pred else b, replace=True)
    OmegaConf.register_new_resolver("resolve_default", lambda default, arg: default if arg == "" else arg,
                                    replace=True)


class TorchFirstFinder:
    """Meta-path finder modelling Isaac Gym's import guard: ``import isaacgym`` after torch
    raises ImportError("PyTorch was imported before isaacgym modules. ...")."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        """A spec for ``isaacgym`` only."""
        if name != "isaacgym":
            return None
        return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec: Any) -> None:
        """Default module creation."""
        return None

    def exec_module(self, module: Any) -> None:
        """Fail like Isaac Gym when torch is already imported."""
        if "torch" in sys.modules:
            raise ImportError("PyTorch was imported before isaacgym modules.  Please import torch "
                              "after isaacgym modules.")


def _module(name: str, origin: Optional[str] = None, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, origin=origin, is_package=True)
    if origin is not None:
        mod.__file__ = origin
    for key, value in attrs.items():
        setattr(mod, key, value)
    return mod


def install(root: str, monkeypatch: Any, isaacgym_imported: bool = True) -> types.SimpleNamespace:
    """Install the double for one test: modules in ``sys.modules`` (restored by
    ``monkeypatch``), the config tree under ``root/isaacgymenvs/cfg``. With
    ``isaacgym_imported=False`` the ``isaacgym`` module is not preloaded and importing it now
    (torch is loaded) fails like the real one."""
    pkg = os.path.join(root, "isaacgymenvs")
    write_configs(os.path.join(pkg, "cfg"))
    init = os.path.join(pkg, "__init__.py")
    with open(init, "w") as f:
        f.write("# placeholder: the double lives in sys.modules\n")
    gymapi = _module("isaacgym.gymapi", acquire_gym=acquire_gym, SIM_PHYSX=SIM_PHYSX, SIM_FLEX=SIM_FLEX)
    gymtorch = _module("isaacgym.gymtorch")
    vec_task = _module(VEC_TASK, VecTask=VecTask, EXISTING_SIM=None)
    modules = {
        "isaacgymenvs": _module("isaacgymenvs", origin=init),
        "isaacgymenvs.tasks": _module("isaacgymenvs.tasks", isaacgym_task_map=dict(TASK_MAP)),
        "isaacgymenvs.tasks.base": _module("isaacgymenvs.tasks.base", vec_task=vec_task),
        VEC_TASK: vec_task,
        "isaacgymenvs.utils": _module("isaacgymenvs.utils"),
        "isaacgymenvs.utils.utils": _module("isaacgymenvs.utils.utils", set_seed=set_seed),
    }
    if isaacgym_imported:
        modules["isaacgym"] = _module("isaacgym", gymapi=gymapi, gymtorch=gymtorch)
        modules["isaacgym.gymapi"], modules["isaacgym.gymtorch"] = gymapi, gymtorch
    else:
        monkeypatch.delitem(sys.modules, "isaacgym", raising=False)
        monkeypatch.setattr(sys, "meta_path", [TorchFirstFinder()] + list(sys.meta_path))
    for name, mod in modules.items():
        monkeypatch.setitem(sys.modules, name, mod)
    register_resolvers()
    return types.SimpleNamespace(root=root, cfg_dir=os.path.join(pkg, "cfg"), vec_task=vec_task, gym=_FAKE_GYM)
