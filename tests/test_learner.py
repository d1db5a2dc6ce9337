"""The real Learner (cpo/algo/learner.py) on a tiny EnsembleActorCritic and synthetic rollouts:
targets, row layout, loss weighting and one update checked against hand-written numbers."""
from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from cpo.utils.config import AlgoConfig
from cpo.algo.learner import Learner, entropy_coefficients, lambda_f_at
from cpo.models.ensemble import EnsembleActorCritic, gaussian_log_prob
from cpo.algo.rollout import Rollout

CPU = torch.device("cpu")
OBS, ACT = 3, 2
LOG_2PI = math.log(2.0 * math.pi)


def make_model(M: int, seed: int = 0, mu_scale: float = 1.0) -> EnsembleActorCritic:
    """Tiny shared actor-critic with non-trivial observation and value normalisers."""
    model = EnsembleActorCritic(OBS, ACT, M, latent_dim=4, actor_hidden=[16, 16],
                                critic_hidden=[16, 16], seed=seed, init_log_std=-0.3)
    g = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        model.mu_head[0].weight.mul_(mu_scale)
        model.log_std.add_(0.2 * torch.randn(model.log_std.shape, generator=g))
    model.obs_rms.update(0.5 + 2.0 * torch.randn(64, OBS, generator=g))
    model.value_rms.update(1.0 + 3.0 * torch.randn(64, generator=g))
    return model


def make_learner(M: int, N: int, seed: int = 0, mu_scale: float = 1.0, max_iterations: int = 10,
                 **cfg_kw) -> Learner:
    cfg = AlgoConfig(num_policies=M, **cfg_kw)
    return Learner(make_model(M, seed, mu_scale), cfg, N, CPU, max_iterations=max_iterations, seed=seed)


@torch.no_grad()
def make_rollout(model: EnsembleActorCritic, T: int, N: int, seed: int = 1) -> Rollout:
    """Seeded random rollout; behaviour log-probs are consistent with the stored mu/log-std;
    ~15 % terminated and ~15 % truncated steps, plus forced ones in every block."""
    M = model.num_policies
    B = N // M
    g = torch.Generator().manual_seed(seed)
    ro = Rollout.empty(T, N, OBS, ACT, M, CPU)
    ro.obs.copy_(0.3 + 1.5 * torch.randn(ro.obs.shape, generator=g))
    ro.final_obs.copy_(torch.randn(ro.final_obs.shape, generator=g) - 1.0)
    ro.log_std.copy_(model.log_std + 0.1 * torch.randn(ro.log_std.shape, generator=g))
    pol_env = torch.arange(N) // B
    mu = model.mean_action(ro.obs[:-1].reshape(T * N, OBS), pol_env.repeat(T)).view(T, N, ACT)
    ro.mu.copy_(mu + 0.1 * torch.randn(mu.shape, generator=g))
    ls = ro.log_std[pol_env].expand(T, N, ACT)
    ro.actions.copy_(ro.mu + ls.exp() * torch.randn(ro.mu.shape, generator=g))
    ro.logp.copy_(gaussian_log_prob(ro.actions, ro.mu, ls))
    ro.values.copy_(torch.randn(T, N, generator=g))
    ro.rewards.copy_(torch.randn(T, N, generator=g) + 0.5)
    ro.terminated.copy_(torch.rand(T, N, generator=g) < 0.15)
    ro.truncated.copy_((torch.rand(T, N, generator=g) < 0.15) & ~ro.terminated)
    for m in range(M if T > 2 else 0):  # each block: a truncation at t=1, a termination at t=2
        ro.truncated[1, m * B] = True
        ro.terminated[1, m * B] = False
        ro.terminated[2, m * B + (B - 1)] = True
        ro.truncated[2, m * B + (B - 1)] = False
    return ro


@torch.no_grad()
def next_state_values(model, ro: Rollout, pol_of_col: torch.Tensor) -> torch.Tensor:
    """V_pol(s'_t) for the on-policy GAE, by hand: the model's V(final_obs) on truncated steps,
    the model's V(obs[T]) after the last step, else the rollout's stored value of s_{t+1}."""
    T, N = ro.horizon, ro.num_envs
    out = torch.zeros(T, N)
    for t in range(T):
        for n in range(N):
            if ro.truncated[t, n]:
                s = ro.final_obs[t, n]
            elif t == T - 1:
                s = ro.obs[T, n]
            else:
                out[t, n] = ro.values[t + 1, n]
                continue
            out[t, n] = model.value(s.unsqueeze(0), pol_of_col[n].view(1))[0]
    return out


def hand_gae(r, v, v_next, term, trunc, gamma, lam):
    """The GAE recursion written out with python scalars."""
    T, N = r.shape
    adv = torch.zeros(T, N)
    for n in range(N):
        a = 0.0
        for t in reversed(range(T)):
            nt = 0.0 if term[t, n] else 1.0
            nd = 0.0 if (term[t, n] or trunc[t, n]) else 1.0
            delta = float(r[t, n]) + gamma * nt * float(v_next[t, n]) - float(v[t, n])
            a = delta + gamma * lam * nd * a
            adv[t, n] = a
    return adv


def hand_td_adv(model, ro, src, pol, gamma, scale):
    """One-step TD target and advantage with the critic of latent ``pol`` for flat rows ``src``."""
    N = ro.num_envs
    ys, advs = [], []
    for s, p in zip(src.tolist(), pol.tolist()):
        t, n = divmod(s, N)
        nxt = ro.final_obs[t, n] if ro.truncated[t, n] else ro.obs[t + 1, n]
        with torch.no_grad():
            v_next = float(model.value(nxt.unsqueeze(0), torch.tensor([p]))[0])
            v = float(model.value(ro.obs[t, n].unsqueeze(0), torch.tensor([p]))[0])
        y = float(ro.rewards[t, n]) * scale + gamma * (0.0 if ro.terminated[t, n] else 1.0) * v_next
        ys.append(y)
        advs.append(y - v)
    return torch.tensor(ys), torch.tensor(advs)


