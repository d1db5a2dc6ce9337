"""The Python API (cpo/api.py): cpo.train composes presets exactly as train.py does, returns the
run directory and statistics, resumes; cpo.load_policy / Policy.act / cpo.evaluate / export."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import cpo
from cpo.utils.config import ConfigError, config_yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["algo=ppo", "env=cartpole", "max_iterations=3", "log.progress=false", "log.tensorboard=false",
        "device=cpu", "torch_threads=1"]


def test_compose_equals_what_train_py_resolves(tmp_path):
    """cpo.compose(overrides) gives the very config train.py writes to resolved_config.yaml for
    the same command line (presets, then overrides), not the dataclass defaults."""
    overrides = ["algo=cpo", "env=cartpole", "algo.lambda_f=0.1", "max_iterations=1", "log.progress=false",
                 "log.tensorboard=false", "device=cpu", "torch_threads=1"]
    run_dir = tmp_path / "cli"
    subprocess.run([sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                   check=True, capture_output=True, timeout=300)
    cfg, hydra_dir = cpo.compose(overrides)
    assert config_yaml(cfg) == (run_dir / "resolved_config.yaml").read_text()
    assert cfg.env.num_envs == 240 and cfg.algo.num_policies == 6 and cfg.algo.lambda_f == 0.1
    assert cfg.env.num_envs != cpo.utils.config.TrainConfig().env.num_envs  # the preset, not the default
    assert hydra_dir.startswith("outputs/cpo_cartpole/")


def test_train_load_act_evaluate_export_resume(tmp_path):
    """cpo.train -> TrainResult (run dir, last statistics, config, checkpoints);
    cpo.load_policy(run_dir) acts on one observation or a batch (numpy or torch) like the
    network's clamped mean; cpo.evaluate equals cpo.tools.evaluation.evaluate's dict; resume continues."""
    from cpo.tools.evaluation import evaluate as eval_dict

    run_dir = str(tmp_path / "run")
    res = cpo.train(FAST, run_dir=run_dir)
    assert res.run_dir == run_dir and res.config.algo.name == "ppo" and res.config.env.num_envs == 240
    assert res.stats["perf/env_steps"] == 3 * 240 * 32 and "rollout/ep_return" in res.stats
    assert res.last_checkpoint.endswith("ckpt_000003.pt") and os.path.isfile(res.best_checkpoint)
    assert os.path.isfile(os.path.join(run_dir, "train.log"))

    policy = cpo.load_policy(run_dir, checkpoint="latest")
    assert policy.checkpoint == res.last_checkpoint and policy.index == 0
    obs = np.array([0.01, -0.2, 0.03, 0.1], dtype=np.float32)
    a1 = policy.act(obs)
    assert isinstance(a1, np.ndarray) and a1.shape == (1,)
    batch = torch.tensor(np.stack([obs, -obs, 2 * obs]))
    a2 = policy.act(batch)
    assert isinstance(a2, torch.Tensor) and a2.shape == (3, 1)
    with torch.no_grad():
        want = policy.model.mean_action(batch, torch.zeros(3, dtype=torch.long)).clamp(-1, 1)
    assert torch.allclose(a2, want) and np.allclose(a1, want[0].numpy())
    with pytest.raises(ValueError, match=r"expected \[4\] or \[batch, 4\]"):
        policy.act(np.zeros(5, dtype=np.float32))

    ev = cpo.evaluate(policy, episodes=8, seed=3)
    ref = eval_dict(policy.model, policy.cfg, episodes=8, seed=3)
    assert ev.episodes == 8 and ev.return_mean == pytest.approx(ref["return_mean"])
    assert ev.success_rate is None and len(ev.returns) == 8

    onnx_path = policy.export(str(tmp_path / "p.onnx"))
    assert os.path.getsize(onnx_path) > 0

    more = cpo.train([f"resume={run_dir}", "max_iterations=5"])
    assert more.run_dir == run_dir and more.stats["perf/env_steps"] == 5 * 240 * 32
    assert more.config.max_iterations == 5


def test_train_refuses_bad_overrides_before_compute(tmp_path):
    """A typo gets train.py's "did you mean" ConfigError; no run directory is written."""
    with pytest.raises(ConfigError, match="did you mean algo.lambda_f"):
        cpo.train(["algo.lamda_f=0.1"], run_dir=str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="env.num_envs=1000 is not divisible"):
        cpo.train(["env.num_envs=1000"], run_dir=str(tmp_path / "y"))
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "y")
