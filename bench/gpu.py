"""GPU figures: the PPO update next to its memory-bound floor, end-to-end scaling with N, GPU
memory per env, and the fast-path switches side by side.

    python bench/gpu.py [--device cuda] [--parts update scaling fast] [--out bench/results/gpu.json]

update
    The ShadowHand preset's learner shapes (obs 211, act 20, shared trunk [512, 512, 256, 128],
    N = 24576, T = 8, 5 epochs, 4 minibatches, PPO) on synthetic rollout data: the wall time of
    one update (targets + 5 epochs) for eager fp32, bf16 autocast, compiled, compiled + bf16.
    Floor: every layer of width in -> out moves about 3*in + 8*out values per row per epoch
    (forward input, output and activation; backward activation gradient, saved activations,
    input and weight gradients), 2 bytes each in bf16, at the copy bandwidth measured in the
    same process; the FLOP floor (6 * sum(in*out) per row per epoch) is printed beside it.
scaling
    End-to-end PPO training SPS on an embedded task for N = 1k ... 64k, with the peak GPU
    memory per env.
    On CUDA also the whole minibatch step as one CUDA graph (perf.update_step=cuda_graph),
    alone and with bf16 / the compiled loss; and compiled whole (perf.update_step=compile).
fast
    End-to-end SPS of the same run with each fast path (perf.compile, perf.cuda_graphs,
    perf.update_step, algo.mixed_precision, perf.fused_adam), all interleaved in one process.
Every absolute number names the GPU (``machine.gpu``).
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
from bench.common import compose, emit, machine  # noqa: E402

import torch  # noqa: E402

SHADOW = dict(obs=211, act=20, hidden=[512, 512, 256, 128], N=24576, T=8, epochs=5, minibatches=4)


def sync(device: torch.device) -> None:
    """Wait for the device (timings are wall-clock)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device: torch.device, mb: int = 1024) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write counted)."""
    x = torch.empty(mb * 2**20 // 4, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    sync(device)
    t0 = time.perf_counter()
    reps = 20
    for _ in range(reps):
        y.copy_(x)
    sync(device)
    return 2 * x.numel() * 4 * reps / (time.perf_counter() - t0)


def floor(sizes: List[int], act: int, rows: int, epochs: int, bandwidth: float) -> Dict[str, float]:
    """Memory and FLOP floors of ``epochs`` passes of forward + backward over ``rows`` rows."""
    layers = list(zip(sizes[:-1], sizes[1:])) + [(sizes[-1], act), (sizes[-1], 1)]  # trunk, mu, value
    values_per_row = sum(3 * i + 8 * o for i, o in layers)
    flops_per_row = sum(6 * i * o for i, o in layers)
    bytes_total = 2 * values_per_row * rows * epochs  # bf16
    return {"bytes_gb": bytes_total / 1e9, "memory_floor_ms": 1e3 * bytes_total / bandwidth,
            "tflop": flops_per_row * rows * epochs / 1e12}


def update_part(device: torch.device, reps: int) -> Dict[str, Any]:
    """Time one PPO update at the ShadowHand preset's shapes for each precision/compile mode."""
    from cpo.utils.config import TrainConfig
    from cpo.algo.learner import Learner
    from cpo.algo.rollout import Rollout
    from cpo.runners.runner import build_model

    s = SHADOW
    bw = copy_bandwidth(device)
    fl = floor([s["obs"]] + s["hidden"], s["act"], s["N"] * s["T"], s["epochs"], bw)
    out: Dict[str, Any] = {"shapes": s, "copy_bandwidth_tb_s": bw / 1e12, "floor": fl, "modes": {}}
    gen = torch.Generator(device=device).manual_seed(0)
    N, T = s["N"], s["T"]
    ro = Rollout.empty(T, N, s["obs"], s["act"], 1, device)
    ro.obs.normal_(generator=gen)
    ro.final_obs.copy_(ro.obs[1:])
    ro.actions.normal_(generator=gen)
    ro.mu.normal_(generator=gen)
    ro.logp.normal_(generator=gen)
    ro.values.normal_(generator=gen)
    ro.rewards.normal_(generator=gen)
    ro.terminated.copy_(torch.rand(T, N, device=device, generator=gen) < 0.01)
    modes = [("eager_fp32", "none", "none", "eager"), ("eager_bf16", "bf16", "none", "eager"),
             ("compiled_fp32", "none", "update", "eager"), ("compiled_bf16", "bf16", "update", "eager"),
             ("whole_step_compiled_fp32", "none", "none", "compile")]
    if device.type == "cuda":  # the whole minibatch step as one CUDA graph (perf.update_step)
        modes += [("whole_step_graph_fp32", "none", "none", "cuda_graph"),
                  ("whole_step_graph_bf16", "bf16", "none", "cuda_graph"),
                  ("whole_step_graph_compiled_bf16", "bf16", "update", "cuda_graph")]
    for name, mp, comp, step in modes:
        cfg = TrainConfig(device=str(device))
        cfg.algo.num_policies, cfg.algo.horizon = 1, T
        cfg.algo.num_epochs, cfg.algo.num_minibatches = s["epochs"], s["minibatches"]
        cfg.algo.mixed_precision, cfg.perf.compile, cfg.perf.update_step = mp, comp, step
        cfg.algo.lr_schedule = "fixed"
        cfg.net.actor_hidden = cfg.net.critic_hidden = list(s["hidden"])
        cfg.net.separate_critic = False
        model = build_model(cfg, s["obs"], s["act"]).to(device)
        learner = Learner(model, cfg.algo, N, device, 1000, perf=cfg.perf)
        times = []
        for i in range(reps + 2):  # two warm-ups (allocator, compilation)
            sync(device)
            t0 = time.perf_counter()
            batch = learner.build_batch(ro)
            learner.update(ro, batch)
            sync(device)
            if i >= 2:
                times.append(time.perf_counter() - t0)
        ms = 1e3 * statistics.median(times)
        out["modes"][name] = {"update_ms": ms, "x_memory_floor": ms / fl["memory_floor_ms"],
                              "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None}
        print({name: out["modes"][name]}, flush=True)
    return out


def e2e(overrides: List[str], device: torch.device, iters: int) -> Dict[str, float]:
    """End-to-end SPS over ``iters`` iterations after one warm-up, and peak memory per env."""
    from cpo.runners.runner import Runner

    cfg = compose(overrides + ["log.progress=false", "log.tensorboard=false", f"device={device}",
                               "max_iterations=100000", "nonfinite_check=iteration"])
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    r = Runner(cfg, tempfile.mkdtemp(prefix="bench_gpu_"))
    r.step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        out = r.step()
    sync(device)
    dt = time.perf_counter() - t0
    steps = iters * cfg.algo.horizon * cfg.env.num_envs
    res = {"sps": steps / dt, "iter_ms": 1e3 * dt / iters,
           "collect_ms": 1e3 * out["perf/collect_s"], "learn_ms": 1e3 * out["perf/learn_s"]}
    if device.type == "cuda":
        res["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        res["mem_kb_per_env"] = 1024 * res["peak_mem_mb"] / cfg.env.num_envs
    return res


def main() -> None:
    """Parse arguments, run the chosen parts, print JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--parts", nargs="+", default=["update", "scaling", "fast"])
    p.add_argument("--env", default="arm_reach")
    p.add_argument("--num-envs", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    p.add_argument("--fast-num-envs", type=int, default=16384)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default="")
    args = p.parse_args()
    device = torch.device(args.device)
    result: Dict[str, Any] = {"benchmark": "gpu", "machine": machine(), "device": str(device)}
    if "update" in args.parts:
        result["update"] = update_part(device, args.reps)
    if "scaling" in args.parts:
        rows = {}
        for algo in ("ppo", "cpo"):
            for n in args.num_envs:
                n = n // 48 * 48  # divisible by M = 6 blocks and the preset's 8 minibatches
                key = f"{algo}_N{n}"
                rows[key] = e2e([f"algo={algo}", f"env={args.env}", f"env.num_envs={n}"], device, args.iters)
                print({key: rows[key]}, flush=True)
        result["scaling"] = {"env": args.env, "rows": rows}
    if "fast" in args.parts:
        base = [f"algo=ppo", f"env={args.env}", f"env.num_envs={args.fast_num_envs // 48 * 48}"]
        variants = {"eager": [], "fused_adam_off": ["perf.fused_adam=false"],
                    "bf16": ["algo.mixed_precision=bf16"], "compile_all": ["perf.compile=all"],
                    "cuda_graphs": ["perf.cuda_graphs=true"],
                    "update_step_graph": ["perf.update_step=cuda_graph"],
                    "update_step_graph+cuda_graphs+bf16": ["perf.update_step=cuda_graph", "perf.cuda_graphs=true",
                                                           "algo.mixed_precision=bf16"],
                    "compile_all+cuda_graphs+bf16": ["perf.compile=all", "perf.cuda_graphs=true",
                                                     "algo.mixed_precision=bf16"]}
        if device.type != "cuda":
            variants = {k: v for k, v in variants.items() if "cuda_graph" not in k and "graph" not in k}
        rows = {}
        for name, over in variants.items():
            rows[name] = e2e(base + over, device, args.iters)
            print({name: rows[name]}, flush=True)
        result["fast"] = {"env": args.env, "num_envs": args.fast_num_envs, "rows": rows,
                          "sps_vs_eager": {k: v["sps"] / rows["eager"]["sps"] for k, v in rows.items()}}
    emit(result, args.out)


if __name__ == "__main__":
    main()
