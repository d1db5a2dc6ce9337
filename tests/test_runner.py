"""End-to-end runner checks on the tiny `test_line` task: determinism, exact resume,
checkpoint safety, evaluation and export."""
from __future__ import annotations

import copy
import math
import os
import pickle

import pytest
import torch

from cpo.utils import checkpoint as ckpt
from cpo.app import resume_config, run
from cpo.utils.config import ConfigError, TrainConfig
from cpo.runners.runner import Runner


def small_cfg(algo: str = "ppo", iters: int = 4, seed: int = 0) -> TrainConfig:
    """A fast config on the test task for the given algorithm preset."""
    cfg = TrainConfig(seed=seed, device="cpu", max_iterations=iters)
    cfg.env.name, cfg.env.num_envs = "test_line", 48
    cfg.algo.horizon, cfg.algo.num_minibatches, cfg.algo.num_epochs = 8, 2, 2
    cfg.net.actor_hidden, cfg.net.critic_hidden = [16, 16], [16, 16]
    cfg.log.progress, cfg.log.ckpt_every, cfg.log.heatmap_every = False, 2, 2
    cfg.log.diag_samples = 64
    if algo != "ppo":
        cfg.algo.name, cfg.algo.num_policies = algo, 6
        cfg.algo.entropy_scale = 0.005
    if algo == "cpo":
        cfg.algo.beta, cfg.algo.lambda_f, cfg.algo.lambda_adv = 1e-3, 0.2, 0.01
        cfg.algo.disc_batch, cfg.algo.disc_hidden = 64, [16]
    return cfg


def params(runner_or_model) -> torch.Tensor:
    model = getattr(runner_or_model, "model", runner_or_model)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_seeded_determinism(tmp_path):
    """Same seed -> bitwise identical parameters; a different seed -> different ones."""
    outs = []
    for i, seed in enumerate((0, 0, 1)):
        r = Runner(small_cfg("cpo", seed=seed), str(tmp_path / f"r{i}"))
        for _ in range(3):
            r.step()
        outs.append(params(r))
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2])


@pytest.mark.parametrize("algo", ["ppo", "sapg", "cpo"])
def test_exact_resume(tmp_path, algo):
    """2K iterations straight == K, stop, resume, K more: identical parameters, optimiser,
    normalisers, discriminator, RNG streams and step counters."""
    K = 3
    straight = small_cfg(algo, iters=2 * K)
    straight.log.tensorboard = False
    a = Runner(straight, str(tmp_path / "a"))
    a.train()
    first = small_cfg(algo, iters=K)
    run(first, run_dir=str(tmp_path / "b"))
    cfg_b, path = resume_config(str(tmp_path / "b"), [f"max_iterations={2 * K}"])
    b = Runner(cfg_b, str(tmp_path / "b"), resume_from=path)
    assert b.iteration == K and b.env_steps == K * 48 * 8
    b.train()
    assert torch.equal(params(a), params(b))
    sa, sb = a.model.state_dict(), b.model.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    oa, ob = a.learner.optimizer.state_dict()["state"], b.learner.optimizer.state_dict()["state"]
    for k in oa:
        for kk in oa[k]:
            assert torch.equal(oa[k][kk], ob[k][kk])
    assert torch.equal(a.learner.lr, b.learner.lr)
    assert torch.equal(a.act_gen.get_state(), b.act_gen.get_state())
    assert torch.equal(a.obs, b.obs)
    if algo == "cpo":
        da, db = a.learner.disc.state_dict(), b.learner.disc.state_dict()
        assert all(torch.equal(da[k], db[k]) for k in da)
    assert a.env_steps == b.env_steps


def test_resume_refuses_changed_algorithm_key(tmp_path):
    """Resuming with a changed learning key fails naming the key and the stored value."""
    run(small_cfg("ppo", iters=2), run_dir=str(tmp_path / "r"))
    with pytest.raises(ConfigError, match=r"algo.lr=0.1.*stored value"):
        resume_config(str(tmp_path / "r"), ["algo.lr=0.1"])
    with pytest.raises(ConfigError, match="does not exist"):
        resume_config(str(tmp_path / "missing"), [])


def test_run_dir_not_overwritten(tmp_path):
    """A second fresh run into a directory holding checkpoints is refused."""
    run(small_cfg("ppo", iters=2), run_dir=str(tmp_path / "r"))
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        run(small_cfg("ppo", iters=2), run_dir=str(tmp_path / "r"))


