"""Random configuration cases with an independent validity oracle, shared by
tests/test_config_property.py (drawn by hypothesis) and bench/config_fuzz.py (drawn by
``random.Random``).

A :class:`Case` is a set of overrides plus what must happen: a valid case is accepted, an
invalid one is refused with ONE error that names a key and its value (``key=value``), contains
one of the expected rule fragments and, for typos, a "did you mean". Cases run through the
same path as ``train.py``: :func:`cpo.app.check_overrides` (the command-line check done by
``rank_argv``), Hydra composition of conf/config.yaml, :func:`cpo.app.to_train_config`,
:func:`cpo.utils.config.validate`, and :func:`cpo.app.resume_config` for ``resume=<dir>``.

:data:`RULES` restates, independently of cpo/utils/config.py, which values of every validated key
are valid. Each predicate gets the value and the config it was set in (the base named by
``Rule.base``); :func:`base_facts` lists what the predicates assume about the bases.
Draws go through a *drawer*: an object with ``pick(options)``, ``integer(lo, hi)`` and
``real()`` (:class:`RandomDraw` here; the tests wrap hypothesis' ``data.draw``).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
import random
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from cpo.utils.config import (FLOAT32_MAX, LOG_STD_RANGE, PBT_HYPERPARAMS, SEED_MAX, ConfigError, TrainConfig, available_memory,
                        estimate_memory, pbt_range, validate)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONF = os.path.join(ROOT, "conf")
NAN, INF = float("nan"), float("inf")

#: floats worth trying for every float key (edges of the usual ranges, non-finite values)
EDGE_FLOATS = (0.0, -0.0, 1e-12, 1e-6, 1e-4, 0.01, 0.02, 0.1, 0.2, 0.5, 0.8, 0.99, 0.9999, 1.0, 1.5,
               2.0, 10.0, 100.0, 1e300, -1e-12, -0.5, -1.0, NAN, INF, -INF)
#: overrides selecting each base config of :data:`RULES`
BASES: Dict[str, Tuple[str, ...]] = {
    "default": (),  # conf/config.yaml: algo=cpo, env=point_maze
    "pbt": ("algo=pbt",),
    "pbt_all": ("algo=pbt", "pbt.mutate=[" + ",".join(PBT_HYPERPARAMS) + "]"),
}
#: any of these in an error message says which rule was broken for a wrong type (OmegaConf)
TYPE_RULES = ("could not be converted", "is not a valid bool", "is not a ListConfig", "Cannot convert",
              "must be true or false")
HINT = "did you mean"


# ---------------------------------------------------------------------------- drawers
class RandomDraw:
    """A drawer over ``random.Random`` (the benchmark); the tests use hypothesis instead."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, options: Sequence[Any]) -> Any:
        """One of ``options``, uniformly."""
        return options[self.rng.randrange(len(options))]

    def integer(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi]."""
        return self.rng.randint(lo, hi)

    def real(self) -> float:
        """An edge float, a float in [-2, 2], or one of any magnitude (1e-12 .. 1e12, either sign)."""
        k = self.rng.random()
        if k < 0.4:
            return self.pick(EDGE_FLOATS)
        if k < 0.7:
            return self.rng.uniform(-2.0, 2.0)
        return math.copysign(10 ** self.rng.uniform(-12, 12), self.rng.random() - 0.3)


# ---------------------------------------------------------------------------- rules
@dataclasses.dataclass(frozen=True)
class Rule:
    """What values of ``key`` ``validate`` accepts in the base config ``base``.

    kind: int | float | str | bool | ints | opt_int | opt_str | opt_floats | strs | param.
    rules: fragments of the error message, one of which a refusal must contain.
    examples: values always worth trying (valid and invalid); words: valid strings."""

    key: str
    kind: str
    valid: Callable[[Any, TrainConfig], bool]
    rules: Tuple[str, ...]
    base: str = "default"
    examples: Tuple[Any, ...] = ()
    words: Tuple[str, ...] = ()


def _fin(v: float) -> bool:
    return math.isfinite(v)


def _pos(v: float) -> bool:
    return math.isfinite(v) and 0 < v <= FLOAT32_MAX


def _nonneg(v: float) -> bool:
    return math.isfinite(v) and 0 <= v <= FLOAT32_MAX


def _off_ok(v: str, M: int) -> bool:
    """algo.offpolicy_blocks: 'all' (any case, spaces) or ASCII digits k in 1..M-1 (any k for M=1)."""
    s = str(v).strip().lower()
    if s == "all":
        return True
    return re.fullmatch(r"[0-9]+", s) is not None and (M == 1 or 1 <= int(s) <= M - 1)


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _batch_ok(c: TrainConfig) -> bool:
    return (c.env.num_envs * c.algo.horizon) % c.algo.num_minibatches == 0


def _member_ok(c: TrainConfig) -> bool:
    """PBT: num_envs splits into population blocks whose batch splits into the minibatches."""
    p = c.pbt.population
    return c.env.num_envs % p == 0 and (c.env.num_envs // p * c.algo.horizon) % c.algo.num_minibatches == 0


def _in_pbt_range(key: str) -> Callable[[Any, TrainConfig], bool]:
    def ok(v: float, c: TrainConfig) -> bool:
        _, low, high = pbt_range(c.algo, key)
        return low <= v <= high
    return ok


def _fits(c: TrainConfig) -> bool:
    """Whether check_memory's lower-bound estimate fits the machine (unknown memory: fits)."""
    try:
        parts = estimate_memory(c)
    except (TypeError, ValueError, OverflowError):
        return True  # a value the earlier rules refuse anyway
    avail = available_memory(c.device)
    return avail is None or sum(parts.values()) <= avail


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _enum(*values: str) -> Callable[[Any, TrainConfig], bool]:
    return lambda v, c: v in values


GE1, GE0 = (">= 1",), (">= 0",)
POS, NONNEG = ("must be a finite number > 0",), ("must be a finite number >= 0",)
INTS = (-(2 ** 70), -7, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 32, 100, 1200, 38400, 10 ** 6, 2 ** 70)
POSITIVE = ("clip_eps", "max_grad_norm", "kl_threshold", "reward_scale", "lambda_f", "weight_max", "disc_lr",
            "lambda_f_final", "kl_target", "beta_lr")
