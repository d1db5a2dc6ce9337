"""``isaacgym``: the IsaacGymEnvs tasks of the paper behind the VecEnv contract.

ShadowHand, AllegroHand, AllegroKuka (regrasping, reorientation, throw; one and two arms),
Humanoid, Anymal, FrankaCubeStack and FrankaCubePush (the last only in the SAPG fork,
github.com/jayeshs999/sapg) are built by IsaacGymEnvs' own task factory: its Hydra config
(``isaacgymenvs/cfg/config.yaml`` with ``task=<task>``) is composed and the class is taken from
``isaacgymenvs.tasks.isaacgym_task_map``, exactly what ``isaacgymenvs.make`` does (we do not
call ``make`` itself: inside our Hydra app it reads ``HydraConfig...choices['task']``, which
our config does not have, and its rl_games wrapper is not needed). The paper presets are
``conf/experiment/<task>{,_sapg,_ppo}.yaml``.

Install (Python 3.8 only): NVIDIA's Isaac Gym Preview 4 tarball (``pip install -e
isaacgym/python``), then IsaacGymEnvs or the SAPG fork (``pip install -e .``). Isaac Gym must
be imported before torch: ``train.py`` does that first when the command line selects this
backend (``env.name=isaacgym``, an ``experiment=`` preset that does, or ``resume=`` of such a
run); in your own scripts put ``import isaacgym`` above ``import torch``.

This backend is checked against IsaacGymEnvs' API (mypy with ``isaacgym-stubs``) and against
a model of its semantics (``tests/isaacgym_double.py``); it is not run in CI.

IsaacGymEnvs' semantics (``VecTask`` in ``isaacgymenvs/tasks/base/vec_task.py``, release
1.5.1 and the SAPG fork, which has the same base class)
    * ``step(actions)``: ``actions`` are clamped to ``[-clipActions, clipActions]`` (task
      config, default inf; 1.0 in the paper's tasks), ``pre_physics_step(actions)`` applies
      them, the physics runs ``controlFrequencyInv`` times, ``post_physics_step()`` adds 1 to
      ``progress_buf`` and computes observations, rewards and ``reset_buf``. Then
      ``extras["time_outs"] = (progress_buf >= max_episode_length - 1) & (reset_buf != 0)``,
      ``obs_dict["obs"]`` is ``obs_buf`` clamped to ``[-clipObservations, clipObservations]``
      and, only when the task has ``numStates > 0``, ``obs_dict["states"]`` is ``states_buf``
      clamped the same way (the asymmetric critic's input). It returns ``(obs_dict, rew_buf,
      reset_buf, extras)`` on ``rl_device``.
    * Nothing is reset inside that call. The envs flagged in ``reset_buf`` are reset during
      the *next* ``step``: at the start of ``pre_physics_step``, before the new action is
      applied (ShadowHand, AllegroHand, AllegroKuka: the action acts on the fresh state), or in
      ``post_physics_step`` after the physics and before the observations (Humanoid, Anymal,
      FrankaCubeStack/Push: the action acts on the old state and is lost, the returned
      observation is the fresh state's). So the observation returned on a done step is the
      terminal one, and no observation of the reset state is ever returned before the new
      episode's first action; the following step is that episode's first transition (rl_games
      treats it the same way).
    * ``reset()`` resets nothing: it returns the current buffers. ``reset_buf`` starts at 1,
      so the first ``step`` resets every env.
    * A step that times out and fails at once is only flagged in ``time_outs``: a time-out
      cannot be told apart from a failure on the last step.
    * Success: the hand and Kuka tasks count goals reached in ``task.successes [num_envs]``
      (incremented in ``post_physics_step``, zeroed by the reset one step after the done step),
      so at the done step it holds the finished episode's count. Upstream ShadowHand and
      AllegroHand also put ``extras["consecutive_successes"]``, a single exponential moving
      average over all envs' resets (factor ``av_factor``); the SAPG fork puts
      ``extras["successes"]`` per env instead, which for the Kuka tasks is copied in
      ``reset_idx`` and so still holds the episode *before* at the done step. Humanoid, Anymal
      and Franka have no success count.
    * Randomness comes from the global torch / numpy / random generators, seeded by
      ``isaacgymenvs.utils.utils.set_seed`` before the task is built; the simulator state
      cannot be saved. One simulation per process: ``VecTask.create_sim`` reuses the
      module-level ``EXISTING_SIM`` once one exists.

How that maps onto our contract (``envs/base.py``)
    * Actions: clamped to [-1, 1] first (rl_games' ``clip_actions``), then ``clipActions``.
    * ``terminated = reset_buf & ~time_outs``, ``truncated = reset_buf & time_outs``: time
      limits bootstrap, failures and finished goal sequences do not; a simultaneous time-out
      and failure counts as truncated (the same choice as rl_games' ``value_bootstrap``).
      Tasks without ``time_outs`` in ``extras`` report every end as terminated.
    * Autoreset: IsaacGymEnvs' reset on the next step is kept as it is. On a done row the
      returned ``obs`` (the observation the next episode's first action is chosen from) is the
      terminal observation and ``info["final_obs"]`` is the same tensor, so truncated steps
      bootstrap from the true terminal observation (``has_final_obs`` is true) and the next
      step counts as the first of the new episode, as under rl_games.
    * ``privileged=true``: ``obs_dict["states"]`` is the critic's privileged observation
      (``privileged_dim = numStates``); ``info["final_privileged"]`` is ``info["privileged"]``
      for the same reason as ``final_obs``.
    * ``info["log"]`` (tasks with ``successes``): ``consecutive_successes`` = goals reached in
      the finished episode, read from ``task.successes`` at the done step, and ``success`` =
      1 if at least one goal was reached. Averaged per policy over the episodes that ended in
      the iteration, ``consecutive_successes`` is the quantity that upstream's
      ``extras["consecutive_successes"]`` smooths, without the moving average and per policy.
    * ``reset(seed)``: seeds the global generators (``set_seed``) when a seed is given, flags
      every env in ``reset_buf`` and takes one step with zero actions, returning its
      observation (IsaacGymEnvs has no other way to reset; this costs one physics step, and an
      env that fails on that very step is not reported).
    * ``state_dict()`` is empty: a resumed run restores the learner exactly but the simulator
      starts new episodes. ``reset_envs`` is not supported (use ``nonfinite=stop``).
    * Device: ``sim_device = rl_device =`` the run's device; the GPU pipeline on CUDA, the
      CPU pipeline on CPU. Every returned tensor is on ``env.device``.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import re
import sys
import warnings
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import gymnasium as gym
import numpy as np
import torch

from envs.base import StepResult, VecEnv
from envs.spec import EnvConfigError, TaskSpec

if TYPE_CHECKING:  # only for the type checker: isaacgym itself may be absent
    from typing import Protocol

    from isaacgym import gymapi

    class VecTaskLike(Protocol):
        """The part of IsaacGymEnvs' ``VecTask`` this adapter uses (attributes set by its
        ``__init__`` / ``allocate_buffers``)."""

        num_envs: int
        num_obs: int
        num_states: int
        num_acts: int
        max_episode_length: int
        device: str
        rl_device: str
        reset_buf: torch.Tensor
        progress_buf: torch.Tensor
        gym: gymapi.Gym
        sim: gymapi.Sim
        viewer: Optional[gymapi.Viewer]

        def step(self, actions: torch.Tensor
                 ) -> Tuple[Dict[str, torch.Tensor], torch.Tensor, torch.Tensor, Dict[str, Any]]:
            """Apply actions, simulate, return (obs_dict, rew_buf, reset_buf, extras)."""

        def zero_actions(self) -> torch.Tensor:
            """A ``[num_envs, num_actions]`` zero action on ``rl_device``."""

INSTALL_HINT = ("env.name='isaacgym' needs NVIDIA Isaac Gym Preview 4 on Python 3.8 "
                "(download it from https://developer.nvidia.com/isaac-gym, then "
                "`pip install -e isaacgym/python`) and IsaacGymEnvs "
                "(`pip install -e IsaacGymEnvs` from https://github.com/isaac-sim/IsaacGymEnvs, or the "
                "SAPG fork https://github.com/jayeshs999/sapg, which also has FrankaCubePush)")

_TASK_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*(_[a-z][a-z0-9]*)?$")


@dataclasses.dataclass
class IsaacGymParams:
    """Parameters of the ``isaacgym`` backend (``env.params.*``)."""

    task: str = "ShadowHand"
    """IsaacGymEnvs task config ``cfg/task/<task>.yaml`` (ShadowHand, AllegroHand, Humanoid,
    Anymal, FrankaCubeStack, FrankaCubePush, ...); a ``_<subtask>`` suffix also selects
    ``task/env=<subtask>`` (``AllegroKukaLSTM_throw`` = task AllegroKukaLSTM, env throw)."""
    overrides: List[str] = dataclasses.field(default_factory=list)
    """Extra Hydra overrides of IsaacGymEnvs' own config, ``key=value`` strings, e.g.
    ``[task.env.asymmetric_observations=True]``. ``env.num_envs``, ``env.max_episode_steps``
    (``task.env.episodeLength``), ``seed`` and ``device`` are set from our config."""
    privileged: bool = False
    """Give the critic IsaacGymEnvs' ``states`` as privileged observation (needs a task with
    ``numStates > 0``, e.g. ShadowHand with task.env.asymmetric_observations=True, and
    ``net.separate_critic=true``); false: the critic sees the policy observation."""
    headless: bool = True
    """No viewer window (training); false opens Isaac Gym's viewer."""
    graphics_device_id: int = 0
    """GPU used for rendering (>= -1; IsaacGymEnvs uses -1 itself when headless without cameras)."""
    physics_engine: str = "physx"
    """physx | flex."""

    def validate(self) -> None:
        """Raise :class:`EnvConfigError` naming the first invalid parameter. When IsaacGymEnvs
        is installed, the task and subtask configs must exist (checked without importing it)."""
        if not isinstance(self.task, str) or not _TASK_RE.match(self.task):
            raise EnvConfigError(f"env.params.task={self.task!r} is invalid: must be an IsaacGymEnvs "
                                 "task config name, optionally with a _<subtask> suffix "
                                 "(e.g. ShadowHand, AllegroKukaLSTM_throw)")
        if not isinstance(self.overrides, (list, tuple)) or not all(
                isinstance(o, str) and "=" in o for o in self.overrides):
            raise EnvConfigError(f"env.params.overrides={self.overrides!r} is invalid: must be a list of "
                                 "key=value strings (Hydra overrides of IsaacGymEnvs' config)")
        if self.physics_engine not in ("physx", "flex"):
            raise EnvConfigError(f"env.params.physics_engine={self.physics_engine!r} is invalid: "
                                 "must be physx or flex")
        if not isinstance(self.graphics_device_id, int) or self.graphics_device_id < -1:
            raise EnvConfigError(f"env.params.graphics_device_id={self.graphics_device_id!r} is invalid: "
                                 "must be an integer >= -1")
        cfg_dir = config_dir()
        if cfg_dir is not None:
            check_task_config(cfg_dir, *split_task(self.task))