def test_checkpoint_is_weights_only_and_atomic(tmp_path):
    """Checkpoints load with weights_only=True; a pickled payload is refused and never runs."""
    r = Runner(small_cfg("cpo", iters=2), str(tmp_path / "r"))
    r.step()
    path = r.save()
    payload = torch.load(path, weights_only=True)
    assert payload["runner"]["iteration"] == 1
    assert not [f for f in os.listdir(os.path.dirname(path)) if ".tmp." in f]

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "evil.pt"
    torch.save({"format": 1, "model": Evil()}, str(bad))
    with pytest.raises(ckpt.CheckpointError, match="not a weights-only checkpoint"):
        ckpt.load(str(bad))
    assert not marker.exists()
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a zip")
    with pytest.raises(ckpt.CheckpointError, match="cannot read"):
        ckpt.load(str(corrupt))


def test_keep_last_and_best(tmp_path):
    """Only the last k periodic checkpoints are kept, plus best.pt."""
    cfg = small_cfg("ppo", iters=12)
    cfg.log.ckpt_every, cfg.log.keep_last = 2, 2
    run(cfg, run_dir=str(tmp_path / "r"))
    names = sorted(os.listdir(tmp_path / "r" / "checkpoints"))
    assert names == ["best.pt", "ckpt_000010.pt", "ckpt_000012.pt"]


def test_nonfinite_env_stops_within_one_step_with_ids(tmp_path):
    """An env that returns NaN at step 13 (iteration 1, rollout step 5) stops the run at that
    step, naming the env ids and the quantity, after saving the state at the start of the
    iteration; that checkpoint loads and continues."""
    from cpo.runners.collect import NonFiniteError

    cfg = small_cfg("ppo", iters=3)
    cfg.env.name, cfg.env.params = "test_nan_line", {"nan_step": 13}
    r = Runner(cfg, str(tmp_path / "r"))
    r.step()
    good = params(r).clone()
    with pytest.raises(NonFiniteError, match=r"non-finite observation from env ids \[3, 7\] in iteration 2, "
                                             r"rollout step 4") as err:
        r.step()
    assert "last_good.pt" in str(err.value)
    payload = ckpt.load(str(tmp_path / "r" / "checkpoints" / "last_good.pt"))
    assert payload["runner"]["iteration"] == 1
    assert torch.equal(torch.cat([v.flatten() for k, v in payload["model"].items()
                                  if not k.startswith(("obs_rms", "value_rms"))]), good)
    assert torch.isfinite(payload["runner"]["obs"]).all()
    fresh = Runner(cfg, str(tmp_path / "r2"), resume_from=str(tmp_path / "r" / "checkpoints" / "last_good.pt"))
    assert fresh.iteration == 1 and torch.equal(fresh.obs, payload["runner"]["obs"])


def test_nonfinite_iteration_check_names_reward_or_obs(tmp_path):
    """With nonfinite_check=iteration the same failure is caught at the end of the rollout."""
    from cpo.runners.collect import NonFiniteError

    cfg = small_cfg("ppo", iters=3)
    cfg.env.name, cfg.env.params = "test_nan_line", {"nan_step": 3}
    cfg.nonfinite_check = "iteration"
    r = Runner(cfg, str(tmp_path / "r"))
    with pytest.raises(NonFiniteError, match=r"env ids \[3, 7\] in iteration 1"):
        r.step()


def test_nonfinite_reset_policy_continues_and_counts(tmp_path):
    """nonfinite=reset resets the offending envs, keeps every stored number finite, trains on,
    and counts the resets: injections at env steps 2, 9 and 16 (2 envs each) fall one in the
    first 8-step rollout and two in the second."""
    cfg = small_cfg("sapg", iters=3)
    cfg.env.name, cfg.env.params = "test_nan_line", {"nan_step": 2, "nan_every": 7}
    cfg.nonfinite = "reset"
    r = Runner(cfg, str(tmp_path / "r"))
    out = r.step()
    assert out["perf/nonfinite_resets"] == 2
    for name in ("obs", "final_obs", "rewards", "values", "logp"):
        assert torch.isfinite(getattr(r.storage, name)).all(), name
    out = r.step()
    assert out["perf/nonfinite_resets"] == 2 * 3
    assert all(math.isfinite(out[k]) for k in ("losses/policy", "losses/value"))


def test_eval_and_export(tmp_path):
    """eval rebuilds the policy from the run dir alone; the TorchScript export matches it."""
    from cpo.tools.evaluation import evaluate, export_torchscript, find_checkpoint, load_policy

    run(small_cfg("sapg", iters=2), run_dir=str(tmp_path / "r"))
    model, cfg = load_policy(find_checkpoint(str(tmp_path / "r"), "latest"))
    res = evaluate(model, cfg, episodes=16)
    assert res["episodes"] == 16 and "success_rate" in res
    path = export_torchscript(model, str(tmp_path / "policy.pt"))
    scripted = torch.jit.load(path)
    obs = torch.randn(5, model.obs_dim)
    pol = torch.zeros(5, dtype=torch.long)
    assert torch.allclose(scripted(obs), model.mean_action(obs, pol).clamp(-1, 1), atol=1e-6)


