"""``eval.py`` on PBT runs (algo=pbt, cpo/runners/pbt.py): the checkpoint holds a stacked population,
and eval.py evaluates, exports and records one member, chosen by ``policy=<global id>`` or, by
default, the member with the best windowed score; the printed line names the member."""
from __future__ import annotations

import math
import os

import pytest
import torch

import eval as eval_cli
from cpo.utils import checkpoint as ckpt
from cpo.app import run
from cpo.tools.evaluation import evaluate, load_policy, select_policy
from cpo.runners.pbt import checkpoint_policy
from tests.test_pbt import pbt_cfg


@pytest.fixture(scope="module")
def pbt_run(tmp_path_factory):
    """A 4-iteration PBT run on the test task (3 members, 20-step episodes: every member has
    a windowed score at the end) and its latest checkpoint's payload."""
    run_dir = str(tmp_path_factory.mktemp("pbt") / "r")
    cfg = pbt_cfg(iters=4)
    run(cfg, run_dir=run_dir)
    path = ckpt.latest(run_dir)
    return run_dir, path, ckpt.load(path), cfg


def _actions(net, obs: torch.Tensor) -> torch.Tensor:
    """Deterministic actions of policy 0 of ``net`` on ``obs [B, D]``."""
    with torch.no_grad():
        return net.mean_action(obs, torch.zeros(obs.shape[0], dtype=torch.long))


def test_eval_picks_the_best_member_by_default(pbt_run, tmp_path, capsys):
    """No ``policy=``: the member with the best windowed score; finite numbers equal to
    evaluating checkpoint_policy's network directly, and the exported TorchScript gives that
    network's actions."""
    run_dir, path, payload, cfg = pbt_run
    cnt = payload["learner"]["ep_cnt"].sum(0)
    assert bool((cnt > 0).all())  # every member has a score, so "best" is a real choice
    scores = (payload["learner"]["ep_sum"].sum(0) / cnt).tolist()
    best = max(range(3), key=lambda p: scores[p])
    out = str(tmp_path / "best.pt")
    summary = eval_cli.main([f"run={run_dir}", "episodes=6", f"export={out}"])
    assert summary["member"] == summary["policy"] == best
    assert summary["episodes"] == 6 and summary["checkpoint"] == path
    assert math.isfinite(summary["return_mean"]) and math.isfinite(summary["return_std"])
    printed = capsys.readouterr().out
    assert f"pbt/test_line member {best} (best of [0, 1, 2]) over 6 episodes" in printed
    net, gid = checkpoint_policy(payload, cfg, 2, 2)
    assert gid == best
    ref = evaluate(net, cfg, episodes=6, seed=12345)
    assert summary["return_mean"] == ref["return_mean"] and summary["return_std"] == ref["return_std"]
    obs = torch.randn(7, 2, generator=torch.Generator().manual_seed(1)) * 2.0
    exported = torch.jit.load(out)
    with torch.no_grad():
        assert torch.allclose(exported(obs), _actions(net, obs).clamp(-1, 1), atol=1e-6)


def test_eval_selects_a_member_by_global_id(pbt_run):
    """``policy=2`` runs member 2: its actions are checkpoint_policy(member=2)'s and differ
    from member 0's (each member has its own weights)."""
    run_dir, path, payload, cfg = pbt_run
    summary = eval_cli.main([f"run={run_dir}", "episodes=4", "policy=2"])
    assert summary["member"] == 2 and math.isfinite(summary["return_mean"])
    loaded = select_policy(path, policy=2)
    assert (loaded.member, loaded.index, loaded.name) == (2, 0, "member 2 (of [0, 1, 2])")
    net2, gid = checkpoint_policy(payload, cfg, 2, 2, member=2)
    net0, _ = checkpoint_policy(payload, cfg, 2, 2, member=0)
    obs = torch.randn(9, 2, generator=torch.Generator().manual_seed(2))
    assert gid == 2
    assert torch.equal(_actions(loaded.model, obs), _actions(net2, obs))
    assert not torch.allclose(_actions(loaded.model, obs), _actions(net0, obs))
    model, _ = load_policy(path, member=2)  # the same member through load_policy
    assert torch.equal(_actions(model, obs), _actions(net2, obs))


