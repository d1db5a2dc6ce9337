"""Our PPO against rsl_rl's PPO, side by side in one process: training SPS and learning parity.

    pip install -c .ci/constraints.txt -e ".[peers]"      # rsl-rl-lib without replacing torch
    python bench/peers.py [--task cartpole] [--envs 1024 4096 16384] [--device cpu|cuda]
                          [--threads 1] [--repeats 3] [--min-steps 500000]
                          [--parity-envs 240] [--parity-iters 60] [--parity-seeds 0 1 2]
                          [--out bench/results/peers_cpu.json]

Both trainers run PPO on the same embedded task with the same settings, taken from our own
presets (``conf/algo/ppo.yaml`` and ``conf/env/<task>.yaml``): actor and critic hidden
widths and activation, N envs, T steps per env and iteration, epochs, minibatches, gamma,
lambda, clip, value coefficient, entropy coefficient, gradient-norm clip, the adaptive
learning rate (same initial lr and KL threshold) and observation normalisation. Ours is
``cpo.runners.runner.Runner`` driven by ``Runner.step()``; rsl_rl's is its own
``OnPolicyRunner.learn()`` (one iteration per call) on our env through
:mod:`bench.rsl_rl_wrapper`. Neither logs (no TensorBoard, no progress bar, no checkpoints).

Our trainer is measured in up to three variants: ``matched`` (``algo.latent_dim=0``: layer
for layer the same network as rsl_rl's), ``preset`` (``algo=ppo`` as shipped: every policy
input also carries the ensemble's learned 32-d latent, which for M = 1 is a constant input)
and, with ``--variants ... fast``, ``matched`` plus our opt-in fast paths (one NaN check per
iteration instead of per step; on a GPU the rollout policy step replayed from a CUDA graph; on a
CPU the update under bf16 autocast and ``perf.compile=all``).

Speed: for each N all trainers are built once, warmed up (``--warmup`` iterations, not
timed), then timed in ``--repeats`` rounds of the same number of iterations per trainer
(enough for ``--min-steps`` env steps). Within a round the trainers take turns iteration by
iteration (A B C A B C ..., who goes first rotating), so that every ratio compares
iterations run at nearly the same moment on a noisy machine. SPS = env steps / summed wall
time of whole iterations (collect + targets + update).

Parity: each trainer trains ``--parity-iters`` iterations at ``--parity-envs`` envs for every
seed; the mean return of the episodes that ended in each iteration is recorded (the same
definition on both sides), giving returns at equal env steps.

Prints JSON (and writes it to ``--out``). Needs only torch, this repo (its ``envs`` and
``cpo`` packages, PyYAML) and rsl-rl-lib; Hydra is not imported.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import gc
import io
import math
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.common import emit, machine  # noqa: E402

#: our trainer's variants: name -> dotted overrides on top of the presets
VARIANTS = {"matched": ["algo.latent_dim=0"], "preset": [],
            # matched plus our opt-in fast paths (rsl_rl keeps its per-step NaN check)
            "fast": ["algo.latent_dim=0", "nonfinite_check=iteration"]}


def variant_overrides(name: str, device: str) -> List[str]:
    """Overrides of variant ``name``; ``fast`` also replays the rollout policy step from a CUDA
    graph on a GPU (``perf.cuda_graphs``) and on a CPU runs the update under bf16 autocast with
    the rollout step and update forward compiled (``perf.compile=all``)."""
    extra: List[str] = []
    if name == "fast":
        # GPU: the rollout step from a CUDA graph. CPU: bf16 autocast in the update (oneDNN runs
        # the matmuls and ELUs in bf16 on AVX512-BF16/AMX cores, ~1.8x) and torch.compile of
        # the rollout step and update forward (fused elementwise kernels, ~1.2x)
        extra = (["perf.cuda_graphs=true"] if device.startswith("cuda")
                 else ["algo.mixed_precision=bf16", "perf.compile=all"])
    return VARIANTS[name] + extra


#: where the two learners differ although every shared knob is matched (reported in the JSON)
DIFFERENCES = [
    "value targets: ours learns standardised returns (running mean/std, net.normalize_value) with "
    "loss 0.5*value_coef*MSE = 1.0*MSE; rsl_rl learns raw returns with value_loss_coef*MSE = 1.0*MSE",
    "time limits: ours bootstraps a truncated step with V(final_obs) inside GAE; rsl_rl adds "
    "gamma*V(s_t) to the reward of a time-out step",
    "observation normaliser: ours one for actor and critic, updated once per rollout, clipped to "
    "+-5; rsl_rl one each for actor and critic, updated every env step, unclipped",
    "gradient clip: ours one global norm over all parameters; rsl_rl actor and critic clipped apart",
    "minibatches: ours reshuffles every epoch; rsl_rl draws one permutation for all epochs",
    "ours adds a 1e-4 penalty on action means outside [-1.1, 1.1] (algo.bounds_coef)",
    "initialisation: ours orthogonal (gain sqrt 2, policy head 0.01); rsl_rl PyTorch's default",
    "adaptive lr clamp: ours [1e-6, 1e-2]; rsl_rl [1e-5, 1e-2] and no increase when KL = 0",
    "variant 'preset' only: ours feeds a learned 32-d latent beside the observation (M = 1: a "
    "constant learned input), so its first layers are wider than rsl_rl's",
    "NaN checks: both check every env step (ours nonfinite_check=step, rsl_rl check_for_nan=True), "
    "except variant 'fast' (ours once per iteration)",
    "variant 'fast' on a CPU only: our update runs under bf16 autocast (algo.mixed_precision=bf16) "
    "and torch.compile (perf.compile=all); rsl_rl has neither switch and stays eager fp32",
]


# ---- configuration (no Hydra) ------------------------------------------------------------
def _yaml(rel: str) -> Dict[str, Any]:
    """``conf/<rel>`` parsed as YAML (Hydra's ``defaults``/package comments carry no keys here)."""
    import yaml

    with open(os.path.join(ROOT, "conf", rel)) as f:
        return yaml.safe_load(f) or {}


def _apply(obj: Any, values: Dict[str, Any], prefix: str = "") -> None:
    """Set dataclass fields of ``obj`` from a nested dict; unknown keys fail naming the key."""
    from cpo.utils.config import ConfigError

    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{prefix}{key}={value!r} is not a config key (valid: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            _apply(current, value, f"{prefix}{key}.")
        else:
            setattr(obj, key, value)


def _set(obj: Any, dotted: str) -> None:
    """Apply one ``a.b.c=value`` override (value parsed as YAML, as on Hydra's command line)."""
    import yaml

    key, _, raw = dotted.partition("=")
    nested: Dict[str, Any] = {}
    node = nested
    parts = key.split(".")
    for p in parts[:-1]:
        node[p] = {}
        node = node[p]
    node[parts[-1]] = yaml.safe_load(raw)
    _apply(obj, nested)


def ours_config(task: str, num_envs: int, seed: int, device: str, threads: int,
                iterations: int, overrides: List[str]):
    """TrainConfig of ``algo=ppo env=<task>`` with ``overrides``, ``num_envs`` and logging off
    (the same values ``python train.py algo=ppo env=<task> ...`` composes), validated."""
    from cpo.utils.config import TrainConfig, validate

    cfg = TrainConfig()
    _apply(cfg.algo, _yaml("algo/ppo.yaml"), "algo.")
    _apply(cfg, _yaml(f"env/{task}.yaml"))  # a task preset is "# @package _global_"
    for item in overrides:
        _set(cfg, item)
    cfg.env.num_envs = int(num_envs)
    cfg.seed, cfg.device, cfg.torch_threads = int(seed), device, int(threads)
    cfg.max_iterations = max(int(iterations), 1)
    cfg.log.progress, cfg.log.tensorboard = False, False
    validate(cfg)
    return cfg


def rsl_train_cfg(cfg) -> Dict[str, Any]:
    """rsl_rl's ``train_cfg`` dict (rsl-rl-lib 5.x) with every knob taken from our ``cfg``."""
    a, n = cfg.algo, cfg.net
    # knobs rsl_rl's PPO does not have must be at values that mean "off" on our side
    for key, ok in (("algo.num_policies", a.num_policies == 1), ("algo.reward_scale", a.reward_scale == 1.0),
                    ("algo.normalize_advantage", a.normalize_advantage),
                    ("algo.lr_schedule", a.lr_schedule in ("adaptive", "fixed")),
                    ("net.separate_critic", n.separate_critic), ("net.rnn_hidden", n.rnn_hidden == 0)):
        if not ok:
            raise ValueError(f"{key}: this value has no rsl_rl PPO counterpart; the comparison needs "
                             "M = 1, reward_scale 1, normalised advantages, an adaptive or fixed lr, "
                             "a separate critic and no LSTM")
    return {
        "num_steps_per_env": a.horizon,  # T
        "save_interval": 10 ** 9,  # never saves (no log_dir anyway)
        "check_for_nan": True,
        "obs_groups": {"actor": ["policy"], "critic": ["policy"]},
        "algorithm": {
            "class_name": "PPO",
            "num_learning_epochs": a.num_epochs,
            "num_mini_batches": a.num_minibatches,
            "clip_param": a.clip_eps,
            "gamma": a.gamma,
            "lam": a.gae_lambda,
            # ours: loss += 0.5 * value_coef * MSE; rsl_rl: loss += value_loss_coef * MSE
            "value_loss_coef": 0.5 * a.value_coef,
            "entropy_coef": a.entropy_coef,
            "learning_rate": a.lr,
            "max_grad_norm": a.max_grad_norm,
            "optimizer": "adam",
            "use_clipped_value_loss": a.clip_value,
            "schedule": a.lr_schedule,
            "desired_kl": a.kl_threshold,  # same rule: /1.5 above 2x, *1.5 below 0.5x
            "normalize_advantage_per_mini_batch": False,  # ours: one mean/std per iteration
            "rnd_cfg": None,
            "symmetry_cfg": None,
        },
        "actor": {
            "class_name": "MLPModel",
            "hidden_dims": list(n.actor_hidden),
            "activation": n.activation,
            "obs_normalization": n.normalize_obs,
            # state-independent log-std, initialised like ours: std = exp(init_log_std)
            "distribution_cfg": {"class_name": "GaussianDistribution", "init_std": math.exp(n.init_log_std),
                                 "std_type": "log"},
        },
        "critic": {
            "class_name": "MLPModel",
            "hidden_dims": list(n.critic_hidden),
            "activation": n.activation,
            "obs_normalization": n.normalize_obs,
        },
    }


# ---- the two trainers behind one verb ------------------------------------------------------
class OursTrainer:
    """Our Runner; :meth:`step` runs one iteration and returns its mean episode return."""

    def __init__(self, cfg) -> None:
        from cpo.runners.runner import Runner

        self.cfg = cfg
        self.steps_per_iter = cfg.algo.horizon * cfg.env.num_envs
        # config_yaml is only used by checkpoints, which step() never writes
        self.runner = Runner(cfg, tempfile.mkdtemp(prefix="bench_peers_"), config_yaml="# bench/peers.py\n")
        self.last: Optional[float] = None

    def step(self) -> Optional[float]:
        """One iteration (collect + targets + update + the iteration's single host sync)."""
        out = self.runner.step()
        self.last = out.get("rollout/ep_return", self.last)
        return self.last


class RslTrainer:
    """rsl_rl's OnPolicyRunner on our env; :meth:`step` runs ``learn(1)`` (one iteration)."""

    def __init__(self, cfg) -> None:
        from rsl_rl.runners import OnPolicyRunner

        from bench.rsl_rl_wrapper import RslRlEnv
        from cpo.runners.runner import resolve_device
        from envs import registry

        device = resolve_device(cfg.device)
        self.steps_per_iter = cfg.algo.horizon * cfg.env.num_envs
        torch.manual_seed(cfg.seed)  # rsl_rl draws its initialisation and actions from torch's RNG
        env = registry.make(cfg.env, device=device, seed=cfg.seed)
        self.env = RslRlEnv(env, seed=cfg.seed, cfg={"task": cfg.env.name, "num_envs": cfg.env.num_envs})
        self.train_cfg = rsl_train_cfg(cfg)
        with contextlib.redirect_stdout(io.StringIO()):  # it prints the models
            self.runner = OnPolicyRunner(self.env, copy.deepcopy(self.train_cfg), log_dir=None, device=str(device))
        self.last: Optional[float] = None

    def step(self) -> Optional[float]:
        """One iteration of rsl_rl's own loop (rollout, returns, update)."""
        self.runner.learn(num_learning_iterations=1)
        ret = self.env.pop_mean_return()
        self.last = ret if ret is not None else self.last
        return self.last


def _sync(device: str) -> None:
    """Wait for the GPU's queued work (timings must include it)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(trainer, device: str) -> float:
    """Wall seconds of one whole iteration."""
    _sync(device)
    t0 = time.perf_counter()
    trainer.step()
    _sync(device)
    return time.perf_counter() - t0


def _log(msg: str) -> None:
    """Progress on stderr (stdout carries the JSON)."""
    print(msg, file=sys.stderr, flush=True)


# ---- the two measurements ---------------------------------------------------------------
def speed(args) -> List[Dict[str, Any]]:
    """Interleaved SPS of every trainer at every N; ratios ours / rsl_rl per round and of medians."""
    rows = []
    for n in args.envs:
        trainers: Dict[str, Any] = {}
        for name in args.variants:
            trainers[name] = OursTrainer(ours_config(args.task, n, 0, args.device, args.threads, 10 ** 6,
                                                     variant_overrides(name, args.device) + args.ours_set))
        trainers["rsl_rl"] = RslTrainer(ours_config(args.task, n, 0, args.device, args.threads, 10 ** 6,
                                                    args.ours_set))
        steps = next(iter(trainers.values())).steps_per_iter
        iters = max(1, math.ceil(args.min_steps / steps))
        for name, tr in trainers.items():
            for _ in range(args.warmup):
                tr.step()
        sps: Dict[str, List[float]] = {name: [] for name in trainers}
        names = list(trainers)
        for r in range(args.repeats):
            # one round: the trainers take turns iteration by iteration (A B C A B C ...), who
            # goes first rotating between iterations, so each sees the same machine load
            wall = {name: 0.0 for name in names}
            for i in range(iters):
                k = (r * iters + i) % len(names)
                for name in names[k:] + names[:k]:
                    wall[name] += _timed(trainers[name], args.device)
            for name in names:
                sps[name].append(iters * steps / wall[name])
            _log(f"[peers] N={n} round {r}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in sps.items()))
        med = {k: statistics.median(v) for k, v in sps.items()}
        row: Dict[str, Any] = {"num_envs": n, "steps_per_iteration": steps, "iterations_per_run": iters,
                               "sps": {k: [round(x) for x in v] for k, v in sps.items()},
                               "median_sps": {k: round(v) for k, v in med.items()}}
        for name in args.variants:
            paired = [a / b for a, b in zip(sps[name], sps["rsl_rl"])]
            row[f"ratio_{name}"] = round(med[name] / med["rsl_rl"], 3)  # ratio of medians
            row[f"paired_ratios_{name}"] = [round(x, 3) for x in paired]
        rows.append(row)
        _log(f"[peers] N={n}: " + ", ".join(f"{k} {row[f'ratio_{k}']:.2f}x" for k in args.variants))
        del trainers
        gc.collect()
    return rows


def parity(args) -> Dict[str, Any]:
    """Per-iteration mean episode return of every trainer and seed at equal env steps."""
    every = max(1, args.parity_iters // 12)
    runs = []
    for seed in args.parity_seeds:
        entry: Dict[str, Any] = {"seed": seed}
        builders = {name: (lambda name=name: OursTrainer(ours_config(
            args.task, args.parity_envs, seed, args.device, args.threads, args.parity_iters,
            variant_overrides(name, args.device) + args.ours_set))) for name in args.variants}
        builders["rsl_rl"] = lambda: RslTrainer(ours_config(args.task, args.parity_envs, seed, args.device,
                                                            args.threads, args.parity_iters, args.ours_set))
        for name, build in builders.items():
            tr = build()
            t0 = time.perf_counter()
            curve = [tr.step() for _ in range(args.parity_iters)]
            wall = time.perf_counter() - t0
            done = [c for c in curve[-5:] if c is not None]
            entry[name] = {"final_return": round(statistics.mean(done), 2) if done else None,
                           "wall_s": round(wall, 2),
                           "curve": [None if c is None else round(c, 1) for c in curve[every - 1::every]]}
            del tr
            _log(f"[peers] parity seed {seed} {name}: final return {entry[name]['final_return']} ({wall:.1f} s)")
        runs.append(entry)
    steps = args.parity_envs * ours_config(args.task, args.parity_envs, 0, args.device, args.threads, 1,
                                           args.ours_set).algo.horizon
    summary = {}
    for name in list(args.variants) + ["rsl_rl"]:
        finals = [r[name]["final_return"] for r in runs if r[name]["final_return"] is not None]
        summary[name] = {"final_return_mean": round(statistics.mean(finals), 2) if finals else None,
                         "final_return_std": round(statistics.pstdev(finals), 2) if finals else None}
    return {"num_envs": args.parity_envs, "iterations": args.parity_iters,
            "env_steps": args.parity_iters * steps, "curve_every_iterations": every,
            "curve_env_steps": [(i + 1) * steps for i in range(every - 1, args.parity_iters, every)],
            "final_return": "mean episode return over the last 5 iterations",
            "summary": summary, "runs": runs}


def main() -> None:
    """Parse arguments, measure, print JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="cartpole")
    p.add_argument("--envs", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for both trainers")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per N (order rotates)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations per trainer and N")
    p.add_argument("--min-steps", type=int, default=500_000, help="env steps per timed run (>= 1 iteration)")
    p.add_argument("--variants", nargs="+", default=["matched", "preset"], choices=list(VARIANTS))
    p.add_argument("--ours-set", nargs="*", default=[], help="extra dotted overrides for every trainer, "
                   "e.g. algo.num_epochs=4 (rsl_rl takes the shared knobs from them too)")
    p.add_argument("--parity-envs", type=int, default=240, help="N of the parity runs (0: skip parity)")
    p.add_argument("--parity-iters", type=int, default=60)
    p.add_argument("--parity-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--out", default="")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import rsl_rl  # noqa: F401  (fail early when rsl-rl-lib is missing)
    from importlib.metadata import version

    info = machine()
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    cfg = ours_config(args.task, args.envs[0], 0, args.device, args.threads, 1, args.ours_set)
    result: Dict[str, Any] = {
        "benchmark": "peers", "date": datetime.date.today().isoformat(), "command": " ".join(sys.argv),
        "task": args.task, "device": args.device, "threads": args.threads, "machine": info,
        "rsl_rl_lib": version("rsl-rl-lib"), "tensordict": version("tensordict"),
        "variants": {k: variant_overrides(k, args.device) + args.ours_set for k in args.variants},
        "settings": {"ours": {"algo": dataclasses.asdict(cfg.algo), "net": dataclasses.asdict(cfg.net)},
                     "rsl_rl": rsl_train_cfg(cfg)},
        "differences": DIFFERENCES,
    }
    if not args.skip_speed:
        result["speed"] = speed(args)
    if args.parity_envs > 0:
        result["parity"] = parity(args)
    emit(result, args.out)


if __name__ == "__main__":
    main()
