"""The Python entry points: train, load, evaluate and export from a notebook or a script.

    import cpo
    res = cpo.train(["algo=cpo", "env=cartpole", "max_iterations=20"])
    policy = cpo.load_policy(res.run_dir)            # best checkpoint, leader policy
    print(cpo.evaluate(policy, episodes=100))        # EvalResult(return_mean=..., ...)
    action = policy.act(obs)                         # obs [D] or [B, D], numpy or torch
    policy.export("policy.onnx")

:func:`train` composes ``conf/`` with the same overrides, presets and checks as ``train.py``
(``algo=``, ``env=``, ``experiment=`` presets, ``key=value`` overrides, a "did you mean" for
typos, validation before any compute) and writes the same run directory
(``outputs/<algo>_<env>/<date>_<time>`` under the current directory unless ``run_dir`` is
given). Resume with ``cpo.train(["resume=<run dir>", "max_iterations=200"])``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

#: the repository's config directory (train.py's ``config_path``)
CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    run_dir: str
    """The run directory (TensorBoard events, checkpoints, train.log, resolved_config.yaml)."""
    stats: Dict[str, float]
    """The last iteration's statistics (the TensorBoard scalars: ``rollout/ep_return``, ...)."""
    config: Any
    """The resolved :class:`cpo.utils.config.TrainConfig`."""
    best_checkpoint: Optional[str] = None
    """``checkpoints/best.pt`` (the best smoothed leader return), if one was written."""
    last_checkpoint: Optional[str] = None
    """The newest periodic checkpoint."""


@dataclass
class EvalResult:
    """What :func:`evaluate` returns: the deterministic (or sampled) policy over ``episodes``
    episodes, one per env, all run in parallel."""

    return_mean: float
    return_std: float
    episodes: int
    success_rate: Optional[float] = None
    """Fraction of episodes the task logged as successful; None for tasks without success."""
    returns: List[float] = field(default_factory=list, repr=False)
    """Each episode's return."""


