"""PBT (cpo/runners/pbt.py, cpo/models/stacked.py): exploit/explore arithmetic by hand, a member's update
against a plain single-network PPO step, members never sharing data, copying between members
and worker processes, exact resume, config errors, and a short learning run."""
from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from cpo.app import resume_config, run
from cpo.utils.config import ConfigError, PBTConfig, TrainConfig, validate
from cpo.models.normalizer import RunningMeanStd
from cpo.runners.pbt import (HP_KEYS, MemberBatch, PBTLearner, PBTRunner, SharedDir, initial_hyperparameters,
                     member_seed, perturb, plan_exploit, score_gap)
from cpo.models.stacked import StackedActorCritic, StackedLinear, from_members, to_members

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pbt_cfg(iters: int = 4, population: int = 3, seed: int = 0) -> TrainConfig:
    """A fast PBT config on the test task: 48 envs, 3 members of 16 envs, T = 8, a round every
    two iterations."""
    cfg = TrainConfig(seed=seed, device="cpu", max_iterations=iters)
    cfg.env.name, cfg.env.num_envs = "test_line", 48
    cfg.algo.name, cfg.algo.lr_schedule, cfg.algo.entropy_coef = "pbt", "fixed", 1e-3
    cfg.algo.horizon, cfg.algo.num_minibatches, cfg.algo.num_epochs = 8, 2, 2
    cfg.net.actor_hidden, cfg.net.critic_hidden = [16, 16], [16, 16]
    cfg.log.progress, cfg.log.ckpt_every = False, 2
    cfg.pbt.population, cfg.pbt.interval_steps = population, 2 * 8 * 48
    cfg.pbt.score_window = 2
    return cfg


# ---------------------------------------------------------------------------- arithmetic
def test_perturb_and_gap_arithmetic():
    """x * f or x / f (1 - x for gamma/lambda), clamped; relative and absolute gaps."""
    assert perturb(1e-3, "scale", 1.25, True, 1e-6, 1e-2) == pytest.approx(1.25e-3, rel=1e-12)
    assert perturb(1e-3, "scale", 1.25, False, 1e-6, 1e-2) == pytest.approx(8e-4, rel=1e-12)
    assert perturb(0.45, "scale", 1.5, True, 0.02, 0.5) == 0.5  # 0.675 clamped to the range
    assert perturb(0.99, "horizon", 1.2, True, 0.8, 0.9999) == pytest.approx(0.988, abs=1e-12)
    assert perturb(0.99, "horizon", 1.25, False, 0.8, 0.9999) == pytest.approx(0.992, abs=1e-12)
    assert perturb(0.9999, "horizon", 1.5, False, 0.8, 0.9999) == 0.9999  # clamped
    assert score_gap(9.0, 1.0, "relative") == pytest.approx(8.0 / 9.0)
    assert score_gap(-200.0, -1000.0, "relative") == pytest.approx(0.8)  # negative returns
    assert score_gap(5.0, -5.0, "relative") == pytest.approx(2.0)
    assert score_gap(0.0, 0.0, "relative") == 0.0
    assert score_gap(-200.0, -1000.0, "absolute") == 800.0


