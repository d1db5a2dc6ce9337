"""``eval.py`` on an Isaac Gym run imports ``isaacgym`` before torch (Isaac Gym refuses to load
after torch), learning the backend from the run's ``resolved_config.yaml`` without importing
torch; without Isaac Gym it stops with training's own one-line error."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

import eval as eval_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: a stand-in for Isaac Gym: fails like the real one when torch came first, else leaves a mark
FAKE_ISAACGYM = """
import os, sys
if "torch" in sys.modules:
    raise ImportError("PyTorch was imported before isaacgym modules.")
with open(os.environ["FAKE_ISAACGYM_MARK"], "w") as f:
    f.write("torch in sys.modules: %s" % ("torch" in sys.modules))
"""


def _isaacgym_run(path) -> str:
    """A run directory whose config names the isaacgym backend (and no checkpoint)."""
    path.mkdir()
    (path / "resolved_config.yaml").write_text(
        "seed: 0\nalgo:\n  name: ppo\nenv:\n  name: isaacgym\n  num_envs: 4096\n"
        "  params:\n    task: Humanoid\n")
    return str(path)


def _eval(args, extra_path: str = "", **extra_env: str):
    """``python eval.py args`` in a fresh interpreter (nothing imported yet)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra_env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, ROOT) if p)
    return subprocess.run([sys.executable, os.path.join(ROOT, "eval.py")] + args, cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_isaacgym_is_imported_before_torch(tmp_path):
    """The fake isaacgym finds no torch in sys.modules; eval.py then goes on (and stops at the
    missing checkpoint with its one-line error)."""
    run_dir = _isaacgym_run(tmp_path / "run")
    fake = tmp_path / "site"
    fake.mkdir()
    (fake / "isaacgym.py").write_text(FAKE_ISAACGYM)
    mark = tmp_path / "mark.txt"
    proc = _eval([f"run={run_dir}", "episodes=2"], extra_path=str(fake), FAKE_ISAACGYM_MARK=str(mark))
    assert mark.read_text() == "torch in sys.modules: False"
    assert proc.returncode == 2
    assert proc.stderr == f"checkpoint error: no loadable checkpoint in {run_dir!r}/checkpoints\n"


@pytest.mark.skipif(importlib.util.find_spec("isaacgym") is not None, reason="Isaac Gym is installed")
def test_missing_isaacgym_gives_trainings_error(tmp_path):
    """Without Isaac Gym: ``config error: <envs.isaacgym.INSTALL_HINT>; ...``, exit code 2, as
    train.py prints it (before looking for a checkpoint)."""
    from envs.isaacgym import INSTALL_HINT

    proc = _eval([f"run={_isaacgym_run(tmp_path / 'run')}"])
    assert proc.returncode == 2
    assert proc.stderr == (f"config error: {INSTALL_HINT}; `import isaacgym` failed: "
                           "No module named 'isaacgym'\n")


def test_run_env_name_reads_yaml_only(tmp_path):
    """The backend comes from ``<run>/resolved_config.yaml``, or from the run above a
    ``checkpoint=<file>``; None without a config. Other backends import nothing."""
    run_dir = _isaacgym_run(tmp_path / "run")
    assert eval_cli.run_env_name(run_dir) == "isaacgym"
    loaded_before = "isaacgym" in sys.modules
    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    (other / "checkpoints" / "ckpt_000001.pt").write_bytes(b"")
    assert eval_cli.run_env_name(str(tmp_path / "none")) is None
    assert eval_cli.run_env_name(str(tmp_path / "none"), str(other / "checkpoints" / "ckpt_000001.pt")) is None
    (other / "resolved_config.yaml").write_text("env:\n  name: cartpole\n")
    assert eval_cli.run_env_name(str(tmp_path / "none"), str(other / "checkpoints" / "ckpt_000001.pt")) == "cartpole"
    assert eval_cli.import_isaacgym_first({"run": str(other)}) is False
    assert ("isaacgym" in sys.modules) == loaded_before
