"""The fast paths (``perf.*``, cpo/models/fast.py) compute what eager computes.

Each switch trains a few iterations next to an eager twin from the same seed and compares the
parameters and the collected rollout. ``torch.compile`` and fused Adam may reassociate
floating-point sums, so they are compared within a tolerance; bf16 autocast within a looser
one. CUDA graphs are checked on a GPU only (skipped on CPU with the reason).
"""
from __future__ import annotations

import functools
import shutil

import pytest
import torch

from cpo.models import fast
from cpo.utils.config import ConfigError, TrainConfig, validate
from cpo.runners.runner import Runner
from tests.test_runner import params, small_cfg

HAS_COMPILER = shutil.which("cc") is not None or shutil.which("gcc") is not None


def twins(tmp_path, algo: str, iters: int, **perf):
    """Train an eager runner and one with ``perf`` overrides from the same seed; return both."""
    out = []
    for tag, over in (("eager", {}), ("fast", perf)):
        cfg = small_cfg(algo, iters=iters)
        cfg.log.tensorboard = False
        for key, val in over.items():
            setattr(cfg.perf, key, val)
        r = Runner(cfg, str(tmp_path / tag))
        for _ in range(iters):
            r.step()
        out.append(r)
    return out


@pytest.mark.skipif(not HAS_COMPILER, reason="torch.compile (inductor) needs a C compiler on CPU")
@pytest.mark.parametrize("algo", ["ppo", "cpo"])
def test_compile_matches_eager(tmp_path, algo):
    """perf.compile=all (rollout step and the whole minibatch loss compiled) gives the eager parameters
    and rollout after 2 iterations, up to float32 reassociation."""
    torch._dynamo.reset()
    eager, comp = twins(tmp_path, algo, iters=2, compile="all")
    # eager really is eager (the plain partial of minibatch_loss), the fast one is compiled
    assert isinstance(eager.learner.loss_fn, functools.partial)
    assert not isinstance(comp.learner.loss_fn, functools.partial)
    diff = (params(eager) - params(comp)).abs().max().item()
    assert diff < 1e-4, diff
    for name in ("actions", "logp", "values", "rewards"):
        a, b = getattr(eager.storage, name), getattr(comp.storage, name)
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-3), name


def test_fused_adam_matches_eager(tmp_path):
    """perf.fused_adam=true (fused kernel on CPU) takes the same Adam steps as the for-loop one."""
    eager, fused = twins(tmp_path, "sapg", iters=3, fused_adam=True)
    assert fused.learner.optimizer.defaults["fused"] is True
    assert not eager.learner.optimizer.defaults["fused"]
    diff = (params(eager) - params(fused)).abs().max().item()
    assert diff < 1e-5, diff


def test_bf16_autocast_close_to_eager(tmp_path):
    """algo.mixed_precision=bf16 runs the update's forward in bfloat16: one update moves the
    parameters like the float32 one, to bf16 precision (relative error of the step < 5 %)."""
    start = small_cfg("ppo", iters=1)
    start.log.tensorboard = False
    init = params(Runner(start, str(tmp_path / "init")))
    steps = []
    for tag, mp in (("f32", "none"), ("bf16", "bf16")):
        cfg = small_cfg("ppo", iters=1)
        cfg.log.tensorboard = False
        cfg.algo.mixed_precision = mp
        cfg.algo.num_epochs, cfg.algo.num_minibatches = 1, 1  # one gradient step
        r = Runner(cfg, str(tmp_path / tag))
        r.step()
        steps.append(params(r) - init)
    rel = ((steps[0] - steps[1]).norm() / steps[0].norm()).item()
    assert 0.0 < rel < 0.05, rel


