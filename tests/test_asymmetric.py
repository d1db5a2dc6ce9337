"""Asymmetric critic: the critic reads the env's privileged observation, the actors the policy
observation (envs/base.py "Asymmetric observations"). Hand-computed critic values, truncation
bootstrap from ``final_privileged``, the runner's storage, exact resume, LSTM, eval/export."""
from __future__ import annotations

import dataclasses
import shutil
from typing import Dict, Tuple

import gymnasium as gym
import numpy as np
import pytest
import torch

from cpo.app import resume_config, run
from cpo.utils.config import AlgoConfig, ConfigError, TrainConfig
from cpo.tools.evaluation import evaluate, export_torchscript, find_checkpoint, load_policy
from cpo.algo.learner import Learner
from cpo.models.ensemble import EnsembleActorCritic
from cpo.algo.rollout import Rollout
from cpo.runners.runner import Runner
from envs import registry
from tests.fakes import LineParams, LineTask

CPU = torch.device("cpu")


class PrivLineTask(LineTask):
    """``LineTask`` seen through a keyhole: the policy observes only the first coordinate of
    the state; the privileged (critic) observation is the whole true state plus the elapsed
    fraction of the time limit, ``[x_1, ..., x_dim, t / max_episode_steps]`` (noise-free)."""

    def __init__(self, num_envs: int, device="cpu", seed: int = 0, max_episode_steps: int = 20,
                 dim: int = 2) -> None:
        super().__init__(num_envs, device, seed, max_episode_steps, dim)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.privileged_dim = dim + 1
        self._next = self.state

    def observe(self, state: torch.Tensor) -> torch.Tensor:
        return state[:, :1].clone()

    def dynamics(self, state, action):
        out = super().dynamics(state, action)
        self._next = out[0]  # the pre-reset state of this step, for final_privileged
        return out

    def _priv(self, state: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([state, (t.float() / self.max_episode_steps).unsqueeze(-1)], dim=-1)

    def privileged(self) -> torch.Tensor:
        return self._priv(self.state, self.t)

    def step(self, action):
        t_before = self.t.clone()
        obs, reward, term, trunc, info = super().step(action)
        priv = self.privileged()
        final = self._priv(self._next, t_before + 1)  # equals priv where no episode ended
        info["privileged"] = priv
        info["final_privileged"] = torch.where((term | trunc).unsqueeze(-1), final, priv)
        return obs, reward, term, trunc, info


registry.register("test_priv_line", registry.TaskSpec(
    factory=PrivLineTask, params=LineParams, max_episode_steps=20, solved_return=-3.0,
    description="test-only line task with a partial policy observation and a privileged critic"))


def small_cfg(algo: str = "ppo", iters: int = 3, seed: int = 0, rnn: int = 0) -> TrainConfig:
    """A fast config on ``test_priv_line`` (time limit 5 so that truncations happen)."""
    cfg = TrainConfig(seed=seed, device="cpu", max_iterations=iters, torch_threads=1)
    cfg.env.name, cfg.env.num_envs, cfg.env.max_episode_steps = "test_priv_line", 48, 5
    cfg.algo.horizon, cfg.algo.num_minibatches, cfg.algo.num_epochs = 8, 2, 2
    cfg.net.actor_hidden, cfg.net.critic_hidden, cfg.net.rnn_hidden = [16, 16], [16, 16], rnn
    cfg.log.progress, cfg.log.ckpt_every, cfg.log.heatmap_every = False, 2, 2
    cfg.log.diag_samples, cfg.log.tensorboard = 64, False
    if algo != "ppo":
        cfg.algo.name, cfg.algo.num_policies, cfg.algo.entropy_scale = algo, 6, 0.005
    if algo == "cpo":
        cfg.algo.beta, cfg.algo.lambda_f, cfg.algo.lambda_adv = 1e-3, 0.2, 0.01
        cfg.algo.disc_batch, cfg.algo.disc_hidden = 64, [16]
    return cfg


# ---- the env side of the contract ------------------------------------------------------
def test_test_env_honours_the_privileged_contract():
    """info["privileged"] is env.privileged(); final_privileged is the pre-reset critic view."""
    env = PrivLineTask(6, max_episode_steps=3)
    obs = env.reset(seed=1)
    assert obs.shape == (6, 1) and env.privileged().shape == (6, 3)
    assert torch.equal(env.privileged()[:, :2], env.state) and torch.all(env.privileged()[:, 2] == 0)
    for step in range(1, 4):
        state_before = env.state.clone()
        obs, _, term, trunc, info = env.step(torch.zeros(6, 2))  # zero action: x' = x
        assert torch.equal(info["privileged"], env.privileged())
        assert not term.any()
    # step 3 hit the time limit: every env truncated and reset
    assert trunc.all()
    assert torch.equal(info["final_privileged"][:, :2], state_before)
    assert torch.all(info["final_privileged"][:, 2] == 1.0)  # t = 3 of 3
    assert torch.all(info["privileged"][:, 2] == 0.0)  # the next episode's first step
    assert torch.equal(info["final_obs"][:, 0], info["final_privileged"][:, 0])


# ---- the model ---------------------------------------------------------------------------
def hand_model() -> EnsembleActorCritic:
    """obs_dim 1, privileged_dim 3, latent 1, critic Linear(4, 1) -> ReLU -> Linear(1, 1)."""
    m = EnsembleActorCritic(1, 1, num_policies=2, latent_dim=1, actor_hidden=[4], critic_hidden=[1],
                            activation="relu", normalize_value=False, privileged_dim=3)
    with torch.no_grad():
        m.latents.copy_(torch.tensor([[0.0], [1.0]]))
        m.critic[0].weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 10.0]]))
        m.critic[0].bias.zero_()
        m.critic[2].weight.fill_(2.0)
        m.critic[2].bias.fill_(0.5)
        m.priv_rms.mean.fill_(1.0)
        m.priv_rms.var.fill_(4.0)
    return m


