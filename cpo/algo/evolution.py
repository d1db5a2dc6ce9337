"""Evolutionary Policy Optimization (EPO; Wang, Su, Gupta, Pathak 2025, arXiv 2503.19037) on the
leader-follower learner.

The method, as the authors' code (YifanSu1301/EPO, a fork of the SAPG code) runs it:

* a population of M agents, each a learned latent "gene" phi_m conditioning one shared
  actor-critic, each with its own log-std: exactly our ensemble (cpo/models/ensemble.py);
* a master agent trained on its own on-policy data plus one follower block per iteration
  relabelled with its latent, importance-sampled and clipped (SAPG): our leader, block 0, with
  ``offpolicy_blocks: 1``; every other agent runs PPO on its own data, with SAPG's per-agent
  entropy schedule where the task uses one;
* every few million env steps after a warm-up the agents are ranked by fitness, and the
  weakest agent's latent is replaced by the crossover of the two fittest: their mean.

What this module decides, and why (the paper's method section was not readable here; these
choices are ours where the authors' code is silent or defective, and each is a config key):

* fitness: the mean episode return (``evo.fitness=return``) or success rate (``success``) of
  each agent's **own** episodes that ended since the last event (the authors' code scores
  slices of the master's envs, so its ranking does not depend on the agents; their per-block
  keys show the intent); an agent with no finished episode takes no part in that event;
* selection: truncation, the top ``num_parents`` are parents (elites, unchanged), the bottom
  ``num_replace`` are replaced; ties broken by a seeded random order; the leader is never replaced
  while ``protect_leader`` (the authors' code may replace the master);
* crossover: the mean of the parents' latents (the authors'); mutation: additive Gaussian noise
  of ``mutation_std`` times the population's per-dimension latent std (the authors: none; the
  paper's text and a third-party reimplementation mention Gaussian mutation), drawn from this
  module's own seeded generator;
* replacement writes the rows in place and gives them their parents' mean Adam moments, so
  the latents stay trained by gradient afterwards at the parents' step sizes (the authors'
  code swaps the parameter object, which detaches every latent from Adam from the first event
  on; zeroed moments would make the child's steps ~3x larger for hundreds of steps); the child keeps its own log-std
  (``child_log_std=keep``, the authors') or takes its parents' mean (``parents``); its LSTM
  state is zeroed (the runner does that); normalisers are shared and untouched;
* timing: after the update of the iteration in which the env-step count passes the next event
  (so the next rollout already acts with the child; the authors evolve before the update);
  optional trigger ``max - min > trigger_gamma * |median|`` (the first paper version).

Coupling (CPO) composes with it: ``algo=epo algo.beta=1e-3`` keeps the followers near the master
while evolution re-seeds the weakest latents; the two act on different things (the coupling
is a loss on the shared network and the followers' log-std, evolution rewrites latents).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch

from cpo.utils.config import EvoConfig


def select(fitness: torch.Tensor, eligible: torch.Tensor, num_parents: int, num_replace: int,
           protect_leader: bool = True, tiebreak: Optional[torch.Tensor] = None
           ) -> Optional[Tuple[List[int], List[int]]]:
    """Truncation selection: the ``num_parents`` fittest eligible policies and the
    ``num_replace`` least fit eligible ones that are not parents (nor the leader, policy 0,
    when ``protect_leader``). Equal fitness is ordered by ``tiebreak`` (a permutation of the
    policies, lower first; default: the index), so that ties, common in a sparse task before
    the first success, do not always sacrifice the same policies. None when too few policies
    are eligible."""
    rank = tiebreak if tiebreak is not None else torch.arange(fitness.numel())
    order = sorted((i for i in range(fitness.numel()) if bool(eligible[i])),
                   key=lambda i: (-float(fitness[i]), int(rank[i])))
    parents = order[:num_parents]
    pool = [i for i in reversed(order) if i not in parents and not (protect_leader and i == 0)]
    victims = pool[:num_replace]
    if len(parents) < num_parents or len(victims) < num_replace:
        return None
    return parents, sorted(victims)


def crossover(latents: torch.Tensor, parents: List[int]) -> torch.Tensor:
    """The child gene: the mean of the parents' latent rows ``[Z]``."""
    return latents[parents].mean(0)


