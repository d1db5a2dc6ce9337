"""The paper's importance-sampling signature: PPO vs SAPG vs CPO at the published settings.

    python bench/signature.py [--env point_maze] [--iters 150] [--seeds 0 1 2 3 4]
                              [--lambdas 0.05 0.1 0.2 0.5] [--beta 1e-3] [--jobs 2]
                              [--set key=value ...] [--out bench/results/signature_cpu.json]
                              [--figure bench/results/signature_cpu.png]

Runs PPO, SAPG and CPO (beta = --beta, one run per lambda_f) for every seed, all with the same
task preset, env steps and network, and records what the paper's section on diversity shows
(ALGORITHMS.md section 8; the authors' ShadowHand numbers: overall ESS SAPG 0.022 vs CPO 0.871
at lambda_f = 0.2, rising as lambda_f falls; mean |rho - 1| 0.889 vs 0.297; followers nearest the
leader in the KL heatmap):

* ``ess_overall``: the paper's overall ESS (rows of all M policies under the leader,
  ``diversity/ess/overall``), mean over the second half of training;
* ``ess_followers`` [5], ``is_dev_mean``: per-follower ESS and mean |rho - 1| (mean over the
  followers), second half of training;
* ``kl_leader_row`` [5]: KL(pi_L || pi_f) and ``followers_nearest_leader``: how many follower
  rows of the KL matrix have the leader as their smallest off-diagonal entry, both from the
  KL matrix averaged over the last ``--final`` iterations;
* ``log_std`` [M]: each policy's log sigma (mean over action dims) at the end;
* ``leader_success`` / ``leader_return``: the leader's training episodes, mean of the last
  ``--final`` iterations; and the per-iteration curves (ESS, success) for the figure.

Jobs run in ``--jobs`` processes with one torch thread each. Writes the JSON (and a figure of
ESS over training, SAPG vs CPO at each lambda_f, mean +- std over seeds) when asked.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import compose, emit, machine


def one_run(job: Dict[str, Any]) -> Dict[str, Any]:
    """Train one (algo, lambda_f, seed) job and summarise it (runs in a worker process)."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from cpo.runners.runner import Runner

    algo, lam, seed = job["algo"], job["lambda_f"], job["seed"]
    overrides = [f"algo={algo}", f"env={job['env']}", f"seed={seed}", f"max_iterations={job['iters']}",
                 "log.progress=false", "log.tensorboard=false", "device=cpu"] + list(job["set"])
    if algo == "cpo":
        overrides += [f"algo.beta={job['beta']}", f"algo.lambda_f={lam}"]
    cfg = compose(overrides)
    runner = Runner(cfg, tempfile.mkdtemp(prefix="bench_sig_"))
    M = cfg.algo.num_policies
    curves: Dict[str, List[float]] = {"ess_overall": [], "success": [], "return": []}
    ess_f, dev_f, kls = [], [], []
    for _ in range(job["iters"]):
        out = runner.step()
        curves["success"].append(out.get("rollout/success", 0.0))
        curves["return"].append(out.get("rollout/ep_return", 0.0))
        if M > 1:
            curves["ess_overall"].append(out["diversity/ess/overall"])
            ess_f.append([out[f"diversity/ess/follower_{f}"] for f in range(1, M)])
            dev_f.append([out[f"diversity/is_dev/follower_{f}"] for f in range(1, M)])
            kls.append(runner._kl.copy())
    n, final = job["iters"], job["final"]
    half = slice(n // 2, n)
    res: Dict[str, Any] = {
        "algo": algo, "lambda_f": lam if algo == "cpo" else None,
        "beta": job["beta"] if algo == "cpo" else 0.0, "seed": seed,
        "leader_success": statistics.mean(curves["success"][-final:]),
        "leader_return": statistics.mean(curves["return"][-final:]),
        "log_std": runner.model.log_std.detach().mean(-1).tolist(),
        "env_steps": runner.env_steps, "curves": curves,
    }
    if M == 1:
        res.update(ess_overall=None, ess_followers=None, is_dev_mean=None, kl_leader_row=None,
                   followers_nearest_leader=None)
        return res
    K = np.mean(kls[-final:], axis=0)  # KL matrix averaged over the last iterations
    off = K + np.diag(np.full(M, np.inf))  # ignore the diagonal when looking for the nearest
    res.update(
        ess_overall=statistics.mean(curves["ess_overall"][half]),
        ess_followers=np.mean(ess_f[half], axis=0).tolist(),
        is_dev_mean=float(np.mean(dev_f[half])),
        kl_leader_row=K[0, 1:].tolist(),
        followers_nearest_leader=int(sum(int(np.argmin(off[f])) == 0 for f in range(1, M))),
        kl_matrix_final=K.tolist(),
    )
    return res


def summary(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Median / mean over seeds per (algo, lambda_f): the table README shows."""
    groups: Dict[Any, List[Dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["algo"], r["lambda_f"]), []).append(r)
    rows = []
    for (algo, lam), rs in groups.items():
        row: Dict[str, Any] = {"algo": algo, "lambda_f": lam, "seeds": len(rs),
                               "leader_success_mean": statistics.mean(r["leader_success"] for r in rs),
                               "leader_success_std": statistics.pstdev([r["leader_success"] for r in rs]),
                               "solved": sum(r["leader_success"] >= 0.9 for r in rs)}
        if rs[0]["ess_overall"] is not None:
            row.update(
                ess_overall_median=statistics.median(r["ess_overall"] for r in rs),
                ess_overall_mean=statistics.mean(r["ess_overall"] for r in rs),
                is_dev_mean=statistics.mean(r["is_dev_mean"] for r in rs),
                kl_leader_row_median=statistics.median(statistics.mean(r["kl_leader_row"]) for r in rs),
                followers_nearest_leader_median=statistics.median(r["followers_nearest_leader"] for r in rs),
                follower_log_std_mean=statistics.mean(statistics.mean(r["log_std"][1:]) for r in rs),
                leader_log_std_mean=statistics.mean(r["log_std"][0] for r in rs))
        rows.append(row)
    return rows


def figure(runs: List[Dict[str, Any]], path: str, title: str) -> None:
    """ESS over training (mean +- std over seeds) for SAPG and CPO at each lambda_f, and the
    leader's success rate, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups: Dict[Any, List[Dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["algo"], r["lambda_f"]), []).append(r)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), dpi=100)
    styles = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1))]
    colors = plt.get_cmap("tab10")
    for i, ((algo, lam), rs) in enumerate(sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0))):
        label = algo.upper() + (f" λ_f={lam:g}" if lam is not None else "")
        for ax, key in zip(axes, ("ess_overall", "success")):
            ys = np.array([r["curves"][key] for r in rs], dtype=float)
            if ys.size == 0 or ys.shape[1] == 0:
                continue
            steps = np.arange(1, ys.shape[1] + 1) * rs[0]["env_steps"] / ys.shape[1] / 1e6
            m, s = ys.mean(0), ys.std(0)
            # the same colour and style for a group in both panels (PPO has no ESS curve)
            ax.plot(steps, m, color=colors(i), linestyle=styles[i % len(styles)], lw=1.8, label=label)
            ax.fill_between(steps, m - s, m + s, color=colors(i), alpha=0.08)
    axes[0].set_ylabel("overall ESS (all M policies' rows under the leader)")
    axes[1].set_ylabel("leader success rate")
    for ax in axes:
        ax.set_xlabel("env steps [M]")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    """Parse arguments, run every job, print (and write) the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="point_maze")
    p.add_argument("--iters", type=int, default=150)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.5])
    p.add_argument("--beta", type=float, default=1e-3)
    p.add_argument("--algos", nargs="+", default=["ppo", "sapg", "cpo"])
    p.add_argument("--final", type=int, default=5, help="iterations averaged for the final values")
    p.add_argument("--set", nargs="*", default=[], help="extra overrides for every job (key=value)")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--out", default="")
    p.add_argument("--figure", default="")
    p.add_argument("--replot", default="", help="only redraw --figure from this JSON (no training)")
    args = p.parse_args()
    if args.replot:
        import json

        data = json.load(open(args.replot))
        figure(data["runs"], args.figure, f"{data['task']}, β={args.beta:g}, {len({r['seed'] for r in data['runs']})} seeds "
                                            f"({' '.join(data.get('overrides') or []) or 'preset'})")
        return
    jobs = []
    for algo in args.algos:
        for lam in (args.lambdas if algo == "cpo" else [None]):
            for seed in args.seeds:
                jobs.append(dict(algo=algo, lambda_f=lam, seed=seed, env=args.env, iters=args.iters,
                                 beta=args.beta, final=args.final, set=args.set))
    runs: List[Dict[str, Any]] = []
    if args.jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.jobs) as pool:
            for r in pool.imap_unordered(one_run, jobs):
                runs.append(r)
                print(_line(r), flush=True)
    else:
        for job in jobs:
            runs.append(one_run(job))
            print(_line(runs[-1]), flush=True)
    runs.sort(key=lambda r: (r["algo"], r["lambda_f"] or 0, r["seed"]))
    cmd = "python bench/signature.py " + " ".join(sys.argv[1:])
    result: Dict[str, Any] = {"task": args.env, "iterations": args.iters, "env_steps": runs[0]["env_steps"],
                              "command": cmd, "machine": machine(), "overrides": args.set,
                              "summary": summary(runs), "runs": runs}
    if args.figure:
        figure(runs, args.figure, f"{args.env}, β={args.beta:g}, {len(args.seeds)} seeds "
                                  f"({' '.join(args.set) or 'preset'})")
    emit(result, args.out)


def _line(r: Dict[str, Any]) -> str:
    """One progress line per finished job."""
    ess = f"{r['ess_overall']:.3f}" if r["ess_overall"] is not None else "-"
    return (f"{r['algo']:5s} lam={r['lambda_f']} seed={r['seed']}: success {r['leader_success']:.2f} "
            f"ESS {ess} nearest {r['followers_nearest_leader']} log_std "
            f"{' '.join(f'{x:.2f}' for x in r['log_std'])}")


if __name__ == "__main__":
    main()