# ------------------------------------------------------------------------------------------
# M = 1: PPO
# ------------------------------------------------------------------------------------------
PPO_KW = dict(gamma=0.9, gae_lambda=0.8, reward_scale=0.5, num_epochs=1, num_minibatches=1,
              clip_eps=0.2, value_coef=2.0, entropy_coef=0.01, bounds_coef=0.1, max_grad_norm=0.05,
              lr=1e-2, lr_schedule="fixed")


def test_ppo_build_batch_is_standardised_gae():
    """M=1: advantages = GAE (own critic, V(final_obs) on truncation, reward scaled) standardised
    with one mean/std over the batch; returns = unstandardised GAE + stored values."""
    T, N = 6, 4
    learner = make_learner(1, N, **PPO_KW)
    ro = make_rollout(learner.model, T, N)
    batch = learner.build_batch(ro)
    v_next = next_state_values(learner.model, ro, torch.zeros(N, dtype=torch.long))
    adv = hand_gae(ro.rewards * 0.5, ro.values, v_next, ro.terminated, ro.truncated, 0.9, 0.8)
    flat = adv.reshape(-1)
    std = (flat - flat.mean()) / (flat.std() + 1e-8)
    assert batch.src.numel() == T * N
    assert torch.equal(batch.src, torch.arange(T * N))
    assert torch.equal(batch.pol, torch.zeros(T * N, dtype=torch.long))
    torch.testing.assert_close(batch.adv, std, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch.ret, flat + ro.values.reshape(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch.v_old, ro.values.reshape(-1))
    assert torch.equal(batch.logp_old, ro.logp.reshape(-1))
    assert float(batch.is_coupling.sum()) == 0 and float(batch.weight.abs().sum()) == 0
    assert batch.num_minibatches == 1


def _capture_grads(learner):
    """Wrap the learner's optimizer.step to record the (already clipped) gradients."""
    grads = []
    step = learner.optimizer.step

    def wrapped(*a, **k):
        grads.append([None if p.grad is None else p.grad.detach().clone()
                      for p in learner.model.parameters()])
        return step(*a, **k)

    learner.optimizer.step = wrapped
    return grads


def test_ppo_one_update_matches_hand_written_loss():
    """M=1, one epoch, one minibatch: the gradient (after the norm clip) and the parameters after
    the Adam step equal a hand-written PPO loss on a deepcopy of the model:
    mean clipped surrogate + 0.5 c_v * mean clipped value MSE in normalised units (value
    normaliser updated with the batch returns first) - c_ent * entropy + c_b * bounds."""
    T, N = 6, 4
    learner = make_learner(1, N, mu_scale=300.0, **PPO_KW)
    cfg = learner.cfg
    ro = make_rollout(learner.model, T, N)
    # behaviour log-probs far from the current policy so that both clip sides are active
    g = torch.Generator().manual_seed(9)
    ro.logp.add_(0.4 * torch.randn(ro.logp.shape, generator=g))
    batch = learner.build_batch(ro)
    ref = copy.deepcopy(learner.model)
    old_mean, old_var, old_count = (ref.value_rms.mean.clone(), ref.value_rms.var.clone(),
                                    ref.value_rms.count.clone())
    grads = _capture_grads(learner)
    stats = learner.update(ro, batch)

    # value normaliser: running stats of (previous data + this batch's returns), by hand
    n0, n1 = float(old_count), batch.ret.numel()
    r64 = batch.ret.double()
    mean = (float(old_mean) * n0 + float(r64.sum())) / (n0 + n1)
    m2 = float(old_var) * n0 + float(((r64 - r64.mean()) ** 2).sum()) + \
        (float(r64.mean()) - float(old_mean)) ** 2 * n0 * n1 / (n0 + n1)
    assert abs(float(learner.model.value_rms.mean) - mean) < 1e-9
    assert abs(float(learner.model.value_rms.var) - m2 / (n0 + n1)) < 1e-9
    assert float(learner.model.value_rms.count) == n0 + n1

    # hand-written loss on the copy
    sd = math.sqrt(m2 / (n0 + n1) + 1e-8)
    ret_n = ((batch.ret.double() - mean) / sd).float()
    v_old_n = ((batch.v_old.double() - mean) / sd).float()
    obs = ro.obs[:-1].reshape(T * N, OBS)
    act = ro.actions.reshape(T * N, ACT)
    mu, log_std, v = ref(obs, torch.zeros(T * N, dtype=torch.long))
    logp = (-0.5 * ((act - mu) / log_std.exp()) ** 2 - log_std - 0.5 * LOG_2PI).sum(-1)
    ratio = torch.exp(logp - batch.logp_old)
    A = batch.adv
    assert ((ratio > 1.2) & (A > 0)).any() and ((ratio < 0.8) & (A < 0)).any()
    surr = -torch.min(ratio * A, ratio.clamp(0.8, 1.2) * A).mean()
    v_cl = v_old_n + (v - v_old_n).clamp(-0.2, 0.2)
    vloss = torch.max((v - ret_n) ** 2, (v_cl - ret_n) ** 2).mean()
    ent = (log_std + 0.5 * (1.0 + LOG_2PI)).sum(-1)
    bounds = ((mu - 1.1).clamp(min=0) ** 2 + (-1.1 - mu).clamp(min=0) ** 2).sum(-1).mean()
    assert float(bounds.detach()) > 0  # the bounds term is active
    loss = surr + 0.5 * cfg.value_coef * vloss - cfg.entropy_coef * ent.mean() + cfg.bounds_coef * bounds
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), cfg.max_grad_norm)
    assert float(norm) > cfg.max_grad_norm  # the clip is active
    opt = torch.optim.Adam(ref.parameters(), lr=torch.tensor(cfg.lr))
    opt.step()

    assert len(grads) == 1
    for gl, p in zip(grads[0], ref.parameters()):
        torch.testing.assert_close(gl, p.grad, rtol=1e-4, atol=1e-7)
    for p_l, p_r in zip(learner.model.parameters(), ref.parameters()):
        torch.testing.assert_close(p_l, p_r, rtol=1e-6, atol=1e-7)
    # the statistics report the same terms
    torch.testing.assert_close(stats["policy"], surr.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats["value"], vloss.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats["entropy"], ent.mean().detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats["bounds"], bounds.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats["grad_norm"], norm, rtol=1e-5, atol=1e-7)
    assert float(stats["coupling"]) == 0.0


