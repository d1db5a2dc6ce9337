"""Rebuild a policy from a run directory alone, evaluate it, export it."""
from __future__ import annotations

import os
from typing import Any, Dict, NamedTuple, Optional

import numpy as np
import torch
from torch import nn

from cpo.utils import checkpoint as ckpt
from cpo.utils.config import TrainConfig



@torch.no_grad()
def policy_action(model, obs: torch.Tensor, pol: torch.Tensor, state, stochastic: bool,
                  gen: Optional[torch.Generator] = None):
    """One action of policy ``pol`` on ``obs``: the mean (deterministic) or a sample; recurrent
    models advance their LSTM ``state``. Returns ``(action, new state)``."""
    base = model.embed(obs) if state is None else None
    if state is not None:
        base, state = model.encode_step(obs, state)
    if stochastic:
        return model.act(obs, pol, gen, base=base)[0], state
    return model.mean_base(base, pol), state

def find_checkpoint(run_dir: str, which: str = "best") -> str:
    """``best`` (falls back to the latest), ``latest``, or a path to a checkpoint file."""
    if os.path.isfile(which):
        return which
    if not os.path.isdir(run_dir):
        raise ckpt.CheckpointError(f"run={run_dir!r}: the directory does not exist")
    if which == "best":
        best = os.path.join(run_dir, "checkpoints", "best.pt")
        if os.path.isfile(best):
            return best
    path = ckpt.latest(run_dir)
    if path is None:
        raise ckpt.CheckpointError(f"no loadable checkpoint in {run_dir!r}/checkpoints")
    return path


def is_pbt(cfg: TrainConfig) -> bool:
    """True for a PBT run (``pbt.population > 0``, what selects cpo.runners.pbt's runner): its
    checkpoints hold a stacked population, not one ensemble network."""
    return int(cfg.pbt.population) > 0


class LoadedPolicy(NamedTuple):
    """A network ready for :func:`evaluate`, :func:`export_torchscript` and :func:`record_video`."""

    model: Any
    """The network (PBT: one member as a one-policy network)."""
    cfg: TrainConfig
    """The run's configuration, from the checkpoint."""
    index: int
    """The policy of ``model`` to run (always 0 for a PBT member)."""
    member: Optional[int]
    """PBT: the member's global id; None for other algorithms."""
    name: str
    """What was selected, for messages: ``policy 2``, ``member 5 (best of [0, 1, 2])``."""


def _read(path: str, device: Any):
    """(payload, TrainConfig, (obs_dim, act_dim, privileged_dim)) of a checkpoint file; the
    sizes come from one env of the run's task."""
    from omegaconf import OmegaConf

    from cpo.app import to_train_config
    from envs import registry

    payload = ckpt.load(path, map_location=device)
    cfg: TrainConfig = to_train_config(OmegaConf.create(payload["config"]))
    spec_env = registry.make(_with_envs(cfg, 1), device=device, seed=0)
    dims = (spec_env.obs_dim, spec_env.act_dim, spec_env.privileged_dim)
    spec_env.close()
    return payload, cfg, dims