def test_plan_exploit_by_hand():
    """Scores 5 1 3 9 7 2 8 4 (ids 0..7): ranking 3 6 4 0 7 2 5 1, top quarter {3, 6}, bottom
    quarter {5, 1}; the sources, factors and coins are the seeded generator's first draws."""
    cfg = PBTConfig(population=8, bottom_fraction=0.25, top_fraction=0.25, threshold=0.1,
                    mutate=["lr", "clip_eps"])
    scores = [5.0, 1.0, 3.0, 9.0, 7.0, 2.0, 8.0, 4.0]
    copies = plan_exploit(scores, [True] * 8, list(range(8)), cfg, torch.Generator().manual_seed(3))
    ref = torch.Generator().manual_seed(3)
    pick = torch.randint(2, (2,), generator=ref).tolist()
    u = torch.rand(2, 2, generator=ref, dtype=torch.float64)
    coin = torch.rand(2, 2, generator=ref, dtype=torch.float64)
    assert [c.dst for c in copies] == [5, 1]
    assert [c.src for c in copies] == [[3, 6][pick[0]], [3, 6][pick[1]]]
    for j, c in enumerate(copies):
        top = scores[c.src]
        assert c.gap == pytest.approx((top - scores[c.dst]) / top)
        assert c.copied
        assert c.factors == pytest.approx((1.1 + 0.4 * u[j]).tolist(), abs=1e-12)
        assert all(1.1 <= f <= 1.5 for f in c.factors)
        assert c.multiply == (coin[j] < 0.5).tolist()
    # below the threshold nobody copies: relative gaps of 10.0 vs 9.5 and 9.6 are ~0.05
    close = plan_exploit([10.0, 9.5, 9.8, 9.6], [True] * 4, [0, 1, 2, 3], cfg, torch.Generator().manual_seed(0))
    assert [(c.dst, c.src, c.copied) for c in close] == [(1, 0, False)]
    assert close[0].gap == pytest.approx(0.05)
    cfg.threshold_mode, cfg.threshold = "absolute", 0.4
    close = plan_exploit([10.0, 9.5, 9.8, 9.6], [True] * 4, [0, 1, 2, 3], cfg, torch.Generator().manual_seed(0))
    assert close[0].copied and close[0].gap == pytest.approx(0.5)
    # members without a score are not ranked; fewer than two ranked: no round, nothing drawn
    cfg.threshold_mode, cfg.threshold = "relative", 0.1
    c = plan_exploit([1.0, 100.0, 5.0], [True, False, True], [10, 11, 12], cfg, torch.Generator().manual_seed(0))
    assert [(x.dst, x.src) for x in c] == [(10, 12)]
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert plan_exploit([1.0, 2.0], [True, False], [0, 1], cfg, g) == []
    assert torch.equal(g.get_state(), state)


def test_initial_hyperparameters():
    """Member 0 starts at algo.*; others log-uniform within [x/s, x*s] (evolved keys only),
    deterministic per member id whatever the population layout."""
    cfg = pbt_cfg()
    cfg.pbt.init_spread = 2.0
    hp = initial_hyperparameters(cfg, [0, 1, 2, 5])
    for k in HP_KEYS:
        assert hp[k][0] == pytest.approx(getattr(cfg.algo, k))
    for k in ("lr", "entropy_coef", "clip_eps"):
        base = getattr(cfg.algo, k)
        assert all(base / 2 <= v <= base * 2 for v in hp[k]), k
        assert len(set(hp[k][1:])) == 3  # distinct
    for k in ("value_coef", "gamma", "gae_lambda"):  # not evolved: the base value
        assert all(v == pytest.approx(getattr(cfg.algo, k)) for v in hp[k])
    assert initial_hyperparameters(cfg, [5])["lr"] == [hp["lr"][3]]


# ---------------------------------------------------------------------------- the update
@torch.no_grad()
def _random_batch(model: StackedActorCritic, P: int, R: int, gen: torch.Generator) -> MemberBatch:
    D, A = model.obs_dim, model.act_dim
    obs = torch.randn(P, R, D, generator=gen) * 2.0 + 0.5
    mu, log_std, _ = model.heads(model.embed(obs))
    act = mu + torch.randn(P, R, A, generator=gen)
    z = (act - mu) / log_std.exp().unsqueeze(1)
    logp = -0.5 * z.pow(2).sum(-1) - log_std.sum(-1, keepdim=True) - 0.5 * math.log(2 * math.pi) * A
    return MemberBatch(obs=obs, act=act, logp_old=logp + 0.3 * torch.randn(P, R, generator=gen),
                       mu_old=mu + 0.1, log_std_old=log_std.detach().clone() - 0.05,
                       adv=torch.randn(P, R, generator=gen), ret=torch.randn(P, R, generator=gen) * 3.0 + 1.0,
                       v_old=torch.randn(P, R, generator=gen))


