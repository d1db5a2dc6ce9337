"""PBT with an asymmetric critic (cpo/runners/pbt.py, cpo/models/stacked.py): a stacked member's privileged
critic against a standalone one-policy EnsembleActorCritic, the truncation bootstrap from
``final_privileged`` by hand, a short run that checkpoints, resumes exactly and evaluates, and
an exploit copying the critic and its privileged normaliser."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import eval as eval_cli
from cpo.utils import checkpoint as ckpt
from cpo.app import resume_config, run
from cpo.utils.config import ConfigError, TrainConfig, validate
from cpo.tools.evaluation import select_policy
from cpo.models.ensemble import EnsembleActorCritic
from cpo.runners.pbt import PBTLearner, PBTRunner, checkpoint_policy, member_policy
from cpo.algo.rollout import Rollout
from cpo.models.stacked import StackedActorCritic, StackedLinear, to_members
from tests.test_asymmetric import PrivLineTask  # noqa: F401  (registers test_priv_line)
from tests.test_pbt import _set_scores

CPU = torch.device("cpu")


def priv_cfg(iters: int = 4, population: int = 3) -> TrainConfig:
    """PBT on ``test_priv_line`` (policy obs 1-d, privileged obs 3-d, actions 2-d): 48 envs,
    T = 8, a time limit of 5 so that truncations happen, a round every two iterations."""
    cfg = TrainConfig(seed=0, device="cpu", max_iterations=iters, torch_threads=1)
    cfg.env.name, cfg.env.num_envs, cfg.env.max_episode_steps = "test_priv_line", 48, 5
    cfg.algo.name, cfg.algo.lr_schedule, cfg.algo.entropy_coef = "pbt", "fixed", 1e-3
    cfg.algo.horizon, cfg.algo.num_minibatches, cfg.algo.num_epochs = 8, 2, 2
    cfg.net.actor_hidden, cfg.net.critic_hidden = [16, 16], [16, 16]
    cfg.log.progress, cfg.log.ckpt_every, cfg.log.tensorboard = False, 2, False
    cfg.pbt.population, cfg.pbt.interval_steps, cfg.pbt.score_window = population, 2 * 8 * 48, 2
    return cfg


# ---------------------------------------------------------------------------- (1) the model
def _standalone(model: StackedActorCritic, p: int) -> EnsembleActorCritic:
    """Member ``p`` copied by hand into EnsembleActorCritic(M=1, latent_dim=0, privileged_dim)."""
    net = EnsembleActorCritic(model.obs_dim, model.act_dim, num_policies=1, latent_dim=0,
                              actor_hidden=[16, 16], critic_hidden=[16, 16],
                              privileged_dim=model.privileged_dim)
    pairs = [(net.actor_trunk, model.actor), (net.critic, model.critic)]
    with torch.no_grad():
        for dst, src in pairs:
            mine = [m for m in dst if isinstance(m, nn.Linear)]
            theirs = [m for m in src if isinstance(m, StackedLinear)]
            assert len(mine) == len(theirs)
            for lin, st in zip(mine, theirs):
                lin.weight.copy_(st.weight[p].t())
                lin.bias.copy_(st.bias[p, 0])
        net.mu_head[0].weight.copy_(model.mu_head.weight[p].t())
        net.mu_head[0].bias.copy_(model.mu_head.bias[p, 0])
        net.log_std.copy_(model.log_std[p:p + 1])
        for name in ("obs_rms", "value_rms", "priv_rms"):
            for k in ("mean", "var", "count"):
                getattr(getattr(net, name), k).copy_(getattr(getattr(model, name), k)[p])
    return net


def _stacked_priv_model() -> StackedActorCritic:
    gen = torch.Generator().manual_seed(0)
    model = StackedActorCritic(1, 2, 3, [16, 16], [16, 16], member_seeds=[4, 5, 6], privileged_dim=3)
    model.obs_rms.update(torch.randn(4, 48, 1, generator=gen) * 2.0)
    model.priv_rms.update(torch.randn(4, 48, 3, generator=gen) * 3.0 + 1.0)
    model.value_rms.update(torch.randn(4, 48, generator=gen) * 5.0)
    return model


def test_stacked_member_critic_equals_standalone_asymmetric_network():
    """Member p's mu and value (privileged critic, own priv_rms) equal a one-policy
    EnsembleActorCritic with its weights on the same inputs, and so do the gradients of a
    loss on both; the policy observation never enters the value."""
    model = _stacked_priv_model()
    assert model.asymmetric and tuple(model.critic[0].weight.shape) == (3, 3, 16)
    assert tuple(model.actor[0].weight.shape) == (3, 1, 16)
    gen = torch.Generator().manual_seed(1)
    obs = torch.randn(3, 10, 1, generator=gen)
    priv = torch.randn(3, 10, 3, generator=gen) * 2.0
    target = torch.randn(3, 10, generator=gen)
    mu, _, v = model.heads(model.embed(obs), critic_x=model.embed_critic(priv))
    loss = ((v - target).pow(2).sum(1) + mu.pow(2).sum((1, 2))).sum()  # members' losses add up
    model.zero_grad()
    loss.backward()
    pol = torch.zeros(10, dtype=torch.long)
    for p in range(3):
        net = _standalone(model, p)
        mu_n, _, v_n = net(obs[p], pol, critic_obs=priv[p])
        assert torch.allclose(mu_n, mu[p], atol=1e-6) and torch.allclose(v_n, v[p], atol=1e-5)
        with torch.no_grad():
            assert torch.allclose(net.value(priv[p], pol), model.value(priv)[p], atol=1e-5)
        ((v_n - target[p]).pow(2).sum() + mu_n.pow(2).sum()).backward()
        for lin, st in zip([m for m in net.critic if isinstance(m, nn.Linear)],
                           [m for m in model.critic if isinstance(m, StackedLinear)]):
            assert torch.allclose(lin.weight.grad, st.weight.grad[p].t(), atol=1e-5)
            assert torch.allclose(lin.bias.grad, st.bias.grad[p, 0], atol=1e-5)
        assert torch.allclose(net.actor_trunk[0].weight.grad, model.actor[0].weight.grad[p].t(), atol=1e-5)
        # member_policy gives the same network (eval.py's path)
        mp = member_policy(priv_cfg(), model, p)
        with torch.no_grad():
            assert torch.allclose(mp.value(priv[p], pol), model.value(priv)[p], atol=1e-5)
            assert torch.allclose(mp.mean_action(obs[p], pol), model.mean_action(obs)[p], atol=1e-6)
    with torch.no_grad():  # the value reads privileged observations only
        _, _, v2 = model.heads(model.embed(obs * 5.0 - 1.0), critic_x=model.embed_critic(priv))
    assert torch.equal(v2, v.detach())
    # acting: value from critic_obs (env order), 0 without it (evaluation)
    eps = torch.zeros(30, 2)
    env_obs, env_priv = obs.reshape(30, 1), priv.reshape(30, 3)
    _, _, _, val = model.policy_step(env_obs, torch.arange(30) // 10, eps, critic_obs=env_priv)
    assert torch.allclose(val, model.value(priv).detach().reshape(30), atol=1e-6)
    _, _, _, val0 = model.policy_step(env_obs, torch.arange(30) // 10, eps)
    assert torch.equal(val0, torch.zeros(30))


def test_stacked_asymmetric_keys_and_errors():
    """priv_rms exists only for asymmetric models (symmetric checkpoints keep their keys);
    a shared value head or a missing critic input is refused with a message saying why."""
    sym = StackedActorCritic(1, 2, 2, [8], [8])
    assert "priv_rms.mean" not in sym.state_dict() and not sym.asymmetric
    asym = StackedActorCritic(1, 2, 2, [8], [8], privileged_dim=3)
    assert set(asym.state_dict()) - set(sym.state_dict()) == {"priv_rms.mean", "priv_rms.var", "priv_rms.count"}
    with pytest.raises(ValueError, match=r"^an asymmetric critic \(privileged_dim=3\) needs separate_critic=True"):
        StackedActorCritic(1, 2, 2, [8], [8], separate_critic=False, privileged_dim=3)
    with pytest.raises(RuntimeError, match="an asymmetric critic needs critic_x"):
        asym.heads(asym.embed(torch.zeros(2, 4, 1)))
    with pytest.raises(RuntimeError, match="embed_critic needs a model built with privileged_dim > 0"):
        sym.embed_critic(torch.zeros(2, 4, 3))


def test_pbt_needs_a_separate_critic_for_privileged_obs(tmp_path):
    cfg = priv_cfg()
    cfg.net.separate_critic = False
    validate(cfg)  # the env's privileged_dim is known only once it is built
    with pytest.raises(ConfigError, match=r"^net\.separate_critic=False: env 'test_priv_line' .*privileged_dim=3"):
        PBTRunner(cfg, str(tmp_path / "r"))


# ---------------------------------------------------------------------------- (2) targets
def _hand_learner() -> PBTLearner:
    """2 members, 1 env each; no normalisers; member critics V0(x) = relu(x1 + 2 x2) and
    V1(x) = 3 relu(x2) + 1 on privileged x = [x1, x2]."""
    cfg = priv_cfg(population=2)
    cfg.env.num_envs = 2
    cfg.algo.normalize_advantage = False
    model = StackedActorCritic(1, 1, 2, [2], [1], activation="relu", normalize_obs=False,
                               normalize_value=False, privileged_dim=2)
    with torch.no_grad():
        model.critic[0].weight.copy_(torch.tensor([[[1.0], [2.0]], [[0.0], [1.0]]]))  # [P, in, out]
        model.critic[0].bias.zero_()
        model.critic[2].weight.copy_(torch.tensor([[[1.0]], [[3.0]]]))
        model.critic[2].bias.copy_(torch.tensor([[[0.0]], [[1.0]]]))
    learner = PBTLearner(model, cfg, [0, 1], CPU)
    learner.hp["gamma"].copy_(torch.tensor([0.5, 0.9]))
    learner.hp["gae_lambda"].copy_(torch.tensor([0.5, 0.0]))
    return learner


def test_truncated_step_bootstraps_from_final_privileged_by_hand():
    """Member 0 (gamma = lambda = 0.5): privileged [1, 0], [0, 1], [2, 1] -> V = 1, 2, 4;
    step 0 truncated with final_privileged [3, 1] -> V = 5; rewards 1, 2:
    d0 = 1 + 0.5 * 5 - 1 = 2.5, d1 = 2 + 0.5 * 4 - 2 = 2; A = [2.5, 2] (the truncation cuts
    the trace), returns [3.5, 4]. Bootstrapping from privileged[1] instead would give d0 = 1.
    Member 1 (gamma 0.9, lambda 0): privileged [5, 1], [0, 2], [0, -1] -> V = 4, 7, 1; step 1
    terminated; rewards -1, 0.5: A = [-1 + 0.9 * 7 - 4, 0.5 - 7] = [1.3, -6.5], returns
    [5.3, 0.5]."""
    learner = _hand_learner()
    ro = Rollout.empty(2, 2, 1, 1, 2, CPU, privileged_dim=2)
    ro.privileged.copy_(torch.tensor([[[1.0, 0.0], [5.0, 1.0]], [[0.0, 1.0], [0.0, 2.0]],
                                      [[2.0, 1.0], [0.0, -1.0]]]))
    ro.final_privileged.copy_(ro.privileged[1:])
    ro.final_privileged[0, 0] = torch.tensor([3.0, 1.0])
    ro.final_privileged[1, 1] = torch.tensor([9.0, 9.0])  # terminated: never read
    ro.truncated[0, 0] = True
    ro.terminated[1, 1] = True
    ro.rewards.copy_(torch.tensor([[1.0, -1.0], [2.0, 0.5]]))
    ro.obs.normal_()  # the policy observation never enters the critic
    ro.final_obs.normal_()
    with torch.no_grad():
        values = learner.model.value(to_members(ro.privileged[:-1], 2))
    assert torch.allclose(values, torch.tensor([[1.0, 2.0], [4.0, 7.0]]))
    ro.values.copy_(values.t())  # B = 1: member order [P, T] is env order transposed
    batch = learner.build_batch(ro)
    assert torch.allclose(batch.adv, torch.tensor([[2.5, 2.0], [1.3, -6.5]]), atol=1e-5)
    assert torch.allclose(batch.ret, torch.tensor([[3.5, 4.0], [5.3, 0.5]]), atol=1e-5)
    assert torch.equal(batch.critic_obs, to_members(ro.privileged[:-1], 2))
    # no final observation from the env: V(s_t) stands in, d0 = 1 + 0.5 * 1 - 1 = 0.5
    batch = learner.build_batch(ro, has_final_obs=False)
    assert float(batch.adv[0, 0]) == pytest.approx(0.5, abs=1e-6)


def test_pbt_rollout_stores_privileged_and_values_read_it(tmp_path):
    """The runner's collection path fills privileged / final_privileged for PBT; the stored
    values are each member's V(privileged); priv_rms counts each member's block."""
    r = PBTRunner(priv_cfg(), str(tmp_path / "r"))
    assert r.model.asymmetric and r.model.priv_rms.count.tolist() == [16.0, 16.0, 16.0]
    r.collect()
    ro = r.storage
    T, N = ro.horizon, ro.num_envs
    assert ro.privileged.shape == (T + 1, N, 3) and bool(ro.truncated.any())
    with torch.no_grad():
        v = r.model.value(to_members(ro.privileged[:-1], 3))
    assert torch.allclose(to_members(ro.values, 3), v, atol=1e-6)
    assert torch.all(ro.final_privileged[ro.truncated][:, 2] == 1.0)  # t = 5 of 5
    assert torch.equal(ro.obs[:, :, 0], ro.privileged[:, :, 0])
    r.step()
    assert r.model.priv_rms.count.tolist() == [16.0 + T * 16] * 3


# ---------------------------------------------------------------------------- (3) a run
def test_pbt_asymmetric_run_resumes_exactly_and_evaluates(tmp_path, capsys):
    """4 iterations straight == 2, stop, resume, 2 more (rounds after 2 and 4): bitwise equal
    state dicts (critic and priv_rms included), Adam state, runner observations; the critic
    learned; eval.py runs the best member from policy observations and its export matches."""
    a = PBTRunner(priv_cfg(iters=4), str(tmp_path / "a"))
    critic0 = a.model.critic[0].weight.detach().clone()
    out = a.train()
    assert math.isfinite(out["losses/value"]) and a.learner.rounds == 2
    assert not torch.equal(critic0, a.model.critic[0].weight)
    run(priv_cfg(iters=2), run_dir=str(tmp_path / "b"))
    cfg_b, path = resume_config(str(tmp_path / "b"), ["max_iterations=4"])
    b = PBTRunner(cfg_b, str(tmp_path / "b"), resume_from=path)
    assert b.iteration == 2
    b.train()
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert set(sa) == set(sb) and "priv_rms.var" in sa
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for x, y in zip(a.learner.optimizer.tensors(), b.learner.optimizer.tensors()):
        assert torch.equal(x, y)
    assert torch.equal(a.priv, b.priv) and torch.equal(a.obs, b.obs)
    # eval.py: the best member, acting from the 1-d policy observation
    capsys.readouterr()
    export = str(tmp_path / "policy.pt")
    summary = eval_cli.main([f"run={tmp_path / 'a'}", "episodes=4", f"export={export}"])
    assert summary["episodes"] == 4 and math.isfinite(summary["return_mean"])
    assert f"pbt/test_priv_line member {summary['member']} (best of [0, 1, 2])" in capsys.readouterr().out
    payload = ckpt.load(ckpt.latest(str(tmp_path / "a")))
    net, gid = checkpoint_policy(payload, a.cfg, 1, 2)
    assert gid == summary["member"] and net.asymmetric and net.privileged_dim == 3
    loaded = select_policy(ckpt.latest(str(tmp_path / "a")), policy=gid)
    obs = torch.linspace(-1.5, 1.5, 7).unsqueeze(-1)
    pol = torch.zeros(7, dtype=torch.long)
    with torch.no_grad():
        want = a.model.mean_action(obs.expand(3, 7, 1).contiguous())[gid]
        assert torch.allclose(net.mean_action(obs, pol), want, atol=1e-6)
        assert torch.equal(loaded.model.mean_action(obs, pol), net.mean_action(obs, pol))
        assert torch.allclose(torch.jit.load(export)(obs), want.clamp(-1, 1), atol=1e-6)
        priv = torch.randn(7, 3)
        v_want = a.model.value(priv.expand(3, 7, 3).contiguous())[gid]
        assert torch.allclose(net.value(priv, pol), v_want, atol=1e-5)


# ---------------------------------------------------------------------------- (4) exploit
def test_exploit_copies_the_privileged_critic_and_normaliser(tmp_path):
    """Scores 1 10 5 2: member 0 copies member 1: its critic weights, priv_rms statistics and
    the critic's Adam moments become member 1's bitwise (they differed before)."""
    r = PBTRunner(priv_cfg(population=4), str(tmp_path / "r"))
    r.step()
    L = r.learner
    _set_scores(L, [1.0, 10.0, 5.0, 2.0])
    before = {k: v.clone() for k, v in r.model.member_tensors().items()}
    names = [k for k in before if k.startswith("critic.") or k.startswith("priv_rms.")]
    assert "priv_rms.mean" in names and "critic.0.weight" in names
    for k in names:
        if k != "priv_rms.count":  # every member has seen the same number of rows
            assert not torch.equal(before[k][0], before[k][1]), k
    crit = [i for i, p in enumerate(L.optimizer.params) if p is r.model.critic[0].weight][0]
    m_before = L.optimizer.m[crit].clone()
    record = L.exploit_round(r.env_steps)
    assert [(c["dst"], c["src"], c["copied"]) for c in record["copies"]] == [(0, 1, True)]
    after = r.model.member_tensors()
    for k in names:
        assert torch.equal(after[k][0], before[k][1]), k
        assert torch.equal(after[k][2], before[k][2]), k
    assert torch.equal(L.optimizer.m[crit][0], m_before[1])


def test_remote_member_without_privileged_normaliser_is_refused(tmp_path):
    """A worker file whose members lack priv_rms (a symmetric population) cannot be copied:
    the error names the tensor and the rule."""
    from cpo.runners.pbt import Copy

    r = PBTRunner(priv_cfg(population=2), str(tmp_path / "r"))
    payload = r.learner.payload(r.env_steps)
    payload = dict(payload, worker=1, member_ids=torch.tensor([2, 3]),
                   model={k: v for k, v in payload["model"].items() if not k.startswith("priv_rms.")})
    before = {k: v.clone() for k, v in r.model.member_tensors().items()}
    with pytest.raises(RuntimeError, match=r"^pbt: worker 1's members have no tensor priv_rms\.mean: "
                                           r"the workers of one population must share the task"):
        with torch.no_grad():
            r.learner._copy([Copy(dst=0, src=2, gap=1.0, copied=True)], {0: 0, 1: 1}, {2: (payload, 0)})
    for k, v in r.model.member_tensors().items():  # nothing was half-copied
        assert torch.equal(v, before[k]), k
