"""SIGKILL the trainer at random moments, N times, and count run directories left without a
checkpoint that loads and resumes (the figure: 0 of N).

    python bench/crash.py [--runs 20] [--max-delay 3.0] [--out f.json]

Each run trains a tiny CartPole with a checkpoint every iteration (so kills also land in the
middle of saves), is killed after a random delay once its first checkpoint exists, then must
load its newest checkpoint with weights_only=True and resume for one more iteration.
"""
from __future__ import annotations

import os

import argparse
import random
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import ROOT, emit, machine

FAST = ["algo=ppo", "env=cartpole", "env.num_envs=60", "algo.horizon=16", "algo.num_epochs=1",
        "net.actor_hidden=[16]", "net.critic_hidden=[16]", "log.progress=false", "device=cpu",
        "torch_threads=1", "max_iterations=100000", "log.ckpt_every=1", "log.keep_last=2"]


def main() -> None:
    """Run the kill loop and print JSON."""
    from cpo.utils import checkpoint as ckpt

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--max-delay", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    args = p.parse_args()
    rng = random.Random(args.seed)
    failures, rows = 0, []
    for i in range(args.runs):
        run_dir = tempfile.mkdtemp(prefix="crash_")
        proc = subprocess.Popen([sys.executable, "train.py", *FAST, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.time()
        while not ckpt.list_checkpoints(run_dir) and time.time() - t0 < 120:
            time.sleep(0.02)
        delay = rng.uniform(0.0, args.max_delay)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        path = ckpt.latest(run_dir)
        ok = path is not None
        it = None
        if ok:
            it = ckpt.load(path)["runner"]["iteration"]
            res = subprocess.run([sys.executable, "train.py", f"resume={run_dir}", f"max_iterations={it + 1}",
                                  "log.progress=false"], cwd=ROOT, capture_output=True, text=True)
            ok = res.returncode == 0
        failures += not ok
        rows.append({"run": i, "delay_s": round(delay, 3), "iteration_at_kill": it, "resumed": ok})
        print(rows[-1], flush=True)
    emit({"benchmark": "crash", "runs": args.runs, "unloadable_or_unresumable": failures,
          "machine": machine(), "rows": rows}, args.out)


if __name__ == "__main__":
    main()
