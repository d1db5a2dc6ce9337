"""Long-run stability: train for a while and record RSS memory and SPS over time.

    python bench/soak.py [--minutes 30] [--env point_maze] [--algo cpo] [--out f.json]

Figures: memory growth after warm-up (first 10 % of the run) and SPS drift (last vs first
window after warm-up), both in percent. Targets: growth <= 5 %, drift <= 10 %.
"""
from __future__ import annotations

import os
import sys

import argparse
import statistics
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import compose, emit, machine


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main() -> None:
    """Train for ``--minutes`` and print the memory/SPS series as JSON."""
    from cpo.runners.runner import Runner

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--env", default="point_maze")
    p.add_argument("--algo", default="cpo")
    p.add_argument("--out", default="")
    args = p.parse_args()
    cfg = compose([f"algo={args.algo}", f"env={args.env}", "max_iterations=100000000", "device=cpu",
                   "log.progress=false", "log.ckpt_every=50"])
    runner = Runner(cfg, tempfile.mkdtemp(prefix="soak_"))
    from cpo.utils.logger import Logger

    runner.logger = Logger(runner.run_dir, True)
    t0 = time.time()
    samples = []
    window_steps, window_t = 0, time.time()
    while time.time() - t0 < args.minutes * 60:
        out = runner.step()
        runner.logger.scalars(out, runner.env_steps)
        if runner.iteration % cfg.log.ckpt_every == 0:
            runner.save()
        window_steps += cfg.algo.horizon * cfg.env.num_envs
        if time.time() - window_t >= max(10.0, args.minutes * 60 / 30):
            samples.append({"t_s": round(time.time() - t0, 1), "rss_mb": round(rss_mb(), 1),
                            "sps": round(window_steps / (time.time() - window_t)),
                            "iteration": runner.iteration})
            print(samples[-1], flush=True)
            window_steps, window_t = 0, time.time()
    runner.logger.close()
    warm = max(1, len(samples) // 10)
    after = samples[warm:] or samples
    growth = 100.0 * (after[-1]["rss_mb"] - after[0]["rss_mb"]) / after[0]["rss_mb"]
    k = max(1, len(after) // 5)
    first = statistics.mean(s["sps"] for s in after[:k])
    last = statistics.mean(s["sps"] for s in after[-k:])
    emit({"benchmark": "soak", "minutes": args.minutes, "algo": args.algo, "env": args.env,
          "memory_growth_pct": round(growth, 2), "sps_drift_pct": round(100.0 * (last - first) / first, 2),
          "machine": machine(), "samples": samples}, args.out)


if __name__ == "__main__":
    main()
