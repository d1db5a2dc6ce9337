"""``gymnasium``: any gymnasium vector env (MuJoCo, gymnasium-robotics, ...) behind the
batched-tensor contract of :mod:`envs.base`.

``python train.py env=gym_halfcheetah`` (or ``env.name=gymnasium env.params.id=Ant-v5``).

What the adapter does
    * builds ``num_envs`` copies of ``gym.make(id, **kwargs)`` in a
      :class:`gymnasium.vector.SyncVectorEnv` (one process) or
      :class:`gymnasium.vector.AsyncVectorEnv` (one worker process per env) with **same-step**
      autoreset (``AutoresetMode.SAME_STEP``, gymnasium >= 1.1): the observation returned for
      an env whose episode just ended is already the first observation of its next episode,
      and the pre-reset observation travels in ``info["final_obs"]``. gymnasium's default
      (next-step autoreset) would instead spend one extra ``step`` call on the reset, which
      breaks the contract.
    * maps actions from [-1, 1] to the env's ``Box`` bounds (affine, per dimension;
      dimensions with an infinite bound pass through unchanged);
    * flattens observations to one float32 vector per env: a ``Box`` is reshaped, a ``Dict``
      (gymnasium-robotics' ``observation`` / ``achieved_goal`` / ``desired_goal``) or
      ``Tuple`` is concatenated in the space's own order (gymnasium sorts ``Dict`` keys, so
      ``achieved_goal, desired_goal, observation``), recursively;
    * moves observations, rewards and flags to ``device`` as one tensor each per step;
    * reports ``info["log"]["success"]`` from ``info[success_key]`` (``is_success`` for the
      robotics tasks) of the finished episode's last step, once the env has reported it.
      Episode return and length are not repeated in ``log``: the runner and ``eval.py``
      already sum the reward stream per episode (``rollout/ep_return``, ``rollout/ep_len``).

Limits
    gymnasium's vector envs step their copies in a Python loop (sync) or in worker processes
    (async); this adapter adds no loop of its own except over the *finished* rows when it
    gathers their final observations. Exact resume is not supported (``state_dict()`` is
    empty): a resumed run continues with freshly reset simulators. ``render(env_id)``
    needs ``render_mode=rgb_array`` and an OpenGL context for MuJoCo (``MUJOCO_GL=egl`` or
    ``osmesa`` on a headless machine).
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
from typing import Any, Dict, List, Optional

import gymnasium as gym
import numpy as np
import torch

from envs.base import StepResult, VecEnv
from envs.spec import EnvConfigError, TaskSpec

#: extras that provide the simulators of well-known id families (for install hints)
INSTALL_HINT = ('MuJoCo ids need `pip install -e ".[mujoco]"`; gymnasium-robotics ids (Fetch*, '
                'HandManipulate*) need `pip install -e ".[robotics]"` and '
                'env.params.imports=[gymnasium_robotics]')


def _fail(key: str, value: Any, rule: str) -> None:
    """Raise :class:`EnvConfigError` ``env.params.<key>=<value>: <rule>``."""
    raise EnvConfigError(f"env.params.{key}={value!r} is invalid: {rule}")


def _import_all(modules: List[str]) -> None:
    """Import every module of ``modules`` (they register their gymnasium ids on import)."""
    for name in modules:
        mod = importlib.import_module(name)
        register_envs = getattr(gym, "register_envs", None)
        if register_envs is not None:  # gymnasium >= 1.0's no-op that documents the intent
            register_envs(mod)


def _find_spec(env_id: str) -> Any:
    """The registered :class:`gymnasium.envs.registration.EnvSpec` of ``env_id``; a
    ``module:Env-vN`` id imports ``module`` first (gymnasium's own convention)."""
    module, sep, name = env_id.rpartition(":")
    if sep:
        importlib.import_module(module)
    return gym.registry.get(name if sep else env_id)


@dataclasses.dataclass
class GymParams:
    """Parameters of the ``gymnasium`` backend (``env.params.*``)."""

    id: str = ""
    """gymnasium id, e.g. ``HalfCheetah-v5``, ``Ant-v5``, ``FetchPush-v4``,
    ``HandManipulateBlock-v1`` (``module:Id`` imports ``module`` first). Required."""
    vectorization: str = "sync"
    """sync (all copies in this process; best for cheap envs) | async (one worker process per
    copy; pays off when one env step costs more than the inter-process round trip, e.g. the
    Shadow hand)."""
    kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments of ``gym.make`` for every copy (e.g. ``{ctrl_cost_weight: 0.1}``,
    ``{width: 320, height: 240}`` for MuJoCo frames)."""
    imports: List[str] = dataclasses.field(default_factory=list)
    """Modules imported before making the env, in this process and in every async worker,
    because they register ids (``[gymnasium_robotics]`` for Fetch and the Shadow hand)."""
    render_mode: Optional[str] = None
    """None (no frames, the fastest) | rgb_array (``render(env_id)`` returns frames; set by
    ``eval.py video=true`` automatically)."""
    success_key: str = "is_success"
    """Key of the per-step info dict holding the episode's success (read at its last step)."""
    async_context: Optional[str] = None
    """multiprocessing start method of the async workers: None (the platform's default) |
    fork | spawn | forkserver."""

    def validate(self) -> None:
        """Check every parameter before any env is built (the id must be registered and its
        simulator importable); raise :class:`EnvConfigError` naming the key, value and rule."""
        if not hasattr(gym.vector, "AutoresetMode"):
            _fail("id", self.id, f"the gymnasium backend needs gymnasium>=1.1 for same-step "
                  f"autoreset (installed: {gym.__version__}); pip install -U 'gymnasium>=1.1'")
        if not isinstance(self.id, str) or not self.id:
            _fail("id", self.id, "must name a gymnasium env id, e.g. env.params.id=HalfCheetah-v5")
        if self.vectorization not in ("sync", "async"):
            _fail("vectorization", self.vectorization, "must be sync or async")
        if self.render_mode not in (None, "rgb_array"):
            _fail("render_mode", self.render_mode, "must be null or rgb_array")
        if self.async_context not in (None, "fork", "spawn", "forkserver"):
            _fail("async_context", self.async_context, "must be null, fork, spawn or forkserver")
        if not isinstance(self.kwargs, dict):
            _fail("kwargs", self.kwargs, "must be a mapping of gym.make keyword arguments")
        if not (isinstance(self.imports, (list, tuple)) and all(isinstance(m, str) for m in self.imports)):
            _fail("imports", self.imports, "must be a list of module names")
        if not isinstance(self.success_key, str) or not self.success_key:
            _fail("success_key", self.success_key, "must be a non-empty string")
        try:
            _import_all(list(self.imports))
        except ImportError as err:
            _fail("imports", list(self.imports), f"cannot import {err.name or err}: {INSTALL_HINT}")
        try:
            spec = _find_spec(self.id)
        except ImportError as err:
            _fail("id", self.id, f"cannot import the module named before ':' ({err})")
        if spec is None:
            close = difflib.get_close_matches(self.id, list(gym.registry), n=3)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            _fail("id", self.id, f"is not a registered gymnasium id ({INSTALL_HINT}){hint}")
        if isinstance(spec.entry_point, str):  # import the simulator now, not mid-run
            try:
                gym.envs.registration.load_env_creator(spec.entry_point)
            except Exception as err:  # DependencyNotInstalled, ImportError, ...
                _fail("id", self.id, f"its simulator cannot be loaded ({type(err).__name__}: "
                      f"{err}); {INSTALL_HINT}")


def _make_one(env_id: str, imports: List[str], max_episode_steps: Optional[int],
              render_mode: Optional[str], kwargs: Dict[str, Any]) -> gym.Env:
    """One env copy (module level, so async workers can unpickle it under any start method)."""
    _import_all(imports)
    extra: Dict[str, Any] = dict(kwargs)
    if max_episode_steps is not None:
        extra["max_episode_steps"] = max_episode_steps
    if render_mode is not None:
        extra["render_mode"] = render_mode
    return gym.make(env_id, **extra)


def flatten_batch(space: gym.Space, x: Any, n: int) -> np.ndarray:
    """Batched observation ``x`` of ``n`` envs (structured like ``space``) -> ``[n, D]``
    float32, concatenating ``Dict``/``Tuple`` parts in the space's order (as
    :func:`gymnasium.spaces.flatten_space` does)."""
    if isinstance(space, gym.spaces.Box):
        return np.asarray(x, dtype=np.float32).reshape(n, -1)
    if isinstance(space, gym.spaces.Dict):
        return np.concatenate([flatten_batch(s, x[k], n) for k, s in space.spaces.items()], axis=1)
    if isinstance(space, gym.spaces.Tuple):
        return np.concatenate([flatten_batch(s, x[i], n) for i, s in enumerate(space.spaces)], axis=1)
    raise EnvConfigError(f"observation space {space} is not supported by the gymnasium backend "
                         "(Box, Dict and Tuple of Box only)")


def _flat_box(space: gym.Space) -> gym.spaces.Box:
    """The float32 ``Box`` of the flattened observation, bounds concatenated like
    :func:`flatten_batch` (nested ``Dict``/``Tuple`` of ``Box``)."""
    if isinstance(space, gym.spaces.Box):
        return gym.spaces.Box(space.low.reshape(-1).astype(np.float32),
                              space.high.reshape(-1).astype(np.float32), dtype=np.float32)
    parts = list(space.spaces.values()) if isinstance(space, gym.spaces.Dict) else (
        list(space.spaces) if isinstance(space, gym.spaces.Tuple) else None)
    if parts is None:
        raise EnvConfigError(f"observation space {space} is not supported by the gymnasium "
                             "backend (Box, Dict and Tuple of Box only)")
    boxes = [_flat_box(s) for s in parts]
    return gym.spaces.Box(np.concatenate([b.low for b in boxes]),
                          np.concatenate([b.high for b in boxes]), dtype=np.float32)


class GymnasiumVecEnv(VecEnv):
    """``num_envs`` copies of a gymnasium env as one batched-tensor :class:`VecEnv`.

    See the module docstring for what it maps and its limits.
    """

    def __init__(self, num_envs: int, device: Any = "cpu", seed: int = 0,
                 max_episode_steps: int = 0, id: str = "", vectorization: str = "sync",
                 kwargs: Optional[Dict[str, Any]] = None, imports: Optional[List[str]] = None,
                 render_mode: Optional[str] = None, success_key: str = "is_success",
                 async_context: Optional[str] = None) -> None:
        from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

        self.num_envs = int(num_envs)
        self.device = torch.device(device)
        self.env_id, self.success_key = id, success_key
        imports = list(imports or [])
        _import_all(imports)
        spec = _find_spec(id)
        if spec is None:
            raise EnvConfigError(f"env.params.id={id!r} is invalid: is not a registered gymnasium id")
        # the time limit: an explicit env.max_episode_steps, else the id's own TimeLimit
        limit = int(max_episode_steps) if max_episode_steps else None
        if limit is None and spec.max_episode_steps is None:
            raise EnvConfigError(f"env.max_episode_steps=None: gymnasium id {id!r} has no time "
                                 "limit of its own; set env.max_episode_steps")
        self.max_episode_steps = limit or int(spec.max_episode_steps)
        self.solved_return = spec.reward_threshold
        #: frames per second of the env's clock (gymnasium's metadata), used by videos
        self.render_fps: Optional[float] = None
        # gym.make applies the id's own TimeLimit; pass ours only when it differs
        make = functools.partial(_make_one, id, imports,
                                 limit if limit != spec.max_episode_steps else None,
                                 render_mode, dict(kwargs or {}))
        fns = [make] * self.num_envs
        mode = AutoresetMode.SAME_STEP
        if vectorization == "async":
            self.vec = AsyncVectorEnv(fns, autoreset_mode=mode, context=async_context)
        else:
            self.vec = SyncVectorEnv(fns, autoreset_mode=mode)
        self.render_fps = self.vec.metadata.get("render_fps")
        self.single_obs_space = self.vec.single_observation_space
        self.observation_space = _flat_box(self.single_obs_space)
        act = self.vec.single_action_space
        if not isinstance(act, gym.spaces.Box):
            self.vec.close()
            raise EnvConfigError(f"env.params.id={id!r} is invalid: its action space {act} is not "
                                 "a Box (the learner's Gaussian policies need continuous actions)")
        self.env_action_space = act
        self.action_space = gym.spaces.Box(-1.0, 1.0, act.shape, np.float32)
        low = torch.as_tensor(act.low.reshape(-1), dtype=torch.float32, device=self.device)
        high = torch.as_tensor(act.high.reshape(-1), dtype=torch.float32, device=self.device)
        finite = torch.isfinite(low) & torch.isfinite(high)
        # affine map a in [-1, 1] -> low + (a + 1) / 2 * (high - low) = centre + half * a;
        # infinite bounds keep a unchanged (centre 0, half-range 1)
        self._act_centre = torch.where(finite, (high + low) / 2, torch.zeros_like(low))
        self._act_half = torch.where(finite, (high - low) / 2, torch.ones_like(low))
        self._has_success = False
        self._last_obs: Optional[torch.Tensor] = None
        self.reset(seed=seed)

    # ---- numpy <-> torch ------------------------------------------------------------------
    def _obs(self, x: Any) -> torch.Tensor:
        """Batched raw observation -> ``[num_envs, obs_dim]`` float32 on ``device``."""
        return torch.from_numpy(flatten_batch(self.single_obs_space, x, self.num_envs)).to(self.device)

    def _final_obs(self, info: Dict[str, Any], done: np.ndarray, obs_np: np.ndarray) -> np.ndarray:
        """``obs_np`` with the finished rows replaced by their pre-reset observations."""
        final = obs_np.copy()
        rows = np.flatnonzero(done)
        if rows.size == 0 or "final_obs" not in info:
            return final
        from gymnasium.vector.utils import concatenate, create_empty_array

        space = self.single_obs_space
        items = [info["final_obs"][i] for i in rows]  # only the finished rows (object array)
        stacked = concatenate(space, items, create_empty_array(space, n=rows.size))
        final[rows] = flatten_batch(space, stacked, rows.size)
        return final

    def _success(self, info: Dict[str, Any]) -> Optional[np.ndarray]:
        """``[num_envs]`` float32 success of the episodes that ended this step (0 elsewhere),
        or None while the env has never reported ``success_key``."""
        key = self.success_key
        final = info.get("final_info", {})
        self._has_success = self._has_success or key in info or key in final
        if not self._has_success:
            return None
        out = np.zeros(self.num_envs, np.float32)
        if key in final:
            mask = np.asarray(final.get("_" + key, np.ones(self.num_envs, bool)), bool)
            out = np.where(mask, np.asarray(final[key], np.float32), out).astype(np.float32)
        return out

    # ---- the contract ---------------------------------------------------------------------
    def reset(self, seed: Optional[int] = None) -> torch.Tensor:
        """Reset every copy; ``seed`` seeds copy ``i`` with ``seed + i`` (gymnasium's rule)."""
        obs, _ = self.vec.reset(seed=None if seed is None else int(seed))
        self._last_obs = self._obs(obs)
        return self._last_obs

    def step(self, action: torch.Tensor) -> StepResult:
        """One step of every copy with ``action`` in [-1, 1]; same-step autoreset inside."""
        a = action.to(self.device, torch.float32).clamp(-1.0, 1.0)
        a = self._act_centre + self._act_half * a  # [-1, 1] -> [low, high] per dimension
        a_np = a.cpu().numpy().astype(self.env_action_space.dtype, copy=False)
        obs, reward, term, trunc, info = self.vec.step(a_np.reshape((self.num_envs,) + self.env_action_space.shape))
        term = np.asarray(term, bool)
        trunc = np.asarray(trunc, bool) & ~term  # a terminal state is never a truncation
        done = term | trunc
        obs_np = flatten_batch(self.single_obs_space, obs, self.num_envs)
        final_np = self._final_obs(info, done, obs_np)
        log: Dict[str, torch.Tensor] = {}
        success = self._success(info)
        if success is not None:
            log["success"] = torch.from_numpy(success).to(self.device)
        obs_t = torch.from_numpy(obs_np).to(self.device)
        out_info: Dict[str, Any] = {"final_obs": torch.from_numpy(final_np).to(self.device), "log": log}
        reward_t = torch.from_numpy(np.asarray(reward, np.float32)).to(self.device)
        self._last_obs = obs_t
        return (obs_t, reward_t, torch.from_numpy(term).to(self.device),
                torch.from_numpy(trunc).to(self.device), out_info)

    def reset_envs(self, mask: torch.Tensor) -> torch.Tensor:
        """Reset the copies where ``mask`` is true (gymnasium's ``reset_mask`` option)."""
        m = mask.detach().cpu().numpy().astype(bool)
        if not m.any():
            return self._last_obs
        obs, _ = self.vec.reset(options={"reset_mask": m})
        self._last_obs = self._obs(obs)
        return self._last_obs

    def render(self, env_id: int = 0) -> Optional[np.ndarray]:
        """An ``H x W x 3`` uint8 frame of copy ``env_id`` (None without ``render_mode=rgb_array``)."""
        if self.vec.render_mode != "rgb_array":
            return None
        envs = getattr(self.vec, "envs", None)
        frame = envs[env_id].render() if envs is not None else self.vec.call("render")[env_id]
        return None if frame is None else np.ascontiguousarray(frame[..., :3], dtype=np.uint8)

    def close(self) -> None:
        """Close every copy (and the async workers)."""
        self.vec.close()


#: registered lazily as ``gymnasium`` by :mod:`envs.registry` (importing this module needs
#: only gymnasium; a missing simulator fails in :meth:`GymParams.validate`)
SPEC = TaskSpec(
    factory=GymnasiumVecEnv, params=GymParams,
    max_episode_steps=0,  # 0 = the gymnasium id's own TimeLimit
    solved_return=None,  # taken from the id's reward_threshold when it has one
    description="any gymnasium vector env by id (MuJoCo, gymnasium-robotics, ...)")
