"""``mjlab`` and ``isaaclab``: manager-based GPU simulators behind the batched-tensor contract
of :mod:`envs.base`.

mjlab (MuJoCo Warp, from PyPI) and NVIDIA Isaac Lab share one API, the *manager-based RL env*:
``step(action) -> (obs, reward, terminated, truncated, extras)`` where ``obs`` is a dict of
observation groups (``actor`` or ``policy`` for the policy, ``critic`` for an asymmetric
critic), ``truncated`` marks time-outs and ``extras["log"]`` holds episode metrics of the envs
that reset this step. One adapter, :class:`ManagerBasedVecEnv`, serves both:

``python train.py env=mjlab_cartpole`` (or ``env.name=mjlab env.params.task=Mjlab-Velocity-Flat-Unitree-Go1``)

What the adapter does
    * actions: the policy's action in [-1, 1] is clamped and multiplied by
      ``params.action_scale`` (default 1); the env's action terms then apply their own
      per-joint scale and offset (e.g. Go1: joint target = default + 0.25 * a), exactly as
      they do for rsl_rl's policy output. mjlab's own training feeds unclipped Gaussian
      samples; raise ``action_scale`` if a task needs |a| > 1 in the action terms' units.
    * observations: the policy group (``obs_group``) and, with ``critic_obs=true``, the critic
      group (``critic_group``) are flattened to one float32 vector per env (a group of
      separate terms, or with history, is concatenated in the manager's term order).
    * terminated vs truncated: ``terminated`` comes from the non-time-out termination terms,
      ``truncated`` from the time-out terms (and is cleared where ``terminated`` is set, so
      the learner never bootstraps through a real terminal state).
    * final observation (``info["final_obs"]``, ``info["final_privileged"]``): these envs
      reset finished episodes inside ``step`` and return the *post-reset* observation.
      - mjlab (>= 1.6) has ``auto_reset=False``: ``step`` then returns the true terminal
        observation and the caller resets the finished envs with ``reset(env_ids=...)``. The
        adapter does exactly that (``final_obs=true``, the default), so truncated steps
        bootstrap from V(terminal state). Cost: one extra ``forward`` + observation pass on
        steps where some env finished, and ``done.any()`` (one host sync per step; mjlab's
        own ``step`` already syncs once per step for its reset block).
      - Isaac Lab versions whose ``ManagerBasedRLEnvCfg`` has ``compute_final_obs`` publish
        the pre-reset groups in ``extras["final_obs"]``; the adapter switches it on and reads
        it. Older Isaac Lab has no terminal observation at all: ``has_final_obs=False`` and
        the learner bootstraps truncations from V(s_t) (and says so once).
      - ``final_obs=false`` keeps the simulator's own autoreset (slightly faster), also with
        ``has_final_obs=False``.
    * asymmetric critic (shared contract with the Isaac Gym adapter): with a critic group,
      ``privileged_dim > 0``, ``privileged()`` returns the current critic observation, and
      ``step``'s info carries ``privileged`` (post-reset) and ``final_privileged`` (pre-reset
      for rows whose episode ended, equal to ``privileged`` elsewhere).
    * episode metrics: ``extras["log"]`` holds one number per metric for *all* envs that
      reset in that call (mjlab and Isaac Lab average ``Episode_Reward/*`` over them and count
      ``Episode_Termination/*``). The adapter broadcasts each number to ``[num_envs]`` (the
      runner reads it at the finished rows, so it is weighted by the number of episodes that
      ended) and turns the termination counts into fractions of those episodes. Per-policy
      TensorBoard curves of these metrics are therefore the all-envs means; the episode return
      and length are per env as usual (the runner sums the reward stream itself).
    * rewards are what the env returns: mjlab and Isaac Lab multiply every reward term by the
      step duration ``dt`` (mjlab: ``scale_rewards_by_dt``), so returns are per-second rates
      summed over the episode (Mjlab-Cartpole-Balance: at most ``max_episode_steps * 0.05``).

Install
    mjlab: ``pip install -c .ci/constraints.txt -e ".[mjlab]"``. The constraints file pins
    ``torch`` and ``torchvision==0.28.0``: mjlab pins ``rsl-rl-lib``, whose ``torchvision``
    requirement otherwise resolves to a build that replaces a CPU torch by a CUDA one. Warp
    compiles its kernels on first use of each task and device (Cartpole on this 2-core CPU:
    ~17 s; Go1 ~20 s more) and caches them in ``~/.cache/warp``; later runs load them in
    well under a second. Isaac Lab: NVIDIA's install (Isaac Sim + ``isaaclab``,
    ``isaaclab_tasks``); the adapter starts the Omniverse app headless (``AppLauncher``)
    before importing any task.

Limits
    Exact resume is not supported (``state_dict()`` is empty): a resumed run continues with
    freshly reset simulators. ``render()`` returns None (mjlab's offscreen renderer needs an
    EGL context; use mjlab's own ``play`` script for videos). mjlab on CPU runs Warp's CPU
    backend: fine for Cartpole (~16 k env steps/s at 256 envs here), slow for contact-rich
    robots (Go1 ~0.2 k env steps/s); the real target is a CUDA GPU.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import importlib.util
import io
from typing import Any, Dict, List, Optional, Tuple

import gymnasium as gym
import numpy as np
import torch

from envs.base import StepResult, VecEnv
from envs.spec import EnvConfigError, TaskSpec

#: how to install each backend (shown in every "not installed" error)
MJLAB_INSTALL = 'pip install -c .ci/constraints.txt -e ".[mjlab]"'
ISAACLAB_INSTALL = "NVIDIA's Isaac Lab install (Isaac Sim + isaaclab + isaaclab_tasks)"

#: fraction of the largest possible return that counts as solved, per task whose per-step
#: reward is bounded by 1 before the dt scaling (dm_control's smooth cartpole reward)
SOLVED_FRACTION = {"Mjlab-Cartpole-Balance": 0.8}

#: final-observation strategies of :class:`ManagerBasedVecEnv`
FINAL_OBS_MODES = ("manual_reset", "extras", "none")


def _fail(key: str, value: Any, rule: str) -> None:
    """Raise :class:`EnvConfigError` ``env.params.<key>=<value>: <rule>``."""
    raise EnvConfigError(f"env.params.{key}={value!r} is invalid: {rule}")


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _device_str(device: Any) -> str:
    """A torch device as the simulators spell it: ``cpu`` or ``cuda:<index>``."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"cuda:{dev.index if dev.index is not None else 0}"
    return dev.type