def select_policy(path: str, device: Any = "cpu", policy: Optional[int] = None) -> LoadedPolicy:
    """Rebuild the network of checkpoint ``path`` and pick the policy to run.

    Ensembles (ppo/sapg/cpo): ``policy`` is the ensemble index, 0..algo.num_policies-1
    (default 0). PBT (cpo/runners/pbt.py): ``policy`` is a member's global id (default: the member
    with the best windowed score in the checkpoint), returned as a one-policy network
    (cpo.runners.pbt.checkpoint_policy). A policy the checkpoint does not hold raises ValueError
    naming the ones it does.
    """
    payload, cfg, (obs_dim, act_dim, priv_dim) = _read(path, device)
    if is_pbt(cfg):
        from cpo.runners.pbt import checkpoint_policy

        gids = [int(g) for g in payload["learner"]["gids"]]
        if policy is not None and int(policy) not in gids:
            raise ValueError(f"policy={policy}: this PBT checkpoint holds members {gids} (global "
                             "ids); leave policy out for the best-scored one")
        net, gid = checkpoint_policy(payload, cfg, obs_dim, act_dim, member=policy)
        scored = bool((payload["learner"]["ep_cnt"].sum(0) > 0).any())
        if policy is not None:
            how = f"of {gids}"
        else:  # checkpoint_policy falls back to the first member when none has a score yet
            how = f"best of {gids}" if scored else f"first of {gids}: no member has a score yet"
        return LoadedPolicy(net.to(device).eval(), cfg, 0, gid, f"member {gid} ({how})")
    index = 0 if policy is None else int(policy)
    M = int(cfg.algo.num_policies)
    if not 0 <= index < M:
        raise ValueError(f"policy={policy}: this checkpoint holds policies 0..{M - 1} "
                         f"(algo.num_policies={M})")
    from cpo.runners.runner import build_model

    # an asymmetric critic's input size is part of the checkpoint (only the actor is used here)
    model = build_model(cfg, obs_dim, act_dim, priv_dim).to(device)
    model.load_state_dict(payload["model"])
    model.eval()
    return LoadedPolicy(model, cfg, index, None, f"policy {index}")


