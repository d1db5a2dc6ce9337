"""Simulator step-only SPS and end-to-end training SPS of every installed backend.

    python bench/backends.py [--device cpu|cuda] [--threads 1] [--envs 256 1024 4096]
                             [--gym-envs 12 48] [--go1-envs ...] [--algo ppo] [--out f.json]

For each backend that is installed (the embedded pure-torch tasks always; gymnasium MuJoCo
when ``gymnasium[mujoco]`` is; mjlab when ``mjlab`` is) and a few env counts:

``step_sps``
    the simulator alone: random actions in [-1, 1] through its own ``step`` with its own
    autoreset, nothing else. For mjlab this is the raw ``ManagerBasedRlEnv.step``
    (``auto_reset=True``); for the embedded tasks and gymnasium it is the env behind the
    registry (they have no other layer).
``adapter_sps`` (mjlab only)
    the same steps through ``envs/isaaclab.py`` with the exact terminal observation
    (``final_obs=true``: the simulator returns terminal states and the adapter resets the
    finished envs), i.e. what the trainer steps.
``train_sps``
    full training iterations (collect + targets + update) of the task's Hydra preset with
    ``--algo`` (PPO by default): env steps / wall time, after one warm-up iteration.
``train_over_step``
    ``train_sps / step_sps``; the goal on a GPU (mjlab Go1, N = 4096 ... 24576) is >= 0.9,
    i.e. learning costs at most ~10 % on top of the simulator.

Go1 (``Mjlab-Velocity-Flat-Unitree-Go1``) runs at ``--go1-envs`` (default 4096 8192 16384
24576 on CUDA, 16 64 on CPU, where Warp's CPU backend makes it a curiosity). Warp compiles
its kernels on the first use of each task and device (tens of seconds, cached in
``~/.cache/warp``); every figure is taken after warm-up steps. Prints JSON.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import compose, emit, machine  # noqa: E402

GO1 = "Mjlab-Velocity-Flat-Unitree-Go1"


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work so that wall-clock timings are complete."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _preset_env(preset: str, n: int) -> SimpleNamespace:
    """The ``env`` section of ``conf/env/<preset>.yaml`` with ``n`` envs."""
    cfg = compose([f"env={preset}", "algo=ppo"])
    return SimpleNamespace(name=cfg.env.name, num_envs=n, max_episode_steps=cfg.env.max_episode_steps,
                           params=dict(cfg.env.params))


def timed_steps(step, n: int, act_dim: int, device: torch.device, steps: int, warmup: int = 5) -> float:
    """Env steps per second of ``step(action)`` over ``steps`` calls with random actions in
    [-1, 1], after ``warmup`` calls (kernel compiles, caches, CUDA graph capture)."""
    gen = torch.Generator(device=device).manual_seed(0)
    actions = [torch.rand(n, act_dim, generator=gen, device=device) * 2 - 1 for _ in range(8)]
    for i in range(warmup):
        step(actions[i % 8])
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(actions[i % 8])
    _sync(device)
    return steps * n / (time.perf_counter() - t0)


def step_rates(preset: str, n: int, device: str, steps: int) -> Dict[str, float]:
    """``step_sps`` (and ``adapter_sps`` for mjlab) of ``preset`` at ``n`` envs."""
    from envs import registry

    env_cfg = _preset_env(preset, n)
    out: Dict[str, float] = {}
    if env_cfg.name == "mjlab":
        # the raw simulator with its own autoreset: the adapter in "none" mode wraps it untouched
        raw = registry.make(SimpleNamespace(**{**vars(env_cfg), "params": {**env_cfg.params, "final_obs": False}}),
                            device=device, seed=0)
        raw.reset(seed=0)
        out["step_sps"] = timed_steps(raw.env.step, n, raw.act_dim, raw.device, steps)
        raw.close()
        del raw
        env = registry.make(env_cfg, device=device, seed=0)
        env.reset(seed=0)
        out["adapter_sps"] = timed_steps(env.step, n, env.act_dim, env.device, steps)
    else:
        env = registry.make(env_cfg, device=device, seed=0)
        env.reset(seed=0)
        out["step_sps"] = timed_steps(env.step, n, env.act_dim, env.device, steps)
    env.close()
    return out


def train_rate(preset: str, n: int, algo: str, device: str, iters: int) -> float:
    """End-to-end training env steps per second of ``preset`` at ``n`` envs with ``algo``."""
    from cpo.runners.runner import Runner

    cfg = compose([f"algo={algo}", f"env={preset}", f"env.num_envs={n}", f"device={device}",
                   "log.progress=false", "log.tensorboard=false"])
    runner = Runner(cfg, tempfile.mkdtemp(prefix="bench_backends_"))
    runner.step()  # warm-up (kernel compiles, allocator)
    _sync(runner.device)
    t0 = time.perf_counter()
    for _ in range(iters):
        runner.step()
    _sync(runner.device)
    sps = iters * cfg.algo.horizon * n / (time.perf_counter() - t0)
    runner.env.close()
    return sps


def available(preset: str) -> Optional[str]:
    """None when the backend of ``preset`` can run here, else why not."""
    from envs import registry

    try:
        env_cfg = _preset_env(preset, 6)
        registry.check_params(env_cfg.name, env_cfg.params)
    except Exception as err:  # EnvConfigError (not installed), ImportError, ConfigError
        return f"{type(err).__name__}: {err}"
    return None


def main() -> None:
    """Parse arguments, measure every installed backend, print JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:<i>")
    p.add_argument("--envs", type=int, nargs="+", default=[256, 1024, 4096],
                   help="env counts of the embedded cartpole and mjlab cartpole")
    p.add_argument("--gym-envs", type=int, nargs="+", default=[12, 48],
                   help="env counts of gymnasium HalfCheetah (one CPU process steps them all)")
    p.add_argument("--go1-envs", type=int, nargs="+", default=None,
                   help="env counts of mjlab Go1 (default: 4096 8192 16384 24576 on CUDA, 16 64 on CPU)")
    p.add_argument("--backends", nargs="+", default=["embedded", "gymnasium", "mjlab"])
    p.add_argument("--algo", default="ppo")
    p.add_argument("--steps", type=int, default=100, help="timed simulator steps per figure")
    p.add_argument("--train-iters", type=int, default=3, help="timed training iterations per figure")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default="")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    go1_envs = args.go1_envs or ([4096, 8192, 16384, 24576] if cuda else [16, 64])
    M = 1 if args.algo == "ppo" else compose([f"algo={args.algo}"]).algo.num_policies
    # (backend, task, preset, env counts)
    plan = [("embedded", "cartpole", "cartpole", args.envs),
            ("gymnasium", "HalfCheetah-v5", "gym_halfcheetah", args.gym_envs),
            ("mjlab", "Mjlab-Cartpole-Balance", "mjlab_cartpole", args.envs),
            ("mjlab", GO1, "mjlab_go1", go1_envs)]
    rows: List[Dict[str, Any]] = []
    skipped: Dict[str, str] = {}
    load_start = os.getloadavg()  # other jobs on the machine lower every figure: record them
    for backend, task, preset, counts in plan:
        if backend not in args.backends:
            continue
        why = available(preset)
        if why is not None:
            skipped[task] = why
            print(f"[backends] skip {task}: {why}", file=sys.stderr, flush=True)
            continue
        for n in counts:
            n = max(M, (n // M) * M)  # every policy needs an equal block
            row: Dict[str, Any] = {"backend": backend, "task": task, "num_envs": n}
            row.update({k: round(v) for k, v in step_rates(preset, n, args.device, args.steps).items()})
            row["train_sps"] = round(train_rate(preset, n, args.algo, args.device, args.train_iters))
            row["train_over_step"] = round(row["train_sps"] / row["step_sps"], 3)
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    result: Dict[str, Any] = {
        "benchmark": "backends", "algo": args.algo, "device": args.device, "machine": machine(),
        "steps": args.steps, "train_iters": args.train_iters, "results": rows, "skipped": skipped,
        "load_average_1min": {"start": round(load_start[0], 2), "end": round(os.getloadavg()[0], 2),
                              "cores": os.cpu_count()}}
    if not cuda:
        result["gpu"] = ("not measured here (no GPU on this machine): the Go1 goal (train_sps >= "
                         "0.9 x step_sps at N = 4096 ... 24576) needs `python bench/backends.py "
                         "--device cuda --backends mjlab` on a CUDA machine")
    emit(result, args.out)


if __name__ == "__main__":
    main()