def test_critic_input_is_the_privileged_observation():
    """V(priv) by hand: normalised priv = (priv - 1) / 2 = [1, 2, 0];
    pre-activation 1*1 + 2*2 + 3*0 + 10*phi = 5 (phi_0 = 0) or 15 (phi_1 = 1);
    V = 2 * relu(.) + 0.5 = 10.5 and 30.5."""
    m = hand_model()
    assert m.critic[0].in_features == 3 + 1 and m.actor_trunk[0].in_features == 1 + 1
    priv = torch.tensor([[3.0, 5.0, 1.0], [3.0, 5.0, 1.0]])
    pol = torch.tensor([0, 1])
    expected = torch.tensor([10.5, 30.5])
    assert torch.allclose(m.value(priv, pol), expected, atol=1e-5)
    # the policy observation does not enter the critic, but does enter the actor
    mu_a, _, v_a = m(torch.tensor([[0.3], [0.3]]), pol, critic_obs=priv)
    mu_b, _, v_b = m(torch.tensor([[-2.0], [-2.0]]), pol, critic_obs=priv)
    assert torch.allclose(v_a, expected, atol=1e-5) and torch.equal(v_a, v_b)
    assert not torch.allclose(mu_a, mu_b)
    _, _, _, v_act = m.act(torch.zeros(2, 1), pol, critic_obs=priv)
    assert torch.allclose(v_act, expected, atol=1e-5)
    _, _, _, v_none = m.act(torch.zeros(2, 1), pol)  # acting for evaluation: no critic input
    assert torch.equal(v_none, torch.zeros(2))
    with pytest.raises(RuntimeError, match="critic_base"):
        m.heads(m.embed(torch.zeros(2, 1)), pol)
    # the critic's own normaliser: a state dict key only asymmetric models have
    assert "priv_rms.mean" in m.state_dict()
    assert "priv_rms.mean" not in EnsembleActorCritic(1, 1).state_dict()


def test_asymmetric_critic_needs_a_separate_critic(tmp_path):
    cfg = small_cfg()
    cfg.net.separate_critic = False
    with pytest.raises(ConfigError, match=r"net\.separate_critic=False.*privileged_dim=3"):
        Runner(cfg, str(tmp_path))