def test_unknown_member_names_the_ids(pbt_run, capsys):
    """``policy=7``: ValueError from main, one line and exit code 2 from the command line."""
    run_dir = pbt_run[0]
    msg = ("policy=7: this PBT checkpoint holds members [0, 1, 2] (global ids); leave policy "
           "out for the best-scored one")
    with pytest.raises(ValueError) as err:
        eval_cli.main([f"run={run_dir}", "episodes=2", "policy=7"])
    assert str(err.value) == msg
    assert eval_cli.cli([f"run={run_dir}", "episodes=2", "policy=7"]) == 2
    assert capsys.readouterr().err == f"eval.py: {msg}\n"
    with pytest.raises(SystemExit, match=r"policy='best': must be an integer"):
        eval_cli.main([f"run={run_dir}", "policy=best"])


def test_member_on_an_ensemble_checkpoint_is_an_error(tmp_path):
    """load_policy(member=...) only applies to PBT runs; an ensemble's ``policy=`` out of range
    names the valid indices."""
    from cpo.utils.config import TrainConfig

    cfg = TrainConfig(device="cpu", max_iterations=1)
    cfg.env.name, cfg.env.num_envs = "test_line", 8
    cfg.algo.name, cfg.algo.num_policies = "ppo", 2
    cfg.algo.horizon, cfg.algo.num_minibatches, cfg.algo.num_epochs = 4, 1, 1
    cfg.net.actor_hidden, cfg.net.critic_hidden = [8], [8]
    cfg.log.progress = False
    run(cfg, run_dir=str(tmp_path / "r"))
    path = ckpt.latest(str(tmp_path / "r"))
    with pytest.raises(ValueError, match=r"^member=1: only PBT checkpoints \(pbt.population > 0\) "
                                         r"hold members; .* is an algo=ppo run$"):
        load_policy(path, member=1)
    with pytest.raises(ValueError, match=r"^policy=2: this checkpoint holds policies 0..1 "
                                         r"\(algo.num_policies=2\)$"):
        eval_cli.main([f"run={tmp_path / 'r'}", "episodes=2", "policy=2"])
    assert eval_cli.main([f"run={tmp_path / 'r'}", "episodes=2", "policy=1"])["policy"] == 1


def test_pbt_member_video(tmp_path):
    """``video=true`` on a PBT cartpole run writes ``videos/member<id>.mp4``, one frame per
    step of one 12-step-capped episode."""
    pytest.importorskip("imageio", reason='videos need imageio (pip install -e ".[video]")')
    pytest.importorskip("imageio_ffmpeg", reason='videos need imageio-ffmpeg (pip install -e ".[video]")')
    import imageio.v2 as imageio

    cfg = pbt_cfg(iters=1)
    cfg.env.name, cfg.env.max_episode_steps = "cartpole", 12
    run(cfg, run_dir=str(tmp_path / "r"))
    summary = eval_cli.main([f"run={tmp_path / 'r'}", "episodes=2", "policy=1", "video=true",
                             "video_episodes=1"])
    assert summary["video"] == os.path.join(str(tmp_path / "r"), "videos", "member1.mp4")
    frames = imageio.get_reader(summary["video"]).count_frames()
    assert 1 <= frames <= 12


def test_unscored_checkpoint_says_first_member_not_best(pbt_run, tmp_path):
    """A checkpoint saved before any member finished an episode: the first member is run and
    the message says so instead of claiming it is the best."""
    _, path, payload, _ = pbt_run
    payload = dict(payload, learner=dict(payload["learner"]))
    payload["learner"]["ep_cnt"] = torch.zeros_like(payload["learner"]["ep_cnt"])
    payload["learner"]["ep_sum"] = torch.zeros_like(payload["learner"]["ep_sum"])
    run_dir = tmp_path / "r"
    (run_dir / "checkpoints").mkdir(parents=True)
    fresh = str(run_dir / "checkpoints" / os.path.basename(path))
    ckpt.save(payload, fresh)
    loaded = select_policy(fresh)
    assert loaded.member == 0
    assert loaded.name == "member 0 (first of [0, 1, 2]: no member has a score yet)"