def _reference_member_update(model: StackedActorCritic, p: int, batch: MemberBatch, perms: torch.Tensor,
                             lr: float, clip: float, ent_coef: float, value_coef: float,
                             max_norm: float, mb: int) -> torch.Tensor:
    """Member p alone in plain torch: nn.Linear layers holding its weights, the PPO loss written
    out, torch.nn.utils.clip_grad_norm_ and torch.optim.Adam with its own learning rate."""
    def linear(layer: StackedLinear) -> nn.Linear:
        lin = nn.Linear(layer.weight.shape[1], layer.weight.shape[2])
        with torch.no_grad():
            lin.weight.copy_(layer.weight[p].t())
            lin.bias.copy_(layer.bias[p, 0])
        return lin

    actor = [linear(m) for m in model.actor if isinstance(m, StackedLinear)]
    critic = [linear(m) for m in model.critic if isinstance(m, StackedLinear)]
    mu_head = linear(model.mu_head)
    log_std = nn.Parameter(model.log_std[p].detach().clone())
    params = [q for m in actor + [mu_head] for q in m.parameters()] + [log_std]
    params += [q for m in critic for q in m.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    obs_rms = RunningMeanStd((model.obs_dim,))
    obs_rms.mean.copy_(model.obs_rms.mean[p])
    obs_rms.var.copy_(model.obs_rms.var[p])
    vrms = RunningMeanStd(())
    vrms.mean.copy_(model.value_rms.mean[p])
    vrms.var.copy_(model.value_rms.var[p])
    vrms.count.copy_(model.value_rms.count[p])
    vrms.update(batch.ret[p])  # the member's own returns, once before the epochs
    ret_n, v_old_n = vrms.scale(batch.ret[p]), vrms.scale(batch.v_old[p])
    adv_all = batch.adv[p]
    for e in range(perms.shape[0]):
        for idx in perms[e, p].split(mb):
            x = obs_rms.normalize(batch.obs[p, idx])
            h = x
            for lin in actor:
                h = nn.functional.elu(lin(h))
            mu = mu_head(h)
            v = x
            for i, lin in enumerate(critic):
                v = lin(v) if i == len(critic) - 1 else nn.functional.elu(lin(v))
            v = v.squeeze(-1)
            a = batch.act[p, idx]
            logp = (-0.5 * ((a - mu) / log_std.exp()).pow(2).sum(-1) - log_std.sum()
                    - 0.5 * math.log(2 * math.pi) * a.shape[-1])
            ratio = torch.exp(logp - batch.logp_old[p, idx])
            adv = adv_all[idx]
            policy = -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean()
            v_clip = v_old_n[idx] + (v - v_old_n[idx]).clamp(-clip, clip)
            value = torch.max((v - ret_n[idx]).pow(2), (v_clip - ret_n[idx]).pow(2)).mean()
            entropy = (log_std + 0.5 * (1 + math.log(2 * math.pi))).sum()
            bounds = ((mu - 1.1).clamp(min=0).pow(2) + (-1.1 - mu).clamp(min=0).pow(2)).sum(-1).mean()
            loss = policy + 0.5 * value_coef * value - ent_coef * entropy + 1e-4 * bounds
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            opt.step()
    return torch.cat([q.detach().flatten() for q in params])


def _member_params(model: StackedActorCritic, p: int) -> torch.Tensor:
    parts = []
    for m in [m for m in model.actor if isinstance(m, StackedLinear)] + [model.mu_head]:
        parts += [m.weight[p].t().flatten(), m.bias[p, 0].flatten()]
    parts.append(model.log_std[p].flatten())
    for m in [m for m in model.critic if isinstance(m, StackedLinear)]:
        parts += [m.weight[p].t().flatten(), m.bias[p, 0].flatten()]
    return torch.cat([x.detach() for x in parts])


def test_member_update_equals_single_network_ppo():
    """Three members with different lr, clip_eps, entropy_coef and value_coef take 2 epochs x 2
    minibatches; each ends where a plain single-network PPO with its own hyperparameters,
    torch's Adam and its own gradient-norm clip ends (max |delta| < 1e-6)."""
    cfg = pbt_cfg()
    cfg.algo.max_grad_norm = 0.3  # small enough that the clip is active
    P, R, mb = 3, 128, 64
    gen = torch.Generator().manual_seed(0)
    model = StackedActorCritic(2, 2, P, [16, 16], [16, 16], member_seeds=[11, 12, 13])
    model.obs_rms.update(torch.randn(8, 48, 2, generator=gen) * 3.0)
    learner = PBTLearner(model, cfg, [0, 1, 2], torch.device("cpu"))
    hp = {"lr": [3e-3, 1e-3, 5e-4], "clip_eps": [0.1, 0.2, 0.3], "entropy_coef": [0.0, 1e-2, 1e-3],
          "value_coef": [1.0, 2.0, 4.0]}
    for k, v in hp.items():
        learner.hp[k].copy_(torch.tensor(v))
    batch = _random_batch(model, P, R, gen)
    perms = torch.rand(2, P, R, generator=gen).argsort(-1)
    start = copy.deepcopy(model)
    stats = learner.update(batch, perms)
    assert stats["grad_norm"].shape == (P,) and bool((stats["grad_norm"] > 0.3).all())
    for p in range(P):
        ref = _reference_member_update(start, p, batch, perms, hp["lr"][p], hp["clip_eps"][p],
                                       hp["entropy_coef"][p], hp["value_coef"][p], 0.3, mb)
        got = _member_params(model, p)
        moved = (got - _member_params(start, p)).abs().max()
        assert moved > 1e-3  # it did learn
        assert (got - ref).abs().max() < 1e-6, p
    # the members' value normalisers saw only their own returns
    for p in range(P):
        assert torch.allclose(model.value_rms.mean[p], batch.ret[p].double().mean() * 1.0, atol=1e-9)


def test_members_never_share_data(tmp_path):
    """Changing member 1's rollout (rewards, observations, actions of its env block) changes
    member 1's update and leaves members 0 and 2 bitwise unchanged: weights, Adam moments,
    observation and value normalisers."""
    r = PBTRunner(pbt_cfg(), str(tmp_path / "r"))
    r.collect()
    ro = r.storage
    start_model = copy.deepcopy(r.model.state_dict())
    start_learner = copy.deepcopy(r.learner.state_dict())

    def train_once(rollout):
        r.model.load_state_dict(start_model)
        r.learner.load_state_dict(start_learner)
        batch = r.learner.build_batch(rollout)
        r.learner.update(batch)
        r.model.obs_rms.update(rollout.obs[:-1])
        return ({k: v.clone() for k, v in r.model.member_tensors().items()},
                [t.clone() for t in r.learner.optimizer.tensors()])

    a_model, a_opt = train_once(ro)
    other = copy.deepcopy(ro)
    block = slice(16, 32)  # member 1's envs
    other.rewards[:, block] += 1.0
    other.obs[:, block] *= 1.5
    other.actions[:, block] = -other.actions[:, block]
    b_model, b_opt = train_once(other)
    for name in a_model:
        for p in (0, 2):
            assert torch.equal(a_model[name][p], b_model[name][p]), (name, p)
        if name != "value_rms.count" and name != "obs_rms.count":
            assert not torch.equal(a_model[name][1], b_model[name][1]), name
    for ta, tb in zip(a_opt, b_opt):
        assert torch.equal(ta[0], tb[0]) and torch.equal(ta[2], tb[2])


def test_member_as_one_policy_network():
    """member_policy(p) is member p alone in the ensemble network (latent_dim 0): same mean
    action and value on raw observations, so cpo.tools.evaluation can evaluate and export it."""
    from cpo.runners.pbt import member_policy

    cfg = pbt_cfg()
    gen = torch.Generator().manual_seed(0)
    model = StackedActorCritic(2, 2, 3, [16, 16], [16, 16], member_seeds=[4, 5, 6])
    model.obs_rms.update(torch.randn(4, 48, 2, generator=gen) * 2.0)
    model.value_rms.update(torch.randn(4, 48, generator=gen) * 5.0)
    obs = torch.randn(3, 10, 2, generator=gen)
    with torch.no_grad():
        mu = model.mean_action(obs)
        v = model.value(obs)
        for p in range(3):
            net = member_policy(cfg, model, p)
            pol = torch.zeros(10, dtype=torch.long)
            assert torch.allclose(net.mean_action(obs[p], pol), mu[p], atol=1e-6)
            assert torch.allclose(net.value(obs[p], pol), v[p], atol=1e-5)
            assert torch.equal(net.log_std[0], model.log_std[p])


def test_best_member_from_a_checkpoint(tmp_path):
    """checkpoint_policy picks the member with the best windowed score in the checkpoint (or a
    given one) and returns it as a one-policy network with that member's weights."""
    from cpo.utils import checkpoint as ckpt
    from cpo.runners.pbt import checkpoint_policy

    cfg = pbt_cfg(iters=2)
    r = PBTRunner(cfg, str(tmp_path / "r"))
    r.step()
    _set_scores(r.learner, [3.0, 9.0, 1.0])
    payload = ckpt.load(r.save())
    net, g = checkpoint_policy(payload, cfg, 2, 2)
    assert g == 1
    obs = torch.randn(5, 2)
    with torch.no_grad():
        want = r.model.mean_action(obs.expand(3, 5, 2).contiguous())[1]
        assert torch.allclose(net.mean_action(obs, torch.zeros(5, dtype=torch.long)), want, atol=1e-6)
    assert checkpoint_policy(payload, cfg, 2, 2, member=2)[1] == 2


def test_to_members_round_trip():
    """Env order [T, N] <-> member order [P, T * B]: member 1's rows are envs 2, 3 over time."""
    x = torch.arange(3 * 6).view(3, 6)  # T = 3, N = 6, P = 3, B = 2
    m = to_members(x, 3)
    assert m[1].tolist() == [2, 3, 8, 9, 14, 15]
    assert torch.equal(from_members(m, 3), x)


# ---------------------------------------------------------------------------- exploit / explore
def _set_scores(learner: PBTLearner, scores) -> None:
    learner.ep_sum.zero_()
    learner.ep_cnt.zero_()
    learner.ep_sum[0] = torch.tensor(scores, dtype=torch.float64)
    learner.ep_cnt[0] = 1.0


def test_score_window_by_hand():
    """Window of 2 iterations that ended episodes, per member: member 0 ends (10 over 2
    episodes), (6, 1), nothing, (3, 1) -> scores 5, 16/3, 16/3, 9/2; member 1 ends nothing,
    (4, 1), (8, 2), nothing -> not ready, 4, 4, 4."""
    cfg = pbt_cfg(population=2)
    cfg.env.num_envs = 32
    model = StackedActorCritic(2, 2, 2, [8], [8])
    L = PBTLearner(model, cfg, [0, 1], torch.device("cpu"))
    steps = [((10.0, 0.0), (2, 0)), ((6.0, 4.0), (1, 1)), ((0.0, 8.0), (0, 2)), ((3.0, 0.0), (1, 0))]
    want = [((5.0, None)), (16 / 3, 4.0), (16 / 3, 4.0), (4.5, 4.0)]
    for (ret, cnt), (s0, s1) in zip(steps, want):
        L.record_episodes(torch.tensor(ret), torch.tensor(cnt, dtype=torch.float32))
        score, ready = L.scores()
        assert float(score[0]) == pytest.approx(s0)
        assert bool(ready[1]) == (s1 is not None)
        if s1 is not None:
            assert float(score[1]) == pytest.approx(s1)


def test_exploit_copies_state_and_perturbs(tmp_path):
    """Scores 1 10 5 2: member 0 (bottom) copies member 1 (top; gap 0.9 > 0.1): its weights,
    normalisers and Adam state become member 1's bitwise, its hyperparameters member 1's times
    or divided by the drawn factors, its score window is emptied; the others keep theirs."""
    cfg = pbt_cfg(population=4)
    r = PBTRunner(cfg, str(tmp_path / "r"))
    r.step()
    L = r.learner
    _set_scores(L, [1.0, 10.0, 5.0, 2.0])
    before = {k: v.clone() for k, v in r.model.member_tensors().items()}
    opt_before = [t.clone() for t in L.optimizer.tensors()]
    hp_before = {k: v.clone() for k, v in L.hp.items()}
    ref = torch.Generator()
    ref.set_state(L.pbt_gen.get_state())
    record = L.exploit_round(r.env_steps)
    torch.randint(1, (1,), generator=ref)
    u = torch.rand(1, 3, generator=ref, dtype=torch.float64)[0]
    coin = torch.rand(1, 3, generator=ref, dtype=torch.float64)[0]
    assert [(c["dst"], c["src"], c["copied"]) for c in record["copies"]] == [(0, 1, True)]
    after = r.model.member_tensors()
    for name, t in after.items():
        assert torch.equal(t[0], before[name][1]), name
        for p in (1, 2, 3):
            assert torch.equal(t[p], before[name][p]), name
    for t, tb in zip(L.optimizer.tensors(), opt_before):
        assert torch.equal(t[0], tb[1]) and torch.equal(t[3], tb[3])
    for i, key in enumerate(cfg.pbt.mutate):
        f = 1.1 + 0.4 * float(u[i])
        src = float(hp_before[key][1])
        want = src * f if coin[i] < 0.5 else src / f
        assert float(L.hp[key][0]) == pytest.approx(want, rel=1e-6), key
        assert torch.equal(L.hp[key][1:], hp_before[key][1:])
    for key in ("value_coef", "gamma", "gae_lambda"):  # not evolved: copied unchanged
        assert float(L.hp[key][0]) == float(hp_before[key][1])
    score, ready = L.scores()
    assert ready.tolist() == [False, True, True, True]
    # called at env step 384 (one iteration): the next round is due at the first multiple of
    # the interval after it
    assert L.rounds == 1 and L.next_round == cfg.pbt.interval_steps == 768


def test_two_workers_exchange_through_shared_dir(tmp_path):
    """Worker 0 publishes members 0, 1 (scores 10, 5); worker 1 (members 2, 3: scores 1, 7)
    ranks all four (0 3 1 2), so member 2 copies member 0 from worker 0's file: bitwise equal
    weights, normalisers and Adam state, member 0's hyperparameters perturbed."""
    shared = str(tmp_path / "shared")
    runners = []
    for w in (0, 1):
        cfg = pbt_cfg(population=2, seed=w)
        cfg.env.num_envs = 32
        cfg.pbt.shared_dir, cfg.pbt.num_workers, cfg.pbt.worker_id = shared, 2, w
        validate(cfg)
        runners.append(PBTRunner(cfg, str(tmp_path / f"w{w}")))
        runners[-1].step()
    w0, w1 = runners
    assert w1.learner.gids == [2, 3]
    _set_scores(w0.learner, [10.0, 5.0])
    _set_scores(w1.learner, [1.0, 7.0])
    w0.shared.publish(w0.learner.payload(w0.env_steps))
    hp0 = {k: float(w0.learner.hp[k][0]) for k in HP_KEYS}
    record = w1.learner.exploit_round(w1.env_steps, w1.shared)
    assert record["ranked"] == {"2": 1.0, "3": 7.0, "0": 10.0, "1": 5.0}
    assert [(c["dst"], c["src"], c["copied"]) for c in record["copies"]] == [(2, 0, True)]
    src, dst = w0.model.member_tensors(), w1.model.member_tensors()
    for name in src:
        assert torch.equal(dst[name][0], src[name][0]), name
    for t0, t1 in zip(w0.learner.optimizer.tensors(), w1.learner.optimizer.tensors()):
        assert torch.equal(t1[0], t0[0])
    c = record["copies"][0]
    for key, f, up in zip(w1.cfg.pbt.mutate, c["factors"], c["multiply"]):
        want = hp0[key] * f if up else hp0[key] / f
        assert float(w1.learner.hp[key][0]) == pytest.approx(want, rel=1e-6)
        assert c["hp_src"][key] == pytest.approx(hp0[key], rel=1e-6)
    assert os.path.isfile(os.path.join(shared, "worker_0001.pt"))


def test_two_processes_share_a_population(tmp_path):
    """Two `train.py algo=pbt` processes (2 members each) on one shared directory, synchronous
    rounds: both finish, and every round of each ranked all four members."""
    shared = tmp_path / "shared"
    procs = []
    for w in (0, 1):
        cmd = [sys.executable, "train.py", "algo=pbt", "env=cartpole", "env.num_envs=16",
               "algo.horizon=8", "algo.num_epochs=1", "algo.num_minibatches=2",
               "net.actor_hidden=[16]", "net.critic_hidden=[16]", "pbt.population=2",
               "pbt.interval_steps=256", "pbt.num_workers=2", f"pbt.worker_id={w}",
               f"pbt.shared_dir={shared}", "pbt.sync_timeout=60", "max_iterations=6", f"seed={w}",
               "torch_threads=1", "log.progress=false", "log.tensorboard=false", "device=cpu",
               f"run_dir={tmp_path / f'w{w}'}", f"hydra.run.dir={tmp_path / f'h{w}'}"]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
    for w in (0, 1):
        lines = (tmp_path / f"w{w}" / "pbt_events.jsonl").read_text().splitlines()
        rounds = [json.loads(x) for x in lines]
        assert [r["round"] for r in rounds] == [1, 2, 3]  # env steps 256, 512, 768
        assert all(sorted(r["ranked"]) == ["0", "1", "2", "3"] for r in rounds)


# ---------------------------------------------------------------------------- runs
def _all_state(r: PBTRunner):
    return ({k: v.clone() for k, v in r.model.state_dict().items()},
            [t.clone() for t in r.learner.optimizer.tensors()],
            {k: v.clone() for k, v in r.learner.hp.items()})


def test_exact_resume_across_rounds(tmp_path):
    """6 iterations straight == 3, stop, resume, 3 more (rounds after iterations 2, 4, 6):
    identical weights, normalisers, Adam state, hyperparameters, generators, score windows,
    observations and round log."""
    straight = pbt_cfg(iters=6)
    a = PBTRunner(straight, str(tmp_path / "a"))
    a.train()
    run(pbt_cfg(iters=3), run_dir=str(tmp_path / "b"))
    cfg_b, path = resume_config(str(tmp_path / "b"), ["max_iterations=6"])
    b = PBTRunner(cfg_b, str(tmp_path / "b"), resume_from=path)
    assert b.iteration == 3 and b.learner.rounds == 1
    b.train()
    sa, oa, ha = _all_state(a)
    sb, ob, hb = _all_state(b)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert all(torch.equal(x, y) for x, y in zip(oa, ob))
    assert all(torch.equal(ha[k], hb[k]) for k in ha)
    assert torch.equal(a.learner.ep_sum, b.learner.ep_sum)
    assert torch.equal(a.learner.pbt_gen.get_state(), b.learner.pbt_gen.get_state())
    assert torch.equal(a.obs, b.obs) and a.learner.rounds == b.learner.rounds == 3
    ev_a = (tmp_path / "a" / "pbt_events.jsonl").read_text()
    ev_b = (tmp_path / "b" / "pbt_events.jsonl").read_text()
    assert ev_a == ev_b and len(ev_a.splitlines()) == 3


@pytest.mark.parametrize("override, pattern", [
    (dict(population=5), r"env.num_envs=48 is not divisible by pbt.population=5"),
    (dict(bottom_fraction=0.6), r"pbt.bottom_fraction=0.6: must be in \(0, 0.5\]"),
    (dict(interval_steps=100), r"pbt.interval_steps=100: must be >= algo.horizon\*env.num_envs=384"),
    (dict(mutate=["lr", "momentum"]), r"pbt.mutate=.*'momentum' cannot be evolved"),
    (dict(num_workers=2), r"pbt.shared_dir=None: must name a directory"),
    (dict(worker_id=1), r"pbt.worker_id=1: must be in 0..pbt.num_workers-1=0"),
    (dict(threshold_mode="ratio"), r"pbt.threshold_mode='ratio': must be relative or absolute"),
    (dict(population=1), r"pbt.population=1: the population .* needs at least 2 members"),
])
def test_config_errors_name_key_value_rule(override, pattern):
    """Invalid PBT settings fail in validate() naming the key, the value and the rule."""
    cfg = pbt_cfg()
    for k, v in override.items():
        setattr(cfg.pbt, k, v)
    with pytest.raises(ConfigError, match=pattern):
        validate(cfg)


def test_config_errors_in_other_sections():
    """What PBT needs from algo.*: one policy, a fixed LR, start values inside the ranges."""
    cases = [("num_policies", 6, r"algo.num_policies=6: must be 1 with PBT"),
             ("lr_schedule", "adaptive", r"algo.lr_schedule='adaptive': must be fixed with PBT"),
             ("entropy_coef", 0.0, r"algo.entropy_coef=0.0: must lie within \[1e-06, 0.1\]"),
             ("num_minibatches", 3, r"does not divide a member's batch .*=128")]
    for key, value, pattern in cases:
        cfg = pbt_cfg()
        setattr(cfg.algo, key, value)
        if key == "num_policies":
            cfg.env.num_envs = 48
        with pytest.raises(ConfigError, match=pattern):
            validate(cfg)


def test_algo_pbt_preset_composes():
    """`train.py algo=pbt env=<task>` composes and validates for every embedded task."""
    from hydra import compose, initialize_config_dir

    from cpo.app import to_train_config

    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):
        for env in ("cartpole", "pendulum", "point_maze", "arm_reach", "acrobot", "mountain_car"):
            cfg = to_train_config(compose(config_name="config", overrides=["algo=pbt", f"env={env}"]))
            validate(cfg)
            assert cfg.pbt.population == 8 and cfg.algo.name == "pbt" and cfg.algo.num_policies == 1