def flatten_group(group: Any, num_envs: int) -> torch.Tensor:
    """One observation group as ``[num_envs, D]`` float32: a tensor is reshaped (history
    ``[N, H, d]`` -> ``[N, H*d]``), a dict of terms is concatenated in its own (the manager's)
    order. Always returns a new tensor, so later simulator writes cannot alias it."""
    if isinstance(group, torch.Tensor):
        parts = [group]
    else:
        parts = list(group.values())
    return torch.cat([p.reshape(num_envs, -1).float() for p in parts], dim=-1)


def resolve_path(cfg: Any, path: str) -> Tuple[Any, str]:
    """The container and last key of a dotted ``path`` in a nested config of dataclasses and
    dicts (``sim.mujoco.timestep``, ``observations.actor.enable_corruption``); raises
    ``KeyError`` naming the first missing part."""
    parts = path.split(".")
    node = cfg
    for part in parts[:-1]:
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    last = parts[-1]
    if not (last in node if isinstance(node, dict) else hasattr(node, last)):
        raise KeyError(last)
    return node, last


def apply_overrides(cfg: Any, overrides: Dict[str, Any]) -> None:
    """Set every ``dotted.path: value`` of ``overrides`` on the simulator's env config; a path
    that does not exist fails naming it and the valid keys at that level."""
    for path, value in overrides.items():
        try:
            node, last = resolve_path(cfg, path)
        except (KeyError, AttributeError, TypeError) as err:
            _fail(f"overrides.{path}", value, f"{path!r} is not a field of the env config "
                  f"(missing part {err}); use dotted paths such as sim.mujoco.timestep")
        if isinstance(node, dict):
            node[last] = value
        else:
            setattr(node, last, value)