NONNEGATIVE = ("value_coef", "entropy_coef", "entropy_scale", "bounds_coef", "beta", "lambda_ppo", "lambda_adv")
PUMA_LAYOUTS = ("u_maze", "s_maze")


def _rules() -> List[Rule]:
    """The table: one or more rules for every key that validate() (or the task registry) checks."""
    R = Rule
    out = [
        # ---- root
        R("max_iterations", "int", lambda v, c: v >= 1, GE1),
        R("seed", "int", lambda v, c: 0 <= v <= SEED_MAX, (f"must be an integer in [0, {SEED_MAX}]",),
          examples=(0, 7, SEED_MAX, SEED_MAX + 1, -1, 2 ** 64)),
        R("device", "str", lambda v, c: re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", v) is not None,
          ("must be auto, cpu, cuda or cuda:<index>",),
          examples=("auto", "cpu", "cuda", "cuda:0", "cuda:3", "gpu", "cuda:", "cudax", "CPU", "cuda:a", "mps"),
          words=("auto", "cpu", "cuda", "cuda:1")),
        R("nonfinite", "str", _enum("stop", "reset"), ("must be stop or reset",), words=("stop", "reset")),
        R("nonfinite_check", "str", _enum("step", "iteration"), ("must be step or iteration",),
          words=("step", "iteration")),
        R("torch_threads", "opt_int", lambda v, c: v is None or 1 <= v <= 1024, ("must be in 1..1024 or null",)),
        R("perf.compile", "str", _enum("none", "policy", "update", "all"), ("must be none, policy, update or all",),
          words=("none", "policy", "update", "all")),
        R("perf.cuda_graphs", "bool",
          lambda v, c: not v or (c.device != "cpu" and c.net.rnn_hidden == 0 and (c.device != "auto" or _cuda())),
          ("needs a CUDA device", "feed-forward")),
        # ---- algo: layout
        R("algo.num_policies", "int",
          lambda v, c: v >= 1 and c.env.num_envs % v == 0 and _off_ok(c.algo.offpolicy_blocks, v)
          and (v >= 2 or c.algo.beta == 0),
          GE1 + ("is not divisible by algo.num_policies", "the coupling needs followers")),
        R("algo.latent_dim", "int", lambda v, c: v >= 0, GE0),
        R("algo.horizon", "int", lambda v, c: v >= 1 and _batch_ok(c), GE1 + ("does not divide the batch",)),
        R("algo.num_epochs", "int", lambda v, c: v >= 1, GE1),
        R("algo.num_minibatches", "int", lambda v, c: v >= 1 and _batch_ok(c), GE1 + ("does not divide the batch",),
          examples=(1, 2, 3, 4, 5, 8, 7, 11, 1200, 38400, 38401)),
        R("algo.offpolicy_blocks", "str", lambda v, c: _off_ok(v, c.algo.num_policies),
          ("must be an integer k in 1..num_policies-1 or 'all'", "must be in 1..num_policies-1"),
          examples=("1", "5", "all", "ALL", " 2 ", "0", "6", "-1", "1.5", "x", "", "\u00b2", "05"),
          words=("1", "2", "3", "4", "5", "all")),
        # ---- algo: scalars
        R("algo.gamma", "float", lambda v, c: 0.0 <= v <= 1.0, ("must be in [0, 1]",)),
        R("algo.gae_lambda", "float", lambda v, c: 0.0 <= v <= 1.0, ("must be in [0, 1]",)),
        R("algo.lr", "float", lambda v, c: _pos(v) and c.algo.lr_min <= v <= c.algo.lr_max, POS + ("must lie within",)),
        R("algo.lr_min", "float", lambda v, c: _pos(v) and v <= c.algo.lr_max and v <= c.algo.lr,
          POS + ("must be >= algo.lr_min", "must lie within")),
        R("algo.lr_max", "float", lambda v, c: _pos(v) and v >= c.algo.lr_min and v >= c.algo.lr,
          POS + ("must be >= algo.lr_min", "must lie within")),
        R("algo.lr_schedule", "str", _enum("adaptive", "fixed", "linear"), ("must be adaptive, fixed or linear",),
          words=("adaptive", "fixed", "linear")),
        R("algo.lr_adapt_every", "str", _enum("epoch", "minibatch"), ("must be epoch or minibatch",),
          words=("epoch", "minibatch")),
        R("algo.lambda_f_schedule", "str", _enum("constant", "linear", "cosine"),
          ("must be constant, linear or cosine",), words=("constant", "linear", "cosine")),
        R("algo.coupling_fraction", "float", lambda v, c: 0.0 < v <= 1.0, ("must be in (0, 1]",)),
        R("algo.minibatch_mode", "str", _enum("size", "count"), ("must be size or count",),
          words=("size", "count")),
        R("algo.mixed_precision", "str", lambda v, c: v in ("none", "bf16") or (v == "fp16" and c.device != "cpu"),
          ("must be none, bf16 or fp16", "fp16 needs a CUDA device"), words=("none", "bf16", "fp16")),
        R("algo.disc_steps", "int", lambda v, c: v >= 1, GE1),
        R("algo.disc_batch", "int", lambda v, c: v >= 1, GE1),
        R("algo.disc_hidden", "ints", lambda v, c: all(h >= 1 for h in v), ("widths must be >= 1",)),
        R("algo.lambda_f_tiers", "opt_floats",
          lambda v, c: v is None or (len(v) == c.algo.num_policies - 1 and all(_pos(t) for t in v)),
          ("needs one value per follower", "values must be finite numbers > 0"),
          examples=(None, [0.1] * 5, [0.05, 0.1, 0.2, 0.5, 1.0], [], [0.1] * 4, [0.1] * 6, [0.1] * 4 + [-1.0],
                    [NAN] * 5, [INF] * 5, [0.0] * 5)),
        R("algo.beta_adapt", "bool", lambda v, c: not v or (c.algo.beta > 0 and c.algo.num_policies >= 2),
          ("must be > 0 with algo.beta_adapt=true", "needs followers")),
        # ---- net
        R("net.actor_hidden", "ints", lambda v, c: len(v) >= 1 and all(w >= 1 for w in v),
          ("needs at least one layer, widths >= 1",)),
        R("net.critic_hidden", "ints", lambda v, c: len(v) >= 1 and all(w >= 1 for w in v),
          ("needs at least one layer, widths >= 1",)),
        R("net.activation", "str", _enum("elu", "relu", "tanh", "silu"), ("must be elu, relu, tanh or silu",),
          words=("elu", "relu", "tanh", "silu")),
        R("net.obs_clip", "float", lambda v, c: _pos(v), ("must be a finite number > 0",)),
        R("net.init_log_std", "float", lambda v, c: _fin(v) and LOG_STD_RANGE[0] <= v <= LOG_STD_RANGE[1],
          ("must be a finite number in",), examples=(0.0, -0.5, -20.0, 5.0, -20.5, 5.5, 100.0, -1e30)),
        R("net.rnn_hidden", "int", lambda v, c: v >= 0, GE0),
        # ---- env (name and params: the task registry)
        R("env.name", "str", lambda v, c: v in ok_env_names(), ("is not a registered task",),
          words=tuple(sorted(ok_env_names()))),
        R("env.num_envs", "int",
          lambda v, c: v >= 1 and v % c.algo.num_policies == 0 and _batch_ok(c),
          GE1 + ("is not divisible by algo.num_policies", "does not divide the batch"),
          examples=(1, 6, 600, 1200, 1000, 7, 0, -6)),
        R("env.max_episode_steps", "opt_int", lambda v, c: v is None or v >= 1, (">= 1 or null",)),
        R("env.params", "param", lambda v, c: set(v) <= set(puma_params()), ("is not a parameter of task",)),
        R("env.params.layout", "str", lambda v, c: v in PUMA_LAYOUTS, ("must be one of",), words=PUMA_LAYOUTS),
        R("env.params.dtype", "str", _enum("float32", "float64"), ("must be one of",), words=("float32", "float64")),
        R("env.params.step_size", "float", lambda v, c: 0 < v <= 0.5, ("must be > 0.0", "must be <= 0.5")),
        R("env.params.goal_radius", "float", lambda v, c: 0 < v <= 0.5, ("must be > 0.0", "must be <= 0.5")),
        R("env.params.goal_reward", "float", lambda v, c: _pos(v), ("must be > 0.0", "must be a finite number")),
        R("env.params.action_cost", "float", lambda v, c: _nonneg(v), ("must be >= 0.0", "must be a finite number")),
        R("perf.update_step", "str", lambda v, c: v in ("eager", "compile") or (
            v == "cuda_graph" and c.device != "cpu" and (c.device != "auto" or _cuda())),
          ("must be eager, compile or cuda_graph", "needs a CUDA device"), words=("eager", "compile", "cuda_graph")),
        # ---- evo (EPO; base: the default cpo with evolution switched on below where needed)
        R("evo.interval_steps", "int", lambda v, c: v >= 0, GE0, examples=(0, 1, 384000, -1)),
        R("evo.warmup_steps", "int", lambda v, c: v >= 0, GE0),
        R("evo.num_parents", "int", lambda v, c: v >= 1, GE1),
        R("evo.num_replace", "int", lambda v, c: v >= 1, GE1),
        R("evo.mutation_std", "float", lambda v, c: _nonneg(v), ("must be a finite number >= 0",)),
        R("evo.trigger_gamma", "float", lambda v, c: _nonneg(v), ("must be a finite number >= 0",)),
        R("evo.fitness", "str", _enum("return", "success"), ("must be return or success",), words=("return", "success")),
        R("evo.child_log_std", "str", _enum("keep", "parents"), ("must be keep or parents",), words=("keep", "parents")),
        # ---- log
        *[R(f"log.{k}", "int", lambda v, c: v >= 1, GE1)
          for k in ("heatmap_every", "diag_samples", "ckpt_every", "keep_last")],
        R("log.wandb", "bool", lambda v, c: not v or _has("wandb"), ("needs the wandb package",)),
        R("log.wandb_mode", "str", _enum("online", "offline", "disabled"), ("must be online, offline or disabled",),
          words=("online", "offline", "disabled")),
        R("log.wandb_project", "str", lambda v, c: bool(v.strip()), ("must not be empty",),
          examples=("cpo", "my-project", "", "  ")),
        # ---- pbt (base: algo=pbt; population 8, 1200 envs, horizon 32, 4 minibatches)
        R("pbt.population", "int", lambda v, c: v == 0 or (v >= 2 and _member_ok(c)),
          GE0 + ("needs at least 2 members", "is not divisible by pbt.population", "does not divide a member's batch"),
          base="pbt", examples=(0, 1, 2, 4, 7, 8, 9, 10, 16, -1, 1200, 2400)),
        R("pbt.num_workers", "int", lambda v, c: v == 1 or (v > 1 and bool(c.pbt.shared_dir)),
          GE1 + ("must name a directory shared",), base="pbt"),
        R("pbt.worker_id", "int", lambda v, c: 0 <= v < c.pbt.num_workers, ("must be in 0..pbt.num_workers-1",),
          base="pbt"),
        R("pbt.shared_dir", "opt_str", lambda v, c: c.pbt.num_workers == 1 or bool(v), ("must name a directory",),
          base="pbt"),
        R("pbt.interval_steps", "int", lambda v, c: v >= c.algo.horizon * c.env.num_envs,
          ("must be >= algo.horizon*env.num_envs",), base="pbt", examples=(38399, 38400, 100000, 0, -1)),
        R("pbt.bottom_fraction", "float", lambda v, c: 0 < v <= 0.5, ("must be in (0, 0.5]",), base="pbt"),
        R("pbt.top_fraction", "float", lambda v, c: 0 < v <= 0.5, ("must be in (0, 0.5]",), base="pbt"),
        R("pbt.threshold", "float", lambda v, c: math.isfinite(v) and v >= 0, NONNEG, base="pbt"),
        R("pbt.threshold_mode", "str", _enum("relative", "absolute"), ("must be relative or absolute",),
          base="pbt", words=("relative", "absolute")),
        R("pbt.mutate", "strs",
          lambda v, c: len(v) >= 1 and len(set(v)) == len(v) and all(
              k in PBT_HYPERPARAMS and _in_pbt_range(k)(getattr(c.algo, k), c) for k in v),
          ("must list at least one hyperparameter, each once", "cannot be evolved", "must lie within"), base="pbt",
          examples=(["lr"], ["lr", "lr"], [], ["momentum"], list(PBT_HYPERPARAMS))),
        R("pbt.init_spread", "float", lambda v, c: _fin(v) and v >= 1, ("must be a finite number >= 1",), base="pbt"),
        R("pbt.score_window", "int", lambda v, c: 1 <= v <= 100000, ("must be in [1, 100000]",), base="pbt"),
        R("pbt.sync_timeout", "float", lambda v, c: math.isfinite(v) and v >= 0, NONNEG, base="pbt"),
        # ---- what PBT needs from the other sections
        R("algo.num_policies", "int", lambda v, c: v == 1,
          GE1 + ("is not divisible by algo.num_policies", "must be 1 with PBT"), base="pbt"),
        R("perf.update_step", "str", lambda v, c: v == "eager",
          ("must be eager, compile or cuda_graph", "must be eager with PBT", "needs a CUDA device"), base="pbt",
          words=("eager", "compile", "cuda_graph")),
        R("algo.lr_schedule", "str", lambda v, c: v == "fixed",
          ("must be adaptive, fixed or linear", "must be fixed with PBT"), base="pbt",
          words=("adaptive", "fixed", "linear")),
        R("net.rnn_hidden", "int", lambda v, c: v == 0, GE0 + ("must be 0 with PBT",), base="pbt"),
        R("algo.mixed_precision", "str", lambda v, c: v == "none",
          ("must be none, bf16 or fp16", "must be none with PBT", "fp16 needs a CUDA device"),
          base="pbt", words=("none", "bf16", "fp16")),
        R("perf.compile", "str", lambda v, c: v in ("none", "policy"),
          ("must be none, policy, update or all", "must be none or policy with PBT"), base="pbt",
          words=("none", "policy", "update", "all")),
        R("env.num_envs", "int", lambda v, c: v >= 1 and _member_ok(c) and c.pbt.interval_steps >= v * c.algo.horizon,
          GE1 + ("is not divisible by pbt.population", "does not divide a member's batch",
                 "must be >= algo.horizon*env.num_envs"), base="pbt", examples=(8, 16, 1200, 3120, 3200, 12, 0)),
        R("algo.horizon", "int",
          lambda v, c: v >= 1 and _batch_ok(c) and _member_ok(c) and c.pbt.interval_steps >= v * c.env.num_envs,
          GE1 + ("does not divide a member's batch", "must be >= algo.horizon*env.num_envs"), base="pbt"),
        R("algo.num_minibatches", "int", lambda v, c: v >= 1 and _batch_ok(c) and _member_ok(c),
          GE1 + ("does not divide the batch", "does not divide a member's batch"), base="pbt",
          examples=(1, 2, 4, 8, 16, 32, 3, 5, 4800, 9600)),
    ]
    for key in POSITIVE:
        out.append(R(f"algo.{key}", "float", lambda v, c: _pos(v), POS))
    for key in NONNEGATIVE:
        out.append(R(f"algo.{key}", "float", lambda v, c: _nonneg(v), NONNEG))
    for key in PBT_HYPERPARAMS:  # evolved keys start inside their PBT range (algo.lr: [lr_min, lr_max])
        base = "pbt" if key in TrainConfig().pbt.mutate else "pbt_all"
        first = ("must be in [0, 1]",) if key in ("gamma", "gae_lambda") else (POS if key in POSITIVE + ("lr",) else NONNEG)
        out.append(R(f"algo.{key}", "float", lambda v, c, k=key: _fin(v) and _in_pbt_range(k)(v, c),
                     first + ("must lie within",), base=base))
    return out


