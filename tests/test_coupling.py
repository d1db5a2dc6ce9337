"""The CPO coupling loss projects the advantage-reweighted leader onto the follower.

For a free diagonal Gaussian follower N(mu, sigma^2), the minimiser of
  (1/n) sum_i w_i * (-log N(a_i; mu, sigma)),   w_i = min(exp(A_i / lambda_f), w_max),
is the weighted mean mu* = sum w a / sum w and the weighted variance
sigma*^2 = sum w (a - mu*)^2 / sum w (per action dimension). As lambda_f -> inf, w -> 1 and the
minimiser is the unweighted mean/variance of the leader's actions (behaviour cloning).
"""
from __future__ import annotations

import pytest
import torch

from cpo.algo.losses import coupling_loss, coupling_weights
from cpo.models.ensemble import gaussian_log_prob


def _fit(actions: torch.Tensor, w: torch.Tensor):
    """Minimise the mean coupling loss over a free (mu, log_std) with LBFGS, float64."""
    A = actions.shape[-1]
    mu = torch.zeros(A, dtype=torch.float64, requires_grad=True)
    log_std = torch.zeros(A, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([mu, log_std], lr=1.0, max_iter=500, tolerance_grad=1e-12,
                            tolerance_change=1e-15, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logp = gaussian_log_prob(actions, mu.expand_as(actions), log_std.expand_as(actions))
        loss = coupling_loss(logp, w).sum() / actions.shape[0]
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    return mu.detach(), log_std.detach().exp()


def _data(act_dim: int, seed: int, n: int = 400):
    g = torch.Generator().manual_seed(seed)
    a = 0.3 + 0.5 * torch.randn(n, act_dim, generator=g, dtype=torch.float64)
    # advantages correlated with the first action dim, so the weighted mean moves away
    adv = a[:, 0] + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    adv = (adv - adv.mean()) / adv.std()
    return a, adv


@pytest.mark.parametrize("act_dim,lam", [(1, 0.5), (2, 0.2), (2, 1.0)])
def test_coupling_minimiser_is_weighted_mean_and_variance(act_dim, lam):
    """Optimised (mu, sigma) equal the w-weighted mean and variance of the leader's actions
    (to 1e-3), with w from cpo.algo.losses.coupling_weights (w_max = 100 active at lambda=0.2)."""
    a, adv = _data(act_dim, seed=act_dim)
    w = coupling_weights(adv, torch.full_like(adv, lam), 100.0)
    if lam == 0.2:
        assert torch.isclose(w, torch.full_like(w, 100.0)).any()  # the clamp is exercised
    mu, sigma = _fit(a, w)
    mu_star = (w.unsqueeze(1) * a).sum(0) / w.sum()
    var_star = (w.unsqueeze(1) * (a - mu_star) ** 2).sum(0) / w.sum()
    torch.testing.assert_close(mu, mu_star, rtol=0, atol=1e-3)
    torch.testing.assert_close(sigma ** 2, var_star, rtol=0, atol=1e-3)
    # the weighting really moves the solution: high-advantage actions have larger a[:, 0]
    assert float(mu_star[0] - a[:, 0].mean()) > 0.05


def test_coupling_large_lambda_is_behaviour_cloning():
    """As lambda_f grows the minimiser tends to the unweighted mean (and variance): the
    distance to the BC solution shrinks monotonically and is < 1e-3 at lambda_f = 1e4."""
    a, adv = _data(2, seed=7)
    bc_mu, bc_var = a.mean(0), a.var(0, unbiased=False)
    dists = []
    for lam in (0.2, 1.0, 10.0, 1e4):
        w = coupling_weights(adv, torch.full_like(adv, lam), 100.0)
        mu, sigma = _fit(a, w)
        dists.append(float((mu - bc_mu).norm()))
    assert all(x > y for x, y in zip(dists, dists[1:])), dists
    assert dists[0] > 0.1
    assert dists[-1] < 1e-3
    torch.testing.assert_close(sigma ** 2, bc_var, rtol=0, atol=1e-3)
