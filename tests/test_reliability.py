"""Reliability: preemption signals and SIGKILL at random moments (the property-based config
checks are in tests/test_config_property.py)."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from cpo.utils import checkpoint as ckpt

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