@functools.lru_cache(maxsize=None)
def ok_env_names() -> Tuple[str, ...]:
    """Registered tasks whose default parameters validate here (gymnasium needs an id,
    isaaclab its install): env.name may be set to these alone."""
    from envs import registry

    good = []
    for name in registry.names():
        try:
            registry.check_params(name, {})
            good.append(name)
        except registry.EnvConfigError:
            pass
    return tuple(good)


def puma_params() -> List[str]:
    """Parameter names of the base task (point_maze)."""
    from envs import registry

    return [f.name for f in dataclasses.fields(registry.spec("point_maze").params)]


RULES: List[Rule] = _rules()
#: schema keys validate() does not check, and why (tests/test_config_property.py keeps this
#: and RULES covering every key of the schema)
UNCHECKED: Dict[str, str] = {
    "algo.name": "informational label of the preset; any string",
    "algo.clip_value": "bool: both values valid (the schema rejects non-bools)",
    "algo.normalize_advantage": "bool: both values valid",
    "net.separate_critic": "bool: both values valid",
    "net.normalize_obs": "bool: both values valid",
    "net.normalize_value": "bool: both values valid",
    "log.tensorboard": "bool: both values valid",
    "log.progress": "bool: both values valid",
    "evo.protect_leader": "bool: both values valid (it only changes who may be replaced)",
    "log.wandb_entity": "any W&B entity name or null (W&B itself checks it when the run starts)",
    "log.wandb_group": "any group name or null",
    "log.wandb_tags": "any list of strings",
    "perf.fused_adam": "null/true/false all valid (fused Adam runs on CPU and CUDA)",
    "resume": "checked by cpo.app.resume_config: the 'resume' category of draw_case",
    "run_dir": "any path; cpo.app refuses one that already holds checkpoints",
}


