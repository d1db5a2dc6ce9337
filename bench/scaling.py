"""End-to-end training SPS with 1, 2, ... processes under torchrun (gloo on CPU, NCCL on GPUs).

    python bench/scaling.py [--procs 1 2] [--device cpu] [--algo cpo] [--env point_maze]
                            [--envs-per-proc 1200] [--mode weak] [--iters 5] [--threads 1]
                            [--out bench/results/scaling_cpu.json]
    python bench/scaling.py --device cuda            # NCCL, one process per visible GPU

Each point launches ``python -m torch.distributed.run --standalone --nproc_per_node P`` on this
script's worker, which builds the real runner from the Hydra presets and times ``--iters``
full iterations (collect + targets + update incl. the gradient all-reduce + statistics) after
``--warmup`` ones, between two barriers. SPS = global env steps / wall time of rank 0.

``--mode weak`` (default) keeps ``--envs-per-proc`` envs on every process (N grows with P, the
usual way to use more GPUs); ``--mode strong`` keeps N = envs-per-proc fixed and splits it.
Speed-up = SPS_P / SPS_1 and efficiency = speed-up / P (1 = perfect) in both modes.
``--share-gpu`` lets P > #GPUs processes share the GPUs over gloo (a functional check, not a
speed-up). Prints JSON (and writes it to ``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import ROOT, emit, machine  # noqa: E402


def worker(args: argparse.Namespace) -> None:
    """One rank: build the runner, time ``iters`` iterations, rank 0 writes the result."""
    import torch

    from bench.common import compose
    from cpo.utils import distributed
    from cpo.runners.runner import Runner

    world = distributed.world_size_from_env()
    n_global = args.envs_per_proc * (world if args.mode == "weak" else 1)
    cfg = compose([f"algo={args.algo}", f"env={args.env}", f"env.num_envs={n_global}",
                   f"device={args.device}", f"torch_threads={args.threads}", "log.progress=false",
                   "log.tensorboard=false", *args.override])
    dist = distributed.init_from_env(cfg.device)
    runner = Runner(cfg, tempfile.mkdtemp(prefix="bench_scaling_"))
    for _ in range(args.warmup):
        runner.step()
    dist.barrier()
    t0 = time.perf_counter()
    outs = [runner.step() for _ in range(args.iters)]
    dist.barrier()
    wall = time.perf_counter() - t0
    if dist.is_main:
        T = cfg.algo.horizon
        res = {"procs": world, "device": str(runner.device.type),
               "backend": torch.distributed.get_backend() if dist.enabled else "none",
               "envs_global": n_global, "envs_per_proc": n_global // world, "horizon": T,
               "iters": args.iters, "wall_s": wall, "sps": args.iters * T * n_global / wall,
               "iter_s": wall / args.iters,
               "collect_s": sum(o["perf/collect_s"] for o in outs) / len(outs),
               "learn_s": sum(o["perf/learn_s"] for o in outs) / len(outs)}
        with open(args.result, "w") as f:
            json.dump(res, f)
    distributed.shutdown()


def launch(args: argparse.Namespace, procs: int) -> Dict[str, Any]:
    """One torchrun job of ``procs`` processes; returns rank 0's measurement."""
    result = os.path.join(tempfile.mkdtemp(), "res.json")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(procs), os.path.abspath(__file__), "--worker", "--result", result,
           "--algo", args.algo, "--env", args.env, "--envs-per-proc", str(args.envs_per_proc),
           "--mode", args.mode, "--iters", str(args.iters), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--device", args.device]
    for ov in args.override:
        cmd += ["--override", ov]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if args.share_gpu:
        env["CPO_DIST_BACKEND"] = "gloo"
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"procs": procs, "error": (proc.stdout + proc.stderr)[-3000:]}
    with open(result) as f:
        return json.load(f)


def main(argv: List[str]) -> Dict[str, Any]:
    """CLI body; returns the JSON result."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", type=int, nargs="*", default=None,
                   help="process counts (default: 1 2 on CPU, 1..#GPUs on CUDA)")
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL)")
    p.add_argument("--algo", default="cpo")
    p.add_argument("--env", default="point_maze")
    p.add_argument("--envs-per-proc", type=int, default=1200)
    p.add_argument("--mode", choices=("weak", "strong"), default="weak")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    p.add_argument("--share-gpu", action="store_true", help="more processes than GPUs, over gloo")
    p.add_argument("--out", default="")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    procs = args.procs
    if procs is None:
        if args.device.startswith("cuda"):
            import torch

            procs = list(range(1, max(torch.cuda.device_count(), 1) + 1))
        else:
            procs = [1, 2]
    runs = [launch(args, n) for n in procs]
    base = next((r for r in runs if r.get("procs") == 1 and "sps" in r), None)
    for r in runs:
        if base is not None and "sps" in r:
            # ideal in both modes: P processes give P times the one-process SPS
            r["speedup"] = r["sps"] / base["sps"]
            r["efficiency"] = r["speedup"] / r["procs"]
    out = {"benchmark": "scaling", "machine": machine(), "algo": args.algo, "env": args.env,
           "mode": args.mode, "envs_per_proc": args.envs_per_proc, "threads_per_proc": args.threads,
           "device": args.device, "runs": runs}
    emit(out, args.out)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
