"""The DIAYN-style discriminator beats chance when policies differ (and only then), and the
learner labels rows by policy block and gives the bonus to followers only."""
from __future__ import annotations

import copy
import math

import torch
from torch.nn import functional as F

from cpo.algo.discriminator import Discriminator
from tests.test_learner import hand_gae, make_learner, make_rollout

M, OBS_D, ACT_D = 4, 3, 2
# four well separated 2-D action means; with std 0.3 the Bayes accuracy is
# (1 - Phi(-0.6 / 0.3))^2 = (1 - 0.0228)^2 = 0.955 (the [-1, 1] action clip does not matter:
# the decision boundaries are at 0)
MEANS = torch.tensor([[-0.6, -0.6], [-0.6, 0.6], [0.6, -0.6], [0.6, 0.6]])


def _sample(n: int, means: torch.Tensor, g: torch.Generator):
    label = torch.randint(M, (n,), generator=g)
    obs = torch.randn(n, OBS_D, generator=g)  # uninformative states
    act = means[label] + 0.3 * torch.randn(n, ACT_D, generator=g)
    return obs, act, label


def _train_and_eval(means: torch.Tensor, steps: int = 300):
    torch.manual_seed(0)
    disc = Discriminator(OBS_D, ACT_D, M, [64, 64])
    opt = torch.optim.Adam(disc.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        obs, act, label = _sample(256, means, g)  # fresh samples: no memorisation
        ce, _ = disc.loss(obs, act, label)
        opt.zero_grad()
        ce.backward()
        opt.step()
    obs, act, label = _sample(4000, means, torch.Generator().manual_seed(2))
    with torch.no_grad():
        ce, acc = disc.loss(obs, act, label)
    bonus = disc.bonus(obs, act, label)
    return float(ce), float(acc), bonus


def test_discriminator_beats_chance_on_distinct_policies():
    """Distinct action means: held-out accuracy > 0.9 (chance 0.25, Bayes 0.955); the bonus
    log q(z|s,a) + log M of the true label is clearly positive (~ log 4 - CE)."""
    ce, acc, bonus = _train_and_eval(MEANS)
    assert acc > 0.9, acc
    assert ce < 0.5 * math.log(M)
    assert float(bonus.mean()) > 0.8
    torch.testing.assert_close(bonus.mean(), torch.tensor(math.log(M) - ce), rtol=1e-4, atol=1e-4)


def test_discriminator_at_chance_on_identical_policies():
    """Identical action distributions: accuracy stays near chance (< 0.35) and the bonus is ~0
    (the -log p(z) term makes it zero at chance)."""
    ce, acc, bonus = _train_and_eval(torch.zeros(M, ACT_D))
    assert acc < 0.35, acc
    assert abs(ce - math.log(M)) < 0.05
    assert abs(float(bonus.mean())) < 0.05


def test_learner_discriminator_update_labels_rows_by_block():
    """Learner.update_discriminator reports disc_loss/disc_acc equal to the cross-entropy and
    accuracy of the pre-step discriminator on the same rows labelled with their env's block
    (one step, rows drawn from the learner's generator)."""
    T, N = 3, 8
    torch.manual_seed(0)
    learner = make_learner(M, N, lambda_adv=0.5, disc_hidden=[32], disc_steps=1, disc_batch=16)
    ro = make_rollout(learner.model, T, N)
    disc0 = copy.deepcopy(learner.disc)
    g = torch.Generator().set_state(learner.gen.get_state())
    out = learner.update_discriminator(ro)
    assert set(out) == {"disc_loss", "disc_acc"}
    idx = torch.randint(T * N, (16,), generator=g)
    obs_n = learner.model.obs_rms.normalize(ro.obs[:-1].reshape(T * N, -1))[idx]
    act = ro.actions.reshape(T * N, -1)[idx]
    label = (idx % N) // (N // M)  # block of the env, not the time step
    with torch.no_grad():
        logits = disc0(obs_n, act)
    torch.testing.assert_close(out["disc_loss"], F.cross_entropy(logits, label), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["disc_acc"], (logits.argmax(-1) == label).float().mean())
    assert any(not torch.equal(p, q) for p, q in zip(learner.disc.parameters(), disc0.parameters()))


def test_learner_bonus_only_on_follower_rows():
    """build_batch with lambda_adv > 0 vs 0: leader on-policy and off-policy returns are
    bit-identical; follower on-policy returns differ by exactly the GAE of
    lambda_adv * (log q(z = block | s, a) + log M) (GAE is linear in the reward)."""
    T, N, lam_adv = 4, 8, 0.5
    B = N // M
    torch.manual_seed(0)
    a = make_learner(M, N, gamma=0.9, gae_lambda=0.8, reward_scale=0.5, lambda_adv=lam_adv,
                     disc_hidden=[32], disc_steps=3, disc_batch=16)
    b = make_learner(M, N, gamma=0.9, gae_lambda=0.8, reward_scale=0.5, lambda_adv=0.0)
    ro = make_rollout(a.model, T, N)
    a.update_discriminator(ro)
    b.gen.set_state(a.gen.get_state())
    ba, bb = a.build_batch(ro), b.build_batch(ro)
    assert torch.equal(ba.src, bb.src) and torch.equal(ba.pol, bb.pol)
    on = ba.is_onpolicy > 0
    leader_on = on & (ba.pol == 0)
    assert torch.equal(ba.ret[leader_on], bb.ret[leader_on])
    off = ~on
    assert int(off.sum()) > 0 and torch.equal(ba.ret[off], bb.ret[off])
    # follower rows: the difference is the GAE of the bonus alone
    obs_n = a.model.obs_rms.normalize(ro.obs[:-1]).reshape(T * N, -1)
    label = (torch.arange(N) // B).repeat(T)
    bonus = a.disc.bonus(obs_n, ro.actions.reshape(T * N, -1), label).view(T, N)
    bonus = bonus * (torch.arange(N) // B > 0).float()
    zeros = torch.zeros(T, N)
    diff = hand_gae(lam_adv * bonus, zeros, zeros, ro.terminated, ro.truncated, 0.9, 0.8).reshape(-1)
    torch.testing.assert_close(ba.ret[on] - bb.ret[on], diff[ba.src[on]], rtol=1e-4, atol=1e-5)
    assert float(diff.abs().max()) > 1e-3  # the bonus is not trivially zero
