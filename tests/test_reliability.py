"""Reliability: preemption signals, SIGKILL at random moments, and property-based config checks."""
from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpo import checkpoint as ckpt
from cpo.config import ConfigError, TrainConfig, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["algo=ppo", "env=cartpole", "env.num_envs=60", "algo.horizon=16", "algo.num_epochs=1",
        "net.actor_hidden=[16]", "net.critic_hidden=[16]", "log.progress=false", "device=cpu",
        "torch_threads=1"]


def start(run_dir: str, *extra: str) -> subprocess.Popen:
    """Launch train.py on a tiny CartPole into ``run_dir``."""
    return subprocess.Popen([sys.executable, "train.py", *FAST, f"hydra.run.dir={run_dir}", *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_checkpoint(run_dir: str, timeout: float = 60.0) -> None:
    """Block until the run has written its first periodic checkpoint."""
    t0 = time.time()
    while not ckpt.list_checkpoints(run_dir):
        assert time.time() - t0 < timeout, "no checkpoint appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_preemption_signal_saves_and_exits_cleanly(tmp_path, sig):
    """SIGTERM (SLURM) or Ctrl-C saves a checkpoint and exits with code 0 within an iteration;
    the run resumes from it."""
    run_dir = str(tmp_path / "run")
    proc = start(run_dir, "max_iterations=100000", "log.ckpt_every=5")
    wait_for_checkpoint(run_dir)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "checkpoint saved" in out
    last = ckpt.load(ckpt.list_checkpoints(run_dir)[-1])
    it = last["runner"]["iteration"]
    assert it % 5 != 0 or it >= 5
    resumed = subprocess.run([sys.executable, "train.py", f"resume={run_dir}", f"max_iterations={it + 1}",
                              "log.progress=false"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert ckpt.load(ckpt.list_checkpoints(run_dir)[-1])["runner"]["iteration"] == it + 1


def test_sigkill_never_leaves_an_unloadable_run(tmp_path):
    """SIGKILL at random moments (checkpointing every iteration, so kills land mid-save too):
    every run directory keeps a checkpoint that loads and resumes. CI runs 5 kills;
    bench/crash.py runs more."""
    rng = random.Random(0)
    bad = 0
    for i in range(5):
        run_dir = str(tmp_path / f"r{i}")
        proc = start(run_dir, "max_iterations=100000", "log.ckpt_every=1", "log.keep_last=2")
        wait_for_checkpoint(run_dir)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.kill()
        proc.wait()
        path = ckpt.latest(run_dir)
        if path is None:
            bad += 1
            continue
        it = ckpt.load(path)["runner"]["iteration"]
        res = subprocess.run([sys.executable, "train.py", f"resume={run_dir}", f"max_iterations={it + 1}",
                              "log.progress=false"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        bad += res.returncode != 0
    assert bad == 0


# ---- property-based configuration checks ------------------------------------------------
#: key -> (predicate that says whether a value is valid, rule fragment in the message)
RULES = {
    "algo.gamma": (lambda v: 0.0 <= v <= 1.0, "[0, 1]"),
    "algo.gae_lambda": (lambda v: 0.0 <= v <= 1.0, "[0, 1]"),
    "algo.lambda_f": (lambda v: v > 0, "> 0"),
    "algo.clip_eps": (lambda v: v > 0, "> 0"),
    "algo.lr": (lambda v: 1e-6 <= v <= 1e-2, ""),  # within [lr_min, lr_max] = [1e-6, 1e-2]
    "algo.weight_max": (lambda v: v > 0, "> 0"),
    "algo.beta": (lambda v: v >= 0, ">= 0"),
    "algo.lambda_adv": (lambda v: v >= 0, ">= 0"),
    "algo.entropy_scale": (lambda v: v >= 0, ">= 0"),
    "algo.coupling_fraction": (lambda v: 0 < v <= 1, "(0, 1]"),
    "algo.horizon": (lambda v: v >= 1, ">= 1"),
    "algo.num_epochs": (lambda v: v >= 1, ">= 1"),
    "max_iterations": (lambda v: v >= 1, ">= 1"),
    "env.num_envs": (lambda v: v >= 1 and v % 6 == 0 and (v * 32) % 4 == 0, ""),
    "algo.num_minibatches": (lambda v: v >= 1 and (600 * 32) % v == 0, ""),
}
INT_KEYS = {"algo.horizon", "algo.num_epochs", "max_iterations", "env.num_envs", "algo.num_minibatches"}


def base_cfg() -> TrainConfig:
    cfg = TrainConfig()
    cfg.env.name, cfg.env.num_envs = "point_maze", 600
    cfg.algo.num_policies, cfg.algo.horizon, cfg.algo.num_minibatches = 6, 32, 4
    return cfg


def set_key(cfg: TrainConfig, key: str, value) -> None:
    obj = cfg
    parts = key.split(".")
    for p in parts[:-1]:
        obj = getattr(obj, p)
    setattr(obj, parts[-1], value)


value_strategy = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.integers(min_value=-10**6, max_value=10**6).map(float),
    st.sampled_from([0.0, -0.0, 1.0, 1e-12, 0.5, 2.0, -1.0, float("nan"), float("inf")]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(sorted(RULES)), value=value_strategy)
def test_random_overrides_are_accepted_or_clearly_refused(key, value):
    """Every random value is either valid (accepted) or refused with a message naming the key
    and the value: 100 % of invalid values get a clear error, 100 % of valid ones pass."""
    if key in INT_KEYS:
        if not math.isfinite(value):
            return  # integer keys cannot hold nan/inf: the schema rejects them while composing
        value = int(value)
    valid = math.isfinite(value) and bool(RULES[key][0](value))
    cfg = base_cfg()
    set_key(cfg, key, value)
    if valid:
        validate(cfg)
    else:
        with pytest.raises(ConfigError) as err:
            validate(cfg)
        msg = str(err.value)
        leaf = key.split(".")[-1]
        assert leaf in msg and (RULES[key][1] in msg), msg