def test_pbt_learns_cartpole_and_evolves(tmp_path):
    """4 members on CartPole (240 envs, 60 per member), a round every 3 iterations: after 24
    iterations the best member's score is >= 300 (a random policy scores ~22), at least one
    member copied another, and copied hyperparameters changed; TensorBoard has per-member
    hyperparameters."""
    from cpo.tools.report import read_scalars

    cfg = TrainConfig(seed=0, device="cpu", max_iterations=24, torch_threads=1)
    cfg.env.name, cfg.env.num_envs = "cartpole", 240
    cfg.algo.name, cfg.algo.lr_schedule, cfg.algo.entropy_coef, cfg.algo.lr = "pbt", "fixed", 1e-3, 1e-3
    cfg.algo.horizon, cfg.algo.num_epochs, cfg.algo.num_minibatches = 32, 5, 4
    cfg.net.actor_hidden, cfg.net.critic_hidden = [64, 64], [64, 64]
    cfg.log.progress = False
    cfg.pbt.population, cfg.pbt.interval_steps = 4, 3 * 32 * 240
    out = run(cfg, run_dir=str(tmp_path / "r"))
    assert out["rollout/ep_return"] >= 300.0
    rounds = [json.loads(x) for x in (tmp_path / "r" / "pbt_events.jsonl").read_text().splitlines()]
    assert len(rounds) == 8
    copied = [c for r in rounds for c in r["copies"] if c["copied"]]
    assert copied
    c = copied[0]
    assert c["hp_dst_after"]["lr"] != pytest.approx(c["hp_src"]["lr"])
    tags = read_scalars(str(tmp_path / "r"))
    for g in range(4):
        for k in ("lr", "entropy_coef", "clip_eps", "score"):
            assert f"pbt/member_{g}/{k}" in tags
    steps, best = tags["pbt/best_score"]
    assert best[-1] > best[0] + 200


def test_report_shows_members(tmp_path):
    """`python -m cpo.tools.report` on a PBT run: per member its start hyperparameters (the initial
    values), how often it copied (the round log's count), best score; and its figure."""
    from cpo.tools import report

    cfg = pbt_cfg(iters=6)
    run(cfg, run_dir=str(tmp_path / "r"))
    res = report.make_report(str(tmp_path / "r"), out=str(tmp_path / "rep"))
    (pbt,) = res["pbt_runs"]
    assert [m["member"] for m in pbt["members"]] == [0, 1, 2]
    init = initial_hyperparameters(cfg, [0, 1, 2])
    rounds = [json.loads(x) for x in (tmp_path / "r" / "pbt_events.jsonl").read_text().splitlines()]
    for m in pbt["members"]:
        g = m["member"]
        for k in cfg.pbt.mutate:
            assert m["hp_start"][k] == pytest.approx(init[k][g], rel=1e-6)
        assert m["times_copied"] == sum(c["copied"] and c["dst"] == g for r in rounds for c in r["copies"])
        assert m["best_score"] >= m["final_score"]
    assert "PBT members of" in res["table"] and "lr start → final" in res["table"]
    assert os.path.isfile(tmp_path / "rep" / "pbt_members_0.png")