def base_facts(name: str) -> Dict[str, Any]:
    """What the predicates of :data:`RULES` assume about base ``name`` (checked by a test)."""
    common = {"algo.offpolicy_blocks": "1", "algo.lambda_f_tiers": None, "algo.beta_adapt": False,
              "device": "auto", "nonfinite": "stop", "net.rnn_hidden": 0, "perf.cuda_graphs": False,
              "env.name": "point_maze", "env.params": {}, "pbt.num_workers": 1, "pbt.shared_dir": None}
    if name == "default":
        return dict(common, **{"pbt.population": 0, "algo.num_policies": 6, "algo.lambda_adv": 0.0})
    return dict(common, **{"pbt.population": 8, "algo.num_policies": 1, "algo.lr_schedule": "fixed"})


# ---------------------------------------------------------------------------- configs
_BASE_CACHE: Dict[str, TrainConfig] = {}


def compose(overrides: Sequence[str]) -> TrainConfig:
    """conf/config.yaml composed with ``overrides`` as train.py does it, not yet validated:
    the command-line check, Hydra, the schema (unknown ``+keys``) and ``resume=<dir>``."""
    from hydra import compose as hcompose, initialize_config_dir

    from cpo.app import AUTO_RESUME, check_overrides, resume_config, to_train_config

    check_overrides(list(overrides))
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = to_train_config(hcompose("config", overrides=list(overrides)))
    if cfg.resume and cfg.resume != AUTO_RESUME:
        cfg, _ = resume_config(cfg.resume, list(overrides))
    return cfg