def load_policy(path: str, device: Any = "cpu", member: Optional[int] = None):
    """(model, TrainConfig) rebuilt from a checkpoint file and its stored config.

    A PBT checkpoint gives member ``member`` (global id; default the best-scored) as a
    one-policy network: evaluate, export or record it as policy 0. ``member`` on any other
    checkpoint raises ValueError (use :func:`select_policy` to pick an ensemble policy).
    """
    if member is not None:
        loaded = select_policy(path, device, member)
        if loaded.member is None:
            raise ValueError(f"member={member}: only PBT checkpoints (pbt.population > 0) hold "
                             f"members; {path!r} is an algo={loaded.cfg.algo.name} run")
        return loaded.model, loaded.cfg
    loaded = select_policy(path, device)
    return loaded.model, loaded.cfg


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
        # each env plays one episode, so the memory is never reset
        action, state = policy_action(model, obs, pol, state, stochastic, gen)
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
        """``obs [B, D]`` -> action ``[B, A]`` in [-1, 1] (feed-forward policies). In eager
        mode one observation ``[D]`` gives one action ``[A]``; the exported graphs (ONNX,
        TorchScript) take ``[B, D]`` only: add the batch axis, ``obs[None]``."""
        if obs.dim() == 1:
            return self._act(self._normalize(obs.unsqueeze(0))).squeeze(0)
        return self._act(self._normalize(obs))

    def step(self, obs: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        """Recurrent policies: ``(obs [B, D], h [B, H], c [B, H]) -> (action, h, c)``."""
        out, (h2, c2) = self.rnn(self._normalize(obs).unsqueeze(0), (h.unsqueeze(0), c.unsqueeze(0)))
        return self._act(out.squeeze(0)), h2.squeeze(0), c2.squeeze(0)


def _cpu_copy(model: Any) -> Any:
    """A CPU copy of ``model`` (export runs on the CPU; the caller's model stays on its device)."""
    import copy

    return copy.deepcopy(model).cpu()


class _RecurrentStep(nn.Module):
    """:meth:`ExportedPolicy.step` as ``forward`` (what ONNX export traces)."""

    def __init__(self, policy: ExportedPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, obs: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        return self.policy.step(obs, h, c)


def export(model, path: str, policy: int = 0, metadata: Optional[Dict[str, str]] = None) -> str:
    """Write the deterministic policy by the file's extension: ``.onnx`` -> :func:`export_onnx`
    (the documented path), anything else -> :func:`export_torchscript` (deprecated in torch)."""
    if path.lower().endswith(".onnx"):
        return export_onnx(model, path, policy, metadata)
    return export_torchscript(model, path, policy)


def export_onnx(model, path: str, policy: int = 0, metadata: Optional[Dict[str, str]] = None) -> str:
    """Write the deterministic policy ``policy`` as an ONNX model to ``path``; returns it.

    Feed-forward: input ``obs [batch, obs_dim]`` (float32, raw observations), output
    ``action [batch, act_dim]`` in [-1, 1]; the observation normaliser and the policy's latent
    are baked in, the batch axis is dynamic. Recurrent: inputs ``obs``, ``h``, ``c``
    (``[batch, rnn_hidden]``, zeros at an episode start), outputs ``action``, ``h_out``,
    ``c_out``. ``metadata`` (e.g. the run's algo/env) is stored as the model's metadata_props
    next to ``obs_dim``, ``act_dim``, ``policy`` and ``rnn_hidden``. Uses torch's
    ``torch.export``-based exporter (needs ``onnxscript``; ``pip install -e ".[onnx]"``) and
    falls back to the TorchScript-based one on torches that lack it."""
    import onnx

    base = ExportedPolicy(_cpu_copy(model), policy).eval()
    B = 2  # an example batch of 2, so that no exporter specialises the batch axis to 1
    if model.is_recurrent:
        module: nn.Module = _RecurrentStep(base).eval()
        h = torch.zeros(B, model.rnn_hidden)
        args: tuple = (torch.zeros(B, model.obs_dim), h, h.clone())
        names_in, names_out = ["obs", "h", "c"], ["action", "h_out", "c_out"]
    else:
        module, args = base, (torch.zeros(B, model.obs_dim),)
        names_in, names_out = ["obs"], ["action"]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        # torch's exporter warns about its own internals (deprecations, LSTM weight views)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        if _has_dynamo_exporter():
            batch = torch.export.Dim("batch")
            torch.onnx.export(module, args, path, input_names=names_in, output_names=names_out,
                              dynamic_shapes=tuple({0: batch} for _ in names_in), dynamo=True,
                              external_data=False, verbose=False)
        else:  # the TorchScript-based exporter (newer torches need it asked for explicitly)
            import inspect

            legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
            torch.onnx.export(module, args, path, input_names=names_in, output_names=names_out,
                              dynamic_axes={n: {0: "batch"} for n in names_in + names_out}, **legacy)
    proto = onnx.load(path)
    props = {"producer": "cpo-trainer", "obs_dim": str(model.obs_dim), "act_dim": str(model.act_dim),
             "policy": str(policy), "rnn_hidden": str(model.rnn_hidden), **(metadata or {})}
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(proto, path)
    return path


def _has_dynamo_exporter() -> bool:
    """Whether this torch has the ``torch.export``-based ONNX exporter and onnxscript."""
    import importlib.util
    import inspect

    try:
        return ("dynamo" in inspect.signature(torch.onnx.export).parameters
                and importlib.util.find_spec("onnxscript") is not None)
    except (TypeError, ValueError):
        return False


def check_onnx(model, path: str, policy: int = 0, rows: int = 64, seed: int = 0) -> Optional[float]:
    """Largest |action difference| between the ONNX file (run by onnxruntime) and the eager
    policy on ``rows`` random observations (for a recurrent policy: one step from random
    states); None when onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    g = torch.Generator().manual_seed(seed)
    base = ExportedPolicy(_cpu_copy(model), policy).eval()
    obs = base.obs_mean + base.obs_std * torch.randn(rows, model.obs_dim, generator=g)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        if model.is_recurrent:
            h, c = (torch.randn(rows, model.rnn_hidden, generator=g) for _ in range(2))
            want = torch.cat(base.step(obs, h, c), dim=-1)
            got = sess.run(None, {"obs": obs.numpy(), "h": h.numpy(), "c": c.numpy()})
            got_t = torch.cat([torch.from_numpy(x) for x in got], dim=-1)
        else:
            want = base(obs)
            got_t = torch.from_numpy(sess.run(None, {"obs": obs.numpy()})[0])
    return float((got_t - want).abs().max())


def export_torchscript(model, path: str, policy: int = 0) -> str:
    """Write the deterministic policy ``policy`` as TorchScript to ``path``; returns it.
    Recurrent policies are traced through :meth:`ExportedPolicy.step` (obs, h, c). torch
    2.13 deprecates TorchScript: :func:`export_onnx` is the documented path."""
    module = ExportedPolicy(_cpu_copy(model), policy).eval()
    example = torch.zeros(1, model.obs_dim)
    with torch.no_grad():
        if model.is_recurrent:
            h = torch.zeros(1, model.rnn_hidden)
            traced = torch.jit.trace_module(module, {"step": (example, h, h.clone())})
        else:
            traced = torch.jit.trace(module, example)
    traced.save(path)
    return path


# ---- videos (eval.py video=true) ------------------------------------------------------------
def _video_env_cfg(cfg: TrainConfig):
    """One env of the run's task; a backend whose parameters take a ``render_mode`` (the
    gymnasium backend) is asked for ``rgb_array`` frames."""
    import dataclasses

    from envs import registry

    env_cfg = _with_envs(cfg, 1)
    fields = {f.name for f in dataclasses.fields(registry.spec(env_cfg.name).params)}
    if "render_mode" in fields:
        env_cfg.params = dict(env_cfg.params or {}, render_mode="rgb_array")
    return env_cfg


def even_frame(frame: np.ndarray) -> np.ndarray:
    """``frame`` padded to an even height and width by repeating its last row/column (H.264's
    yuv420p format needs even sizes; padding keeps every pixel instead of rescaling)."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


@torch.no_grad()
def record_video(model, cfg: TrainConfig, path: str, episodes: int = 3, stochastic: bool = False,
                 policy: int = 0, seed: int = 12345, device: Any = "cpu",
                 fps: Any = None) -> Dict[str, Any]:
    """Play ``episodes`` consecutive episodes of one env with ``policy`` and write them to the
    MP4 file ``path`` (H.264 through imageio-ffmpeg), one frame per env step.

    Frames: the first state of episode 1, then the state after every step except each
    episode's final step (autoreset has already replaced it by the next episode's first
    state), so the video holds ``sum(episode lengths)`` frames. ``fps`` defaults to the env's
    ``render_fps`` (gymnasium's metadata) or 30. Returns the path, frame count, frame size
    (even-padded), fps and each episode's length and return.
    """
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (the ffmpeg binary imageio writes MP4 with)
    except ImportError as err:
        raise ImportError(f"video=true needs imageio and imageio-ffmpeg ({err}); "
                          "pip install -e '.[video]'") from None
    from envs import registry

    env = registry.make(_video_env_cfg(cfg), device=device, seed=seed)
    obs = env.reset(seed=seed)
    frame = env.render(0)
    if frame is None:
        env.close()
        raise RuntimeError(f"env {cfg.env.name!r} draws no frames (render() returned None); "
                           "video=true needs a backend that renders rgb_array frames")
    fps = fps or getattr(env, "render_fps", None) or 30
    pol = torch.full((1,), policy, dtype=torch.long, device=env.device)
    gen = torch.Generator(device=env.device).manual_seed(seed)
    state = model.initial_state(1, env.device) if model.is_recurrent else None
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    writer = imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=1)
    lengths, returns = [], []
    ep_len, ep_ret, frames = 0, 0.0, 0
    size = list(even_frame(frame).shape[:2])
    try:
        writer.append_data(even_frame(frame))
        frames += 1
        while len(lengths) < episodes:
            action, state = policy_action(model, obs, pol, state, stochastic, gen)
            obs, reward, term, trunc, _ = env.step(action)
            ep_len, ep_ret = ep_len + 1, ep_ret + float(reward[0])
            if bool(term[0] | trunc[0]):
                lengths.append(ep_len)
                returns.append(ep_ret)
                ep_len, ep_ret = 0, 0.0
                if state is not None:  # the next episode starts from a zero memory
                    state = tuple(torch.zeros_like(s) for s in state)
                if len(lengths) == episodes:
                    break
            writer.append_data(even_frame(env.render(0)))
            frames += 1
    finally:
        writer.close()
        env.close()
    return {"path": path, "frames": frames, "size": size, "fps": fps,
            "episode_lengths": lengths, "episode_returns": returns}
