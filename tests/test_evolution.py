"""EPO (cpo/algo/evolution.py): the genetic operators by hand, replacement into the model and
Adam, the runner's events, exact resume across events, and SAPG when evolution is off."""
from __future__ import annotations

import copy

import pytest
import torch

from cpo.utils.config import ConfigError, EvoConfig, validate
from cpo.algo.evolution import Evolution, crossover, describe, mutate, replace_rows, select
from cpo.models.ensemble import EnsembleActorCritic
from cpo.runners.runner import Runner
from tests.test_runner import params, small_cfg


def test_truncation_selection_by_hand():
    """Parents: the fittest; victims: the least fit that are neither parents nor (protected)
    the leader; ineligible policies take no part; ties follow the tie-break order."""
    fit = torch.tensor([0.05, 0.9, 0.1, 0.7, 0.1, 0.3])
    every = torch.ones(6, dtype=torch.bool)
    assert select(fit, every, 2, 1) == ([1, 3], [4])  # 2 and 4 tie; default tie-break: index
    assert select(fit, every, 2, 1, tiebreak=torch.tensor([0, 1, 5, 3, 2, 4])) == ([1, 3], [2])
    assert select(fit, every, 2, 2) == ([1, 3], [2, 4])  # the leader (0.05) is protected
    assert select(fit, every, 2, 1, protect_leader=False) == ([1, 3], [0])
    some = torch.tensor([True, False, True, True, False, True])
    assert select(fit, some, 1, 2) == ([3], [2, 5])
    assert select(fit, some, 2, 2) is None  # only 2, 3, 5 can take part besides the leader


def test_crossover_and_mutation_by_hand():
    """child = mean of the parents' rows; mutation adds std * sigma_pop * eps with eps from the
    given generator (sigma_pop: the population's per-dimension std, population-normalised)."""
    lat = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, -1.0], [-2.0, 1.0]])
    child = crossover(lat, [1, 2])
    assert torch.equal(child, torch.tensor([3.0, 1.0]))
    assert torch.equal(mutate(child, lat, 0.0, torch.Generator().manual_seed(0)), child)
    eps = torch.randn(2, generator=torch.Generator().manual_seed(5))
    sigma = lat.std(0, unbiased=False)
    assert torch.allclose(sigma, torch.tensor([(6.0 - 1.0) ** 0.5, (3.0 - 1.0) ** 0.5]))  # E[x^2] - E[x]^2
    got = mutate(child, lat, 0.5, torch.Generator().manual_seed(5))
    assert torch.allclose(got, child + 0.5 * sigma * eps)


def test_replace_rows_keeps_the_parameter_and_sets_its_adam_rows():
    """In-place write: the same Parameter object (Adam still owns it), the rows' Adam moments
    the mean of the parents' (zero without parents), other rows' moments untouched, and the
    latents keep learning afterwards (the authors' code swapped the object, and no latent was
    trained again)."""
    m = EnsembleActorCritic(3, 2, 4, latent_dim=5, actor_hidden=[8], critic_hidden=[8])
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    lat = m.latents
    for _ in range(2):
        opt.zero_grad()
        mu, _, v = m(torch.randn(16, 3), torch.arange(16) % 4)
        (mu.pow(2).sum() + v.pow(2).sum()).backward()
        opt.step()
    before = {k: t.clone() for k, t in opt.state[lat].items() if torch.is_tensor(t)}
    replace_rows(lat, opt, [1, 3], torch.full((2, 5), 7.0), parents=[0, 2])
    assert m.latents is lat and torch.equal(lat[1], torch.full((5,), 7.0)) and torch.equal(lat[3], lat[1])
    for key in ("exp_avg", "exp_avg_sq"):
        want = before[key][[0, 2]].mean(0)
        assert torch.allclose(opt.state[lat][key][1], want) and torch.allclose(opt.state[lat][key][3], want)
        assert torch.equal(opt.state[lat][key][[0, 2]], before[key][[0, 2]])
    replace_rows(lat, opt, [2], torch.zeros(1, 5))  # no parents: zero moments
    assert all(torch.all(opt.state[lat][key][2] == 0) for key in ("exp_avg", "exp_avg_sq"))
    snapshot = lat.detach().clone()
    opt.zero_grad()
    mu, _, v = m(torch.randn(16, 3), torch.arange(16) % 4)
    (mu.pow(2).sum() + v.pow(2).sum()).backward()
    opt.step()
    assert not torch.equal(lat.detach()[1], snapshot[1])  # still trained by gradient