# ---- targets -----------------------------------------------------------------------------
def test_truncation_bootstraps_from_final_privileged():
    """lambda = 0: every value target is r + gamma * (1 - term) * V_pol(s'), with s' =
    final_privileged on truncated steps and privileged[t + 1] otherwise, for on-policy rows
    (own critic) and off-policy rows (follower block relabelled with the leader's critic)."""
    torch.manual_seed(0)
    T, N, M, gamma = 2, 4, 2, 0.9
    model = EnsembleActorCritic(1, 1, num_policies=M, latent_dim=2, actor_hidden=[8],
                                critic_hidden=[8], privileged_dim=3, seed=3)
    model.priv_rms.update(torch.randn(64, 3))
    model.value_rms.update(torch.randn(64) * 3)
    cfg = AlgoConfig(num_policies=M, offpolicy_blocks="1", beta=0.0, gamma=gamma, gae_lambda=0.0,
                     horizon=T, num_minibatches=1)
    learner = Learner(model, cfg, N, CPU, max_iterations=10)
    ro = Rollout.empty(T, N, 1, 1, M, CPU, privileged_dim=3)
    ro.obs.normal_()
    ro.privileged.normal_()
    ro.final_privileged.copy_(ro.privileged[1:])
    ro.truncated[0, 1] = ro.truncated[0, 3] = True  # a leader env and a follower env
    ro.final_privileged[0, 1] = torch.tensor([4.0, -3.0, 1.0])
    ro.final_privileged[0, 3] = torch.tensor([-2.0, 5.0, 1.0])
    ro.terminated[1, 0] = True
    ro.rewards.normal_()
    pol_env = torch.arange(N) // (N // M)
    with torch.no_grad():
        ro.values.copy_(model.value(ro.privileged[:-1].reshape(T * N, 3), pol_env.repeat(T)).view(T, N))
    batch = learner.build_batch(ro)
    t, n, p = batch.src // N, batch.src % N, batch.pol
    s_next = torch.where(ro.truncated[t, n].unsqueeze(-1), ro.final_privileged[t, n], ro.privileged[t + 1, n])
    with torch.no_grad():
        expected = ro.rewards[t, n] + gamma * (~ro.terminated[t, n]).float() * model.value(s_next, p)
        naive = ro.rewards[t, n] + gamma * (~ro.terminated[t, n]).float() * model.value(ro.privileged[t + 1, n], p)
    assert (batch.is_ppo > 0).all() and batch.src.numel() == T * N + T * (N // M)  # on- and off-policy rows
    assert torch.allclose(batch.ret, expected, atol=1e-5)
    trunc_rows = ro.truncated[t, n]
    assert int(trunc_rows.sum()) == 3  # (0, 1) on-policy, (0, 3) on-policy and off-policy
    assert ((batch.ret - naive).abs()[trunc_rows] > 1e-3).all()  # the final obs really matters
    assert torch.equal(batch.v_old[:T * N], ro.values.reshape(-1))


# ---- the runner ----------------------------------------------------------------------------
def test_runner_stores_privileged_and_the_critic_reads_it(tmp_path):
    r = Runner(small_cfg("sapg"), str(tmp_path))
    assert r.model.asymmetric and r.model.priv_rms.count == 48
    ro = r.storage
    sums = r.collect()
    T, N = ro.horizon, ro.num_envs
    assert ro.privileged.shape == (T + 1, N, 3) and ro.final_privileged.shape == (T, N, 3)
    assert int(sums["count"].sum()) > 0 and bool(ro.truncated.any())  # time limit 5 < T = 8
    with torch.no_grad():
        v = r.model.value(ro.privileged[:-1].reshape(T * N, 3), r.pol_env.repeat(T)).view(T, N)
    assert torch.allclose(ro.values, v, atol=1e-6)
    # the policy obs is the first privileged coordinate; non-finished rows continue from final
    assert torch.equal(ro.obs[:, :, 0], ro.privileged[:, :, 0])
    done = ro.terminated | ro.truncated
    assert torch.equal(ro.final_privileged[~done], ro.privileged[1:][~done])
    assert torch.all(ro.final_privileged[ro.truncated][:, 2] == 1.0)  # t = 5 of 5
    assert torch.equal(ro.privileged[-1], r.priv)
    r.step()  # collect() alone updates no statistics; step() folds in its own rollout once
    assert float(r.model.priv_rms.count) == 48 + T * N


def params(runner) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in runner.model.parameters()])