# ------------------------------------------------------------------------------------------
# SAPG / CPO
# ------------------------------------------------------------------------------------------
def test_cpo_with_zero_beta_is_exactly_sapg():
    """name='cpo', beta=0, lambda_adv=0 vs name='sapg': identical batches and, after two epochs
    of two minibatches each, bit-identical parameters and statistics."""
    T, N, M = 4, 6, 3
    kw = dict(gamma=0.95, gae_lambda=0.9, num_epochs=2, num_minibatches=2, entropy_scale=0.01,
              lr=1e-3, lambda_adv=0.0)
    a = make_learner(M, N, name="cpo", beta=0.0, lambda_f=0.2, **kw)
    b = make_learner(M, N, name="sapg", **kw)
    ro = make_rollout(a.model, T, N)
    ba, bb = a.build_batch(ro), b.build_batch(ro)
    for f in dataclasses.fields(ba):
        x, y = getattr(ba, f.name), getattr(bb, f.name)
        assert (x == y) if isinstance(x, (int, float)) else torch.equal(x, y), f.name
    assert float(ba.is_coupling.sum()) == 0
    sa, sb = a.update(ro, ba), b.update(ro, bb)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    # and the update did something
    assert any(not torch.equal(p, q) for p, q in zip(a.model.parameters(), make_model(M).parameters()))


