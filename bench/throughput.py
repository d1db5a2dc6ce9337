"""Env-only and end-to-end training SPS of every embedded task at several env counts.

    python bench/throughput.py [--envs 1024 4096 16384] [--algo ppo] [--device cpu] [--out f.json]

Env-only: random actions through ``env.step``. End-to-end: full training iterations
(collect + targets + update) of the task's own preset; SPS = env steps / wall time, after
one warm-up iteration. Prints JSON.
"""
from __future__ import annotations

import os
import sys

import argparse
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import compose, emit, machine


def env_sps(name: str, n: int, device: str, steps: int = 50) -> float:
    """Random-action env steps per second."""
    from types import SimpleNamespace

    from envs import registry

    env = registry.make(SimpleNamespace(name=name, num_envs=n, max_episode_steps=None, params={}),
                        device=device)
    env.reset(seed=0)
    gen = torch.Generator(device=env.device).manual_seed(0)
    actions = [torch.rand(n, env.act_dim, generator=gen, device=env.device) * 2 - 1 for _ in range(8)]
    for i in range(5):
        env.step(actions[i % 8])
    if env.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        env.step(actions[i % 8])
    if env.device.type == "cuda":
        torch.cuda.synchronize()
    return steps * n / (time.perf_counter() - t0)


def train_sps(name: str, n: int, algo: str, device: str, iters: int = 3) -> float:
    """End-to-end training env steps per second with the task's preset."""
    from cpo.runners.runner import Runner

    M = 6 if algo != "ppo" else 1
    n = (n // M) * M
    cfg = compose([f"algo={algo}", f"env={name}", f"env.num_envs={n}", f"device={device}",
                   "log.progress=false", "log.tensorboard=false"])
    runner = Runner(cfg, tempfile.mkdtemp(prefix="bench_"))
    runner.step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(iters):
        runner.step()
    return iters * cfg.algo.horizon * n / (time.perf_counter() - t0)


def main() -> None:
    """Parse arguments, measure, print JSON."""
    import os

    from envs import registry

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--envs", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--tasks", nargs="+", default=None)
    p.add_argument("--algo", default="ppo")
    p.add_argument("--device", default="cpu")
    p.add_argument("--train-iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default="")
    args = p.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    conf_envs = {f[:-5] for f in os.listdir(os.path.join(os.path.dirname(__file__), "..", "conf", "env"))}
    tasks = args.tasks or [t for t in registry.names() if t in conf_envs]
    rows = []
    for name in tasks:
        for n in args.envs:
            row = {"task": name, "num_envs": n, "env_sps": round(env_sps(name, n, args.device))}
            row["train_sps"] = round(train_sps(name, n, args.algo, args.device, args.train_iters))
            rows.append(row)
            print(row, flush=True)
    emit({"benchmark": "throughput", "algo": args.algo, "device": args.device,
          "machine": machine(), "results": rows}, args.out)


if __name__ == "__main__":
    main()