def compose(overrides: Sequence[str] = ()) -> Tuple[Any, str]:
    """``conf/config.yaml`` composed with ``overrides`` exactly as ``train.py`` composes it:
    returns the validated :class:`cpo.utils.config.TrainConfig` and the run directory Hydra would
    choose (``hydra.run.dir``, relative to the current directory). Raises
    :class:`cpo.utils.config.ConfigError` naming the key, the value and the rule."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from cpo.app import check_overrides, to_train_config
    from cpo.utils.config import validate

    overrides = [str(o) for o in overrides]
    check_overrides(overrides)  # unknown keys and presets, before Hydra (as train.py)
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = hydra_compose("config", overrides=overrides, return_hydra_config=True)
    run_dir = str(OmegaConf.select(cfg, "hydra.run.dir"))
    with open_dict(cfg):
        del cfg["hydra"]
    tcfg = to_train_config(cfg)
    if not tcfg.resume:
        validate(tcfg)  # a resume validates the stored config (cpo.app.run)
    return tcfg, run_dir


def train(overrides: Sequence[str] = (), run_dir: Optional[str] = None) -> TrainResult:
    """Train as ``python train.py <overrides>`` does (same presets, checks, run directory
    layout, checkpoints, logs and closing summary) and return the run directory and the last
    iteration's statistics. ``run_dir`` replaces Hydra's ``outputs/<algo>_<env>/<date>_<time>``."""
    from cpo.utils import checkpoint as ckpt
    from cpo.app import run

    from omegaconf import OmegaConf

    from cpo.app import to_train_config

    from cpo.app import resume_target

    tcfg, hydra_dir = compose(overrides)
    resumed = tcfg.resume is not None and tcfg.resume != "auto"
    # resume=<dir> or resume=<dir>/checkpoints/<file>: the run directory either way
    target = os.path.abspath(resume_target(tcfg.resume)[0] if resumed else (run_dir or hydra_dir))
    stats = run(tcfg, run_dir=target, overrides=list(overrides))
    final_dir = os.path.abspath(tcfg.run_dir) if tcfg.run_dir and not resumed else target
    # the config the run really used (a resume continues its stored one)
    used = to_train_config(OmegaConf.load(os.path.join(final_dir, "resolved_config.yaml")))
    best = os.path.join(final_dir, "checkpoints", "best.pt")
    periodic = ckpt.list_checkpoints(final_dir)
    return TrainResult(final_dir, dict(stats), used, best if os.path.isfile(best) else None,
                       periodic[-1] if periodic else None)


class Policy:
    """One trained policy rebuilt from a run directory: deterministic actions, evaluation and
    export. Made by :func:`load_policy`."""

    def __init__(self, model: Any, cfg: Any, index: int, checkpoint: str, name: str) -> None:
        self.model, self.cfg, self.index = model, cfg, index
        self.checkpoint, self.name = checkpoint, name
        self._device = next(model.parameters()).device
        self._state = None  # recurrent policies: the LSTM state between act() calls

    def __repr__(self) -> str:
        return (f"Policy({self.cfg.algo.name}/{self.cfg.env.name}, {self.name}, obs_dim={self.model.obs_dim}, "
                f"act_dim={self.model.act_dim}, checkpoint={self.checkpoint!r})")

    def act(self, obs: Any) -> Any:
        """Deterministic action(s) in [-1, 1] for raw observation(s) ``obs``: ``[D]`` gives
        ``[A]``, ``[B, D]`` gives ``[B, A]``; numpy in, numpy out; torch in, torch out. A
        recurrent policy keeps its LSTM state between calls (:meth:`reset` clears it)."""
        import numpy as np
        import torch

        from cpo.tools.evaluation import policy_action

        as_numpy = isinstance(obs, np.ndarray)
        x = torch.as_tensor(obs, dtype=torch.float32, device=self._device)
        if x.dim() not in (1, 2) or x.shape[-1] != self.model.obs_dim:
            raise ValueError(f"obs has shape {tuple(x.shape)}: expected [{self.model.obs_dim}] or "
                             f"[batch, {self.model.obs_dim}] (this policy's observation size)")
        single = x.dim() == 1
        x = x.unsqueeze(0) if single else x
        if self.model.is_recurrent and (self._state is None or self._state[0].shape[0] != x.shape[0]):
            self._state = self.model.initial_state(x.shape[0], self._device)
        pol = torch.full((x.shape[0],), self.index, dtype=torch.long, device=self._device)
        action, self._state = policy_action(self.model, x, pol, self._state, stochastic=False)
        action = action.clamp(-1.0, 1.0)
        action = action[0] if single else action
        return action.cpu().numpy() if as_numpy else action

    def reset(self) -> None:
        """Forget the LSTM state (a new episode starts); nothing to do for feed-forward policies."""
        self._state = None

    def evaluate(self, episodes: int = 100, stochastic: bool = False, seed: int = 12345) -> EvalResult:
        """:func:`evaluate` of this policy."""
        return evaluate(self, episodes=episodes, stochastic=stochastic, seed=seed)

    def export(self, path: str) -> str:
        """Write the deterministic policy to ``path``: ONNX for ``*.onnx`` (the documented
        deployment path), TorchScript otherwise. Returns the path."""
        from cpo.tools.evaluation import export

        meta = {"algo": self.cfg.algo.name, "env": self.cfg.env.name, "checkpoint": self.checkpoint}
        return export(self.model, path, self.index, meta)  # (exports a CPU copy)


def load_policy(run: str, checkpoint: str = "best", policy: Optional[int] = None,
                device: str = "cpu") -> Policy:
    """Rebuild a policy from a run directory (or a checkpoint file): ``checkpoint`` is
    ``best`` (falls back to the newest), ``latest`` or a file; ``policy`` the ensemble index
    (default 0, the leader) or, for a PBT run, a member's global id (default: the best)."""
    from cpo.tools.evaluation import find_checkpoint, select_policy

    if os.path.isfile(run):
        path = run
    else:
        path = find_checkpoint(run, checkpoint)
    loaded = select_policy(path, device=device, policy=policy)
    return Policy(loaded.model, loaded.cfg, loaded.index, path, loaded.name)


def evaluate(policy: Policy, episodes: int = 100, stochastic: bool = False, seed: int = 12345) -> EvalResult:
    """Run ``episodes`` episodes of the policy's task (one per env, in parallel, on the
    policy's device) and summarise them."""
    from cpo.tools.evaluation import evaluate as run_episodes

    res = run_episodes(policy.model, policy.cfg, episodes=episodes, stochastic=stochastic,
                       policy=policy.index, seed=seed, device=str(policy._device))
    return EvalResult(res["return_mean"], res["return_std"], res["episodes"], res.get("success_rate"),
                      [float(x) for x in res["returns"]])