def test_leader_offpolicy_rows():
    """Off-policy rows: one follower block relabelled with the leader latent (pol 0), logp_old =
    the stored behaviour log-prob at src, ret = r*scale + gamma V_L(s')(1 - term) with V_L from
    the model (final_obs on truncation), v_old = V_L(s)."""
    T, N, M = 5, 6, 3
    learner = make_learner(M, N, gamma=0.9, reward_scale=0.5, offpolicy_blocks="1")
    ro = make_rollout(learner.model, T, N)
    batch = learner.build_batch(ro)
    off = (batch.is_ppo > 0) & (batch.is_onpolicy == 0)
    B = N // M
    assert int(off.sum()) == T * B
    src, pol = batch.src[off], batch.pol[off]
    assert torch.all(pol == 0)
    blocks = (src % N) // B
    assert torch.all(blocks == blocks[0]) and int(blocks[0]) >= 1
    assert torch.equal(batch.logp_old[off], ro.logp.reshape(-1)[src])
    y, adv = hand_td_adv(learner.model, ro, src, pol, 0.9, 0.5)
    torch.testing.assert_close(batch.ret[off], y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch.v_old[off], y - adv, rtol=1e-5, atol=1e-5)
    # the block's truncated row (t=1, first env) used final_obs, the terminated row cut
    first = int(blocks[0]) * B
    row = (src == 1 * N + first).nonzero()[0, 0]
    with torch.no_grad():
        v_fin = float(learner.model.value(ro.final_obs[1, first].unsqueeze(0), torch.tensor([0]))[0])
    assert abs(float(batch.ret[off][row]) - (0.5 * float(ro.rewards[1, first]) + 0.9 * v_fin)) < 1e-5
    last = first + B - 1
    row = (src == 2 * N + last).nonzero()[0, 0]
    assert abs(float(batch.ret[off][row]) - 0.5 * float(ro.rewards[2, last])) < 1e-6
    # no entropy bonus on off-policy rows
    assert torch.all(batch.ent_coef[off] == 0)
    # over iterations the relabelled block is drawn uniformly from the followers, never the leader
    seen = set()
    for _ in range(20):
        bt = learner.build_batch(ro)
        o = (bt.is_ppo > 0) & (bt.is_onpolicy == 0)
        seen |= set(((bt.src[o] % N) // B).tolist())
    assert seen == set(range(1, M))
    # offpolicy_blocks="all": every follower transition once, relabelled with the leader
    allb = make_learner(M, N, offpolicy_blocks="all").build_batch(ro)
    o = (allb.is_ppo > 0) & (allb.is_onpolicy == 0)
    assert sorted(allb.src[o].tolist()) == [t * N + n for t in range(T) for n in range(B, N)]
    assert torch.all(allb.pol[o] == 0)


def _raw_advantages(learner, ro, batch):
    """Unstandardised advantage of every batch row, by hand (matched by src/pol/kind)."""
    cfg, model = learner.cfg, learner.model
    T, N = ro.horizon, ro.num_envs
    pol_env = torch.arange(N) // learner.B
    v_next = next_state_values(model, ro, pol_env)
    gae_adv = hand_gae(ro.rewards * cfg.reward_scale, ro.values, v_next, ro.terminated,
                       ro.truncated, cfg.gamma, cfg.gae_lambda).reshape(-1)
    on = batch.is_onpolicy > 0
    raw = torch.zeros(batch.src.numel())
    raw[on] = gae_adv[batch.src[on]]
    rel = ~on
    _, raw[rel] = hand_td_adv(model, ro, batch.src[rel], batch.pol[rel], cfg.gamma, cfg.reward_scale)
    return raw


def test_coupling_rows_and_weights():
    """beta>0: (M-1)*B*T coupling rows with pol in 1..M-1 and src in the leader block (each
    follower sees every leader transition once); weight = beta * min(exp(A_std / lambda_f),
    w_max), A_std = the one-step TD advantage with the follower's critic standardised with all
    other advantages; lambda_f from the linear schedule at the current iteration."""
    T, N, M = 5, 6, 3
    B = N // M
    learner = make_learner(M, N, max_iterations=5, gamma=0.9, gae_lambda=0.8, reward_scale=0.5,
                           beta=0.5, lambda_f=0.7, lambda_f_schedule="linear", lambda_f_final=0.3,
                           weight_max=5.0, num_minibatches=2)
    learner.iteration = 2  # progress 2 / (5 - 1) = 0.5 -> lambda_f = 0.5
    ro = make_rollout(learner.model, T, N)
    batch = learner.build_batch(ro)
    cpl = batch.is_coupling > 0
    assert int(cpl.sum()) == (M - 1) * B * T
    src, pol = batch.src[cpl], batch.pol[cpl]
    assert torch.all((pol >= 1) & (pol <= M - 1))
    assert torch.all(src % N < B)
    for f in range(1, M):
        assert sorted(src[pol == f].tolist()) == [t * N + n for t in range(T) for n in range(B)]
    assert torch.all(batch.is_ppo[cpl] == 0)
    # all advantages standardised together
    raw = _raw_advantages(learner, ro, batch)
    std = (raw - raw.mean()) / (raw.std() + 1e-8)
    torch.testing.assert_close(batch.adv, std, rtol=1e-4, atol=1e-5)
    w = torch.minimum(torch.exp(std[cpl] / 0.5), torch.tensor(5.0))
    assert (w > 4.999).any() and (w < 1.0).any()  # clamp and down-weighting both exercised
    torch.testing.assert_close(batch.weight[cpl], 0.5 * w, rtol=1e-4, atol=1e-6)
    assert torch.all(batch.weight[~cpl] == 0)
    # row proportions and minibatches: R = T N (1 + 1/M + (M-1)/M) = 2 T N
    R = batch.src.numel()
    assert R == 2 * T * N
    assert batch.num_minibatches == 4


def test_coupling_weights_use_each_followers_lambda_tier():
    """lambda_f_tiers = [0.2, 0.5, 1.0] (M=4): coupling rows of follower f use lambda_f[f-1]:
    weight = beta * min(exp(A_std / lambda_{pol}), w_max) row by row."""
    T, N, M = 3, 8, 4
    learner = make_learner(M, N, beta=0.1, lambda_f_tiers=[0.2, 0.5, 1.0], weight_max=1e6)
    batch = learner.build_batch(make_rollout(learner.model, T, N))
    cpl = batch.is_coupling > 0
    lam = torch.tensor([0.2, 0.5, 1.0])[batch.pol[cpl] - 1]
    torch.testing.assert_close(batch.weight[cpl], 0.1 * torch.exp(batch.adv[cpl] / lam),
                               rtol=1e-5, atol=1e-8)


def test_reverse_kl_shaping_of_follower_advantage():
    """lambda_ppo > 0 (advantages not standardised): follower on-policy advantages change by
    -lambda_ppo (log mu_f(a|s) - log pi_L(a|s)) with pi_L the current leader; leader rows and
    relabelled rows are unchanged."""
    T, N, M, lam = 3, 6, 3, 0.3
    a = make_learner(M, N, normalize_advantage=False, lambda_ppo=lam)
    b = make_learner(M, N, normalize_advantage=False, lambda_ppo=0.0)
    ro = make_rollout(a.model, T, N)
    ba, bb = a.build_batch(ro), b.build_batch(ro)
    assert torch.equal(ba.src, bb.src)
    on = ba.is_onpolicy > 0
    src = ba.src[on]
    obs = ro.obs[:-1].reshape(-1, OBS)[src]
    act = ro.actions.reshape(-1, ACT)[src]
    with torch.no_grad():
        mu_l = a.model.mean_action(obs, torch.zeros_like(src))
    ls_l = a.model.log_std[0].detach()
    logp_l = (-0.5 * ((act - mu_l) / ls_l.exp()) ** 2 - ls_l - 0.5 * LOG_2PI).sum(-1)
    follower = (ba.pol[on] > 0).float()
    expect = -lam * (ro.logp.reshape(-1)[src] - logp_l) * follower
    torch.testing.assert_close(ba.adv[on] - bb.adv[on], expect, rtol=1e-4, atol=1e-5)
    assert torch.equal(ba.adv[~on], bb.adv[~on])
    assert float(expect.abs().max()) > 1e-2


def test_coupling_fraction_subsamples_leader_transitions():
    """coupling_fraction=0.5 with B=4: each follower couples to its own 2 leader envs, so
    (M-1)*2*T coupling rows, distinct envs within the leader block."""
    T, N, M = 3, 12, 3
    learner = make_learner(M, N, beta=1e-3, coupling_fraction=0.5)
    ro = make_rollout(learner.model, T, N)
    batch = learner.build_batch(ro)
    cpl = batch.is_coupling > 0
    assert int(cpl.sum()) == (M - 1) * 2 * T
    for f in range(1, M):
        envs = batch.src[cpl][batch.pol[cpl] == f] % N
        assert len(set(envs.tolist())) == 2 and all(e < 4 for e in envs.tolist())
        assert len(envs) == 2 * T



def test_coupling_fraction_keeps_the_expected_loss():
    """coupling_fraction f = 0.5 (B = 6, 3 of the leader's envs per follower): each coupling
    row counts 1 / f times and the minibatch is normalised by the size it would have with every
    coupling row, n = n_ppo + n_cpl / f. So the 'coupling' statistic and the gradient equal
    beta * (n_cpl / f) / n * mean_cpl(-w log pi_f), an unbiased estimate of the full term."""
    T, N, M = 2, 18, 3
    beta, f = 0.3, 0.5
    learner = make_learner(M, N, beta=beta, lambda_f=0.5, value_coef=0.0, entropy_coef=0.0,
                           entropy_scale=0.0, bounds_coef=0.0, max_grad_norm=1e9, num_epochs=1,
                           lr_schedule="fixed", coupling_fraction=f)
    ro = make_rollout(learner.model, T, N)
    batch = learner.build_batch(ro)
    assert batch.coupling_scale == 2.0
    cpl = batch.is_coupling > 0
    n_ppo, n_cpl = int((~cpl).sum()), int(cpl.sum())
    assert n_cpl == (M - 1) * 3 * T and n_ppo == T * N + T * 6  # on-policy + one off-policy block
    batch = dataclasses.replace(batch, num_minibatches=1, adv=torch.where(cpl, batch.adv, 0.0))
    ref = copy.deepcopy(learner.model)
    grads = _capture_grads(learner)
    stats = learner.update(ro, batch)
    w = torch.minimum(torch.exp(batch.adv[cpl] / 0.5), torch.tensor(100.0))
    src, pol = batch.src[cpl], batch.pol[cpl]
    mu, log_std, _ = ref(ro.obs[:-1].reshape(-1, OBS)[src], pol)
    act = ro.actions.reshape(-1, ACT)[src]
    logp = (-0.5 * ((act - mu) / log_std.exp()) ** 2 - log_std - 0.5 * LOG_2PI).sum(-1)
    n_full = n_ppo + n_cpl / f  # rows of the same batch without subsampling
    term = beta * (n_cpl / f) / n_full * (-(w * logp)).mean()
    term.backward()
    torch.testing.assert_close(stats["coupling"], term.detach(), rtol=1e-5, atol=1e-7)
    for gl, p in zip(grads[0], ref.parameters()):
        expect = p.grad if p.grad is not None else torch.zeros_like(p)
        got = gl if gl is not None else torch.zeros_like(p)
        torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-8)

def test_row_proportions_m6():
    """M=6, beta>0: PPO rows are 7/12 and coupling rows 5/12 of the batch (ALGORITHMS.md s.5)."""
    T, N, M = 2, 12, 6
    learner = make_learner(M, N, beta=1e-3)
    batch = learner.build_batch(make_rollout(learner.model, T, N))
    R = batch.src.numel()
    assert float(batch.is_ppo.sum()) / R == pytest.approx(7 / 12)
    assert float(batch.is_coupling.sum()) / R == pytest.approx(5 / 12)


def test_loss_weighting_of_coupling_rows():
    """With PPO advantages zeroed and critic/entropy/bounds terms off, the update's gradient is
    beta * (n_cpl / n) * grad mean_cpl(-w log pi_f(a_L | s_L)) over one minibatch of all rows,
    and the 'coupling' statistic equals beta * (n_cpl / n) * mean_cpl(-w log pi_f)."""
    T, N, M = 4, 6, 3
    beta = 0.3
    learner = make_learner(M, N, beta=beta, lambda_f=0.5, value_coef=0.0, entropy_coef=0.0,
                           entropy_scale=0.0, bounds_coef=0.0, max_grad_norm=1e9, num_epochs=1,
                           lr_schedule="fixed")
    ro = make_rollout(learner.model, T, N)
    batch = learner.build_batch(ro)
    cpl = batch.is_coupling > 0
    batch = dataclasses.replace(batch, num_minibatches=1, adv=torch.where(cpl, batch.adv, 0.0))
    ref = copy.deepcopy(learner.model)
    grads = _capture_grads(learner)
    stats = learner.update(ro, batch)
    n, n_cpl = batch.src.numel(), int(cpl.sum())
    assert n_cpl / n == pytest.approx((M - 1) / (2 * M))
    w = torch.minimum(torch.exp(batch.adv[cpl] / 0.5), torch.tensor(100.0))
    src, pol = batch.src[cpl], batch.pol[cpl]
    obs = ro.obs[:-1].reshape(-1, OBS)[src]
    act = ro.actions.reshape(-1, ACT)[src]
    mu, log_std, _ = ref(obs, pol)
    logp = (-0.5 * ((act - mu) / log_std.exp()) ** 2 - log_std - 0.5 * LOG_2PI).sum(-1)
    term = beta * (n_cpl / n) * (-(w * logp)).mean()
    term.backward()
    torch.testing.assert_close(stats["coupling"], term.detach(), rtol=1e-5, atol=1e-7)
    assert abs(float(stats["policy"])) < 1e-12
    for gl, p in zip(grads[0], ref.parameters()):
        expect = p.grad if p.grad is not None else torch.zeros_like(p)
        got = gl if gl is not None else torch.zeros_like(p)
        torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-8)
    # the leader's log-std gets no coupling gradient; followers' do
    ls_grad = grads[0][[n for n, _ in learner.model.named_parameters()].index("log_std")]
    assert torch.all(ls_grad[0] == 0) and torch.all(ls_grad[1:].abs() > 0)


