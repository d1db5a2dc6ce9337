"""What the ensemble costs on top of PPO: per-iteration wall time of SAPG / PPO and CPO / PPO.

    python bench/overhead.py [--env point_maze] [--num-envs 1200] [--iters 12] [--rounds 3]
                             [--device cpu] [--threads 1] [--extra cpo:algo.coupling_fraction=0.2]
                             [--out bench/results/overhead_cpu.json]

Every variant trains from the same config except the algorithm (same N, T, network, epochs,
minibatch size); the variants run interleaved in one process (round-robin, ``--rounds``
times, first iteration of each block excluded) so that machine noise hits them alike. Each
iteration is split into its phases: collect, targets (build_batch: the relabelled rows'
values), diagnostics (ESS and KL matrix), discriminator, update. Prints JSON with the mean
phase times and the ratios to PPO: per iteration, per learning phase, of the update alone,
of the rows, and of the update's cost per row (``update_per_row``: the ensemble's per-row
machinery against PPO's; the goal is <= 1.03).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import compose, emit, machine, variant  # noqa: E402

PHASES = ("build_batch", "diagnostics", "update_discriminator", "update")


def timed_runner(overrides: List[str], device: str):
    """A Runner whose learner phases record their wall time (synchronised on CUDA)."""
    import torch

    from cpo.runners.runner import Runner

    cfg = compose(overrides + ["log.progress=false", "log.tensorboard=false", f"device={device}",
                               "max_iterations=100000"])
    runner = Runner(cfg, tempfile.mkdtemp(prefix="bench_overhead_"))
    runner.phase_s = {p: 0.0 for p in PHASES}

    def wrap(name):
        fn = getattr(runner.learner, name)

        def timed(*a, **k):
            if runner.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = fn(*a, **k)
            if runner.device.type == "cuda":
                torch.cuda.synchronize()
            runner.phase_s[name] += time.perf_counter() - t0
            return out
        setattr(runner.learner, name, timed)

    for name in PHASES:
        wrap(name)
    return runner


def run_block(runner, iters: int) -> Dict[str, float]:
    """``iters`` iterations; mean seconds per iteration of each phase (first one excluded)."""
    runner.step()  # warm-up (allocations, compilation)
    for p in PHASES:
        runner.phase_s[p] = 0.0
    total = collect = 0.0
    for _ in range(iters):
        t0 = time.perf_counter()
        out = runner.step()
        total += time.perf_counter() - t0
        collect += out["perf/collect_s"]
    res = {"iter_s": total / iters, "collect_s": collect / iters}
    res.update({f"{p}_s": runner.phase_s[p] / iters for p in PHASES})
    return res


def main() -> None:
    """Parse arguments, run the interleaved comparison, print JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="point_maze")
    p.add_argument("--num-envs", type=int, default=1200)
    p.add_argument("--iters", type=int, default=12, help="timed iterations per block")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--algos", nargs="+", default=["ppo", "sapg", "cpo"])
    p.add_argument("--extra", nargs="*", default=[],
                   help="extra variants NAME:algo=<preset>,key=value,... (e.g. cpo_cf02:algo=cpo,algo.coupling_fraction=0.2)")
    p.add_argument("--set", nargs="*", default=[], help="overrides applied to every variant")
    p.add_argument("--out", default="")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    variants: Dict[str, List[str]] = dict(variant(spec) for spec in list(args.algos) + list(args.extra))
    common = [f"env={args.env}", f"env.num_envs={args.num_envs}"] + list(args.set)
    runners = {name: timed_runner(over + common, args.device) for name, over in variants.items()}
    blocks: Dict[str, List[Dict[str, float]]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, runner in runners.items():
            res = run_block(runner, args.iters)
            blocks[name].append(res)
            print({"round": r, "variant": name, **{k: round(v, 4) for k, v in res.items()}}, flush=True)
    summary: Dict[str, Any] = {}
    for name, bl in blocks.items():
        summary[name] = {k: statistics.mean(b[k] for b in bl) for k in bl[0]}
        summary[name]["iter_s_std"] = statistics.pstdev(b["iter_s"] for b in bl)
        c = runners[name].cfg
        summary[name]["rows_per_iteration"] = int(runners[name].learner.build_batch(
            runners[name].storage).src.numel())
        summary[name]["config"] = {"num_policies": c.algo.num_policies, "horizon": c.algo.horizon,
                                   "num_epochs": c.algo.num_epochs, "num_minibatches": c.algo.num_minibatches,
                                   "coupling_fraction": c.algo.coupling_fraction,
                                   "offpolicy_blocks": c.algo.offpolicy_blocks,
                                   "lambda_adv": c.algo.lambda_adv}
    result: Dict[str, Any] = {"benchmark": "overhead", "env": args.env, "num_envs": args.num_envs,
                              "device": args.device, "iters": args.iters, "rounds": args.rounds,
                              "machine": machine(), "variants": summary}
    if "ppo" in summary:
        base = summary["ppo"]
        rows0 = base["rows_per_iteration"]
        result["ratio_vs_ppo"] = {name: {"iter": s["iter_s"] / base["iter_s"],
                                         "learn": (s["iter_s"] - s["collect_s"]) / (base["iter_s"] - base["collect_s"]),
                                         "update": s["update_s"] / base["update_s"],
                                         "rows": s["rows_per_iteration"] / rows0,
                                         # the update's cost per row against PPO's (goal <= 1.03)
                                         "update_per_row": (s["update_s"] / s["rows_per_iteration"])
                                         / (base["update_s"] / rows0)}
                                  for name, s in summary.items()}
    emit(result, args.out)


if __name__ == "__main__":
    main()