def split_task(task: str) -> Tuple[str, Optional[str]]:
    """``"AllegroKukaLSTM_throw"`` -> ``("AllegroKukaLSTM", "throw")``; no suffix -> ``(task, None)``."""
    name, _, subtask = task.partition("_")
    return name, (subtask or None)


def config_dir() -> Optional[str]:
    """IsaacGymEnvs' ``cfg`` directory, located without importing the package (None when
    IsaacGymEnvs is not installed)."""
    try:
        spec = importlib.util.find_spec("isaacgymenvs")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "cfg")
    return path if os.path.isdir(path) else None


def _yaml_names(folder: str) -> List[str]:
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml")) if os.path.isdir(folder) else []


def check_task_config(cfg_dir: str, name: str, subtask: Optional[str]) -> None:
    """Raise :class:`EnvConfigError` unless ``cfg/task/<name>.yaml`` (and
    ``cfg/task/env/<subtask>.yaml``) exist, listing the available ones."""
    tasks = _yaml_names(os.path.join(cfg_dir, "task"))
    if name not in tasks:
        raise EnvConfigError(f"env.params.task={name!r}: IsaacGymEnvs at {os.path.dirname(cfg_dir)} has no "
                             f"task config {name}.yaml (available: {', '.join(tasks)})")
    if subtask is not None:
        subtasks = _yaml_names(os.path.join(cfg_dir, "task", "env"))
        if subtask not in subtasks:
            raise EnvConfigError(f"env.params.task={name}_{subtask}: IsaacGymEnvs has no subtask "
                                 f"{subtask!r} (task/env/*.yaml: {', '.join(subtasks) or 'none'})")


