"""PBT (``algo=pbt``): a learning run, and the cost of the stacked population vs its size.

    python bench/pbt.py learn [--task cartpole] [--iters 60] [--seed 0] [--device cpu] [overrides ...]
    python bench/pbt.py scaling [--device cuda] [--envs 16384] [--populations 2 16 64 256]

``learn`` runs ``train.py algo=pbt env=<task>`` (plus any Hydra overrides) in a temporary
directory and reports the population's best score (windowed mean return of the best member)
over training, every round (who copied whom, gaps, hyperparameters before and after) and each
member's evolved hyperparameters at the start and the end (``cpo.tools.report.pbt_summary``).

``scaling`` times training iterations (collect + update, after one warm-up) of P members on
one device with the total env count fixed (N / P envs each), next to plain PPO on the same N:
the stacked population runs as one batched forward, so its cost should grow far slower than P.
Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import compose, emit, machine  # noqa: E402


def learn(task: str, iters: int, seed: int, threads: int, overrides: List[str],
          device: str = "cpu") -> Dict[str, Any]:
    """One PBT training run; its best-score curve, rounds and member summary."""
    from cpo.app import run
    from cpo.tools.report import load_job, pbt_summary

    torch.set_num_threads(threads)
    cfg = compose(["algo=pbt", f"env={task}", f"max_iterations={iters}", f"seed={seed}",
                   f"torch_threads={threads}", "log.progress=false", f"device={device}"] + overrides)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = run(cfg, run_dir=tmp)
        wall = time.perf_counter() - t0
        job = load_job(tmp)
        with open(os.path.join(tmp, "pbt_events.jsonl")) as f:
            rounds = [json.loads(line) for line in f]
    steps, best = job.scalars["pbt/best_score"]
    every = max(1, len(steps) // 20)
    curve = [[int(s), round(float(v), 2)] for s, v in list(zip(steps, best))[::every]]
    if curve[-1][0] != int(steps[-1]):
        curve.append([int(steps[-1]), round(float(best[-1]), 2)])
    return {
        "task": task, "device": device, "iterations": iters, "seed": seed, "overrides": overrides,
        "population": cfg.pbt.population, "num_envs": cfg.env.num_envs,
        "interval_steps": cfg.pbt.interval_steps, "mutate": list(cfg.pbt.mutate),
        "wall_s": round(wall, 1), "final_best_score": out.get("rollout/ep_return"),
        "best_score_curve": curve,
        "rounds": [{"round": r["round"], "env_steps": r["env_steps"],
                    "copies": [{k: c[k] for k in ("dst", "src", "gap", "copied", "hp_src", "hp_dst_after")}
                               for c in r["copies"]]} for r in rounds],
        "members": pbt_summary(job)["members"],
    }


def scaling(device: str, envs: int, populations: List[int], task: str, iters: int) -> Dict[str, Any]:
    """Seconds per training iteration of P stacked members vs plain PPO, same total envs."""
    from cpo.runners.pbt import PBTRunner
    from cpo.runners.runner import Runner

    rows = []
    base = ["env=" + task, f"env.num_envs={envs}", "algo.horizon=32", "algo.num_epochs=5",
            "algo.num_minibatches=4", "net.actor_hidden=[256,128,64]", "net.critic_hidden=[256,128,64]",
            f"device={device}", "log.progress=false", "log.tensorboard=false"]
    for P in [0] + list(populations):
        over = base + (["algo=pbt", f"pbt.population={P}", "pbt.interval_steps=1000000000"]
                       if P else ["algo=ppo", "algo.lr_schedule=fixed"])
        cfg = compose(over)
        with tempfile.TemporaryDirectory() as tmp:
            r = (PBTRunner if P else Runner)(cfg, tmp)
            r.step()  # warm-up
            t0 = time.perf_counter()
            for _ in range(iters):
                r.step()
            if r.device.type == "cuda":
                torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / iters
        rows.append({"algo": "pbt" if P else "ppo", "population": P or 1, "envs_per_member": envs // (P or 1),
                     "s_per_iteration": round(dt, 4), "sps": round(32 * envs / dt)})
    return {"device": device, "task": task, "num_envs": envs, "net": [256, 128, 64], "rows": rows}


def main() -> None:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("learn")
    a.add_argument("--task", default="cartpole")
    a.add_argument("--iters", type=int, default=60)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--threads", type=int, default=1)
    a.add_argument("--device", default="cpu")
    a.add_argument("--out", default="")
    a.add_argument("overrides", nargs="*")
    b = sub.add_parser("scaling")
    b.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    b.add_argument("--envs", type=int, default=16384)
    b.add_argument("--populations", type=int, nargs="+", default=[2, 16, 64, 256])
    b.add_argument("--task", default="cartpole")
    b.add_argument("--iters", type=int, default=5)
    b.add_argument("--out", default="")
    args = p.parse_args()
    if args.mode == "learn":
        result = learn(args.task, args.iters, args.seed, args.threads, args.overrides, args.device)
    else:
        result = scaling(args.device, args.envs, args.populations, args.task, args.iters)
    emit({"machine": machine(), "result": result}, args.out)


if __name__ == "__main__":
    main()
