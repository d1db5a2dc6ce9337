"""Rebuild a policy from a run directory alone, evaluate it, export it."""
from __future__ import annotations

import os
from typing import Any, Dict

import numpy as np
import torch
from torch import nn

from cpo import checkpoint as ckpt
from cpo.config import TrainConfig


def find_checkpoint(run_dir: str, which: str = "best") -> str:
    """``best`` (falls back to the latest), ``latest``, or a path to a checkpoint file."""
    if os.path.isfile(which):
        return which
    if which == "best":
        best = os.path.join(run_dir, "checkpoints", "best.pt")
        if os.path.isfile(best):
            return best
    path = ckpt.latest(run_dir)
    if path is None:
        raise ckpt.CheckpointError(f"no loadable checkpoint in {run_dir!r}/checkpoints")
    return path


def load_policy(path: str, device: Any = "cpu"):
    """(model, TrainConfig) rebuilt from a checkpoint file and its stored config."""
    from omegaconf import OmegaConf

    from cpo.app import to_train_config
    from cpo.runner import build_model
    from envs import registry

    payload = ckpt.load(path, map_location=device)
    cfg: TrainConfig = to_train_config(OmegaConf.create(payload["config"]))
    spec_env = registry.make(_with_envs(cfg, 1), device=device, seed=0)
    model = build_model(cfg, spec_env.obs_dim, spec_env.act_dim).to(device)
    model.load_state_dict(payload["model"])
    model.eval()
    spec_env.close()
    return model, cfg


def _with_envs(cfg: TrainConfig, n: int):
    import copy

    env_cfg = copy.deepcopy(cfg.env)
    env_cfg.num_envs = n
    return env_cfg


@torch.no_grad()
def evaluate(model, cfg: TrainConfig, episodes: int = 100, stochastic: bool = False,
             policy: int = 0, seed: int = 12345, device: Any = "cpu") -> Dict[str, Any]:
    """Run ``episodes`` envs in parallel until each finishes one episode with ``policy``.

    Returns mean/std of the episode return, the success rate (when the task logs one) and
    the raw per-episode arrays.
    """
    from envs import registry

    env = registry.make(_with_envs(cfg, episodes), device=device, seed=seed)
    obs = env.reset(seed=seed)
    pol = torch.full((episodes,), policy, dtype=torch.long, device=env.device)
    gen = torch.Generator(device=env.device).manual_seed(seed)
    ret = torch.zeros(episodes, device=env.device)
    final_ret = torch.zeros(episodes, device=env.device)
    success = torch.full((episodes,), float("nan"), device=env.device)
    finished = torch.zeros(episodes, dtype=torch.bool, device=env.device)
    state = model.initial_state(episodes, env.device) if model.is_recurrent else None
    for _ in range(env.max_episode_steps + 1):
        base = model.embed(obs) if state is None else None
        if state is not None:  # each env plays one episode, so the memory is never reset
            base, state = model.encode_step(obs, state)
        if stochastic:
            action = model.act(obs, pol, gen, base=base)[0]
        else:
            action = model.mean_base(base, pol)
        obs, reward, term, trunc, info = env.step(action)
        ret += reward * (~finished).float()
        done = (term | trunc) & ~finished
        final_ret = torch.where(done, ret, final_ret)
        if "success" in info.get("log", {}):
            success = torch.where(done, info["log"]["success"].float(), success)
        finished |= done
        if bool(finished.all()):
            break
    env.close()
    r = final_ret[finished].cpu().numpy()
    s = success[finished].cpu().numpy()
    out: Dict[str, Any] = {"episodes": int(finished.sum()), "return_mean": float(np.mean(r)),
                           "return_std": float(np.std(r)), "returns": r}
    if not np.all(np.isnan(s)):
        out["success_rate"] = float(np.nanmean(s))
    return out


class ExportedPolicy(nn.Module):
    """Deterministic policy of one ensemble member as a standalone module:
    raw observation -> action in [-1, 1] (observation normaliser and latent baked in).
    A recurrent policy maps ``(obs, h, c) -> (action, h, c)`` with ``h, c [B, H]``."""

    def __init__(self, model, policy: int = 0) -> None:
        super().__init__()
        import copy

        self.register_buffer("obs_mean", model.obs_rms.mean.float().clone())
        self.register_buffer("obs_std", torch.sqrt(model.obs_rms.var + model.obs_rms.eps).float().clone())
        self.register_buffer("latent", model.latents[policy].detach().float().clone())
        self.clip = float(model.obs_rms.clip)
        self.normalize = bool(model.normalize_obs)
        self.trunk = copy.deepcopy(model.actor_trunk)
        self.head = copy.deepcopy(model.mu_head)
        self.rnn = copy.deepcopy(model.rnn)

    def _normalize(self, obs: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            return ((obs - self.obs_mean) / self.obs_std).clamp(-self.clip, self.clip)
        return obs

    def _act(self, base: torch.Tensor) -> torch.Tensor:
        x = torch.cat([base, self.latent.expand(base.shape[0], -1)], dim=-1)
        return self.head(self.trunk(x)).clamp(-1.0, 1.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """``obs [B, D]`` -> action ``[B, A]`` in [-1, 1] (feed-forward policies)."""
        return self._act(self._normalize(obs))

    def step(self, obs: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        """Recurrent policies: ``(obs [B, D], h [B, H], c [B, H]) -> (action, h, c)``."""
        out, (h2, c2) = self.rnn(self._normalize(obs).unsqueeze(0), (h.unsqueeze(0), c.unsqueeze(0)))
        return self._act(out.squeeze(0)), h2.squeeze(0), c2.squeeze(0)


def export_torchscript(model, path: str, policy: int = 0) -> str:
    """Write the deterministic policy ``policy`` as TorchScript to ``path``; returns it.
    Recurrent policies are traced through :meth:`ExportedPolicy.step` (obs, h, c)."""
    module = ExportedPolicy(model.cpu(), policy).eval()
    example = torch.zeros(1, model.obs_dim)
    with torch.no_grad():
        if model.is_recurrent:
            h = torch.zeros(1, model.rnn_hidden)
            traced = torch.jit.trace_module(module, {"step": (example, h, h.clone())})
        else:
            traced = torch.jit.trace(module, example)
    traced.save(path)
    return path