def base(name: str) -> TrainConfig:
    """A fresh copy of base config ``name`` (see :data:`BASES`)."""
    if name not in _BASE_CACHE:
        _BASE_CACHE[name] = compose(BASES[name])
    return copy.deepcopy(_BASE_CACHE[name])


def get_key(cfg: TrainConfig, key: str) -> Any:
    """The value of dotted ``key`` (``env.params.x`` reads the params dict, missing = None)."""
    if key.startswith("env.params."):
        return cfg.env.params.get(key.split(".", 2)[2])
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def set_key(cfg: TrainConfig, key: str, value: Any) -> None:
    """Set dotted ``key`` of ``cfg`` (``env.params.x`` sets an item; ``env.params`` updates)."""
    if key == "env.params":
        cfg.env.params = dict(cfg.env.params, **value)
        return
    if key.startswith("env.params."):
        cfg.env.params = dict(cfg.env.params, **{key.split(".", 2)[2]: value})
        return
    *path, leaf = key.split(".")
    obj: Any = cfg
    for part in path:
        obj = getattr(obj, part)
    setattr(obj, leaf, value)


# ---------------------------------------------------------------------------- values
_KEYWORD = re.compile(r"(?i)[+-]?(true|false|null|nan|inf)")
_TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"


def typo(d: Any, s: str, alphabet: str = "abcdefghijklmnopqrstuvwxyz") -> str:
    """``s`` with one random edit (delete, insert, replace, swap or double a letter); letters
    only are touched, so dots and underscores stay where they are."""
    spots = [i for i, ch in enumerate(s) if ch.isalpha()]
    if not spots:
        return s + d.pick(alphabet)
    i = d.pick(spots)
    op = d.pick(["delete", "insert", "replace", "swap", "double"])
    if op == "delete" and len(spots) > 1:
        return s[:i] + s[i + 1:]
    if op == "insert":
        return s[:i] + d.pick(alphabet) + s[i:]
    if op == "swap" and i + 1 < len(s) and s[i + 1].isalpha() and s[i + 1] != s[i]:
        return s[:i] + s[i + 1] + s[i] + s[i + 2:]
    if op == "double":
        return s[:i] + s[i] + s[i:]
    other = [ch for ch in alphabet if ch != s[i]]
    return s[:i] + d.pick(other) + s[i + 1:]


def word(d: Any, words: Sequence[str] = ()) -> str:
    """A string for a str key: one of ``words`` (valid), a typo or upper-cased variant of one,
    or a random token."""
    k = d.integer(0, 5) if words else 5
    if k <= 1:
        return d.pick(list(words))
    if k == 2:
        return typo(d, d.pick(list(words)))
    if k == 3:
        return d.pick(list(words)).upper()
    n = d.integer(1, 8)
    return d.pick("abcdefghijklmnopqrstuvwxyz") + "".join(d.pick(_TOKEN_CHARS) for _ in range(n - 1))


def draw_int(d: Any) -> int:
    """An integer: an edge value, a small one, a large one or a huge one."""
    k = d.integer(0, 3)
    if k == 0:
        return d.pick(INTS)
    if k == 1:
        return d.integer(-3, 70)
    if k == 2:
        return d.integer(-10 ** 6, 10 ** 6)
    return d.integer(-(2 ** 80), 2 ** 80)


def draw_value(d: Any, rule: Rule) -> Any:
    """A random value of ``rule.kind`` (an example of the rule 30 % of the time)."""
    if rule.examples and d.integer(0, 9) < 3:
        return copy.deepcopy(d.pick(list(rule.examples)))
    kind = rule.kind
    if kind == "int":
        return draw_int(d)
    if kind == "float":
        return d.real()
    if kind == "str":
        return word(d, rule.words)
    if kind == "bool":
        return d.pick([True, False])
    if kind == "ints":
        return [d.pick([d.integer(-2, 4), d.integer(1, 512)]) for _ in range(d.integer(0, 4))]
    if kind == "opt_int":
        return None if d.integer(0, 4) == 0 else draw_int(d)
    if kind == "opt_str":
        return None if d.integer(0, 2) == 0 else word(d)
    if kind == "opt_floats":
        return None if d.integer(0, 4) == 0 else [d.real() for _ in range(d.integer(0, 7))]
    if kind == "strs":
        keys = list(PBT_HYPERPARAMS) + ["momentum", "beta", "lr_max"]
        return [d.pick(keys) for _ in range(d.integer(0, 4))]
    if kind == "param":
        names = puma_params()
        name = d.pick([d.pick(names), typo(d, d.pick(names)), word(d)])
        return {name: getattr(registry_params_default(), name, 1)}
    raise ValueError(f"unknown kind {kind!r}")


def registry_params_default() -> Any:
    """The default parameters of the base task (valid values for its parameter names)."""
    from envs import registry

    return registry.spec("point_maze").params()