def test_lstm_policy_trains_resumes_and_exports(tmp_path):
    """An LSTM front end (paper: Kuka tasks) works through collect, CPO update, exact resume,
    evaluation and export."""
    from cpo.tools.evaluation import evaluate, export_torchscript, find_checkpoint, load_policy

    def cfg(iters):
        c = small_cfg("cpo", iters=iters)
        c.net.rnn_hidden = 16
        c.log.tensorboard = False
        return c

    a = Runner(cfg(4), str(tmp_path / "a"))
    a.train()
    run(cfg(2), run_dir=str(tmp_path / "b"))
    cfg_b, path = resume_config(str(tmp_path / "b"), ["max_iterations=4"])
    b = Runner(cfg_b, str(tmp_path / "b"), resume_from=path)
    b.train()
    assert torch.equal(params(a), params(b))
    assert torch.equal(a.rnn_state[0], b.rnn_state[0])
    assert a.last_stats["losses/value"] > 0 and "diversity/ess/overall" in a.last_stats
    model, c = load_policy(find_checkpoint(str(tmp_path / "b"), "latest"))
    assert model.is_recurrent
    res = evaluate(model, c, episodes=8)
    assert res["episodes"] == 8
    scripted = torch.jit.load(export_torchscript(model, str(tmp_path / "lstm.pt")))
    obs = torch.randn(3, model.obs_dim)
    h = torch.zeros(3, 16)
    act, h2, c2 = scripted.step(obs, h, h.clone())
    base, _ = model.encode_step(obs, (h, h.clone()))
    ref = model.mean_base(base, torch.zeros(3, dtype=torch.long)).clamp(-1, 1)
    assert torch.allclose(act, ref, atol=1e-6)


def test_lstm_minibatches_cover_every_row_once(tmp_path):
    """Recurrent minibatching by env columns visits every row of the batch exactly once per
    epoch and gives each row the features of its own (time, env) position."""
    c = small_cfg("cpo", iters=1)
    c.net.rnn_hidden = 8
    r = Runner(c, str(tmp_path / "r"))
    r.collect()
    batch = r.learner.build_batch(r.storage)
    feats, _ = r.model.encode_seq(r.storage.obs[:-1], (r.storage.h0, r.storage.c0),
                                  r.storage.terminated | r.storage.truncated)
    seen = []
    N = r.storage.num_envs
    with torch.no_grad():
        for idx, base, _ in r.learner._minibatches(r.storage, batch):
            src = batch.src[idx]
            assert torch.allclose(base, feats[src // N, src % N], atol=1e-6)
            seen.append(idx)
    seen = torch.cat(seen).sort().values
    assert torch.equal(seen, torch.arange(batch.src.numel()))


def test_missing_cuda_device_fails_before_anything_is_built(tmp_path, monkeypatch):
    """device=cuda (or an index past the last GPU) on a machine without it is a config error
    naming the key, raised before the env or model exist (nothing is written to the run dir)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = small_cfg()
    cfg.device = "cuda"
    with pytest.raises(ConfigError, match=r"device='cuda': no CUDA device is available here"):
        Runner(cfg, str(tmp_path / "a"))
    assert not (tmp_path / "a").exists() or not os.listdir(tmp_path / "a")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cfg.device = "cuda:2"
    with pytest.raises(ConfigError, match=r"device='cuda:2': this machine has 2 CUDA device\(s\), indices 0\.\.1"):
        Runner(cfg, str(tmp_path / "b"))


def test_runner_needs_no_hydra(tmp_path):
    """Building and stepping a Runner from a TrainConfig imports neither Hydra nor cpo.app
    (library use, benchmarks): checked in a fresh interpreter."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from cpo.utils.config import TrainConfig, validate\n"
        "from cpo.runners.runner import Runner\n"
        "c = TrainConfig(); c.env.name, c.env.num_envs = 'cartpole', 12\n"
        "c.algo.name, c.algo.num_policies, c.device = 'ppo', 1, 'cpu'\n"
        "c.log.tensorboard = c.log.progress = False\n"
        "validate(c)\n"
        f"Runner(c, {str(tmp_path)!r}).step()\n"
        "print(sorted(m for m in ('hydra', 'cpo.app') if m in sys.modules))\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