def test_exact_resume_asymmetric(tmp_path):
    """2K straight == K, stop, resume, K more (CPO: coupling rows and discriminator too),
    including the privileged normaliser and the runner's current privileged observation."""
    K = 2
    a = Runner(small_cfg("cpo", iters=2 * K), str(tmp_path / "a"))
    a.train()
    run(small_cfg("cpo", iters=K), run_dir=str(tmp_path / "b"))
    cfg_b, path = resume_config(str(tmp_path / "b"), [f"max_iterations={2 * K}"])
    b = Runner(cfg_b, str(tmp_path / "b"), resume_from=path)
    assert b.iteration == K
    b.train()
    assert torch.equal(params(a), params(b))
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert set(sa) == set(sb) and "priv_rms.var" in sa
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert torch.equal(a.priv, b.priv) and torch.equal(a.obs, b.obs)


def test_asymmetric_critic_with_lstm_front_end(tmp_path):
    """The LSTM encodes policy observations for the actors; the critic stays feed-forward on
    the privileged observation, so privileged + rnn trains and its values match V(priv)."""
    r = Runner(small_cfg("ppo", rnn=8), str(tmp_path))
    assert r.model.is_recurrent and r.model.critic[0].in_features == 3 + r.model.latent_dim
    before = [p.detach().clone() for p in r.model.critic.parameters()]
    r.collect()
    ro = r.storage
    T, N = ro.horizon, ro.num_envs
    with torch.no_grad():
        v = r.model.value(ro.privileged[:-1].reshape(T * N, 3), r.pol_env.repeat(T)).view(T, N)
    assert torch.allclose(ro.values, v, atol=1e-6)
    batch = r.learner.build_batch(ro)
    stats = r.learner.update(ro, batch)
    assert all(torch.isfinite(x) for x in stats.values())
    assert any(not torch.equal(p, q) for p, q in zip(before, r.model.critic.parameters()))


def test_eval_and_export_of_an_asymmetric_run(tmp_path):
    """Only the actor is used: eval.py's loader rebuilds the model (privileged critic
    included) and the exported module matches the actor's mean action."""
    run(small_cfg("ppo", iters=2), run_dir=str(tmp_path))
    model, cfg = load_policy(find_checkpoint(str(tmp_path), "latest"))
    assert model.asymmetric and cfg.env.name == "test_priv_line"
    res = evaluate(model, cfg, episodes=6, seed=3)
    assert res["episodes"] == 6 and np.isfinite(res["return_mean"])
    exported = torch.jit.load(export_torchscript(model, str(tmp_path / "policy.pt")))
    obs = torch.linspace(-1, 1, 5).unsqueeze(-1)
    with torch.no_grad():
        want = model.mean_action(obs, torch.zeros(5, dtype=torch.long)).clamp(-1, 1)
    assert torch.allclose(exported(obs), want, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_asymmetric_training_on_cuda(tmp_path):
    cfg = small_cfg("cpo", iters=2)
    cfg.device = "cuda"
    r = Runner(cfg, str(tmp_path))
    r.train()
    assert r.storage.privileged.device.type == "cuda" and r.priv.device.type == "cuda"
    assert r.model.priv_rms.mean.device.type == "cuda" and float(r.model.priv_rms.count) > 48


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile (inductor) needs a C compiler on CPU")
def test_compiled_rollout_step_with_a_privileged_critic(tmp_path):
    """perf.compile=policy now covers asymmetric models: the pure step takes the privileged
    observation as its fourth input. Same rollout (values read V(priv)) and parameters as the
    eager twin after 2 iterations, up to float reassociation."""
    torch._dynamo.reset()
    runs = []
    for tag, comp in (("eager", "none"), ("compiled", "policy")):
        cfg = small_cfg("sapg", iters=2)
        cfg.perf.compile = comp
        r = Runner(cfg, str(tmp_path / tag))
        r.train()
        runs.append(r)
    eager, comp = runs
    assert comp.model.asymmetric and comp._policy_step is not comp.model.policy_step
    for name in ("actions", "logp", "values", "privileged"):
        a, b = getattr(eager.storage, name), getattr(comp.storage, name)
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), name
    assert (params(eager) - params(comp)).abs().max().item() < 1e-4