def import_isaacgym() -> None:
    """Import ``isaacgym`` (it must come before torch) and check that IsaacGymEnvs is present;
    raise :class:`EnvConfigError` saying what to install or what to import first."""
    if "isaacgym" not in sys.modules:
        try:
            importlib.import_module("isaacgym")
        except ModuleNotFoundError as err:
            if err.name is not None and err.name.split(".")[0] == "isaacgym":
                raise EnvConfigError(f"{INSTALL_HINT}; `import isaacgym` failed: {err}") from None
            raise
        except ImportError as err:
            if "torch" in str(err).lower():  # "PyTorch was imported before isaacgym modules"
                raise EnvConfigError(
                    "Isaac Gym must be imported before torch, and torch is already imported: run "
                    "through train.py (it imports isaacgym first when env.name=isaacgym) or put "
                    f"`import isaacgym` above `import torch` in your script ({err})") from None
            raise
    if config_dir() is None:
        raise EnvConfigError(f"{INSTALL_HINT}; isaacgym is importable but isaacgymenvs is not")


def compose_task_config(cfg_dir: str, overrides: List[str]) -> Dict[str, Any]:
    """IsaacGymEnvs' task config as a plain dict, composed from its own ``config.yaml`` with
    ``overrides`` like its ``train.py`` does (Hydra version base 1.1). Works inside a running
    Hydra app (ours): the global Hydra state and version base are restored afterwards."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.version import VersionBase
    from omegaconf import OmegaConf

    importlib.import_module("isaacgymenvs")  # registers its resolvers (eq, if, resolve_default, ...)
    saved_hydra, saved_base = GlobalHydra.instance().hydra, VersionBase.instance().getbase()
    GlobalHydra.instance().clear()
    try:
        with warnings.catch_warnings():  # version_base 1.1 is IsaacGymEnvs' own choice
            warnings.simplefilter("ignore")
            with initialize_config_dir(config_dir=os.path.abspath(cfg_dir), version_base="1.1",
                                       job_name="isaacgymenvs"):
                cfg = compose(config_name="config", overrides=list(overrides))
        task = OmegaConf.to_container(cfg.task, resolve=True)
    except HydraException as err:
        raise EnvConfigError(f"IsaacGymEnvs config with overrides {list(overrides)} failed to compose: "
                             f"{err}") from None
    finally:  # initialize_config_dir swaps the GlobalHydra singleton: look it up afresh
        GlobalHydra.instance().clear()
        if saved_hydra is not None:
            GlobalHydra.instance().initialize(saved_hydra)
        VersionBase.instance().version_base = saved_base
    assert isinstance(task, dict)
    return {str(k): v for k, v in task.items()}


class IsaacGymEnv(VecEnv):
    """An IsaacGymEnvs ``VecTask`` behind :class:`envs.base.VecEnv`; see the module docstring
    for the semantics and how they are mapped."""

    def __init__(self, task: "VecTaskLike", device: Any, privileged: bool = False,
                 name: str = "isaacgym") -> None:
        self.task = task
        self.name = name
        self.num_envs = int(task.num_envs)
        self.device = torch.device(device)
        self.max_episode_steps = int(task.max_episode_length)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (int(task.num_obs),), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (int(task.num_acts),), np.float32)
        num_states = int(getattr(task, "num_states", 0))
        if privileged and num_states <= 0:
            raise EnvConfigError(f"env.params.privileged=True: task {name!r} has no states (numStates=0); "
                                 "enable its asymmetric observations (e.g. env.params.overrides="
                                 "[task.env.asymmetric_observations=True]) or set privileged=false")
        self.privileged_dim = num_states if privileged else 0
        self._states: Optional[torch.Tensor] = None
        self._closed = False

    # ---- the contract -------------------------------------------------------------------
    def reset(self, seed: Optional[int] = None) -> torch.Tensor:
        """Flag every env for reset and take one zero-action step (IsaacGymEnvs resets only
        inside ``step``); seeds the global generators first when ``seed`` is given."""
        if seed is not None:
            seed_everything(int(seed))
        self.task.reset_buf[:] = 1  # the next step resets every env
        obs_dict, _, _, _ = self.task.step(self.task.zero_actions())
        self._states = self._read_states(obs_dict)
        return obs_dict["obs"].to(self.device)

    def step(self, action: torch.Tensor) -> StepResult:
        """One IsaacGymEnvs step; see the module docstring for the mapping of its outputs."""
        a = action.to(self.device, torch.float32).clamp(-1.0, 1.0)  # rl_games' clip_actions
        obs_dict, rew, reset, extras = self.task.step(a)
        obs = obs_dict["obs"].to(self.device)
        done = reset.to(self.device) != 0  # a new tensor: reset_buf is reused by the task
        time_outs = extras.get("time_outs")
        if isinstance(time_outs, torch.Tensor):
            truncated = done & (time_outs.to(self.device) != 0)
        else:  # an IsaacGymEnvs without time_outs: every end is terminal
            truncated = torch.zeros_like(done)
        terminated = done & ~truncated
        reward = rew.to(self.device, torch.float32).clone()  # rew_buf is reused by the task
        # the terminal observation is also the one the next episode starts from (module doc)
        info: Dict[str, Any] = {"final_obs": obs, "log": self._episode_log()}
        if self.privileged_dim > 0:
            states = self._read_states(obs_dict)
            info["privileged"] = states
            info["final_privileged"] = states
            self._states = states
        return obs, reward, terminated, truncated, info

    def privileged(self) -> torch.Tensor:
        """IsaacGymEnvs' ``states`` after the last ``reset()`` / ``step()`` (privileged=true)."""
        if self.privileged_dim <= 0 or self._states is None:
            raise NotImplementedError(f"no privileged observation: env.params.privileged is false or "
                                      f"reset() was not called (privileged_dim={self.privileged_dim})")
        return self._states

    def close(self) -> None:
        """Destroy the viewer and the simulation and clear IsaacGymEnvs' per-process
        ``EXISTING_SIM`` so that another env can be built in this process (eval.py does)."""
        if not self._closed:
            self._closed = True
            destroy_task(self.task)

    # ---- helpers ------------------------------------------------------------------------
    def _read_states(self, obs_dict: Dict[str, torch.Tensor]) -> Optional[torch.Tensor]:
        if self.privileged_dim <= 0:
            return None
        return obs_dict["states"].to(self.device)

    def _episode_log(self) -> Dict[str, torch.Tensor]:
        """Per-env episode metrics, read at the done step (only done rows are used)."""
        successes = getattr(self.task, "successes", None)
        if not isinstance(successes, torch.Tensor) or tuple(successes.shape) != (self.num_envs,):
            return {}
        # a copy: the task zeroes its buffer in place when it resets the env on the next step
        count = successes.to(self.device, torch.float32).clone()
        return {"consecutive_successes": count, "success": (count > 0).float()}


