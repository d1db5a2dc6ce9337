"""Per-iteration diversity trace of one run: what the ensemble is doing, a line every k iterations.

    python bench/trace.py [overrides ...] [--iters 80] [--every 5]

e.g. ``python bench/trace.py algo=cpo seed=1``. Each line: leader success, overall ESS (and per
follower), the learning rate, every policy's log sigma (mean over action dims), KL(pi_f || pi_L)
per follower, and the coupling / policy / entropy losses and approx_kl. Runs on the CPU with one
torch thread, no TensorBoard or checkpoints (bench/signature.py for the multi-seed figures).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import compose  # noqa: E402


def main() -> None:
    """Parse the arguments, train, print a line every ``--every`` iterations."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*")
    p.add_argument("--iters", type=int, default=80)
    p.add_argument("--every", type=int, default=5)
    args = p.parse_args()
    import torch

    from cpo.runners.runner import Runner

    torch.set_num_threads(1)
    cfg = compose(["log.progress=false", "log.tensorboard=false", "device=cpu"] + args.overrides)
    runner = Runner(cfg, tempfile.mkdtemp(prefix="trace_"))
    M = cfg.algo.num_policies
    for it in range(1, args.iters + 1):
        o = runner.step()
        if it % args.every and it != 1:
            continue
        ls = " ".join(f"{o.get(f'diversity/log_std/policy_{m}', 0.0):+.2f}" for m in range(M))
        kl = " ".join(f"{o.get(f'diversity/kl/{f}_to_leader', 0.0):.2f}" for f in range(1, M))
        ess = " ".join(f"{o.get(f'diversity/ess/follower_{f}', 0.0):.2f}" for f in range(1, M))
        print(f"it {it:4d} success {o.get('rollout/success', 0.0):.2f} ESS {o.get('diversity/ess/overall', 0.0):.2f} "
              f"[{ess}] lr {o['train/lr']:.1e} log_std [{ls}] KL(f||L) [{kl}] coupling {o['losses/coupling']:.2e} "
              f"policy {o['losses/policy']:.2e} entropy {o['losses/entropy']:.2f} kl {o['losses/approx_kl']:.3f}",
              flush=True)


if __name__ == "__main__":
    main()