class ManagerBasedVecEnv(VecEnv):
    """Adapter from a manager-based RL env (mjlab's ``ManagerBasedRlEnv``, Isaac Lab's
    ``ManagerBasedRLEnv``, or a test double with the same surface) to :class:`VecEnv`.

    Args:
        env: the simulator env, already built for ``num_envs`` envs. Used: ``num_envs``,
            ``max_episode_length``, ``step_dt`` (optional), ``reset(seed=, env_ids=)``,
            ``step(action)``, ``single_action_space`` or ``action_manager.total_action_dim``,
            ``close()``; in ``manual_reset`` mode ``env.cfg.auto_reset`` must be False.
        device: torch device of every returned tensor (the simulator's own device).
        obs_group: observation group fed to the policy (mjlab ``actor``, Isaac Lab ``policy``).
        critic_group: group exposed as privileged critic observation, or None for none.
        action_scale: factor applied after clamping the action to [-1, 1] (> 0).
        final_obs: ``manual_reset`` (env returns terminal observations, the adapter resets
            finished envs), ``extras`` (env publishes ``extras["final_obs"]``) or ``none``.
        seed: seed passed to the simulator on the first :meth:`reset`.
    """

    def __init__(self, env: Any, device: Any, obs_group: str, critic_group: Optional[str] = None,
                 action_scale: float = 1.0, final_obs: str = "manual_reset",
                 seed: Optional[int] = None) -> None:
        if final_obs not in FINAL_OBS_MODES:
            raise ValueError(f"final_obs={final_obs!r} is not one of {FINAL_OBS_MODES}")
        self.env = env
        self.num_envs = int(env.num_envs)
        self.device = torch.device(device)
        self.max_episode_steps = int(env.max_episode_length)
        self.step_dt = float(getattr(env, "step_dt", 0.0))
        self.obs_group, self.critic_group = obs_group, critic_group
        self.action_scale = float(action_scale)
        self.mode = final_obs
        self.has_final_obs = final_obs != "none"
        self.seed = seed
        # first observation: tells the groups' widths (the runner resets again with its seed)
        obs_d, _ = env.reset(seed=seed)
        for name in [obs_group] + ([critic_group] if critic_group else []):
            if name not in obs_d:
                raise EnvConfigError(
                    f"observation group {name!r} does not exist in this task (groups: "
                    f"{', '.join(obs_d)}); set env.params.obs_group / critic_group")
        self._obs, self._priv = self._split(obs_d)
        self.privileged_dim = 0 if self._priv is None else int(self._priv.shape[-1])
        act_dim = self._action_dim(env)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self._obs.shape[-1],), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (act_dim,), np.float32)

    # ---- helpers ----------------------------------------------------------------------------
    @staticmethod
    def _action_dim(env: Any) -> int:
        """Length of the simulator's action vector."""
        space = getattr(env, "single_action_space", None)
        if space is not None and getattr(space, "shape", None):
            return int(np.prod(space.shape))
        return int(env.action_manager.total_action_dim)

    def _split(self, obs_d: Dict[str, Any]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Policy observation and critic observation (or None) of one group dict."""
        obs = flatten_group(obs_d[self.obs_group], self.num_envs)
        priv = flatten_group(obs_d[self.critic_group], self.num_envs) if self.critic_group else None
        return obs, priv

    def _log(self, raw: Dict[str, Any], done: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``extras["log"]`` -> ``{name: [num_envs] float32}``: per-env tensors pass through,
        single numbers (means over the envs that reset) are broadcast, and the counts of
        ``Episode_Termination/*`` become fractions of the episodes that ended this step."""
        N = self.num_envs
        out: Dict[str, torch.Tensor] = {}
        ended = None
        for key, val in raw.items():
            if isinstance(val, torch.Tensor):
                val = val.to(self.device, torch.float32)
                if val.numel() == N:
                    out[key] = val.reshape(N)
                    continue
                if val.numel() != 1:
                    continue  # neither per env nor one number: not an episode metric
                val = val.reshape(())
            elif isinstance(val, (bool, int, float, np.number)):
                val = torch.tensor(float(val), device=self.device)
            else:
                continue
            if key.startswith("Episode_Termination/"):
                if ended is None:  # episodes that ended this step (>= 1 wherever it is read)
                    ended = done.sum().clamp(min=1).float()
                val = val / ended
            out[key] = val.expand(N)
        return out

    # ---- the contract -------------------------------------------------------------------------
    def reset(self, seed: Optional[int] = None) -> torch.Tensor:
        """Reset every env (re-seeding the simulator's generators when ``seed`` is given)."""
        with contextlib.redirect_stdout(io.StringIO()):  # mjlab prints "Setting seed: ..."
            obs_d, _ = self.env.reset(seed=seed)
        self._obs, self._priv = self._split(obs_d)
        return self._obs

    def privileged(self) -> torch.Tensor:
        """Current critic observation ``[num_envs, privileged_dim]`` (after reset or step)."""
        if self._priv is None:
            raise AttributeError("this env has no critic observation group (privileged_dim = 0)")
        return self._priv

    def step(self, action: torch.Tensor) -> StepResult:
        """One step of every env with autoreset; see the module docstring for the outputs."""
        N = self.num_envs
        # [-1, 1] policy space -> the action terms' input (they apply per-joint scale/offset)
        act = action.to(self.device, torch.float32).clamp(-1.0, 1.0) * self.action_scale
        obs_d, reward, term, trunc, extras = self.env.step(act)
        terminated = term.to(self.device).bool().reshape(N)
        # time-outs that are also real terminations count as terminations (no bootstrap)
        truncated = trunc.to(self.device).bool().reshape(N) & ~terminated
        done = terminated | truncated
        col = done.unsqueeze(-1)
        log_raw: Dict[str, Any] = dict(extras.get("log", {}) or {})
        if self.mode == "manual_reset":
            # the env returned the terminal observation and did not reset: reset here
            fin_obs, fin_priv = self._split(obs_d)
            if bool(done.any()):  # host sync (mjlab's own step syncs on its reset block too)
                ids = done.nonzero(as_tuple=False).squeeze(-1)
                obs_d, reset_extras = self.env.reset(env_ids=ids)
                log_raw.update(reset_extras.get("log", {}) or {})
                obs, priv = self._split(obs_d)
                fin_obs = torch.where(col, fin_obs, obs)  # equal to obs in unfinished rows
                fin_priv = None if priv is None else torch.where(col, fin_priv, priv)
            else:
                obs, priv = fin_obs, fin_priv
        else:
            obs, priv = self._split(obs_d)
            fin_obs, fin_priv = obs, priv
            pre = extras.get("final_obs") if self.mode == "extras" else None
            if isinstance(pre, dict) and self.obs_group in pre:  # published only when some env reset
                fin_obs = torch.where(col, flatten_group(pre[self.obs_group], N).to(self.device), obs)
                if priv is not None and self.critic_group in pre:
                    fin_priv = torch.where(col, flatten_group(pre[self.critic_group], N).to(self.device), priv)
        self._obs, self._priv = obs, priv
        info: Dict[str, Any] = {"final_obs": fin_obs, "log": self._log(log_raw, done)}
        if priv is not None:
            info["privileged"] = priv
            info["final_privileged"] = fin_priv
        return obs, reward.to(self.device, torch.float32).reshape(N), terminated, truncated, info

    def reset_envs(self, mask: torch.Tensor) -> torch.Tensor:
        """Reset the envs where ``mask`` is true (non-finite recovery); returns all ``obs``."""
        ids = mask.to(self.device).nonzero(as_tuple=False).squeeze(-1)
        if ids.numel() > 0:
            obs_d, _ = self.env.reset(env_ids=ids)
            self._obs, self._priv = self._split(obs_d)
        return self._obs

    def close(self) -> None:
        """Close the simulator."""
        self.env.close()


# ---- mjlab ------------------------------------------------------------------------------------
def _mjlab_tasks(verbose: bool = False) -> List[str]:
    """Registered mjlab task ids (importing ``mjlab.tasks`` registers the bundled ones and any
    installed task package); sets Warp's verbosity on the way."""
    importlib.import_module("mjlab.tasks")
    import warp as wp
    # mjlab keeps Warp's per-module compile/load lines on; keep them for verbose only
    if hasattr(wp.config, "quiet"):
        wp.config.quiet = not verbose
    if hasattr(wp.config, "log_level") and hasattr(wp, "LOG_WARNING"):
        wp.config.log_level = wp.LOG_INFO if verbose else wp.LOG_WARNING
    from mjlab.tasks.registry import list_tasks
    return list(list_tasks())


@dataclasses.dataclass
class MjlabParams:
    """Parameters of the ``mjlab`` backend (``env.params.*``)."""

    task: str = "Mjlab-Cartpole-Balance"
    """mjlab task id: Mjlab-Cartpole-Balance, Mjlab-Cartpole-Swingup,
    Mjlab-Velocity-Flat-Unitree-Go1, Mjlab-Velocity-Rough-Unitree-Go1, the G1 and YAM tasks,
    or any task an installed package registers (``python -m mjlab.scripts.list_envs``)."""
    play: bool = False
    """Use the task's "play" config (no observation noise, episodes of unbounded length)."""
    final_obs: bool = True
    """true: mjlab's auto_reset=False and the adapter resets finished envs itself, so
    info["final_obs"] is the true terminal observation (exact truncation bootstrap); false:
    mjlab's own autoreset, no terminal observation (has_final_obs=False), a little faster."""
    critic_obs: bool = True
    """Expose the critic group as privileged observation for an asymmetric critic."""
    obs_group: str = "actor"
    """Observation group of the policy (mjlab names it actor)."""
    critic_group: str = "critic"
    """Observation group of the critic (used when critic_obs is true and the task has it)."""
    action_scale: float = 1.0
    """Factor on the clamped action in [-1, 1] before mjlab's action terms (> 0)."""
    overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)
    """Dotted-path assignments on the task's env config, e.g. {sim.mujoco.timestep: 0.005,
    observations.actor.enable_corruption: false}; scene.num_envs, seed, auto_reset and
    episode_length_s are set from env.num_envs, seed, final_obs and env.max_episode_steps."""
    verbose: bool = False
    """Print mjlab's manager tables and Warp's kernel-compile lines."""

    def validate(self) -> None:
        """Check every parameter before any env is built (mjlab installed, task registered,
        override paths present); raise :class:`EnvConfigError` naming key, value and rule."""
        if not _installed("mjlab"):
            _fail("task", self.task, f"the mjlab backend is not installed: {MJLAB_INSTALL}")
        if not isinstance(self.action_scale, (int, float)) or not self.action_scale > 0:
            _fail("action_scale", self.action_scale, "must be a number > 0")
        for key in ("obs_group", "critic_group"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                _fail(key, getattr(self, key), "must name an observation group")
        if not isinstance(self.overrides, dict):
            _fail("overrides", self.overrides, "must map dotted config paths to values")
        tasks = _mjlab_tasks()
        if self.task not in tasks:
            close = difflib.get_close_matches(str(self.task), tasks, n=2)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            _fail("task", self.task, f"is not a registered mjlab task (valid: {', '.join(tasks)}){hint}")
        from mjlab.tasks.registry import load_env_cfg
        apply_overrides(load_env_cfg(self.task, play=self.play), dict(self.overrides))


def make_mjlab(num_envs: int, device: Any = "cpu", seed: int = 0, max_episode_steps: int = 0,
               task: str = "Mjlab-Cartpole-Balance", play: bool = False, final_obs: bool = True,
               critic_obs: bool = True, obs_group: str = "actor", critic_group: str = "critic",
               action_scale: float = 1.0, overrides: Optional[Dict[str, Any]] = None,
               verbose: bool = False) -> ManagerBasedVecEnv:
    """Build mjlab task ``task`` with ``num_envs`` envs on ``device`` (``max_episode_steps``
    0 keeps the task's own episode length) and wrap it in :class:`ManagerBasedVecEnv`."""
    tasks = _mjlab_tasks(verbose)
    if task not in tasks:
        _fail("task", task, f"is not a registered mjlab task (valid: {', '.join(tasks)})")
    from mjlab.envs import ManagerBasedRlEnv
    from mjlab.tasks.registry import load_env_cfg
    cfg = load_env_cfg(task, play=play)
    apply_overrides(cfg, dict(overrides or {}))
    cfg.scene.num_envs = int(num_envs)
    cfg.seed = int(seed)
    if final_obs and "auto_reset" not in {f.name for f in dataclasses.fields(cfg)}:
        print("[cpo] this mjlab has no auto_reset flag (mjlab < 1.6): no terminal observations")
        final_obs = False
    cfg.auto_reset = not final_obs  # False: step returns the terminal observation
    step_dt = cfg.sim.mujoco.timestep * cfg.decimation
    if max_episode_steps:
        # mjlab's limit is ceil(episode_length_s / step_dt) steps; half a step of margin keeps
        # the ceil exact despite floating-point rounding
        cfg.episode_length_s = (int(max_episode_steps) - 0.5) * step_dt
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:  # mjlab prints one table per manager
        sim_env = ManagerBasedRlEnv(cfg, device=_device_str(device))
        has_critic = critic_obs and critic_group in sim_env.observation_manager.active_terms
        env = ManagerBasedVecEnv(sim_env, sim_env.device, obs_group=obs_group,
                                 critic_group=critic_group if has_critic else None,
                                 action_scale=action_scale,
                                 final_obs="manual_reset" if final_obs else "none", seed=int(seed))
    if task in SOLVED_FRACTION and cfg.scale_rewards_by_dt:
        # per-step reward <= 1 * step_dt, so the largest return is steps * step_dt
        env.solved_return = SOLVED_FRACTION[task] * env.max_episode_steps * step_dt
    return env


MJLAB_SPEC = TaskSpec(factory=make_mjlab, params=MjlabParams, max_episode_steps=0,
                      description="mjlab (MuJoCo Warp) manager-based task; env.params.task picks it")


# ---- Isaac Lab --------------------------------------------------------------------------------
_ISAAC_APP: Any = None  # the Omniverse app; one per process, started before any isaaclab import


@dataclasses.dataclass
class IsaacLabParams:
    """Parameters of the ``isaaclab`` backend (``env.params.*``)."""

    task: str = "Isaac-Cartpole-v0"
    """Isaac Lab gym id of a manager-based task (Isaac-Velocity-Flat-Anymal-D-v0, ...)."""
    final_obs: bool = True
    """Ask for the pre-reset observation (``compute_final_obs``, newer Isaac Lab); when the
    installed version lacks it, has_final_obs=False and truncations bootstrap from V(s_t)."""
    critic_obs: bool = True
    """Expose the critic group as privileged observation for an asymmetric critic."""
    obs_group: str = "policy"
    """Observation group of the policy (Isaac Lab names it policy)."""
    critic_group: str = "critic"
    """Observation group of the critic (used when critic_obs is true and the task has it)."""
    action_scale: float = 1.0
    """Factor on the clamped action in [-1, 1] before Isaac Lab's action terms (> 0)."""
    overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)
    """Dotted-path assignments on the task's env config (e.g. {sim.dt: 0.005})."""
    app: Dict[str, Any] = dataclasses.field(default_factory=dict)
    """Extra keyword arguments of isaaclab.app.AppLauncher (headless is always true)."""

    def validate(self) -> None:
        """Check what can be checked without starting Isaac Sim; raise :class:`EnvConfigError`."""
        if not _installed("isaaclab"):
            _fail("task", self.task, f"the isaaclab backend is not installed: {ISAACLAB_INSTALL}")
        if not isinstance(self.action_scale, (int, float)) or not self.action_scale > 0:
            _fail("action_scale", self.action_scale, "must be a number > 0")
        if not isinstance(self.overrides, dict):
            _fail("overrides", self.overrides, "must map dotted config paths to values")
        if not isinstance(self.app, dict):
            _fail("app", self.app, "must map AppLauncher keyword arguments to values")


