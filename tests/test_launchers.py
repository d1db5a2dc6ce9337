"""Cluster sweeps: the Hydra launcher presets compose (joblib, submitit/SLURM), the SLURM preset
asks for a requeueable job that is signalled before its time limit, ``resume=auto`` lets a
requeued job continue its own run directory, and SIGUSR1/2 save before submitit requeues."""
from __future__ import annotations

import importlib.util
import os
import signal

import pytest
import torch

from cpo.utils import checkpoint as ckpt
from cpo.app import run
from cpo.utils.config import ConfigError
from cpo.runners.runner import Runner
from tests.test_runner import small_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def has_module(name: str) -> bool:
    """Whether ``name`` can be imported. ``find_spec`` of a dotted name imports its parent
    package and raises ModuleNotFoundError when that is absent (``hydra_plugins`` exists only
    once some Hydra plugin is installed), so a missing parent counts as missing too."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


HAS_JOBLIB = has_module("hydra_plugins.hydra_joblib_launcher")
HAS_SUBMITIT = has_module("hydra_plugins.hydra_submitit_launcher")
NO_PLUGIN = 'the Hydra launcher plugin is not installed (pip install -e ".[cluster]")'


def compose_launcher(name: str, *overrides: str):
    """``hydra.launcher`` of conf/config.yaml composed with ``hydra/launcher=<name>``."""
    from hydra import compose, initialize_config_dir

    import cpo.app  # noqa: F401  (registers the schema)

    with initialize_config_dir(os.path.join(ROOT, "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={name}", *overrides], return_hydra_config=True)
    return cfg.hydra.launcher


@pytest.mark.skipif(not HAS_JOBLIB, reason=NO_PLUGIN.replace("plugin", "joblib plugin"))
def test_parallel_preset_composes_to_joblib():
    """conf/hydra/launcher/parallel.yaml: joblib, 2 process jobs by default, n_jobs overridable."""
    la = compose_launcher("parallel", "hydra.launcher.n_jobs=4")
    assert la._target_.endswith("JoblibLauncher")
    assert la.n_jobs == 4 and la.prefer == "processes"
    assert compose_launcher("parallel").n_jobs == 2


@pytest.mark.skipif(not HAS_SUBMITIT, reason=NO_PLUGIN.replace("plugin", "submitit plugin"))
def test_slurm_preset_composes_and_writes_a_requeueable_sbatch_script(tmp_path, monkeypatch):
    """conf/hydra/launcher/slurm.yaml through submitit's own sbatch writer (a stub ``srun`` on
    PATH stands in for the cluster): USR2 120 s before the 240-min limit, --requeue, one GPU
    and one task per job, 20 requeues after time-outs."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    la = compose_launcher("slurm", "hydra.launcher.partition=gpu")
    assert la._target_.endswith("SlurmLauncher")
    srun = tmp_path / "bin" / "srun"
    srun.parent.mkdir()
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{srun.parent}{os.pathsep}{os.environ['PATH']}")
    params = OmegaConf.to_container(la, resolve=False)
    params.pop("_target_")
    params.pop("submitit_folder")
    # the same translation as the plugin's launch(): max_num_timeout to the executor, the
    # queue-independent keys as they are, the rest with the cluster's prefix
    ex = submitit.AutoExecutor(folder=str(tmp_path / "sub"), cluster="slurm",
                               slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    ex.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    text = ex._executor._make_submission_file_text("python train.py", "uid")
    lines = set(text.splitlines())
    for line in ("#SBATCH --signal=USR2@120", "#SBATCH --requeue", "#SBATCH --time=240",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --partition=gpu"):
        assert line in lines, text
    assert ex._executor.max_num_timeout == 20


def test_resume_auto_starts_fresh_then_continues_exactly(tmp_path):
    """resume=auto: an empty run dir starts fresh; the same job started again (a requeued
    SLURM job) continues from its newest checkpoint, bitwise as if never stopped (2 + 2 == 4
    iterations); a job whose config differs is refused, naming the key and the stored value."""
    straight = small_cfg("sapg", iters=4)
    straight.log.tensorboard = False
    a = Runner(straight, str(tmp_path / "a"))
    a.train()
    run_dir = str(tmp_path / "b")
    first = small_cfg("sapg", iters=2)
    first.resume = "auto"
    run(first, run_dir=run_dir)
    assert ckpt.load(ckpt.latest(run_dir))["runner"]["iteration"] == 2
    again = small_cfg("sapg", iters=4)
    again.resume = "auto"
    run(again, run_dir=run_dir)
    payload = ckpt.load(ckpt.latest(run_dir))
    assert payload["runner"]["iteration"] == 4
    sa = a.model.state_dict()
    assert all(torch.equal(sa[k], payload["model"][k]) for k in sa)
    other = small_cfg("sapg", iters=6)
    other.algo.lr, other.resume = 1e-3, "auto"
    with pytest.raises(ConfigError, match=r"algo.lr=0.001: resume=auto found checkpoints of another "
                                          r"config .*stored value 0.0003"):
        run(other, run_dir=run_dir)


@pytest.mark.skipif(not hasattr(signal, "SIGUSR2"), reason="no SIGUSR2 on this platform")
def test_sigusr2_saves_then_hands_over_to_the_previous_handler(tmp_path):
    """SLURM's --signal (submitit: USR2 before the time limit): the runner finishes the
    iteration, writes the checkpoint, and only then calls the handler that was installed before
    it (submitit's, which requeues the job); then it returns."""
    calls = []
    run_dir = str(tmp_path / "r")
    path = os.path.join(run_dir, "checkpoints", "ckpt_000003.pt")
    def handler(signum, frame):  # stands in for submitit's checkpoint-and-requeue handler
        calls.append((signum, os.path.exists(path)))

    old = signal.signal(signal.SIGUSR2, handler)
    try:
        r = Runner(small_cfg("ppo", iters=50), run_dir)
        step = r.step

        def step_and_signal():
            out = step()
            if r.iteration == 3:
                os.kill(os.getpid(), signal.SIGUSR2)
            return out

        r.step = step_and_signal
        r.train()
        assert signal.getsignal(signal.SIGUSR2) is handler  # restored after training
    finally:
        signal.signal(signal.SIGUSR2, old)
    assert r.iteration == 3
    assert calls == [(signal.SIGUSR2, True)]  # called once, after the checkpoint existed
    assert ckpt.load(ckpt.latest(run_dir))["runner"]["iteration"] == 3