def render(v: Any) -> str:
    """``v`` as Hydra override text."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(render(x) for x in v) + "]"
    return str(v)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def hydra_value(text: str, kind: str) -> Any:
    """What the schema receives for the override text ``text`` of a ``kind`` key: Hydra's
    parse, with numbers turned into strings for str keys as OmegaConf does."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    value = OverridesParser.create().parse_override("k=" + text).value()
    if kind in ("str", "opt_str", "strs"):
        def as_str(x: Any) -> Any:
            return str(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x
        value = [as_str(x) for x in value] if isinstance(value, list) else as_str(value)
    elif kind in ("float", "opt_floats"):
        def as_float(x: Any) -> Any:
            return float(x) if isinstance(x, int) and not isinstance(x, bool) else x
        value = [as_float(x) for x in value] if isinstance(value, list) else as_float(value)
    return value


def renderable(v: Any, kind: str) -> bool:
    """Whether ``v`` survives the trip through override text unchanged into a key of ``kind``
    (``any``: an untyped key such as ``env.params.*``, which keeps Hydra's parse)."""
    try:
        return _same(hydra_value(render(v), kind), v)
    except Exception:  # noqa: BLE001 - Hydra's grammar refuses the text: not renderable
        return False


def value_texts(v: Any) -> Tuple[str, ...]:
    """How an error message may show ``v`` after ``key=``."""
    out = [repr(v), str(v), render(v)]
    if isinstance(v, bool):
        out += ["true" if v else "false"]
    return tuple(dict.fromkeys(out))


# ---------------------------------------------------------------------------- cases
@dataclasses.dataclass
class Case:
    """One draw: apply ``values`` to base ``base`` (or run ``overrides`` as they are).

    An invalid case must be refused with an error naming one ``(key, texts)`` of ``names`` as
    ``key=text``, containing one of ``rules`` (when any) and "did you mean" when ``hint``."""

    category: str
    base: str = "default"
    values: Dict[str, Any] = dataclasses.field(default_factory=dict)
    raw: List[str] = dataclasses.field(default_factory=list)
    valid: bool = True
    names: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()
    rules: Tuple[str, ...] = ()
    hint: bool = False

    def overrides(self) -> List[str]:
        """The Hydra overrides of this case (base first)."""
        out = list(BASES[self.base])
        for key, v in self.values.items():
            if key == "env.params":
                out += [f"++env.params.{k}={render(x)}" for k, x in v.items()]
            elif key.startswith("env.params."):
                out.append(f"++{key}={render(v)}")
            else:
                out.append(f"{key}={render(v)}")
        return out + self.raw

    def config(self) -> TrainConfig:
        """The base config with ``values`` applied (no Hydra)."""
        cfg = base(self.base)
        for key, v in self.values.items():
            set_key(cfg, key, v)
        return cfg


def value_case(rule: Rule, v: Any) -> Case:
    """``rule.key = v`` on the rule's base, judged by the rule's predicate."""
    case = Case("value", rule.base, {rule.key: v}, rules=rule.rules + ("needs at least",))
    cfg = case.config()
    # every key is also subject to the memory estimate (cpo.utils.config.check_memory)
    case.valid = bool(rule.valid(v, cfg)) and _fits(cfg)
    case.names = ((rule.key, value_texts(v)),)
    if rule.key == "env.params":
        name, x = next(iter(v.items()))
        case.names = ((f"env.params.{name}", value_texts(x)),)
    return case


def draw_value_case(d: Any, hydra: bool = False) -> Case:
    """A random value of a random rule (for ``hydra``: one that survives the override text)."""
    rule = d.pick(RULES)
    v = draw_value(d, rule)
    return value_case(rule, _text_safe(d, rule, v) if hydra else v)


def _text_safe(d: Any, rule: Rule, v: Any) -> Any:
    """``v``, or another draw when ``v`` cannot be written as override text, or a valid
    default after 20 tries."""
    if rule.kind == "param":
        name = next(iter(v))
        return v if re.fullmatch(r"[a-z_][a-z0-9_]*", name) and renderable(v[name], "any") else {"step_size": 0.25}
    kind = "any" if rule.key.startswith("env.params.") else rule.kind
    for _ in range(20):
        if renderable(v, kind):
            return v
        v = draw_value(d, rule)
    return current_value(rule)


def current_value(rule: Rule) -> Any:
    """The value ``rule.key`` has in its base (for task parameters: the task's default); valid."""
    if rule.kind == "param":
        return {"layout": "u_maze"}
    if rule.key.startswith("env.params."):
        return getattr(registry_params_default(), rule.key.split(".", 2)[2])
    return get_key(base(rule.base), rule.key)


def _layout_case(d: Any) -> Case:
    """num_envs, num_policies, horizon, minibatches, off-policy blocks, lambda_adv, beta_adapt."""
    N = d.pick([d.integer(-2, 40), d.integer(1, 5000), d.pick([0, 6, 600, 1200, 24576])])
    M = d.pick([d.integer(-1, 12), d.pick([1, 6])])
    T = d.pick([d.integer(-1, 64), d.pick([8, 16, 32])])
    mb = d.pick([d.integer(-1, 16), d.integer(1, 100000), d.pick([1, 4])])
    off = d.pick(["1", "all", str(d.integer(0, 12))])
    adv = d.pick([0.0, 0.01])
    adapt = d.pick([False, True])
    beta = d.pick([0.0, 1e-3])
    values = {"env.num_envs": N, "algo.num_policies": M, "algo.horizon": T, "algo.num_minibatches": mb,
              "algo.offpolicy_blocks": off, "algo.lambda_adv": adv, "algo.beta_adapt": adapt, "algo.beta": beta}
    valid = (N >= 1 and M >= 1 and T >= 1 and mb >= 1 and N % M == 0 and (N * T) % mb == 0 and _off_ok(off, M)
             and (adv == 0 or M >= 2) and (not adapt or (beta > 0 and M >= 2)) and (beta == 0 or M >= 2))
    rules = GE1 + ("is not divisible by algo.num_policies", "does not divide the batch", "1..num_policies-1",
                   "needs algo.num_policies >= 2", "must be > 0 with algo.beta_adapt=true", "needs followers",
                   "the coupling needs followers")
    return Case("layout", "default", values, valid=valid, rules=rules)


def _lr_case(d: Any) -> Case:
    """lr, lr_min and lr_max together."""
    grid = [1e-7, 1e-6, 1e-5, 1e-4, 5e-4, 1e-3, 1e-2, 0.1, 0.0, -1e-3, NAN, INF]
    lr, lo, hi = d.pick(grid), d.pick(grid), d.pick(grid)
    valid = _pos(lr) and _pos(lo) and _pos(hi) and lo <= lr <= hi
    return Case("lr", "default", {"algo.lr": lr, "algo.lr_min": lo, "algo.lr_max": hi}, valid=valid,
                rules=POS + ("must be >= algo.lr_min", "must lie within"))


def _switch_case(d: Any) -> Case:
    """nonfinite x nonfinite_check, and perf.cuda_graphs x device x net.rnn_hidden x perf.compile."""
    nf, chk = d.pick(["stop", "reset"]), d.pick(["step", "iteration"])
    graphs, dev = d.pick([False, True]), d.pick(["auto", "cpu", "cuda", "cuda:1"])
    rnn, comp = d.pick([0, 0, 16]), d.pick(["none", "policy", "update", "all"])
    valid = (nf != "reset" or chk == "step") and (
        not graphs or (dev != "cpu" and rnn == 0 and (dev != "auto" or _cuda())))
    values = {"nonfinite": nf, "nonfinite_check": chk, "perf.cuda_graphs": graphs, "device": dev,
              "net.rnn_hidden": rnn, "perf.compile": comp}
    return Case("switches", "default", values, valid=valid,
                rules=("must be step when nonfinite=reset", "needs a CUDA device", "feed-forward"))


def _pbt_case(d: Any) -> Case:
    """population, workers, worker id, shared dir and num_envs of a PBT run."""
    P = d.pick([d.integer(-1, 12), 8])
    W = d.pick([d.integer(0, 4), 1])
    wid = d.pick([d.integer(-1, 4), 0])
    shared = d.pick([None, "/tmp/pbt_shared"])
    N = d.pick([d.integer(1, 3200), 1200, 96])
    values = {"pbt.population": P, "pbt.num_workers": W, "pbt.worker_id": wid, "pbt.shared_dir": shared,
              "env.num_envs": N}
    c = base("pbt")
    for k, v in values.items():
        set_key(c, k, v)
    valid = P >= 0 and W >= 1 and 0 <= wid < W
    if valid and P == 0:
        valid = W == 1
    elif valid:
        valid = (P * W >= 2 and (W == 1 or bool(shared)) and _member_ok(c)
                 and c.pbt.interval_steps >= c.algo.horizon * N)
    rules = GE0 + GE1 + ("must be in 0..pbt.num_workers-1", "needs pbt.population >= 1", "needs at least 2 members",
                         "must name a directory shared", "is not divisible by pbt.population",
                         "does not divide a member's batch", "must be >= algo.horizon*env.num_envs")
    return Case("pbt", "pbt", values, valid=valid, rules=rules)


def draw_combo_case(d: Any) -> Case:
    """A random combination case (several keys whose rules depend on each other)."""
    case = d.pick([_layout_case, _lr_case, _switch_case, _pbt_case])(d)
    case.names = tuple((k, value_texts(v)) for k, v in case.values.items())
    return case


def _known_path(key: str) -> bool:
    """Whether every part of dotted ``key`` is a schema field (or a config section)."""
    from cpo.app import schema_keys

    keys = schema_keys()
    return key in keys or any(k.startswith(key + ".") for k in keys)


def unknown_key_case(d: Any) -> Case:
    """A one-edit typo of a real key, set plainly (checked before Hydra) or with ``+``
    (checked after composing): refused with a "did you mean"."""
    from cpo.app import _config_groups, schema_keys

    real = d.pick([k for k in schema_keys() if k != "env.params"])
    bad = typo(d, real)
    for _ in range(10):
        if not _known_path(bad) and bad not in _config_groups(None) and re.fullmatch(
                r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*", bad):
            break
        bad = typo(d, real)
    else:
        bad = real + "x"
    plus = d.pick([False, True])
    case = Case("unknown_key", raw=[("+" if plus else "") + f"{bad}=1"], valid=False,
                rules=("is not a config key",), hint=True)
    if not plus:
        case.names = ((bad, ("1",)),)
    else:  # check_unknown_keys names the first unknown part with what lies below it
        parts = bad.split(".")
        i = next(j for j in range(len(parts)) if not _known_path(".".join(parts[:j + 1])))
        below: Any = 1
        for part in reversed(parts[i + 1:]):
            below = {part: below}
        case.names = ((".".join(parts[:i + 1]), (repr(below),)),)
    return case


def _leaf_kinds() -> Dict[str, str]:
    """Schema key -> its annotation text (``int``, ``Optional[List[float]]``, ...)."""
    from cpo.app import _NESTED

    out = {}
    for f in dataclasses.fields(TrainConfig):
        sub = _NESTED.get(f.name)
        if sub is None:
            out[f.name] = str(f.type)
        else:
            out.update({f"{f.name}.{g.name}": str(g.type) for g in dataclasses.fields(sub)})
    return out


def wrong_type_case(d: Any) -> Case:
    """A value the schema cannot hold (a word for a number, a list for a scalar, ...)."""
    kinds = {k: t for k, t in _leaf_kinds().items() if not t.startswith("Dict")}
    key = d.pick(sorted(kinds))
    t = kinds[key]
    if "List" in t:
        token = d.pick(["abc", "[abc]" if "str" not in t else "abc", "[1.5]" if "int" in t else "xyz"])
    elif "bool" in t:
        token = d.pick(["maybe", "perhaps", "tru", "[true]"])
    elif "int" in t:
        token = d.pick(["abc", "1.5", "[1]", "true", word(d)])
    elif "float" in t:
        token = d.pick(["abc", "[1.0]", "true", word(d)])
    else:  # str
        token = d.pick(["[a]", "[1,2]"])
    if _KEYWORD.fullmatch(token):  # null, nan, inf: values these keys may hold
        token = "abc"
    return Case("wrong_type", raw=[f"{key}={token}"], valid=False, names=((key, (token,)),), rules=TYPE_RULES)


def env_name_case(d: Any) -> Case:
    """env.name: a usable task (valid), a one-edit typo of one ("did you mean") or a random word."""
    from envs import registry

    names = registry.names()
    k = d.integer(0, 2)
    if k == 0:
        return value_case(next(r for r in RULES if r.key == "env.name"), d.pick(ok_env_names()))
    name = typo(d, d.pick(names)) if k == 1 else word(d)
    if name in names or not renderable(name, "str"):
        name = "no_such_task"
    return Case("env_name", raw=[f"env.name={name}"], valid=False, names=(("env.name", value_texts(name)),),
                rules=("is not a registered task",), hint=k == 1)


def group_case(d: Any) -> Case:
    """A config-group choice: an existing preset (valid), a typo of one ("did you mean"), a word,
    or a list (refused before Hydra)."""
    from cpo.app import _config_groups

    groups = _config_groups(None)
    group = d.pick(["algo", "env", "experiment"])
    options = groups[group]
    k = d.integer(0, 3)
    if k == 0 and group != "experiment":  # experiment presets need Isaac Gym's 24576 envs: not here
        choice = d.pick(options)
        if group == "env" and choice == "gymnasium":  # the generic preset needs the user's env id
            return Case("group", raw=["env=gymnasium", "+env.params.id=HalfCheetah-v5"], valid=True)
        return Case("group", raw=[f"{group}={choice}"], valid=True)
    if k == 3:
        choice = "[" + d.pick(options) + "]"
        return Case("group", raw=[f"{group}={choice}"], valid=False, names=((group, (choice,)),),
                    rules=("a config group takes one preset name",))
    choice = typo(d, d.pick(options), "abcdefghijklmnopqrstuvwxyz_") if k != 2 else word(d)
    if choice in options or _KEYWORD.fullmatch(choice) or not re.fullmatch(r"[a-z][a-z0-9_]*", choice):
        choice = "zz_nothing"
    return Case("group", raw=[f"{group}={choice}"], valid=False, names=((group, (choice,)),),
                rules=("there is no preset",), hint=k == 1 and choice != "zz_nothing")


def resume_case(d: Any) -> Case:
    """resume= a directory that does not exist (``auto`` is valid: nothing to resume here)."""
    if d.integer(0, 3) == 0:
        return Case("resume", raw=["resume=auto"], valid=True)
    path = "/nonexistent_" + word(d) + "/run"
    return Case("resume", raw=[f"resume={path}"], valid=False, names=(("resume", value_texts(path)),),
                rules=("the directory does not exist",))


#: category -> (weight, drawer) of :func:`draw_case`
CATEGORIES: Dict[str, Tuple[int, Callable[[Any], Case]]] = {
    "value": (50, lambda d: draw_value_case(d, hydra=True)),
    "combo": (14, draw_combo_case),
    "unknown_key": (10, unknown_key_case),
    "wrong_type": (10, wrong_type_case),
    "env_name": (6, env_name_case),
    "group": (6, group_case),
    "resume": (4, resume_case),
}


def draw_case(d: Any) -> Case:
    """A random case of any category (weighted by :data:`CATEGORIES`)."""
    names = [n for n, (w, _) in CATEGORIES.items() for _ in range(w)]
    return CATEGORIES[d.pick(names)][1](d)


# ---------------------------------------------------------------------------- running
@dataclasses.dataclass
class Outcome:
    """What happened to a case: accepted, or refused with ``message``; ``clear`` says whether
    the refusal met the case's requirements."""

    accepted: bool
    clear: bool = False
    message: str = ""


def error_text(err: BaseException) -> str:
    """The message of ``err`` and of the errors it was raised from (Hydra keeps OmegaConf's
    explanation in ``__cause__``), as ``train.py`` prints them."""
    parts, seen = [], set()
    e: Optional[BaseException] = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts.append(str(e))
        e = e.__cause__ or e.__context__
    return "\n".join(parts)


def is_clear(case: Case, msg: str) -> bool:
    """Whether ``msg`` names a key with its value, states one of the rules and, for typos,
    says "did you mean"."""
    named = any(f"{key}={t}" in msg for key, texts in case.names for t in texts)
    ruled = not case.rules or any(r in msg for r in case.rules)
    return named and ruled and (HINT in msg or not case.hint)


def _refusal_types() -> Tuple[type, ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from cpo.utils import checkpoint

    return ConfigError, HydraException, OmegaConfBaseException, checkpoint.CheckpointError


def judge(case: Case, run: Callable[[], Any]) -> Outcome:
    """Run ``run`` (compose and validate ``case``) and judge what happened. Any exception
    other than a config, Hydra or OmegaConf error counts as an unclear refusal."""
    try:
        run()
    except _refusal_types() as err:
        msg = error_text(err)
        return Outcome(False, is_clear(case, msg), msg)
    except Exception as err:  # noqa: BLE001 - a crash is exactly what this looks for
        return Outcome(False, False, f"{type(err).__name__}: {err}")
    return Outcome(True)


def run_hydra(case: Case) -> Outcome:
    """``case`` through the command-line path of train.py (overrides as text). There,
    ``env.name=X`` for a registered task other than the env preset's (point_maze in every
    base) is refused before Hydra, naming the presets made for X (it would keep the preset's
    tuning): the case (updated in place, so the caller judges it so too) follows that rule."""
    name = case.values.get("env.name")
    if name is not None and name != "point_maze" and name in ok_env_names():
        case.valid, case.names = False, (("env.name", value_texts(name)),)
        case.rules, case.hint = ("was tuned for env.name=point_maze",), False
    return judge(case, lambda: validate(compose(case.overrides())))


def run_direct(case: Case) -> Outcome:
    """``case`` applied to the base dataclass and passed to :func:`validate` (no Hydra)."""
    cfg = case.config()
    return judge(case, lambda: validate(cfg))


def passed(case: Case, out: Outcome) -> bool:
    """Valid and accepted, or invalid and refused clearly."""
    return out.accepted if case.valid else (not out.accepted and out.clear)
