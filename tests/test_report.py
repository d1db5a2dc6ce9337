"""The multirun report (cpo/tools/report.py): synthetic sweeps with known values and a tiny real one."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from cpo.tools import report
from cpo.app import config_yaml, run
from cpo.utils.config import TrainConfig

LAMBDAS = (0.1, 0.2)
BETAS = (1e-4, 1e-3)
SEEDS = (0, 1)
N_POINTS = 10


def _write_job(job_dir, cfg: TrainConfig, scalars, overrides=None) -> None:
    """A job directory as Hydra + cpo.app leave it: events, resolved config, overrides."""
    from torch.utils.tensorboard import SummaryWriter

    os.makedirs(job_dir, exist_ok=True)
    w = SummaryWriter(log_dir=str(job_dir))
    for tag, (steps, vals) in scalars.items():
        for s, v in zip(steps, vals):
            w.add_scalar(tag, float(v), int(s))
    w.close()
    with open(os.path.join(job_dir, "resolved_config.yaml"), "w") as f:
        f.write(config_yaml(cfg))
    if overrides is not None:
        os.makedirs(os.path.join(job_dir, ".hydra"), exist_ok=True)
        with open(os.path.join(job_dir, ".hydra", "overrides.yaml"), "w") as f:
            f.write("".join(f"- {o}\n" for o in overrides))


def _cfg(lam: float, beta: float, seed: int, name: str = "cpo") -> TrainConfig:
    cfg = TrainConfig(seed=seed)
    cfg.algo.name, cfg.algo.num_policies = name, 6
    cfg.algo.lambda_f, cfg.algo.beta = lam, beta
    return cfg


def _series(li: int, bi: int, seed: int, ess: bool = True, success: bool = True):
    """Known values: the last two of ten points are base+1, base+2 (seed 0) or base+3, base+4
    (seed 1), base = 10*li + 100*bi; seed 1 logs at steps shifted by 500."""
    steps = [1000 * (i + 1) + (500 if seed else 0) for i in range(N_POINTS)]
    base = 10.0 * li + 100.0 * bi
    ret = [float(i) for i in range(N_POINTS - 2)] + [base + 1 + 2 * seed, base + 2 + 2 * seed]
    out = {"rollout/ep_return": (steps, ret),
           "losses/policy": (steps, [0.0] * N_POINTS)}
    if success:
        out["rollout/success"] = (steps, [0.0] * (N_POINTS - 2) + [0.5 + 0.25 * seed] * 2)
    if ess:
        out["diversity/ess/overall"] = (steps, [0.25 * (li + 1)] * N_POINTS)
    return out


@pytest.fixture
def sweep2(tmp_path):
    """2 lambda_f x 2 beta x 2 seeds, with Hydra overrides, plus non-job clutter."""
    root = tmp_path / "multirun"
    num = 0
    for li, lam in enumerate(LAMBDAS):
        for bi, beta in enumerate(BETAS):
            for seed in SEEDS:
                ov = ["env=cartpole", "algo=cpo", f"algo.lambda_f={lam}",
                      f"algo.beta={'1e-4' if bi == 0 else '1e-3'}", f"seed={seed}",
                      "max_iterations=3"]
                _write_job(root / str(num), _cfg(lam, beta, seed), _series(li, bi, seed), ov)
                num += 1
    os.makedirs(root / "stray")  # an event file without a config is not a job
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(log_dir=str(root / "stray"))
    w.add_scalar("rollout/ep_return", 1e6, 1)
    w.close()
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def _assert_png(path) -> None:
    assert os.path.isfile(path), path
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] > 100 and im.size[1] > 100


def test_two_key_sweep(sweep2, capsys):
    """Grouping, labels, exact final statistics, every plot and the lambda_f x beta grid."""
    rc = report.main([str(sweep2), "--last-frac", "0.2"])
    assert rc == 0
    out_dir = sweep2 / "report"
    for name in ("learning_curves.png", "success_curves.png", "final_return_heatmap.png",
                 "ess_curves.png"):
        _assert_png(out_dir / name)
    assert not (out_dir / "final_return_bars.png").exists()
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["swept_keys"] == ["algo.lambda_f", "algo.beta"]
    assert summary["metric"] == "rollout/ep_return" and summary["last_frac"] == 0.2
    confs = summary["configurations"]
    assert [c["label"] for c in confs] == [
        "lambda_f=0.1, beta=0.0001", "lambda_f=0.1, beta=0.001",
        "lambda_f=0.2, beta=0.0001", "lambda_f=0.2, beta=0.001"]
    for c in confs:
        li, bi = LAMBDAS.index(c["swept"]["algo.lambda_f"]), BETAS.index(c["swept"]["algo.beta"])
        base = 10.0 * li + 100.0 * bi
        assert c["seeds"] == [0, 1] and c["num_runs"] == 2
        # per seed: mean(base+1, base+2) and mean(base+3, base+4)
        assert c["final_return_per_run"] == [base + 1.5, base + 3.5]
        assert c["final_return_mean"] == base + 2.5
        assert c["final_return_std"] == 1.0
        assert c["final_success_mean"] == 0.625 and c["final_success_std"] == 0.125
        assert c["final_ess_mean"] == 0.25 * (li + 1)
        assert c["env_steps"] == 10500 and c["env_steps_per_run"] == [10000, 10500]
        assert c["runs_missing_metric"] == 0
        assert all("stray" not in p for p in c["run_dirs"])
    table = (out_dir / "table.md").read_text()
    printed = capsys.readouterr().out
    assert printed == table
    assert "| lambda_f \\ beta | 0.0001 | 0.001 |" in table
    assert "| 0.1 | 2.5 ± 1 | 102.5 ± 1 |" in table
    assert "| 0.2 | 12.5 ± 1 | 112.5 ± 1 |" in table
    assert "| lambda_f=0.2, beta=0.001 | 0.2 | 0.001 | 0, 1 | 112.5 ± 1 |" in table


def test_last_frac_and_out_dir(sweep2, tmp_path):
    """--last-frac 1 averages whole runs; --out redirects every file."""
    out = tmp_path / "elsewhere"
    res = report.make_report(str(sweep2), out=str(out), last_frac=1.0)
    assert all(p.startswith(str(out)) for p in res["files"])
    c = res["configurations"][0]  # lambda_f=0.1, beta=1e-4: base 0
    ramp = sum(range(N_POINTS - 2))
    assert c["final_return_per_run"] == pytest.approx([(ramp + 3) / 10, (ramp + 7) / 10])
    with pytest.raises(ValueError):
        report.make_report(str(sweep2), out=str(out), last_frac=0.0)


def test_one_key_without_overrides(tmp_path):
    """No .hydra dirs: swept keys come from the resolved configs; one key -> bar chart; no
    success / ESS tags (PPO-like) -> those plots and columns are skipped."""
    root = tmp_path / "mr"
    for num, (li, seed) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        _write_job(root / "sub" / str(num), _cfg(LAMBDAS[li], 1e-3, seed, name="ppo"),
                   _series(li, 0, seed, ess=False, success=False))
    res = report.make_report(str(root), last_frac=0.2)
    assert res["swept_keys"] == ["algo.lambda_f"]
    assert [c["label"] for c in res["configurations"]] == ["lambda_f=0.1", "lambda_f=0.2"]
    assert [c["final_return_mean"] for c in res["configurations"]] == [2.5, 12.5]
    out_dir = root / "report"
    _assert_png(out_dir / "learning_curves.png")
    _assert_png(out_dir / "final_return_bars.png")
    for name in ("success_curves.png", "ess_curves.png", "final_return_heatmap.png"):
        assert not (out_dir / name).exists(), name
    c = res["configurations"][0]
    assert "final_success_mean" not in c and "final_ess_mean" not in c
    assert "ESS" not in res["table"] and "\\" not in res["table"]


def test_aggregate_curves_and_final_value():
    """Seeds on different step grids are interpolated onto the union grid; a seed outside its
    range does not count; the final window is ceil(frac * n) points."""
    a = (np.array([0, 10, 20]), np.array([0.0, 10.0, 20.0]))
    b = (np.array([5, 15, 30]), np.array([15.0, 25.0, 40.0]))  # y = x + 10
    grid, mean, std, count = report.aggregate_curves([a, b])
    assert grid.tolist() == [0, 5, 10, 15, 20, 30]
    assert count.tolist() == [1, 2, 2, 2, 2, 1]
    assert mean.tolist() == [0.0, 10.0, 15.0, 20.0, 25.0, 40.0]
    assert std.tolist() == [0.0, 5.0, 5.0, 5.0, 5.0, 0.0]
    v = np.arange(10, dtype=float)
    assert report.final_value(v, v, 0.1) == 9.0
    assert report.final_value(v, v, 0.25) == 8.0  # ceil(2.5) = 3 points: 7, 8, 9
    assert report.final_value(v, v, 1e-6) == 9.0


def test_real_multirun_on_test_line(tmp_path):
    """Jobs written by cpo.app.run on the test task: the real event layout reads back."""
    root = tmp_path / "multirun"
    num = 0
    for lam in (0.1, 0.5):
        for seed in (0, 1):
            cfg = _cfg(lam, 1e-3, seed)
            cfg.device, cfg.max_iterations = "cpu", 3  # episodes last 20 steps
            cfg.env.name, cfg.env.num_envs = "test_line", 48
            cfg.algo.horizon, cfg.algo.num_minibatches, cfg.algo.num_epochs = 8, 2, 1
            cfg.net.actor_hidden, cfg.net.critic_hidden = [16], [16]
            cfg.log.progress, cfg.log.diag_samples = False, 32
            job = root / str(num)
            run(cfg, run_dir=str(job))
            os.makedirs(job / ".hydra")
            (job / ".hydra" / "overrides.yaml").write_text(
                f"- algo=cpo\n- algo.lambda_f={lam}\n- seed={seed}\n")
            num += 1
    res = report.make_report(str(root))
    assert res["swept_keys"] == ["algo.lambda_f"]
    confs = res["configurations"]
    assert [c["label"] for c in confs] == ["lambda_f=0.1", "lambda_f=0.5"]
    for c in confs:
        assert c["seeds"] == [0, 1]
        assert c["env_steps"] == 3 * 48 * 8 and c["runs_missing_metric"] == 0
        assert c["final_ess_mean"] is not None and 0.0 < c["final_ess_mean"] <= 1.0
        per_run = c["final_return_per_run"]
        assert all(v is not None and v < 0 for v in per_run)  # reward -|x|
        assert c["final_return_mean"] == pytest.approx(float(np.mean(per_run)))
        assert c["final_return_std"] == pytest.approx(float(np.std(per_run)))
    _assert_png(root / "report" / "learning_curves.png")
    _assert_png(root / "report" / "ess_curves.png")
    _assert_png(root / "report" / "success_curves.png")