def make_isaaclab(num_envs: int, device: Any = "cpu", seed: int = 0, max_episode_steps: int = 0,
                  task: str = "Isaac-Cartpole-v0", final_obs: bool = True, critic_obs: bool = True,
                  obs_group: str = "policy", critic_group: str = "critic",
                  action_scale: float = 1.0, overrides: Optional[Dict[str, Any]] = None,
                  app: Optional[Dict[str, Any]] = None) -> ManagerBasedVecEnv:
    """Start Isaac Sim headless (once per process), build Isaac Lab task ``task`` and wrap it
    in :class:`ManagerBasedVecEnv`. Not exercised here (no Isaac Sim on CPU-only machines);
    the adapter logic it shares with mjlab is tested with a test double."""
    global _ISAAC_APP
    dev = _device_str(device)
    if _ISAAC_APP is None:
        from isaaclab.app import AppLauncher
        _ISAAC_APP = AppLauncher(headless=True, device=dev, **dict(app or {})).app
    importlib.import_module("isaaclab_tasks")  # registers the Isaac-* gym ids
    from isaaclab_tasks.utils import parse_env_cfg
    if task not in gym.registry:
        valid = sorted(k for k in gym.registry if k.startswith("Isaac-"))
        _fail("task", task, f"is not a registered Isaac Lab task (valid: {', '.join(valid)})")
    cfg = parse_env_cfg(task, device=dev, num_envs=int(num_envs))
    apply_overrides(cfg, dict(overrides or {}))
    cfg.seed = int(seed)
    mode = "none"
    if final_obs and hasattr(cfg, "compute_final_obs"):
        cfg.compute_final_obs = True
        mode = "extras"
    elif final_obs:
        print("[cpo] this Isaac Lab has no compute_final_obs: no terminal observations")
    if max_episode_steps:
        step_dt = cfg.sim.dt * cfg.decimation
        cfg.episode_length_s = (int(max_episode_steps) - 0.5) * step_dt
    sim_env = gym.make(task, cfg=cfg).unwrapped
    has_critic = critic_obs and critic_group in sim_env.observation_manager.active_terms
    return ManagerBasedVecEnv(sim_env, sim_env.device, obs_group=obs_group,
                              critic_group=critic_group if has_critic else None,
                              action_scale=action_scale, final_obs=mode, seed=int(seed))


ISAACLAB_SPEC = TaskSpec(factory=make_isaaclab, params=IsaacLabParams, max_episode_steps=0,
                         description="Isaac Lab manager-based task; env.params.task picks it")
