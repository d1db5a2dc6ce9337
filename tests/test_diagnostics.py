"""Importance-sampling health (relative ESS, mean |rho - 1|) and the KL matrix against closed forms.

For behaviour b = N(0, s^2 I) and target p = N(d, s^2 I), with k = |d|^2 / s^2:
  log rho(x) = (2 x.d - |d|^2) / (2 s^2),   E_b[rho^j] = exp(j (j - 1) k / 2),
  KL(p || b) = k / 2,   relative ESS -> 1 / E_b[rho^2] = exp(-k) = exp(-2 KL),
  E_b|rho - 1| = 2 TV(p, b) = 2 (2 Phi(|d| / (2 s)) - 1)   (Pinsker: <= sqrt(2 KL) = sqrt(k)).
"""
from __future__ import annotations

import math

import pytest
import torch

from cpo.algo.diagnostics import kl_matrix, mean_abs_deviation, relative_ess

N_SAMPLES = 200_000


def _log_rho(d, s, seed):
    """log pi_target / pi_behaviour at x ~ N(0, s^2 I), float64, for mean offset vector d."""
    d = torch.as_tensor(d, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    x = s * torch.randn(N_SAMPLES, d.numel(), generator=g, dtype=torch.float64)
    return (2.0 * x @ d - d.dot(d)) / (2.0 * s * s)


def _phi(z):
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


CASES = [([0.5], 1.0), ([0.35], 0.5), ([0.5, 0.5], 1.0), ([0.3, -0.2, 0.4], 0.7), ([1.0], 1.0)]


@pytest.mark.parametrize("d,s", CASES)
def test_relative_ess_matches_exp_minus_two_kl(d, s):
    """ESS of 200k seeded samples = exp(-|d|^2/s^2) = exp(-2 KL) within 6 standard errors.

    Tolerance (delta method on log ESS = 2 log mean(rho) - log mean(rho^2), using the moments
    above): Var[log ESS_hat] ~= (e^{4k} - 4 e^{2k} + 4 e^k - 1) / n. E.g. k = 0.5 -> sd 0.0032,
    k = 1 -> sd 0.013 (n = 200k). The estimator's O(1/n) bias is negligible against that.
    """
    k = sum(x * x for x in d) / (s * s)
    lr = _log_rho(d, s, seed=11)
    ess = relative_ess(lr)
    sd = math.sqrt((math.exp(4 * k) - 4 * math.exp(2 * k) + 4 * math.exp(k) - 1) / N_SAMPLES)
    assert abs(math.log(float(ess)) - (-k)) < 6 * sd, (float(ess), math.exp(-k), sd)
    # and it is really a function of KL: exp(-2 KL) with KL = k/2
    kl = 0.5 * k
    assert abs(float(ess) - math.exp(-2 * kl)) < 6 * sd * math.exp(-k) + 1e-12


@pytest.mark.parametrize("d,s", CASES)
def test_mean_abs_deviation_is_two_tv_and_obeys_pinsker(d, s):
    """mean |rho - 1| ~= 2 TV = 2 (2 Phi(|d|/2s) - 1) within 6 sd (sd <= sqrt((e^k - 1)/n)),
    and <= sqrt(2 KL) = sqrt(k) (Pinsker)."""
    k = sum(x * x for x in d) / (s * s)
    lr = _log_rho(d, s, seed=12)
    dev = float(mean_abs_deviation(lr))
    tv2 = 2.0 * (2.0 * _phi(math.sqrt(k) / 2.0) - 1.0)
    sd = math.sqrt((math.exp(k) - 1.0) / N_SAMPLES)
    assert abs(dev - tv2) < 6 * sd, (dev, tv2, sd)
    assert dev <= math.sqrt(2.0 * (0.5 * k))


def test_ess_identical_policies_is_one_exactly():
    """log rho = 0 everywhere (identical policies) gives ESS == 1 and mean|rho-1| == 0 exactly."""
    z = torch.zeros(1000)
    assert float(relative_ess(z)) == 1.0
    assert float(mean_abs_deviation(z)) == 0.0
    # a constant ratio (policies equal up to normalisation) also has full ESS
    torch.testing.assert_close(relative_ess(torch.full((64,), 3.7)), torch.tensor(1.0))


def test_ess_invariant_to_scaling_rho():
    """ESS(c rho) = ESS(rho): adding log c to every log-ratio changes nothing."""
    g = torch.Generator().manual_seed(5)
    lr = torch.randn(4, 500, generator=g, dtype=torch.float64)
    base = relative_ess(lr)
    for c in (-50.0, 3.0, 600.0):
        torch.testing.assert_close(relative_ess(lr + c), base, rtol=1e-10, atol=0)
    # per-row along dim=-1 agrees with a loop
    for i in range(4):
        r = lr[i].exp()
        torch.testing.assert_close(base[i], r.sum() ** 2 / (500 * (r * r).sum()), rtol=1e-10, atol=0)


def test_ess_no_overflow_with_huge_log_ratios():
    """log-ratios of 1000 (rho = e^1000) give finite ESS: [1000, 999] -> rho prop. to [e, 1],
    ESS = (e + 1)^2 / (2 (e^2 + 1)); one huge ratio among n -> ESS = 1/n."""
    ess = relative_ess(torch.tensor([1000.0, 999.0]))
    assert torch.isfinite(ess)
    e = math.e
    # float32: 2 lse - lse2 cancels two numbers ~2000 (ulp ~1.2e-4), hence 5e-4 here
    assert abs(float(ess) - (e + 1) ** 2 / (2 * (e * e + 1))) < 5e-4
    ess64 = relative_ess(torch.tensor([1000.0, 999.0], dtype=torch.float64))
    assert abs(float(ess64) - (e + 1) ** 2 / (2 * (e * e + 1))) < 1e-10
    one = relative_ess(torch.tensor([1000.0] + [0.0] * 9, dtype=torch.float64))
    assert abs(float(one) - 0.1) < 1e-12
    assert torch.isfinite(relative_ess(torch.tensor([1000.0, -1000.0, 0.0])))


def _kl_closed(mu_p, ls_p, mu_q, ls_q):
    return float(sum(ls_q[d] - ls_p[d] + (math.exp(2 * ls_p[d]) + (mu_p[d] - mu_q[d]) ** 2)
                     / (2 * math.exp(2 * ls_q[d])) - 0.5 for d in range(len(mu_p))))


def test_kl_matrix_against_loop_of_closed_form():
    """K[i, j] = mean_s KL(N(mu_i(s), s_i) || N(mu_j(s), s_j)) equals a python loop over pairs
    and states of the closed form; zero diagonal; asymmetric when variances differ. Also with
    state-dependent log-std [M, S, A]."""
    g = torch.Generator().manual_seed(0)
    M, S, A = 4, 6, 3
    mu = torch.randn(M, S, A, generator=g, dtype=torch.float64)
    ls = 0.4 * torch.randn(M, A, generator=g, dtype=torch.float64)
    K = kl_matrix(mu, ls)
    assert K.shape == (M, M)
    ref = torch.zeros(M, M, dtype=torch.float64)
    for i in range(M):
        for j in range(M):
            ref[i, j] = sum(_kl_closed(mu[i, s].tolist(), ls[i].tolist(), mu[j, s].tolist(),
                                       ls[j].tolist()) for s in range(S)) / S
    torch.testing.assert_close(K, ref, rtol=1e-10, atol=1e-12)
    assert torch.all(K.diagonal() == 0)
    assert (K - K.T).abs().max() > 1e-3
    assert (K >= 0).all()
    # state-dependent log-std
    ls_s = 0.4 * torch.randn(M, S, A, generator=g, dtype=torch.float64)
    K2 = kl_matrix(mu, ls_s)
    for i, j in ((0, 1), (2, 3), (3, 0)):
        r = sum(_kl_closed(mu[i, s].tolist(), ls_s[i, s].tolist(), mu[j, s].tolist(),
                           ls_s[j, s].tolist()) for s in range(S)) / S
        assert abs(float(K2[i, j]) - r) < 1e-10


def test_kl_matrix_equal_variances_is_half_squared_distance():
    """With equal unit variances K[i, j] = mean_s |mu_i - mu_j|^2 / 2 (symmetric)."""
    mu = torch.tensor([[[0.0, 0.0]], [[1.0, 0.0]], [[0.0, 2.0]]], dtype=torch.float64)
    K = kl_matrix(mu, torch.zeros(3, 2, dtype=torch.float64))
    ref = torch.tensor([[0, 0.5, 2.0], [0.5, 0, 2.5], [2.0, 2.5, 0]], dtype=torch.float64)
    torch.testing.assert_close(K, ref)