def destroy_task(task: "VecTaskLike") -> None:
    """Destroy a task's viewer and simulation and clear IsaacGymEnvs' ``EXISTING_SIM``."""
    viewer = getattr(task, "viewer", None)
    if viewer is not None:
        task.gym.destroy_viewer(viewer)
    task.gym.destroy_sim(task.sim)
    vec_task = sys.modules.get("isaacgymenvs.tasks.base.vec_task")
    if vec_task is not None and hasattr(vec_task, "EXISTING_SIM"):
        setattr(vec_task, "EXISTING_SIM", None)


def seed_everything(seed: int) -> None:
    """IsaacGymEnvs' ``set_seed`` (python, numpy, torch and CUDA generators)."""
    utils = importlib.import_module("isaacgymenvs.utils.utils")
    utils.set_seed(seed, torch_deterministic=False)


def make_isaacgym(num_envs: int, device: Any = "cpu", seed: int = 0, max_episode_steps: int = 0,
                  task: str = "ShadowHand", overrides: Optional[List[str]] = None,
                  privileged: bool = False, headless: bool = True, graphics_device_id: int = 0,
                  physics_engine: str = "physx") -> IsaacGymEnv:
    """Build an IsaacGymEnvs task through its own config and task map; ``max_episode_steps``
    > 0 overrides the task's ``episodeLength`` (0 keeps it)."""
    import_isaacgym()
    cfg_dir = config_dir()
    assert cfg_dir is not None  # import_isaacgym checked it
    name, subtask = split_task(task)
    check_task_config(cfg_dir, name, subtask)
    dev = torch.device(device)
    sim_device = f"cuda:{dev.index or 0}" if dev.type == "cuda" else "cpu"
    ov = [f"task={name}", f"num_envs={int(num_envs)}", f"seed={int(seed)}",
          f"sim_device={sim_device}", f"rl_device={sim_device}",
          f"pipeline={'gpu' if dev.type == 'cuda' else 'cpu'}", f"physics_engine={physics_engine}",
          f"headless={bool(headless)}", f"graphics_device_id={int(graphics_device_id)}"]
    if subtask is not None:
        ov.append(f"task/env={subtask}")
    if max_episode_steps > 0:  # "++": add the key if the task config lacks it (checked below)
        ov.append(f"++task.env.episodeLength={int(max_episode_steps)}")
    task_cfg = compose_task_config(cfg_dir, ov + list(overrides or []))
    task_map = importlib.import_module("isaacgymenvs.tasks").isaacgym_task_map
    cls_name = str(task_cfg.get("name", name))
    if cls_name not in task_map:
        raise EnvConfigError(f"env.params.task={task!r}: this IsaacGymEnvs has no task class {cls_name!r} "
                             f"(known: {', '.join(sorted(task_map))}); FrankaCubePush is only in the SAPG fork")
    vec_task = importlib.import_module("isaacgymenvs.tasks.base.vec_task")
    if getattr(vec_task, "EXISTING_SIM", None) is not None:
        raise EnvConfigError("another Isaac Gym env is open in this process (IsaacGymEnvs keeps one "
                             "simulation per process, vec_task.EXISTING_SIM): close() it first")
    seed_everything(int(seed))
    vt = task_map[cls_name](cfg=task_cfg, rl_device=sim_device, sim_device=sim_device,
                            graphics_device_id=int(graphics_device_id), headless=bool(headless),
                            virtual_screen_capture=False, force_render=False)
    try:
        env = IsaacGymEnv(vt, device=dev, privileged=privileged, name=task)
    except EnvConfigError:
        destroy_task(vt)  # leave the process free for the next attempt
        raise
    if max_episode_steps > 0 and env.max_episode_steps != int(max_episode_steps):
        env.close()
        raise EnvConfigError(f"env.max_episode_steps={max_episode_steps}: task {task!r} does not read "
                             f"task.env.episodeLength (its episode length is {env.max_episode_steps} steps); "
                             "leave env.max_episode_steps unset and change the task's own key through "
                             "env.params.overrides (e.g. Anymal: task.env.learn.episodeLength_s)")
    return env


SPEC = TaskSpec(factory=make_isaacgym, params=IsaacGymParams, max_episode_steps=0,
                description="IsaacGymEnvs tasks (Isaac Gym Preview 4): the paper's benchmark")