def test_full_cpo_loss_one_minibatch():
    """M=3, beta>0, every term active, one minibatch of all R rows: the clipped gradient equals
    that of (1/R) [sum_PPO surr + sum_cpl beta w (-log pi_f) + 0.5 c_v sum_PPO(clipped value
    MSE, normalised units) - sum_PPO(c_ent(pol) H) + c_b sum_PPO(bounds)], where PPO rows are
    on- and off-policy rows: every term divided by the full minibatch size R, as the CPO
    authors do (ALGORITHMS.md section 5; a mean over PPO rows for the critic, entropy and
    bounds terms would make them R / n_PPO times stronger); the statistics match these terms."""
    T, N, M = 4, 6, 3
    learner = make_learner(M, N, mu_scale=300.0, beta=0.2, lambda_f=0.5, gamma=0.9,
                           gae_lambda=0.8, entropy_coef=0.01, entropy_scale=0.05, bounds_coef=0.1,
                           max_grad_norm=0.05, num_epochs=1, lr=1e-2, lr_schedule="fixed")
    cfg = learner.cfg
    ro = make_rollout(learner.model, T, N)
    ro.logp.add_(0.4 * torch.randn(ro.logp.shape, generator=torch.Generator().manual_seed(4)))
    batch = learner.build_batch(ro)
    batch = dataclasses.replace(batch, num_minibatches=1)
    ref = copy.deepcopy(learner.model)
    ref.value_rms.update(batch.ret[batch.is_ppo > 0])
    grads = _capture_grads(learner)
    stats = learner.update(ro, batch)
    R = batch.src.numel()
    ppo, cpl = batch.is_ppo > 0, batch.is_coupling > 0
    obs = ro.obs[:-1].reshape(-1, OBS)[batch.src]
    act = ro.actions.reshape(-1, ACT)[batch.src]
    mu, log_std, v = ref(obs, batch.pol)
    logp = (-0.5 * ((act - mu) / log_std.exp()) ** 2 - log_std - 0.5 * LOG_2PI).sum(-1)
    ratio = torch.exp(logp - batch.logp_old)
    A = batch.adv
    surr = -torch.min(ratio * A, ratio.clamp(0.8, 1.2) * A)
    policy = surr[ppo].sum() / R
    coupling = (batch.weight[cpl] * -logp[cpl]).sum() / R
    ret_n, v_old_n = ref.norm_value(batch.ret), ref.norm_value(batch.v_old)
    v_cl = v_old_n + (v - v_old_n).clamp(-0.2, 0.2)
    vloss = torch.max((v - ret_n) ** 2, (v_cl - ret_n) ** 2)[ppo].sum() / R
    ent = (log_std + 0.5 * (1.0 + LOG_2PI)).sum(-1)
    coef = entropy_coefficients(cfg)[batch.pol] * batch.is_onpolicy
    entropy = (coef * ent)[ppo].sum() / R
    bounds = ((mu - 1.1).clamp(min=0) ** 2 + (-1.1 - mu).clamp(min=0) ** 2).sum(-1)[ppo].sum() / R
    assert int(cpl.sum()) == R - int(ppo.sum()) > 0  # the reduction differs from a PPO-row mean
    loss = policy + coupling + 0.5 * cfg.value_coef * vloss - entropy + cfg.bounds_coef * bounds
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), cfg.max_grad_norm)
    assert float(norm) > cfg.max_grad_norm
    for gl, p in zip(grads[0], ref.parameters()):
        torch.testing.assert_close(gl, p.grad, rtol=1e-4, atol=1e-7)
    for key, val in (("policy", policy), ("coupling", coupling), ("value", vloss),
                     ("bounds", bounds), ("grad_norm", norm)):
        torch.testing.assert_close(stats[key], val.detach(), rtol=1e-5, atol=1e-6)
    onp = batch.is_onpolicy > 0
    torch.testing.assert_close(stats["entropy"], ent[onp].mean().detach(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------
# schedules and coefficients
# ------------------------------------------------------------------------------------------
def test_entropy_coefficients_m6():
    """M=6: [entropy_coef, 0.5, 0.4, 0.3, 0.2, 0.1 times s_ent]; on-policy rows carry their
    policy's coefficient, relabelled rows 0."""
    cfg = AlgoConfig(num_policies=6, entropy_coef=0.003, entropy_scale=0.01)
    torch.testing.assert_close(entropy_coefficients(cfg),
                               torch.tensor([0.003, 0.005, 0.004, 0.003, 0.002, 0.001]))
    torch.testing.assert_close(entropy_coefficients(AlgoConfig(num_policies=1, entropy_coef=0.02)),
                               torch.tensor([0.02]))
    learner = make_learner(6, 12, entropy_coef=0.003, entropy_scale=0.01, beta=1e-3)
    batch = learner.build_batch(make_rollout(learner.model, 2, 12))
    on = batch.is_onpolicy > 0
    torch.testing.assert_close(batch.ent_coef[on], entropy_coefficients(learner.cfg)[batch.pol[on]])
    assert torch.all(batch.ent_coef[~on] == 0)


def test_lambda_f_schedules_by_hand():
    """constant; linear l0 + (l1 - l0) p; cosine l1 + (l0 - l1)(1 + cos(pi p))/2; progress
    clamped to [0, 1]; tiers override everything."""
    base = dict(num_policies=4, lambda_f=0.4, lambda_f_final=0.1)
    c = AlgoConfig(lambda_f_schedule="constant", **base)
    torch.testing.assert_close(lambda_f_at(c, 0.7), torch.full((3,), 0.4))
    lin = AlgoConfig(lambda_f_schedule="linear", **base)
    torch.testing.assert_close(lambda_f_at(lin, 0.25), torch.full((3,), 0.325))
    torch.testing.assert_close(lambda_f_at(lin, 0.0), torch.full((3,), 0.4))
    torch.testing.assert_close(lambda_f_at(lin, 1.5), torch.full((3,), 0.1))
    cos = AlgoConfig(lambda_f_schedule="cosine", **base)
    torch.testing.assert_close(lambda_f_at(cos, 0.0), torch.full((3,), 0.4))
    torch.testing.assert_close(lambda_f_at(cos, 0.5), torch.full((3,), 0.25))
    torch.testing.assert_close(lambda_f_at(cos, 0.25), torch.full((3,), 0.1 + 0.15 * (1 + math.sqrt(0.5))))
    torch.testing.assert_close(lambda_f_at(cos, -1.0), torch.full((3,), 0.4))
    torch.testing.assert_close(lambda_f_at(cos, 1.0), torch.full((3,), 0.1))
    tiers = AlgoConfig(lambda_f_schedule="cosine", lambda_f_tiers=[0.1, 0.2, 0.3], **base)
    torch.testing.assert_close(lambda_f_at(tiers, 0.5), torch.tensor([0.1, 0.2, 0.3]))


def test_adapt_beta_dual_ascent():
    """log beta_f += beta_lr (KL_f / target - 1), step clamped to [-2, 2]: grows above the
    target, shrinks below, unchanged at it; leader stays 0; no-op without beta_adapt."""
    learner = make_learner(5, 10, beta=0.01, beta_adapt=True, kl_target=0.3, beta_lr=1.0)
    learner.adapt_beta(torch.tensor([0.6, 0.15, 0.3, 3.0]))
    expect = torch.tensor([0.0, 0.01 * math.e, 0.01 * math.exp(-0.5), 0.01, 0.01 * math.exp(2.0)])
    torch.testing.assert_close(learner.beta, expect)
    assert learner.beta[1] > 0.01 and learner.beta[2] < 0.01
    off = make_learner(5, 10, beta=0.01, beta_adapt=False)
    off.adapt_beta(torch.tensor([0.6, 0.15, 0.3, 3.0]))
    torch.testing.assert_close(off.beta, torch.tensor([0.0, 0.01, 0.01, 0.01, 0.01]))


def test_adaptive_learning_rate_rule():
    """Adaptive LR from KL(new || old) on on-policy rows (old = stored mu and log-std snapshot,
    new = the policy before the step; rl_games' direction): lr / 1.5 when KL > 2 thr, lr * 1.5 when KL < thr / 2,
    clamped to [lr_min, lr_max]; the optimizer uses the same (device) tensor. 'approx_kl'
    reports that KL. Linear schedule: lr = max(lr0 (1 - (it + 1) / max_it), lr_min)."""
    T, N = 4, 4
    kw = dict(num_epochs=1, num_minibatches=1, lr=1e-3, kl_threshold=0.016, lr_max=1.2e-3)
    big = make_learner(1, N, **kw)
    ro = make_rollout(big.model, T, N)
    ro.mu.add_(0.5)  # far from the current policy
    with torch.no_grad():
        mu_new = big.model.mean_action(ro.obs[:-1].reshape(-1, OBS), torch.zeros(T * N, dtype=torch.long))
        ls_old, ls_new = ro.log_std[0], big.model.log_std[0]
        mu_old = ro.mu.reshape(-1, ACT)
        kl = (ls_old - ls_new + (torch.exp(2 * ls_new) + (mu_old - mu_new) ** 2)
              / (2 * torch.exp(2 * ls_old)) - 0.5).sum(-1).mean()
    assert float(kl) > 2 * 0.016
    stats = big.update(ro, big.build_batch(ro))
    torch.testing.assert_close(stats["approx_kl"], kl, rtol=1e-5, atol=1e-7)
    assert float(big.lr) == pytest.approx(1e-3 / 1.5, rel=1e-6)  # float32 tensor
    assert big.optimizer.param_groups[0]["lr"] is big.lr
    # KL = 0 (stored snapshot = current policy) -> lr * 1.5 = 1.5e-3, clamped to lr_max = 1.2e-3
    small = make_learner(1, N, **kw)
    ro2 = make_rollout(small.model, T, N)
    with torch.no_grad():
        ro2.mu.copy_(small.model.mean_action(ro2.obs[:-1].reshape(-1, OBS),
                                             torch.zeros(T * N, dtype=torch.long)).view(T, N, ACT))
        ro2.log_std.copy_(small.model.log_std)
    stats = small.update(ro2, small.build_batch(ro2))
    assert float(stats["approx_kl"]) < 1e-10
    assert float(small.lr) == pytest.approx(1.2e-3, rel=1e-6)
    # lr_adapt_every=minibatch (rl_games' legacy rule): one change per minibatch, 2 here
    for every, expect in (("epoch", 1e-3 / 1.5), ("minibatch", 1e-3 / 1.5 ** 2)):
        mb = make_learner(1, N, **dict(kw, num_minibatches=2, lr_adapt_every=every))
        ro3 = make_rollout(mb.model, T, N)
        ro3.mu.add_(0.5)  # every minibatch's KL is far above 2 thr
        mb.update(ro3, mb.build_batch(ro3))
        assert float(mb.lr) == pytest.approx(expect, rel=1e-6), every
    # linear schedule
    lin = make_learner(1, N, max_iterations=4, num_epochs=1, num_minibatches=1, lr=1e-3,
                       lr_schedule="linear", lr_min=1e-5)
    lrs = []
    for _ in range(4):
        lin.update(ro, lin.build_batch(ro))
        lrs.append(float(lin.lr))
    assert lrs == pytest.approx([7.5e-4, 5e-4, 2.5e-4, 1e-5], rel=1e-6)


def test_adaptive_lr_once_per_epoch_from_refreshed_references():
    """rl_games' semantics (ALGORITHMS.md section 9): the LR is constant within a mini-epoch
    and changes once at its end, by the rule applied to that epoch's mean KL(pre-step policy ||
    reference) over on-policy rows, where a row's reference is the behaviour policy in
    epoch 0 and afterwards the row's own pre-step (mu, sigma) from the previous epoch.
    Replayed by hand from the learner's generator and a snapshot taken before every step."""
    T, N, E, J = 4, 6, 3, 2
    thr = 0.02
    learner = make_learner(1, N, num_epochs=E, num_minibatches=J, lr=2e-3, kl_threshold=thr,
                           lr_min=1e-5, lr_max=1e-1, max_grad_norm=10.0)
    model = learner.model
    ro = make_rollout(model, T, N)
    batch = learner.build_batch(ro)
    g = torch.Generator().set_state(learner.gen.get_state())
    obs = ro.obs[:-1].reshape(T * N, OBS)
    pol = torch.zeros(T * N, dtype=torch.long)
    snaps = []  # (pre-step mu of every rollout row, pre-step log-std, lr used by the step)
    step = learner.optimizer.step

    def recording_step(*a, **kw):
        with torch.no_grad():
            snaps.append((model.mean_action(obs, pol).clone(), model.log_std[0].detach().clone(),
                          float(learner.lr)))
        return step(*a, **kw)

    learner.optimizer.step = recording_step
    stats = learner.update(ro, batch)
    assert len(snaps) == E * J
    R = batch.src.numel()
    ref_mu = ro.mu.reshape(T * N, ACT)[batch.src].clone()
    ref_ls = ro.log_std[0].expand(R, ACT).clone()
    lr, kls = 2e-3, []
    for e in range(E):
        chunks = torch.randperm(R, generator=g).tensor_split(J)
        torch.randperm(0, generator=g)  # the (empty) coupling permutation of the same epoch
        kl_sum, rows = 0.0, 0
        for j, rows_j in enumerate(chunks):
            mu_pre, ls_pre, lr_used = snaps[e * J + j]
            assert lr_used == pytest.approx(lr, rel=1e-6)  # constant within the epoch
            mu_new = mu_pre[batch.src[rows_j]].double()
            ls_new = ls_pre.double().expand_as(mu_new)
            ls_old, mu_old = ref_ls[rows_j].double(), ref_mu[rows_j].double()
            # KL(current || reference), the direction of rl_games' policy_kl
            kl = (ls_old - ls_new + (torch.exp(2 * ls_new) + (mu_old - mu_new) ** 2)
                  / (2 * torch.exp(2 * ls_old)) - 0.5).sum(-1)
            kl_sum += float(kl.sum())
            rows += rows_j.numel()
            ref_mu[rows_j], ref_ls[rows_j] = mu_new.float(), ls_new.float()
        kls.append(kl_sum / rows)
        lr = lr / 1.5 if kls[-1] > 2 * thr else (lr * 1.5 if kls[-1] < thr / 2 else lr)
        lr = min(max(lr, 1e-5), 1e-1)
    assert kls[0] > 0  # epoch 0 measures against the behaviour policy
    assert float(learner.lr) == pytest.approx(lr, rel=1e-5)
    # float32 KL of nearby policies cancels (log-std terms), hence the tolerance
    assert float(stats["approx_kl"]) == pytest.approx(sum(kls) / E, rel=2e-3)
    assert len({round(x[2], 12) for x in snaps}) >= 2  # the LR did move between epochs


def test_learner_diagnostics_by_hand():
    """Learner.diagnostics: rho = pi_L(a|s) / mu_m(a|s) on S rows of every block m (leader's
    current policy vs stored behaviour log-prob): per-follower ESS and mean|rho-1|, the paper's
    overall ESS pooled over all M blocks (leader's rows included), the followers-only pooled
    ESS, and the KL matrix of all policies on sampled states (rows replayed from the learner's
    generator)."""
    T, N, M, S = 4, 6, 3, 5
    learner = make_learner(M, N)
    ro = make_rollout(learner.model, T, N)
    B = N // M
    g = torch.Generator().set_state(learner.gen.get_state())
    out = learner.diagnostics(ro, samples=S)
    idx = torch.randint(T * B, (M, S), generator=g)
    flat = torch.randint(T * N, (S,), generator=g)
    ls_l = learner.model.log_std[0].detach()
    log_rho = torch.zeros(M, S)
    for m in range(M):
        for j in range(S):
            t, n = divmod(int(idx[m, j]), B)
            n += m * B
            with torch.no_grad():
                mu_l = learner.model.mean_action(ro.obs[t, n].unsqueeze(0), torch.tensor([0]))[0]
            lp = float((-0.5 * ((ro.actions[t, n] - mu_l) / ls_l.exp()) ** 2 - ls_l - 0.5 * LOG_2PI).sum())
            log_rho[m, j] = lp - float(ro.logp[t, n])
    rho = log_rho.double().exp()
    ess = rho.sum(1) ** 2 / (S * (rho ** 2).sum(1))
    torch.testing.assert_close(out["ess_follower"].double(), ess[1:], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["is_dev_follower"].double(), (rho[1:] - 1).abs().mean(1), rtol=1e-4, atol=1e-6)
    r = rho.reshape(-1)
    torch.testing.assert_close(out["ess_overall"].double(), r.sum() ** 2 / (r.numel() * (r ** 2).sum()),
                               rtol=1e-4, atol=1e-6)
    rf = rho[1:].reshape(-1)
    torch.testing.assert_close(out["ess_followers_pooled"].double(), rf.sum() ** 2 / (rf.numel() * (rf ** 2).sum()),
                               rtol=1e-4, atol=1e-6)
    states = ro.obs[:-1].reshape(T * N, -1)[flat]
    with torch.no_grad():
        mus = [learner.model.mean_action(states, torch.full((S,), m)) for m in range(M)]
    ls = learner.model.log_std.detach()
    K = torch.zeros(M, M)
    for i in range(M):
        for j in range(M):
            K[i, j] = (ls[j] - ls[i] + (torch.exp(2 * ls[i]) + (mus[i] - mus[j]) ** 2)
                       / (2 * torch.exp(2 * ls[j])) - 0.5).sum(-1).mean()
    torch.testing.assert_close(out["kl_matrix"], K, rtol=1e-4, atol=1e-6)
    assert make_learner(1, 4).diagnostics(ro, 4) == {}  # nothing to compare under PPO


@pytest.mark.parametrize("M,separate,priv", [(1, True, 0), (4, True, 0), (4, False, 0), (3, True, 5)])
def test_latent_as_first_layer_bias_equals_concatenated_input(M, separate, priv):
    """heads() applies the latent as a per-policy bias of the first layer (W_s s + W_phi phi_m
    + b); values and gradients equal the textbook network on the concatenated input [s, phi]."""
    model = EnsembleActorCritic(OBS, ACT, M, latent_dim=4, actor_hidden=[16, 8], critic_hidden=[8],
                                separate_critic=separate, privileged_dim=priv, seed=3)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        model.log_std.copy_(0.3 * torch.randn(model.log_std.shape, generator=g))
    R = 11
    base = torch.randn(R, OBS, generator=g)
    cb = torch.randn(R, priv, generator=g) if priv else None
    pol = torch.randint(M, (R,), generator=g)
    mu, log_std, v = model.heads(base, pol, critic_base=cb)
    ref_model = copy.deepcopy(model)
    phi = ref_model.latents[pol]  # textbook: concatenate the latent to the input
    h = ref_model.actor_trunk(torch.cat([base, phi], -1))
    ref_mu = ref_model.mu_head(h)
    if priv:
        ref_v = ref_model.critic(torch.cat([cb, phi], -1)).squeeze(-1)
    elif separate:
        ref_v = ref_model.critic(torch.cat([base, phi], -1)).squeeze(-1)
    else:
        ref_v = ref_model.value_head(h).squeeze(-1)
    ref_log_std = ref_model.log_std[pol]
    torch.testing.assert_close(mu, ref_mu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(v, ref_v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(log_std, ref_log_std)
    w = torch.randn(R, ACT, generator=g)
    (mu * w).sum().add((v * v).sum()).add((log_std * w).sum()).backward()
    (ref_mu * w).sum().add((ref_v * ref_v).sum()).add((ref_log_std * w).sum()).backward()
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_minibatch_mode_count_keeps_ppos_number_of_gradient_steps():
    """minibatch_mode=count: CPO's 2 T N rows go into num_minibatches (=2) larger minibatches
    per epoch, each mixing PPO and coupling rows in the iteration's proportion, so the
    optimiser takes num_epochs * num_minibatches steps as PPO does; 'size' takes 4 per epoch."""
    T, N, M = 2, 12, 3
    steps = {}
    for mode in ("size", "count"):
        learner = make_learner(M, N, beta=1e-3, num_epochs=3, num_minibatches=2, minibatch_mode=mode)
        ro = make_rollout(learner.model, T, N)
        batch = learner.build_batch(ro)
        assert batch.src.numel() == T * N + T * (N // M) + (M - 1) * T * (N // M)  # = 2 T N
        sizes = [(idx.numel(), k) for idx, _, k in learner._minibatches(ro, batch)]
        if mode == "count":
            assert batch.num_minibatches == 2
            # 24 + 8 PPO rows and 16 coupling rows, halved
            assert sizes == [(24, 16), (24, 16)]
        else:
            assert batch.num_minibatches == 4 and len(sizes) == 4
        grads = _capture_grads(learner)
        learner.update(ro, batch)
        steps[mode] = len(grads)
    assert steps == {"size": 12, "count": 6}
