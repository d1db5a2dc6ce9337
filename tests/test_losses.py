"""Numbers for the per-row losses of cpo/algo/losses.py."""
from __future__ import annotations

import math

import torch
from torch.distributions import Independent, Normal, kl_divergence

from cpo.algo import losses


def test_ppo_surrogate_by_hand():
    """-min(rho A, clip(rho, 0.8, 1.2) A) for ratios inside and outside the clip range.

    rows (rho, A) -> loss:
      (1.1,  2) -> -min(2.2, 2.2)   = -2.2   (inside)
      (1.5,  2) -> -min(3.0, 2.4)   = -2.4   (clipped above, positive A)
      (0.5,  2) -> -min(1.0, 1.6)   = -1.0   (unclipped: pessimistic side)
      (0.5, -2) -> -min(-1.0, -1.6) =  1.6   (clipped below, negative A)
      (1.5, -2) -> -min(-3.0, -2.4) =  3.0   (unclipped: pessimistic side)
      (0.9, -1) -> -min(-0.9, -0.9) =  0.9   (inside)
    """
    rho = torch.tensor([1.1, 1.5, 0.5, 0.5, 1.5, 0.9], dtype=torch.float64)
    adv = torch.tensor([2.0, 2.0, 2.0, -2.0, -2.0, -1.0], dtype=torch.float64)
    logp_old = torch.tensor([-1.0, 0.3, 2.0, -0.5, 0.0, 1.0], dtype=torch.float64)
    logp = logp_old + torch.log(rho)
    loss, ratio = losses.ppo_surrogate(logp, logp_old, adv, clip_eps=0.2)
    torch.testing.assert_close(ratio, rho, rtol=1e-12, atol=0)
    torch.testing.assert_close(loss, torch.tensor([-2.2, -2.4, -1.0, 1.6, 3.0, 0.9],
                                                  dtype=torch.float64), rtol=0, atol=1e-12)


def test_ppo_surrogate_gradient_zero_when_clipped():
    """Clipped rows (rho=1.5, A>0) give no gradient; inside rows give d/dlogp = -rho A."""
    logp = torch.tensor([math.log(1.5), math.log(1.1)], dtype=torch.float64, requires_grad=True)
    loss, _ = losses.ppo_surrogate(logp, torch.zeros(2, dtype=torch.float64),
                                   torch.tensor([2.0, 2.0], dtype=torch.float64), 0.2)
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([0.0, -2.2], dtype=torch.float64))


def test_value_loss_clipped_and_unclipped_by_hand():
    """(v - y)^2 unclipped; clipped: max((v - y)^2, (v_old + clip(v - v_old, +-0.2) - y)^2).

    rows (v, v_old, y):
      (1.0, 0.0, 2.0): err 1.0; v_clip = 0.2 -> 3.24; max 3.24
      (1.0, 0.9, 2.0): err 1.0; v_clip = 1.0 -> 1.0;  max 1.0
      (0.0, 1.0, 0.5): err .25; v_clip = 0.8 -> 0.09; max 0.25
      (0.0, 1.0, -1.): err 1.0; v_clip = 0.8 -> 3.24; max 3.24
    """
    v = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    v_old = torch.tensor([0.0, 0.9, 1.0, 1.0], dtype=torch.float64)
    y = torch.tensor([2.0, 2.0, 0.5, -1.0], dtype=torch.float64)
    un = losses.value_loss(v, v_old, y, 0.2, clip=False)
    cl = losses.value_loss(v, v_old, y, 0.2, clip=True)
    torch.testing.assert_close(un, torch.tensor([1.0, 1.0, 0.25, 1.0], dtype=torch.float64))
    torch.testing.assert_close(cl, torch.tensor([3.24, 1.0, 0.25, 3.24], dtype=torch.float64))


def test_bounds_loss_by_hand():
    """sum_d relu(mu - 1.1)^2 + relu(-1.1 - mu)^2: [[1.5, -2.0], [0.3, 1.1], [-1.2, 3.1]]
    -> [0.16 + 0.81, 0, 0.01 + 4.0]."""
    mu = torch.tensor([[1.5, -2.0], [0.3, 1.1], [-1.2, 3.1]], dtype=torch.float64)
    torch.testing.assert_close(losses.bounds_loss(mu),
                               torch.tensor([0.97, 0.0, 4.01], dtype=torch.float64))
    torch.testing.assert_close(losses.bounds_loss(mu, bound=2.0),
                               torch.tensor([0.0, 0.0, 1.21], dtype=torch.float64))


def test_coupling_weights_min_exp_and_no_overflow():
    """w = min(exp(A / lambda), w_max) by hand, huge A stays finite and is w_max exactly;
    very negative A goes to 0, not nan; no gradient flows through w."""
    adv = torch.tensor([0.0, 0.2, -0.4, 1.0, 1e30, -1e30, 1e4], requires_grad=True)
    lam = torch.full((7,), 0.2)
    w = losses.coupling_weights(adv, lam, 100.0)
    expect = torch.tensor([1.0, math.e, math.exp(-2.0), 100.0, 100.0, 0.0, 100.0])
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w, expect, rtol=1e-6, atol=0)
    assert not w.requires_grad
    # per-row lambda and exp(1/0.5)=7.39 < w_max=10 vs exp(1/0.1) > 10
    w2 = losses.coupling_weights(torch.tensor([1.0, 1.0]), torch.tensor([0.5, 0.1]), 10.0)
    torch.testing.assert_close(w2, torch.tensor([math.exp(2.0), 10.0]))


def test_coupling_loss_is_weighted_nll():
    """-w * logp per row."""
    out = losses.coupling_loss(torch.tensor([-1.0, 2.0, 0.5]), torch.tensor([2.0, 0.5, 0.0]))
    torch.testing.assert_close(out, torch.tensor([2.0, -1.0, 0.0]))


def test_gaussian_kl_matches_torch_distributions():
    """KL of diagonal Gaussians equals torch's kl_divergence of Independent(Normal) pairs."""
    g = torch.Generator().manual_seed(3)
    mu_p, mu_q = torch.randn(50, 4, generator=g, dtype=torch.float64), torch.randn(50, 4, generator=g, dtype=torch.float64)
    ls_p = 0.5 * torch.randn(50, 4, generator=g, dtype=torch.float64)
    ls_q = 0.5 * torch.randn(50, 4, generator=g, dtype=torch.float64)
    ours = losses.gaussian_kl(mu_p, ls_p, mu_q, ls_q)
    ref = kl_divergence(Independent(Normal(mu_p, ls_p.exp()), 1), Independent(Normal(mu_q, ls_q.exp()), 1))
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    # KL(p || p) = 0 and KL is asymmetric when variances differ
    torch.testing.assert_close(losses.gaussian_kl(mu_p, ls_p, mu_p, ls_p), torch.zeros(50, dtype=torch.float64))
    assert not torch.allclose(ours, losses.gaussian_kl(mu_q, ls_q, mu_p, ls_p))