def test_event_replaces_the_weakest_by_its_parents_crossover():
    """Evolution.step with a known window: the victim's latent is the mean of the parents',
    its log-std is its own (keep) or the parents' mean (parents), the window restarts."""
    for child_ls in ("keep", "parents"):
        cfg = EvoConfig(interval_steps=100, warmup_steps=0, num_parents=2, num_replace=1, child_log_std=child_ls)
        m = EnsembleActorCritic(3, 2, 5, latent_dim=4, actor_hidden=[8], critic_hidden=[8], seed=1)
        with torch.no_grad():
            m.log_std.copy_(torch.randn(5, 2))
        opt = torch.optim.Adam(m.parameters())
        evo = Evolution(cfg, 5, torch.device("cpu"), seed=3)
        evo.record({"return": torch.tensor([4.0, 10.0, 1.0, 9.0, 3.0]), "count": torch.tensor([2.0, 2, 1, 3, 1])})
        assert evo.due(100) and not evo.due(99)
        lat0, ls0 = m.latents.detach().clone(), m.log_std.detach().clone()
        rec = evo.step(m, opt, 100)
        # fitness = mean return per policy: [2, 5, 1, 3, 3]; parents 1 and 3 (3 beats 4 on the tie-break
        # or on index), victim 2
        assert rec["fitness"] == [2.0, 5.0, 1.0, 3.0, 3.0] and rec["victims"] == [2] and 1 in rec["parents"]
        p = rec["parents"]
        assert torch.allclose(m.latents.detach()[2], lat0[p].mean(0))
        want_ls = ls0[2] if child_ls == "keep" else ls0[p].mean(0)
        assert torch.allclose(m.log_std.detach()[2], want_ls)
        others = [i for i in range(5) if i != 2]
        assert torch.equal(m.latents.detach()[others], lat0[others])
        assert float(evo.fit_cnt.sum()) == 0 and evo.next_event == 200
        assert "policy 2 (1) replaced by the crossover of" in describe(rec, 7)


def test_fitness_window_uses_each_policys_own_episodes_and_success():
    """The window sums each block's own episodes; fitness=success needs a success log."""
    evo = Evolution(EvoConfig(interval_steps=10, fitness="success"), 3, torch.device("cpu"))
    evo.record({"return": torch.tensor([1.0, 1, 1]), "success": torch.tensor([0.0, 2, 1]), "count": torch.tensor([2.0, 2, 0])})
    fit, ok = evo.fitness()
    assert fit.tolist() == [0.0, 1.0, 0.0] and ok.tolist() == [True, True, False]
    with pytest.raises(ConfigError, match="evo.fitness=success: this env logs no 'success'"):
        evo.record({"return": torch.ones(3), "count": torch.ones(3)})


def epo_cfg(iters: int, interval: int = 0):
    """small_cfg's SAPG with evolution every ``interval`` iterations (0: off)."""
    cfg = small_cfg("sapg", iters=iters)
    cfg.algo.name = "epo"
    steps = cfg.env.num_envs * cfg.algo.horizon
    cfg.evo.interval_steps, cfg.evo.warmup_steps = interval * steps, interval * steps
    cfg.evo.mutation_std = 0.3
    cfg.log.tensorboard = False
    return cfg


def test_epo_without_evolution_is_sapg(tmp_path):
    """The master's (every policy's) update equals SAPG's when evolution is off."""
    a = Runner(epo_cfg(3), str(tmp_path / "a"))
    b = Runner(small_cfg("sapg", iters=3), str(tmp_path / "b"))
    for _ in range(3):
        a.step()
        b.step()
    assert torch.equal(params(a), params(b))


def test_runner_events_and_exact_resume_across_them(tmp_path):
    """Events every 2 iterations in a 6-iteration run: logged with fitness scalars, texts and
    replaced latents; 3 iterations, a checkpoint, and 3 more resumed give bitwise the same
    parameters, evolution window and generator as 6 straight."""
    straight = Runner(epo_cfg(6, interval=2), str(tmp_path / "s"))
    outs = [straight.step() for _ in range(6)]
    events = [o for o in outs if "evo/replaced" in o]
    assert len(events) == 3 and all(any(k.startswith("evo/fitness/policy_") for k in o) for o in events)
    assert len(straight._texts) == 3 and "evolution event 1 at iteration 2" in straight._texts[0][1]
    first = Runner(epo_cfg(3, interval=2), str(tmp_path / "r"))
    for _ in range(3):
        first.step()
    path = first.save()
    cfg = epo_cfg(6, interval=2)
    resumed = Runner(cfg, str(tmp_path / "r"), resume_from=path)
    for _ in range(3):
        resumed.step()
    assert torch.equal(params(straight), params(resumed))
    sa, sb = straight.evolution.state_dict(), resumed.evolution.state_dict()
    assert torch.equal(sa["fit_sum"], sb["fit_sum"]) and torch.equal(sa["gen"], sb["gen"])
    assert (sa["next_event"], sa["events"]) == (sb["next_event"], sb["events"]) == (8 * 48 * 8, 3)


@pytest.mark.parametrize("override,message", [
    ({"evo.num_replace": 6}, "must fit the 6 policies"),
    ({"algo.num_policies": 2, "env.num_envs": 48}, "M >= 3"),
    ({"evo.fitness": "score"}, "must be return or success"),
    ({"evo.mutation_std": -1.0}, "must be a finite number >= 0"),
    ({"algo.latent_dim": 0}, "the latents are the genes"),
])
def test_evo_config_errors(override, message):
    """Bad evolution settings fail before compute, naming key and rule."""
    cfg = epo_cfg(2, interval=1)
    for key, value in override.items():
        obj = cfg
        *path, last = key.split(".")
        for part in path:
            obj = getattr(obj, part)
        setattr(obj, last, value)
    with pytest.raises(ConfigError, match=message):
        validate(copy.deepcopy(cfg))
