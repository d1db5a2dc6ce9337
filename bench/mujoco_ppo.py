"""PPO on gymnasium MuJoCo HalfCheetah-v5 for a fixed env-step budget, next to published PPO.

    python bench/mujoco_ppo.py [--steps 1000000] [--seeds 0 1 2] [--threads 1]
                               [--env gym_halfcheetah] [--out bench/results/mujoco_ppo_cpu.json]

Each seed trains ``algo=ppo env=<env>`` exactly as ``train.py`` would (same composed config,
same Runner) for ``ceil(steps / (num_envs * horizon))`` iterations, on CPU, then evaluates
the deterministic policy on 10 fresh episodes. Reported per seed and as mean +- std over
seeds:

* ``final_return``: mean return of the training episodes (stochastic policy) that ended in
  the last 10 % of the env steps, the quantity CleanRL and openrlbenchmark report;
* ``eval_return``: deterministic policy (the Gaussian's mean), 10 episodes;
* ``sps``: env steps per second of the whole training loop (collect + update); and a learning
  curve (env steps, mean return of the episodes ended in each iteration).

The published references (same task family and budget) are stored with the result; note the
version difference (v4 / v3 there, v5 here: same dynamics and reward, v5 fixes details of the
model file and of the info dict).
Prints JSON (and writes it to ``--out``).
"""
from __future__ import annotations

import os
import sys

import argparse
import json
import math
import statistics
import tempfile
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import compose, emit, machine

#: published PPO results for HalfCheetah at 1M env steps (mean +- std over seeds)
REFERENCES = [
    {"source": "CleanRL ppo_continuous_action.py, HalfCheetah-v4, 1M steps, 3 seeds "
               "(docs/benchmark/ppo_continuous_action.md, openrlbenchmark tag pr-424; "
               "https://docs.cleanrl.dev/rl-algorithms/ppo/#ppo_continuous_actionpy)",
     "return_mean": 1442.64, "return_std": 46.03,
     "setup": "1 env, T=2048, 10 epochs x 32 minibatches, lr 3e-4 annealed, 64x64 tanh, "
              "observation and reward normalisation; training-episode return"},
    {"source": "RL Baselines3 Zoo benchmark.md, PPO HalfCheetah-v3, 1M steps "
               "(https://github.com/DLR-RM/rl-baselines3-zoo/blob/master/benchmark.md)",
     "return_mean": 5819.10, "return_std": 663.53,
     "setup": "tuned hyperparameters (lr 2e-5, 20 epochs, 256x256 ReLU, log_std_init -2), "
              "one trained agent evaluated deterministically over 150 episodes"},
]


def one_run(overrides: List[str], steps: int) -> Dict[str, Any]:
    """Train one seed for ``steps`` env steps; return its curve, final returns and timings."""
    from cpo.tools.evaluation import evaluate
    from cpo.runners.runner import Runner

    cfg = compose(overrides + ["max_iterations=1", "log.progress=false", "log.tensorboard=false",
                               "device=cpu"])
    per_iter = cfg.env.num_envs * cfg.algo.horizon
    iters = int(math.ceil(steps / per_iter))
    cfg.max_iterations = iters
    runner = Runner(cfg, tempfile.mkdtemp(prefix="bench_mujoco_"))
    episodes: List[List[float]] = []  # per iteration: [env_steps, episodes ended, return sum]
    collect = runner.collect

    def counting_collect():
        """Runner.collect, also keeping the leader's per-iteration episode sums."""
        sums = collect()
        episodes.append([0.0, float(sums["count"][0]), float(sums["return"][0])])
        return sums

    runner.collect = counting_collect
    t0 = time.perf_counter()
    for it in range(iters):
        out = runner.step()
        episodes[-1][0] = float(runner.env_steps)
        if (it + 1) % 50 == 0:  # progress on stderr (a seed takes minutes)
            print(f"[mujoco_ppo] seed {cfg.seed}: {runner.env_steps} steps, return "
                  f"{out.get('rollout/ep_return', float('nan')):.1f}, "
                  f"{runner.env_steps / (time.perf_counter() - t0):.0f} SPS", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    runner.env.close()
    tail = [e for e in episodes if e[0] > 0.9 * runner.env_steps]
    n_tail = sum(e[1] for e in tail)
    final = sum(e[2] for e in tail) / n_tail if n_tail else None
    curve = [[int(e[0]), e[2] / e[1]] for e in episodes if e[1] > 0]
    ev = evaluate(runner.model, cfg, episodes=10, stochastic=False, seed=10_000 + cfg.seed)
    return {"seed": cfg.seed, "env_steps": runner.env_steps, "iterations": iters,
            "final_return": final, "final_episodes": int(n_tail),
            "eval_return": ev["return_mean"], "eval_return_std": ev["return_std"],
            "wall_s": wall, "sps": runner.env_steps / wall, "curve": curve}


def result(env: str, steps: int, runs: List[Dict[str, Any]], complete: bool) -> Dict[str, Any]:
    """The JSON document: per-seed runs, mean +- std over seeds, references."""
    summary: Dict[str, Any] = {}
    for key in ("final_return", "eval_return", "sps", "wall_s"):
        vals = [r[key] for r in runs if r[key] is not None]
        if vals:
            summary[key] = {"mean": statistics.mean(vals),
                            "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0}
    return {"benchmark": "mujoco_ppo", "env": env, "steps": steps,
            "seeds": [r["seed"] for r in runs], "complete": complete, "machine": machine(),
            "summary": summary, "references": REFERENCES, "runs": runs}


def main() -> None:
    """Parse arguments, train every seed (rewriting ``--out`` after each), print JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="gym_halfcheetah", help="conf/env preset")
    p.add_argument("--steps", type=int, default=1_000_000, help="env steps per seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--set", nargs="*", default=[], help="extra overrides, e.g. net.init_log_std=-1")
    p.add_argument("--out", default=os.path.join("bench", "results", "mujoco_ppo_cpu.json"))
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="train nothing: combine the runs of these result files (seeds run as "
                        "separate processes) into --out")
    args = p.parse_args()
    if args.merge:
        docs = [json.load(open(path)) for path in args.merge]
        runs = sorted((r for d in docs for r in d["runs"]), key=lambda r: r["seed"])
        doc = result(docs[0]["env"], docs[0]["steps"], runs, all(d["complete"] for d in docs))
        doc["machine"] = docs[0]["machine"]
        emit(doc, args.out)
        return
    import torch

    torch.set_num_threads(args.threads)
    runs: List[Dict[str, Any]] = []
    for seed in args.seeds:
        runs.append(one_run(["algo=ppo", f"env={args.env}", f"seed={seed}",
                             f"torch_threads={args.threads}"] + list(args.set), args.steps))
        r = runs[-1]
        print(f"[mujoco_ppo] seed {seed}: final return {r['final_return']} "
              f"({r['final_episodes']} episodes), eval {r['eval_return']:.1f}, {r['sps']:.0f} SPS",
              file=sys.stderr, flush=True)
        if len(runs) < len(args.seeds):  # keep what is done if the job is stopped
            with open(args.out, "w") as f:
                json.dump(result(args.env, args.steps, runs, complete=False), f, indent=2, default=float)
    doc = result(args.env, args.steps, runs, complete=True)
    doc["overrides"] = list(args.set)
    emit(doc, args.out)


if __name__ == "__main__":
    main()