def mutate(child: torch.Tensor, population: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
    """``child + std * sigma_pop * eps``, eps ~ N(0, I) from ``gen`` (CPU), sigma_pop the
    per-dimension std of the ``population`` latents ``[M, Z]``; unchanged when ``std`` is 0."""
    if std <= 0:
        return child
    eps = torch.randn(child.shape, generator=gen).to(child.device, child.dtype)
    return child + std * population.std(0, unbiased=False) * eps


@torch.no_grad()
def replace_rows(param: torch.nn.Parameter, optimizer: torch.optim.Optimizer, rows: List[int],
                 values: torch.Tensor, parents: Optional[List[int]] = None) -> None:
    """Write ``values [len(rows), ...]`` into ``param[rows]`` in place (the parameter object,
    and so the optimiser's and any compiled graph's reference to it, stays the same) and give
    those rows the mean Adam moments of the ``parents`` rows (zero without parents). Zeroed
    moments would make the child's next steps m/sqrt(v) ~ (1 - b1) / sqrt(1 - b2) ~ 3x larger
    than its parents' for hundreds of steps; the parents' moments match its parameters."""
    idx = torch.tensor(rows, dtype=torch.long, device=param.device)
    param.data.index_copy_(0, idx, values.to(param.dtype))
    state = optimizer.state.get(param, {})
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        if key not in state:
            continue
        if parents:
            mean = state[key][parents].mean(0, keepdim=True)
            state[key].index_copy_(0, idx, mean.expand(len(rows), *mean.shape[1:]).contiguous())
        else:
            state[key].index_fill_(0, idx, 0.0)


class Evolution:
    """The per-policy fitness window and the genetic step of one run (state in checkpoints)."""

    def __init__(self, cfg: EvoConfig, num_policies: int, device: torch.device, seed: int = 0) -> None:
        self.cfg, self.M, self.device = cfg, num_policies, device
        self.fit_sum = torch.zeros(num_policies, dtype=torch.float64, device=device)
        self.fit_cnt = torch.zeros(num_policies, dtype=torch.float64, device=device)
        self.gen = torch.Generator().manual_seed(int(seed) + 104729)
        self.next_event = int(cfg.warmup_steps) if cfg.warmup_steps > 0 else int(cfg.interval_steps)
        self.events = 0

    @property
    def key(self) -> str:
        """The per-block episode sum that is the fitness (collect()'s ``return`` or ``success``)."""
        return "return" if self.cfg.fitness == "return" else "success"

    def record(self, sums: Dict[str, torch.Tensor]) -> None:
        """Add an iteration's per-block episode sums (``sums[key]``, ``sums["count"]``, as
        collect() returns them) to the window."""
        if self.key not in sums:
            from cpo.utils.config import ConfigError

            raise ConfigError(f"evo.fitness={self.cfg.fitness}: this env logs no {self.key!r} per episode; "
                              "use evo.fitness=return")
        self.fit_sum += sums[self.key].to(torch.float64)
        self.fit_cnt += sums["count"].to(torch.float64)

    def due(self, env_steps: int) -> bool:
        """Whether an event is due at ``env_steps`` (the run's total)."""
        return self.cfg.interval_steps > 0 and env_steps >= self.next_event

    def fitness(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(mean fitness per policy over the window, whether the policy finished an episode)."""
        eligible = self.fit_cnt > 0
        return torch.where(eligible, self.fit_sum / self.fit_cnt.clamp(min=1.0), torch.zeros_like(self.fit_sum)), eligible

    @torch.no_grad()
    def step(self, model: Any, optimizer: torch.optim.Optimizer, env_steps: int) -> Dict[str, Any]:
        """Run the event due at ``env_steps``: rank, select, cross over, mutate, replace; start a
        new window. Returns the record: fitness, eligibility, parents, victims (empty when the
        event was skipped), and why it was skipped."""
        cfg = self.cfg
        fit, eligible = self.fitness()
        fit_c, elig_c = fit.cpu(), eligible.cpu()
        record: Dict[str, Any] = {"event": self.events + 1, "env_steps": env_steps, "fitness": fit_c.tolist(),
                                  "eligible": elig_c.tolist(), "parents": [], "victims": [], "skipped": ""}
        tiebreak = torch.randperm(self.M, generator=self.gen)
        chosen = select(fit_c, elig_c, cfg.num_parents, cfg.num_replace, cfg.protect_leader, tiebreak)
        if chosen is None:
            record["skipped"] = "too few policies finished an episode in the window"
        elif cfg.trigger_gamma > 0:
            vals = fit_c[elig_c]
            spread, median = float(vals.max() - vals.min()), float(vals.median())
            if spread <= cfg.trigger_gamma * abs(median):
                record["skipped"] = f"fitness spread {spread:.4g} <= trigger_gamma * |median| = {cfg.trigger_gamma * abs(median):.4g}"
                chosen = None
        if chosen is not None:
            parents, victims = chosen
            latents = model.latents
            child = crossover(latents, parents)
            children = torch.stack([mutate(child, latents, cfg.mutation_std, self.gen) for _ in victims])
            replace_rows(latents, optimizer, victims, children, parents)
            if cfg.child_log_std == "parents":
                ls = model.log_std[parents].mean(0)
                replace_rows(model.log_std, optimizer, victims, ls.expand(len(victims), -1), parents)
            record["parents"], record["victims"] = parents, victims
        self.events += 1
        self.next_event = max(self.next_event + int(cfg.interval_steps), env_steps + 1)
        self.fit_sum.zero_()
        self.fit_cnt.zero_()
        return record

    def state_dict(self) -> Dict[str, Any]:
        """Window, generator and schedule, for exact resume across events."""
        return {"fit_sum": self.fit_sum.clone(), "fit_cnt": self.fit_cnt.clone(), "gen": self.gen.get_state(),
                "next_event": self.next_event, "events": self.events}

    def load_state_dict(self, sd: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.fit_sum.copy_(sd["fit_sum"])
        self.fit_cnt.copy_(sd["fit_cnt"])
        self.gen.set_state(sd["gen"])
        self.next_event, self.events = int(sd["next_event"]), int(sd["events"])


def describe(record: Dict[str, Any], iteration: int) -> str:
    """One line for the text log and TensorBoard: who was replaced by whose crossover."""
    fit = record["fitness"]
    if not record["victims"]:
        return f"evolution event {record['event']} at iteration {iteration}: skipped ({record['skipped']})"
    parents = " and ".join(f"policy {p} ({fit[p]:.4g})" for p in record["parents"])
    victims = ", ".join(f"policy {v} ({fit[v]:.4g})" for v in record["victims"])
    return (f"evolution event {record['event']} at iteration {iteration} ({record['env_steps']:,} env steps): "
            f"{victims} replaced by the crossover of {parents}")