def test_switches_validate():
    """Bad fast-path settings fail before compute, naming key, value and rule."""
    cfg = TrainConfig(device="cpu")
    cfg.perf.compile = "everything"
    with pytest.raises(ConfigError, match=r"perf.compile='everything'.*none, policy, update or all"):
        validate(cfg)
    cfg = TrainConfig(device="cpu")
    cfg.perf.cuda_graphs = True
    with pytest.raises(ConfigError, match=r"perf.cuda_graphs=True.*CUDA device"):
        validate(cfg)
    cfg = TrainConfig(device="cuda")
    cfg.perf.cuda_graphs, cfg.net.rnn_hidden = True, 32
    with pytest.raises(ConfigError, match=r"perf.cuda_graphs=True.*feed-forward"):
        validate(cfg)


def test_fused_default_follows_device():
    """fused Adam defaults to on for CUDA and off for CPU; an explicit value wins."""
    cfg = TrainConfig().perf
    assert fast.use_fused_adam(cfg, torch.device("cuda")) is True
    assert fast.use_fused_adam(cfg, torch.device("cpu")) is False
    cfg.fused_adam = True
    assert fast.use_fused_adam(cfg, torch.device("cpu")) is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("compile_mode", ["none", "policy"])
def test_cuda_graph_policy_step_matches_eager(tmp_path, compile_mode):
    """The captured rollout step replays to the eager step's outputs on fresh inputs, and
    sees in-place parameter updates (the optimiser's) without re-capture."""
    cfg = small_cfg("cpo", iters=2)
    cfg.device, cfg.log.tensorboard = "cuda", False
    r = Runner(cfg, str(tmp_path / "g"))
    step = fast.GraphedStep(fast.compiled(r.model.policy_step, compile_mode == "policy"))
    gen = torch.Generator(device="cuda").manual_seed(0)
    for it in range(3):
        obs = torch.randn(r.env.num_envs, r.env.obs_dim, device="cuda", generator=gen)
        eps = r.model.noise(r.env.num_envs, gen)
        ref = r.model.policy_step(obs, r.pol_env, eps)
        got = step(obs, r.pol_env, eps)
        for a, b in zip(ref, got):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
        r.step()  # parameters change in place between replays


@pytest.mark.skipif(not HAS_COMPILER, reason="torch.compile (inductor) needs a C compiler on CPU")
def test_whole_update_step_compiled_matches_eager(tmp_path):
    """perf.update_step=compile (forward, backward, clip, Adam, KL reference and statistics in
    one compiled function) gives the eager parameters, LR and loss statistics after 2 CPO
    iterations up to float32 reassociation; every minibatch went through the compiled step
    (the test config's rows split evenly)."""
    torch._dynamo.reset()
    eager, comp = twins(tmp_path, "cpo", iters=2, update_step="compile")
    assert eager.learner.whole_step is None and comp.learner.whole_step.shape is not None
    diff = (params(eager) - params(comp)).abs().max().item()
    assert diff < 1e-4, diff
    assert float(eager.learner.lr) == pytest.approx(float(comp.learner.lr), rel=1e-4)
    for key in ("losses/policy", "losses/value", "losses/coupling", "losses/approx_kl"):
        assert eager.last_stats[key] == pytest.approx(comp.last_stats[key], rel=1e-3, abs=1e-6), key
    torch._dynamo.config.compiled_autograd = False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_whole_update_step_cuda_graph_matches_eager(tmp_path):
    """perf.update_step=cuda_graph: two eager warm-up steps, one capture, replays; the
    parameters after 3 CPO iterations match eager's within float32 tolerance."""
    out = []
    for tag, mode in (("eager", "eager"), ("graph", "cuda_graph")):
        cfg = small_cfg("cpo", iters=3)
        cfg.device, cfg.log.tensorboard, cfg.perf.update_step = "cuda", False, mode
        r = Runner(cfg, str(tmp_path / tag))
        for _ in range(3):
            r.step()
        out.append(r)
    assert out[1].learner.whole_step.graph is not None
    diff = (params(out[0]) - params(out[1])).abs().max().item()
    assert diff < 1e-4, diff
