"""PPO vs SAPG vs CPO on the embedded exploration task (the sparse point maze).

    python bench/ensemble.py [--seeds 0 1 2] [--iters 60] [--lambdas 0.05 0.1 0.2 0.5]
                             [--algos ppo sapg cpo cpo_cf02:algo=cpo,algo.coupling_fraction=0.2]
                             [--env point_maze] [--out bench/results/ensemble.json]

For every algorithm and seed, same env steps (same N, T, network, epochs): env steps until the
leader's success rate first reaches the threshold, final leader return and success (mean of
the last 3 iterations), overall ESS (mean over the second half of training), and the mean
wall time of an iteration (collect + learn, first iteration excluded). Then CPO's ESS for each
lambda_f. Prints JSON.
"""
from __future__ import annotations

import os
import sys

import argparse
import statistics
import tempfile
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import compose, emit, machine, variant


def one_run(overrides: List[str], iters: int, threshold: float) -> Dict[str, Any]:
    """Train ``iters`` iterations; return the curve summary and timings."""
    from cpo.runners.runner import Runner

    cfg = compose(overrides + [f"max_iterations={iters}", "log.progress=false", "log.tensorboard=false",
                               "device=cpu"])
    runner = Runner(cfg, tempfile.mkdtemp(prefix="bench_ens_"))
    succ, ret, ess, times, collect, learn = [], [], [], [], [], []
    steps_to = None
    for _ in range(iters):
        t0 = time.perf_counter()
        out = runner.step()
        times.append(time.perf_counter() - t0)
        collect.append(out["perf/collect_s"])
        learn.append(out["perf/learn_s"])
        s = out.get("rollout/success", 0.0)
        succ.append(s)
        ret.append(out.get("rollout/ep_return", 0.0))
        if "diversity/ess/overall" in out:
            ess.append(out["diversity/ess/overall"])
        if steps_to is None and s >= threshold:
            steps_to = runner.env_steps
    half = len(ess) // 2
    return {
        "steps_to_threshold": steps_to, "final_success": statistics.mean(succ[-3:]),
        "final_return": statistics.mean(ret[-3:]), "env_steps": runner.env_steps,
        "ess_overall": statistics.mean(ess[half:]) if ess else None,
        "iter_s": statistics.mean(times[1:]), "collect_s": statistics.mean(collect[1:]),
        "learn_s": statistics.mean(learn[1:]),
    }


def summarise(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Mean/std over seeds of each numeric field (steps_to_threshold: solved count + median)."""
    out: Dict[str, Any] = {"seeds": len(runs)}
    for key in ("final_success", "final_return", "ess_overall", "iter_s", "collect_s", "learn_s"):
        vals = [r[key] for r in runs if r[key] is not None]
        if vals:
            out[key] = {"mean": statistics.mean(vals), "std": statistics.pstdev(vals)}
    solved = [r["steps_to_threshold"] for r in runs if r["steps_to_threshold"] is not None]
    out["solved_runs"] = len(solved)
    out["steps_to_threshold_median"] = statistics.median(solved) if solved else None
    out["runs"] = runs
    return out


def main() -> None:
    """Parse arguments, run the comparison, print JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="point_maze")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--lambdas", type=float, nargs="*", default=[0.05, 0.1, 0.2, 0.5],
                   help="lambda_f values of the CPO ESS sweep (none: skip it)")
    p.add_argument("--algos", nargs="+", default=["ppo", "sapg", "cpo"],
                   help="algorithm presets, or NAME:algo=<preset>,key=value,... variants")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default="")
    args = p.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result: Dict[str, Any] = {"benchmark": "ensemble", "env": args.env, "iters": args.iters,
                              "threshold": args.threshold, "machine": machine(), "algos": {}}
    for spec in args.algos:
        algo, overrides = variant(spec)  # "cpo" or "cpo_cf02:algo=cpo,algo.coupling_fraction=0.2"
        runs = []
        for seed in args.seeds:
            r = one_run(overrides + [f"env={args.env}", f"seed={seed}"], args.iters, args.threshold)
            print({"algo": algo, "seed": seed, **{k: v for k, v in r.items()}}, flush=True)
            runs.append(r)
        result["algos"][algo] = summarise(runs)
    base = result["algos"].get("ppo", {}).get("iter_s", {}).get("mean")
    if base:
        result["iter_time_ratio_vs_ppo"] = {a: s["iter_s"]["mean"] / base for a, s in result["algos"].items()}
        result["learn_time_ratio_vs_ppo"] = {
            a: s["learn_s"]["mean"] / result["algos"]["ppo"]["learn_s"]["mean"] for a, s in result["algos"].items()}
    sweep = {}
    for lam in args.lambdas:
        r = one_run(["algo=cpo", f"env={args.env}", f"seed={args.seeds[0]}", f"algo.lambda_f={lam}"],
                    args.iters, args.threshold)
        print({"lambda_f": lam, **r}, flush=True)
        sweep[str(lam)] = {"ess_overall": r["ess_overall"], "final_success": r["final_success"],
                           "steps_to_threshold": r["steps_to_threshold"]}
    result["cpo_lambda_f_sweep"] = sweep
    emit(result, args.out)


if __name__ == "__main__":
    main()
