"""Numbers for the pure target functions of cpo/algo/rollout.py: GAE, one-step TD, bootstrap values."""
from __future__ import annotations

import torch

from cpo.algo.rollout import bootstrap_values, gae, td_targets


def _col(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def _hand_example():
    """T=4, N=2. Env 0 terminates at t=1; env 1 is truncated at t=2 with V(final_obs)=3."""
    rewards = torch.stack([_col(1, 2, 3, 4), _col(0, 1, 0, 1)], dim=1)
    values = torch.stack([_col(0.5, 1.0, 1.5, 2.0), _col(1, 1, 1, 1)], dim=1)
    # env 0: next_values[1] = 10 must be ignored (terminated); env 1: next_values[2] = V(final) = 3
    next_values = torch.stack([_col(1.0, 10.0, 2.0, 2.5), _col(1, 1, 3.0, 0.5)], dim=1)
    terminated = torch.zeros(4, 2, dtype=torch.bool)
    truncated = torch.zeros(4, 2, dtype=torch.bool)
    terminated[1, 0] = True
    truncated[2, 1] = True
    return rewards, values, next_values, terminated, truncated


def test_gae_hand_example_termination_and_truncation():
    """GAE(gamma=0.9, lambda=0.5) over T=4, N=2 equals the recursion written out by hand.

    gamma*lambda = 0.45, delta_t = r_t + 0.9 (1 - term_t) V(s'_t) - V(s_t),
    A_t = delta_t + 0.45 (1 - done_t) A_{t+1} with done = term | trunc.

    env 0 (terminated at t=1):
      delta3 = 4 + 0.9*2.5 - 2.0 = 4.25          A3 = 4.25
      delta2 = 3 + 0.9*2.0 - 1.5 = 3.3           A2 = 3.3 + 0.45*4.25 = 5.2125
      delta1 = 2 + 0 (terminated) - 1.0 = 1.0    A1 = 1.0 (trace cut)
      delta0 = 1 + 0.9*1.0 - 0.5 = 1.4           A0 = 1.4 + 0.45*1.0 = 1.85
    env 1 (truncated at t=2, V(final_obs) = 3):
      delta3 = 1 + 0.9*0.5 - 1 = 0.45            A3 = 0.45
      delta2 = 0 + 0.9*3.0 - 1 = 1.7             A2 = 1.7 (trace cut, but bootstrapped)
      delta1 = 1 + 0.9*1 - 1 = 0.9               A1 = 0.9 + 0.45*1.7 = 1.665
      delta0 = 0 + 0.9*1 - 1 = -0.1              A0 = -0.1 + 0.45*1.665 = 0.64925
    returns = A + V.
    """
    r, v, nv, term, trunc = _hand_example()
    adv, ret = gae(r, v, nv, term, trunc, gamma=0.9, lam=0.5)
    expect = torch.stack([_col(1.85, 1.0, 5.2125, 4.25), _col(0.64925, 1.665, 1.7, 0.45)], dim=1)
    torch.testing.assert_close(adv, expect, rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, expect + v, rtol=0, atol=1e-12)
    torch.testing.assert_close(ret[:, 0], _col(2.35, 2.0, 6.7125, 6.25), rtol=0, atol=1e-12)
    torch.testing.assert_close(ret[:, 1], _col(1.64925, 2.665, 2.7, 1.45), rtol=0, atol=1e-12)


def test_gae_lambda_zero_is_one_step_td():
    """lambda = 0: A_t = delta_t = r_t + gamma (1 - term_t) V(s'_t) - V(s_t) for every t."""
    r, v, nv, term, trunc = _hand_example()
    adv, _ = gae(r, v, nv, term, trunc, gamma=0.9, lam=0.0)
    # deltas from the hand example above
    expect = torch.stack([_col(1.4, 1.0, 3.3, 4.25), _col(-0.1, 0.9, 1.7, 0.45)], dim=1)
    torch.testing.assert_close(adv, expect, rtol=0, atol=1e-12)


def test_gae_lambda_one_gamma_one_is_monte_carlo():
    """lambda = gamma = 1: A_t = (sum of rewards to the episode end + bootstrap) - V(s_t).

    env 0 terminates at t=3: G = [1+2+3+4, 2+3+4, 3+4, 4] = [10, 9, 7, 4] (no bootstrap).
    env 1 terminates at t=1 (G = [5+6, 6]) and a new episode runs to the horizon with
    bootstrap V(s_4) = 2: G_2 = 7 + 8 + 2 = 17, G_3 = 8 + 2 = 10.
    """
    g = torch.Generator().manual_seed(0)
    r = torch.stack([_col(1, 2, 3, 4), _col(5, 6, 7, 8)], dim=1)
    v = torch.rand(4, 2, generator=g, dtype=torch.float64)
    nv = torch.cat([v[1:], _col(123.0, 2.0).unsqueeze(0)], dim=0)
    term = torch.zeros(4, 2, dtype=torch.bool)
    term[3, 0] = True
    term[1, 1] = True
    trunc = torch.zeros_like(term)
    adv, ret = gae(r, v, nv, term, trunc, gamma=1.0, lam=1.0)
    G = torch.stack([_col(10, 9, 7, 4), _col(11, 6, 17, 10)], dim=1)
    torch.testing.assert_close(adv, G - v, rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, G, rtol=0, atol=1e-12)


def test_gae_gamma_zero_is_reward_minus_value():
    """gamma = 0: A_t = r_t - V(s_t) whatever lambda."""
    r, v, nv, term, trunc = _hand_example()
    adv, _ = gae(r, v, nv, term, trunc, gamma=0.0, lam=0.95)
    torch.testing.assert_close(adv, r - v, rtol=0, atol=1e-12)


def test_td_targets_by_hand():
    """y = r + gamma V(s') (1 - term): [1 + 0.9*1, 2 + 0, 3 + 0.9*2, 4 + 0.9*2.5] for env 0."""
    r, _, nv, term, _ = _hand_example()
    y = td_targets(r, nv, term, gamma=0.9)
    expect = torch.stack([_col(1.9, 2.0, 4.8, 6.25), _col(0.9, 1.9, 2.7, 1.45)], dim=1)
    torch.testing.assert_close(y, expect, rtol=0, atol=1e-12)


def _obs_example():
    """obs [T+1=4, n=2, D=2] with obs[t, j] = (t, 10 j) so V(obs, pol) = t + 10 j + pol."""
    T, n = 3, 2
    obs = torch.zeros(T + 1, n, 2)
    for t in range(T + 1):
        for j in range(n):
            obs[t, j] = torch.tensor([float(t), 10.0 * j])
    final_obs = torch.full((T, n, 2), 100.0)  # V(final) = 200 + pol
    trunc = torch.zeros(T, n, dtype=torch.bool)
    trunc[1, 0] = True
    trunc[2, 1] = True
    pol = torch.tensor([0, 3])
    return obs, final_obs, trunc, pol


def value_fn(obs, pol):
    return obs.sum(-1) + pol


def test_bootstrap_values_uses_final_obs_on_truncation():
    """Without stored values: V(s_t) = t + 10 j + pol_j; V(s'_t) = V(s_{t+1}) except on truncated
    steps, which take V(final_obs) = 200 + pol_j."""
    obs, final_obs, trunc, pol = _obs_example()
    v, nv = bootstrap_values(value_fn, obs, final_obs, trunc, pol)
    # column 0 (pol 0): V = [0, 1, 2], next = [1, 200 (trunc), 3]
    # column 1 (pol 3): V = [13, 14, 15], next = [14, 15, 203 (trunc)]
    torch.testing.assert_close(v, torch.tensor([[0., 13.], [1., 14.], [2., 15.]]))
    torch.testing.assert_close(nv, torch.tensor([[1., 14.], [200., 15.], [3., 203.]]))


def test_bootstrap_values_with_stored_values():
    """With stored values: next = stored values shifted by one, V(obs[T]) in the last row,
    V(final_obs) on truncated steps; the stored values are returned untouched."""
    obs, final_obs, trunc, pol = _obs_example()
    stored = torch.tensor([[-1., -2.], [-3., -4.], [-5., -6.]])
    v, nv = bootstrap_values(value_fn, obs, final_obs, trunc, pol, values=stored)
    torch.testing.assert_close(v, stored)
    # col 0: [-3, 200 (trunc), V(obs[3,0]) = 3]; col 1: [-4, -6, 203 (trunc)]
    torch.testing.assert_close(nv, torch.tensor([[-3., -4.], [200., -6.], [3., 203.]]))


def test_bootstrap_values_fallback_without_final_obs():
    """has_final_obs=False: truncated steps fall back to V(s_t) (in both code paths)."""
    obs, final_obs, trunc, pol = _obs_example()
    _, nv = bootstrap_values(value_fn, obs, final_obs, trunc, pol, has_final_obs=False)
    # col 0 truncated at t=1 -> V(s_1) = 1; col 1 truncated at t=2 -> V(s_2) = 15
    torch.testing.assert_close(nv, torch.tensor([[1., 14.], [1., 15.], [3., 15.]]))
    stored = torch.tensor([[-1., -2.], [-3., -4.], [-5., -6.]])
    _, nv2 = bootstrap_values(value_fn, obs, final_obs, trunc, pol, values=stored, has_final_obs=False)
    torch.testing.assert_close(nv2, torch.tensor([[-3., -4.], [-3., -6.], [3., -6.]]))
