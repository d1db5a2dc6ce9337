"""Map a Hydra env config to a :class:`envs.base.VecEnv` on any torch device.

Every task has a :class:`envs.spec.TaskSpec`: its class, a dataclass of its own parameters (so
a mistyped parameter fails before any compute, naming the key and the valid ones) and its
documented "solved" threshold. The registry maps names to specs given as lazy
``"module:SPEC"`` strings, for the embedded tasks and the simulator backends alike, imported
on first use: ``cpo`` never imports a simulator, and no task module imports the registry.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
from typing import Any, Dict, Mapping, Optional

from envs.base import VecEnv
from envs.spec import EnvConfigError, TaskSpec  # noqa: F401  (the registry's public names)


#: task name -> spec, or a "module:attribute" string resolved on first use (lazy backends)
_TASKS: Dict[str, Any] = {}


def register(name: str, spec: Any) -> None:
    """Register ``spec`` (a :class:`TaskSpec` or a lazy ``"module:attr"`` string) as ``name``."""
    _TASKS[name] = spec


def names() -> list:
    """All registered task names, sorted."""
    _load_builtin()
    return sorted(_TASKS)


def spec(name: str) -> TaskSpec:
    """The :class:`TaskSpec` of ``name``; unknown names fail with a "did you mean"."""
    _load_builtin()
    if name not in _TASKS:
        close = difflib.get_close_matches(name, list(_TASKS), n=3)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise EnvConfigError(
            f"env.name={name!r} is not a registered task (known: {', '.join(sorted(_TASKS))}){hint}")
    s = _TASKS[name]
    if isinstance(s, str):
        module, attr = s.split(":")
        s = getattr(importlib.import_module(module), attr)
        _TASKS[name] = s
    return s


def check_params(name: str, params: Optional[Mapping[str, Any]]) -> Any:
    """Validate ``params`` against the task's parameter dataclass and return an instance."""
    s = spec(name)
    params = dict(params or {})
    fields = {f.name: f for f in dataclasses.fields(s.params)}
    for key, value in params.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise EnvConfigError(
                f"env.params.{key}={value!r} is not a parameter of task {name!r} "
                f"(valid: {', '.join(fields) or 'none'}){hint}")
    inst = s.params(**params)
    check = getattr(inst, "validate", None)
    if check is not None:
        check()  # raises EnvConfigError naming the key, value and rule
    return inst


def make(env_cfg: Any, device: Any = "cpu", seed: int = 0) -> VecEnv:
    """Build the env described by ``env_cfg`` (``name``, ``num_envs``, ``max_episode_steps``,
    ``params``) on ``device`` with ``seed``."""
    name = env_cfg.name
    s = spec(name)
    params = check_params(name, getattr(env_cfg, "params", None))
    steps = getattr(env_cfg, "max_episode_steps", None) or s.max_episode_steps
    env = s.factory(num_envs=int(env_cfg.num_envs), device=device, seed=int(seed),
                    max_episode_steps=int(steps), **dataclasses.asdict(params))
    if env.solved_return is None:
        env.solved_return = s.solved_return
    return env


def _load_builtin() -> None:
    """Nothing to import: the embedded tasks are registered as lazy ``module:SPEC`` strings
    below, like the simulator backends (kept for callers of the old name)."""


# the embedded pure-torch tasks (envs/tasks/), each module's SPEC, imported on first use
for _name in ("acrobot", "arm_reach", "cartpole", "mountain_car", "pendulum", "point_maze"):
    register(_name, f"envs.tasks.{_name}:SPEC")

# simulator backends, imported on first use only
register("gymnasium", "envs.gymnasium:SPEC")  # any gymnasium vector env (MuJoCo, robotics)
register("mjlab", "envs.isaaclab:MJLAB_SPEC")  # mjlab (MuJoCo Warp) manager-based tasks
register("isaaclab", "envs.isaaclab:ISAACLAB_SPEC")  # Isaac Lab manager-based tasks
register("isaacgym", "envs.isaacgym:SPEC")  # IsaacGymEnvs tasks (Isaac Gym Preview 4, Python 3.8)
