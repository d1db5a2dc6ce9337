"""Structured configuration (Hydra ConfigStore dataclasses) and its validation.

Every key is a typed dataclass field documented in place: what it does and its valid range.
Unknown keys and wrongly typed values are rejected by Hydra/OmegaConf while composing;
:func:`validate` checks ranges and combinations before any compute and raises a
:class:`ConfigError` naming the key, the value and the rule.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


class ConfigError(ValueError):
    """An invalid configuration: the message names the key, the value and the rule."""


@dataclass
class NetConfig:
    """The ensemble actor-critic network (one network shared by all policies)."""

    actor_hidden: List[int] = field(default_factory=lambda: [256, 128, 64])
    """Hidden layer widths of the actor MLP (each >= 1)."""
    critic_hidden: List[int] = field(default_factory=lambda: [256, 128, 64])
    """Hidden layer widths of the critic MLP; ignored when ``separate_critic`` is false."""
    separate_critic: bool = True
    """False shares the actor trunk with a linear value head (the paper's rl_games setting)."""
    activation: str = "elu"
    """Hidden activation: elu | relu | tanh | silu."""
    init_log_std: float = 0.0
    """Initial log standard deviation of every policy's Gaussian (state-independent; finite)."""
    normalize_obs: bool = True
    """Running mean/std observation normaliser, updated once per rollout."""
    normalize_value: bool = True
    """Running mean/std value normaliser: the critic learns standardised returns."""
    obs_clip: float = 5.0
    """Normalised observations are clipped to [-obs_clip, obs_clip] (> 0)."""
    rnn_hidden: int = 0
    """Width of an LSTM front end on the observation (paper: 768 for the Kuka tasks); 0 = none.
    Its features are shared by all policies (the latent enters after it)."""


@dataclass
class AlgoConfig:
    """The leader-follower learner. PPO is ``num_policies=1``; SAPG and CPO set the ensemble
    knobs (ALGORITHMS.md sections 4-6)."""

    name: str = "ppo"
    """Label of the preset (ppo, sapg, cpo, ...): informational, used in logs and reports."""
    num_policies: int = 1
    """M, policies in the ensemble: block 0 is the leader, 1..M-1 followers (>= 1)."""
    latent_dim: int = 32
    """Size of each policy's learned latent phi_m fed to the shared network (>= 0)."""
    horizon: int = 32
    """T, env steps per env per iteration (>= 1)."""
    num_epochs: int = 5
    """Passes (mini-epochs) over each iteration's batch (>= 1)."""
    num_minibatches: int = 4
    """Minibatches per epoch of the on-policy batch N*T; must divide N*T. Off-policy and
    coupling rows ride along with the same minibatch size."""
    gamma: float = 0.99
    """Discount factor in [0, 1]."""
    gae_lambda: float = 0.95
    """GAE lambda in [0, 1]."""
    clip_eps: float = 0.2
    """PPO ratio clip epsilon (> 0)."""
    clip_value: bool = True
    """Clip the value update to +-clip_eps around the old value (in normalised units)."""
    value_coef: float = 2.0
    """Critic coefficient c: the loss adds 0.5 * c * value MSE (rl_games' critic_coef)."""
    entropy_coef: float = 0.0
    """Entropy bonus of the leader (the only policy under PPO) (>= 0)."""
    entropy_scale: float = 0.0
    """s_ent: follower m gets entropy coefficient s_ent * 0.5 * (M - m) / (M - 1) (>= 0). The
    paper uses 0.005 (hands, reorientation), 0.002 (locomotion), 0 elsewhere. Under CPO the
    entropy bonus pulls each follower's sigma up while the coupling (beta) pulls it toward the
    leader's, so beta's meaning depends on s_ent: keep the paper's ratio (s_ent / beta = 5 at
    beta = 1e-3) or scale beta with s_ent."""
    bounds_coef: float = 1e-4
    """Weight of the penalty on action means outside [-1.1, 1.1] (>= 0)."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip (> 0)."""
    lr: float = 3e-4
    """Initial Adam learning rate (> 0)."""
    lr_schedule: str = "adaptive"
    """adaptive (from the KL of the update, once per mini-epoch) | fixed | linear (to 0 at
    max_iterations)."""
    kl_threshold: float = 0.016
    """Adaptive LR, applied once per mini-epoch from that epoch's mean KL(current || reference)
    over on-policy rows (a row's reference is its policy the last time it was trained, the
    behaviour policy in epoch 0; rl_games' rule): lr /= 1.5 when KL > 2*threshold, lr *= 1.5
    when KL < threshold/2 (> 0)."""
    lr_adapt_every: str = "epoch"
    """When the adaptive LR applies its rule: ``epoch`` (once per mini-epoch from the epoch's
    mean KL; rl_games' ``standard``, the authors' hand, Kuka and Franka configs) |
    ``minibatch`` (after every minibatch from its KL; rl_games' ``legacy``, the authors'
    Humanoid and Anymal configs)."""
    lr_min: float = 1e-6
    """Lower clamp of the adaptive learning rate (> 0)."""
    lr_max: float = 1e-2
    """Upper clamp of the adaptive learning rate (>= lr_min)."""
    normalize_advantage: bool = True
    """Standardise all advantages of the iteration together (one mean/std)."""
    reward_scale: float = 1.0
    """Env rewards are multiplied by this before GAE (paper: 0.01 on hand tasks) (> 0)."""
    offpolicy_blocks: str = "1"
    """Follower blocks relabelled as leader data per iteration: an integer k in 1..M-1
    (drawn uniformly without replacement) or "all"."""
    beta: float = 0.0
    """CPO coupling weight beta (>= 0); 0 disables the coupling term (SAPG)."""
    lambda_f: float = 0.2
    """CPO temperature lambda_f (> 0): weights min(exp(A/lambda_f), weight_max)."""
    weight_max: float = 100.0
    """Clamp w_max of the coupling weights (> 0)."""
    lambda_ppo: float = 0.0
    """Reverse-KL shaping of the follower PPO advantage, A - lambda_ppo*(log pi_f - log pi_L)."""
    lambda_adv: float = 0.0
    """Weight of the DIAYN-style discriminator reward for followers (>= 0); 0 disables it."""
    disc_hidden: List[int] = field(default_factory=lambda: [256, 256])
    """Hidden widths of the discriminator MLP q(z | s, a)."""
    disc_lr: float = 3e-4
    """Adam learning rate of the discriminator (> 0)."""
    disc_steps: int = 4
    """Discriminator gradient steps per iteration (>= 1)."""
    disc_batch: int = 4096
    """Rows per discriminator gradient step, drawn from the rollout (>= 1)."""
    lambda_f_schedule: str = "constant"
    """Schedule of lambda_f over training: constant | linear | cosine (to lambda_f_final)."""
    lambda_f_final: float = 0.2
    """lambda_f at the last iteration for linear/cosine schedules (> 0)."""
    lambda_f_tiers: Optional[List[float]] = None
    """Optional per-follower lambda_f (length M-1, each finite and > 0), overriding lambda_f
    and its schedule."""
    beta_adapt: bool = False
    """Adapt beta by dual ascent so that KL(pi_f || pi_L) tracks kl_target."""
    kl_target: float = 0.3
    """Target of the measured follower-to-leader KL (nats) when beta_adapt is on (> 0)."""
    beta_lr: float = 1.0
    """Dual-ascent step: log beta += beta_lr * (KL / kl_target - 1), per iteration (> 0)."""
    coupling_fraction: float = 1.0
    """Fraction f of the leader's envs each follower couples to, in (0, 1]: a fresh random
    subset per follower and iteration. The sampled rows count 1/f times and the minibatch is
    normalised by its full-batch size, so the loss keeps its expected value (and beta its
    meaning) while the coupling rows, and their cost, shrink by f."""
    minibatch_mode: str = "size"
    """How the off-policy and coupling rows enter the update: ``size`` keeps the minibatch at
    (T * N) / num_minibatches rows, so extra rows add minibatches (rl_games' and the SAPG and
    CPO authors' behaviour: more gradient steps per iteration than PPO); ``count`` keeps
    ``num_minibatches`` minibatches per epoch and makes them larger (as many gradient steps
    as PPO, each on more rows; on a launch-bound GPU the ensemble then costs about what PPO
    costs). Recurrent models always split env columns into ``num_minibatches`` groups."""
    mixed_precision: str = "none"
    """Autocast for the update forward: none | bf16 | fp16 (fp16 only on CUDA)."""


@dataclass
class EnvConfig:
    """Which environment and how many copies."""

    name: str = "cartpole"
    """Registered task name (see envs/registry.py)."""
    num_envs: int = 1024
    """N, parallel environments; divisible by algo.num_policies (>= 1). Under torchrun it is
    the global count over all processes (divisible by WORLD_SIZE * algo.num_policies): each
    rank steps N / WORLD_SIZE envs, an equal share of every policy's block."""
    max_episode_steps: Optional[int] = None
    """Time limit in env steps; None keeps the task's default."""
    params: Dict[str, Any] = field(default_factory=dict)
    """Task-specific parameters, validated against the task's own schema."""


@dataclass
class LogConfig:
    """Logging, diagnostics and checkpoints."""

    tensorboard: bool = True
    """Write TensorBoard event files into the run directory."""
    progress: bool = True
    """Show a console progress bar with SPS and ETA."""
    heatmap_every: int = 10
    """Log the KL-matrix heatmap image every this many iterations (>= 1)."""
    diag_samples: int = 2048
    """Rows per follower (and states for the KL matrix) used for diagnostics (>= 1)."""
    ckpt_every: int = 50
    """Save a checkpoint every this many iterations (>= 1); one is always saved at the end."""
    keep_last: int = 3
    """Periodic checkpoints kept besides best.pt (>= 1)."""
    wandb: bool = False
    """Mirror the TensorBoard scalars, the KL heatmap images and the config to Weights & Biases
    (``pip install -e ".[wandb]"``); x-axis ``env_steps``, a resumed run continues its W&B run."""
    wandb_project: str = "cpo-trainer"
    """W&B project."""
    wandb_entity: Optional[str] = None
    """W&B entity (user or team); None uses your default entity."""
    wandb_group: Optional[str] = None
    """W&B group (e.g. one per sweep); None groups by nothing."""
    wandb_tags: List[str] = field(default_factory=list)
    """W&B tags of the run."""
    wandb_mode: str = "online"
    """online | offline (written under <run dir>/wandb, upload later with ``wandb sync``) |
    disabled."""


@dataclass
class PerfConfig:
    """Optional fast paths (cpo/models/fast.py). Each computes the same function as the eager
    default, up to floating-point reassociation; tests/test_fast.py checks this on CPU."""

    compile: str = "none"
    """torch.compile: none | policy (the rollout policy step) | update (the minibatch loss:
    forward, loss terms and their backward) | all. Costs a one-time compile (tens of seconds)
    per shape."""
    cuda_graphs: bool = False
    """Capture the rollout policy step in a CUDA graph and replay it every env step (one
    launch instead of dozens); needs a CUDA device and a feed-forward network."""
    update_step: str = "eager"
    """The whole minibatch step (forward, backward, gradient clip, Adam, the KL reference and
    the per-minibatch LR rule): eager | compile (torch.compile with compiled autograd; CPU or
    CUDA; a one-time compile of tens of seconds) | cuda_graph (one CUDA graph replayed per
    minibatch; needs a CUDA device). Minibatches of one shape: when the rows do not split
    evenly the odd-sized ones run eagerly. Not with torchrun, fp16 or an LSTM."""
    fused_adam: Optional[bool] = None
    """Fused Adam kernel: None = on for CUDA, off for CPU; true/false force it."""


#: hyperparameters PBT may evolve (``pbt.mutate``): how the explore step perturbs each, and the
#: range it is clamped to. ``scale`` multiplies or divides the value itself; ``horizon``
#: multiplies or divides 1 - value (the effective horizon 1 / (1 - gamma) scales, and the value
#: stays below 1). The learning rate's range is [algo.lr_min, algo.lr_max].
PBT_HYPERPARAMS: Dict[str, Any] = {
    "lr": ("scale", None, None),
    "entropy_coef": ("scale", 1e-6, 0.1),
    "clip_eps": ("scale", 0.02, 0.5),
    "value_coef": ("scale", 0.1, 10.0),
    "gamma": ("horizon", 0.8, 0.9999),
    "gae_lambda": ("horizon", 0.5, 0.999),
}


def pbt_range(algo: "AlgoConfig", key: str) -> "tuple":
    """``(kind, low, high)`` of an evolvable hyperparameter (see :data:`PBT_HYPERPARAMS`)."""
    kind, low, high = PBT_HYPERPARAMS[key]
    if key == "lr":
        low, high = algo.lr_min, algo.lr_max
    return kind, float(low), float(high)


@dataclass
class PBTConfig:
    """Population-based training (ALGORITHMS.md section 7; cpo/runners/pbt.py): a population of
    independent PPO learners, each with its own env block, weights, normalisers, optimiser and
    hyperparameters; every ``interval_steps`` the bottom fraction copies a top member and
    perturbs the copied hyperparameters. Off (the ensemble learner) when ``population`` is 0."""

    population: int = 0
    """P, members trained in this process (stacked, one batched forward); 0 = PBT off. Must
    divide env.num_envs; population * num_workers >= 2."""
    interval_steps: int = 100000
    """Env steps of this process (all its envs) between exploit/explore rounds
    (>= algo.horizon * env.num_envs, i.e. at least one iteration)."""
    bottom_fraction: float = 0.25
    """Fraction of the ranked population that may copy a top member each round, in (0, 0.5];
    at least one member."""
    top_fraction: float = 0.25
    """Fraction of the ranked population that members copy from, in (0, 0.5]; at least one."""
    threshold: float = 0.1
    """A bottom member copies only when the gap to its drawn top member exceeds this (>= 0);
    see ``threshold_mode``."""
    threshold_mode: str = "relative"
    """relative: gap = (s_top - s_bottom) / max(|s_top|, |s_bottom|), in [0, 2], scale-free |
    absolute: gap = s_top - s_bottom, in episode-return units."""
    mutate: List[str] = field(default_factory=lambda: ["lr", "entropy_coef", "clip_eps"])
    """Hyperparameters each member owns and PBT evolves: any of lr, entropy_coef, clip_eps,
    value_coef, gamma, gae_lambda (start values from algo.*; each must lie in its PBT range)."""
    init_spread: float = 2.0
    """Members 1..P-1 start from algo.* times s^u, u ~ U[-1, 1] per key (log-uniform in
    [x/s, x*s], in 1 - x for gamma/gae_lambda); member 0 starts at algo.* (>= 1; 1 = all equal)."""
    score_window: int = 5
    """A member's score is its mean episode return over the episodes that ended in its last
    ``score_window`` iterations that ended any (1 .. 100000: the window is a [window,
    population] buffer of per-iteration sums); a member with none (e.g. just after it copied
    another) is not ranked."""
    shared_dir: Optional[str] = None
    """Directory shared by the worker processes of one population (several processes or
    nodes); None = this process holds the whole population."""
    num_workers: int = 1
    """Processes sharing ``shared_dir``, each with ``population`` members (>= 1)."""
    worker_id: int = 0
    """This process's index in 0..num_workers-1; its members are global ids
    worker_id * population + 0..population-1. Give each worker its own ``seed`` too."""
    sync_timeout: float = 0.0
    """Seconds a round waits for the other workers to publish the same round (synchronous
    PBT); 0 = asynchronous, use the newest files there are (>= 0)."""


@dataclass
class EvoConfig:
    """Evolutionary Policy Optimization (EPO; Wang, Su, Gupta, Pathak 2025; cpo/algo/evolution.py):
    every ``interval_steps`` env steps after ``warmup_steps``, the policies are ranked by
    their fitness, and the latents ("genes") of the weakest are replaced by the crossover
    (the mean) of the fittest, plus optional Gaussian mutation. Off when ``interval_steps`` is
    0 (``algo=epo`` turns it on). Needs an ensemble (algo.num_policies >= 3)."""

    interval_steps: int = 0
    """Env steps (all envs) between evolution events; 0 = no evolution (>= 0). The authors:
    20 M at N = 24576, T = 16 (every ~51 iterations)."""
    warmup_steps: int = 0
    """Env steps before the first event (>= 0). The authors: 200 M (~509 iterations)."""
    num_parents: int = 2
    """Elites whose latents are averaged into each child (>= 1; the authors: the top 2)."""
    num_replace: int = 1
    """Weakest policies replaced per event (>= 1; the authors: 1). num_parents + num_replace
    must not exceed the policies that can take part (the leader does not count when
    ``protect_leader``)."""
    mutation_std: float = 0.0
    """Gaussian mutation of a child's latent, in units of the population's per-dimension
    latent std (>= 0; the authors' code: 0, no mutation)."""
    fitness: str = "return"
    """What ranks the policies: return (mean episode return) | success (mean success rate,
    for tasks that log one), over each policy's own episodes since the last event."""
    protect_leader: bool = True
    """The leader is never replaced (it may still be a parent). The authors' code lets the
    master be replaced; protecting it keeps the headline policy continuous."""
    child_log_std: str = "keep"
    """keep: a replaced policy keeps its own log-std (the authors' code) | parents: it takes
    the mean of its parents' log-std rows."""
    trigger_gamma: float = 0.0
    """Run an event only when max - min fitness > trigger_gamma * |median| (the first paper
    version's trigger); 0 = always (>= 0)."""


@dataclass
class TrainConfig:
    """Top-level training job."""

    seed: int = 0
    """Seed of every generator (envs, sampling, minibatches, initialisation), in
    [0, 2**32 - 1] (derived seeds add offsets and must stay within torch's 64-bit range)."""
    device: str = "auto"
    """auto (cuda if available, else cpu) | cpu | cuda | cuda:<i>."""
    max_iterations: int = 100
    """Iterations (collect + update) to run in total, counting resumed ones (>= 1)."""
    torch_threads: Optional[int] = None
    """CPU threads for torch, 1..1024; None keeps torch's default."""
    resume: Optional[str] = None
    """Run directory to resume from (continues its step count, LR and TensorBoard run), or
    ``auto``: resume the run directory itself when it already holds a checkpoint (a requeued
    SLURM job, a restarted torchrun) and start fresh otherwise; the stored config must then
    equal the composed one on every key that a resume may not change."""
    run_dir: Optional[str] = None
    """Where to write; None uses Hydra's output directory (or the cwd without Hydra)."""
    nonfinite: str = "stop"
    """NaN/inf in an env's observation or reward: stop (save the state at the start of the
    iteration as checkpoints/last_good.pt and exit naming the env ids) | reset (reset those
    envs, end their episodes without bootstrap, count them in perf/nonfinite_resets)."""
    nonfinite_check: str = "step"
    """step: check after every env step (one host sync per step; stops within one step) |
    iteration: one check per iteration (no per-step sync; stop only)."""
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    net: NetConfig = field(default_factory=NetConfig)
    log: LogConfig = field(default_factory=LogConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    pbt: PBTConfig = field(default_factory=PBTConfig)
    evo: EvoConfig = field(default_factory=EvoConfig)


#: keys a resumed run may change from the command line (everything else must match). The
#: learning-rate bounds and the gradient clip are among them so that a run that stopped on a
#: non-finite update can continue from last_good.pt with a smaller step (the stored learning
#: rate is clamped into the new bounds); left unchanged, a resume is exact.
RESUMABLE_KEYS = ("max_iterations", "device", "torch_threads", "resume", "run_dir", "log.", "perf.",
                  "nonfinite", "nonfinite_check", "algo.lr_max", "algo.lr_min", "algo.max_grad_norm")


def config_yaml(cfg: TrainConfig) -> str:
    """The resolved config as YAML text (stored in every checkpoint and the run dir). Needs
    OmegaConf only, not Hydra, so building a Runner registers nothing with Hydra."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def preset_env_name(path: str, depth: int = 0) -> Optional[str]:
    """``env.name`` set by the preset YAML file ``path`` or by the same-folder presets it lists
    in its ``defaults`` (None if none does). Reads YAML only (PyYAML, OmegaConf's dependency):
    nothing here imports torch, so train.py can call it before Isaac Gym is imported."""
    import os

    import yaml

    if depth > 8 or not os.path.isfile(path):
        return None
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    env = data.get("env") if isinstance(data, dict) else None
    if isinstance(env, dict) and "name" in env:
        return str(env["name"])
    for entry in (data.get("defaults") or []) if isinstance(data, dict) else []:
        if isinstance(entry, str) and entry != "_self_":  # a preset of the same group
            name = preset_env_name(os.path.join(os.path.dirname(path), entry + ".yaml"), depth + 1)
            if name is not None:
                return name
    return None


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore (``base_config`` is the root)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="base_config", node=TrainConfig)


#: largest accepted ``torch_threads``
MAX_THREADS = 1024

#: largest accepted ``seed`` (numpy's and most simulators' 32-bit seed range)
SEED_MAX = 2 ** 32 - 1

#: accepted ``device`` strings: auto, cpu, cuda or cuda:<index>
_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def _fail(key: str, value: Any, rule: str) -> None:
    raise ConfigError(f"{key}={value!r}: {rule}")


def _check(cond: bool, key: str, value: Any, rule: str) -> None:
    if not cond:
        _fail(key, value, rule)


def num_offpolicy_blocks(algo: AlgoConfig) -> int:
    """How many follower blocks are relabelled for the leader each iteration (0 if M=1)."""
    if algo.num_policies <= 1:
        return 0
    if str(algo.offpolicy_blocks).strip().lower() == "all":
        return algo.num_policies - 1
    return int(algo.offpolicy_blocks)


def _validate_world(cfg: TrainConfig) -> None:
    """Layout rules under torchrun (``WORLD_SIZE`` processes, read from the environment;
    nothing to check without torchrun): every rank gets an equal share of every block and
    splits its share of the batch into ``algo.num_minibatches`` equal minibatches."""
    from cpo.utils.distributed import world_size_from_env

    W = world_size_from_env()
    if W <= 1:
        return
    e, a = cfg.env, cfg.algo
    M = a.num_policies
    if e.num_envs % (W * M) != 0:
        raise ConfigError(f"env.num_envs={e.num_envs} is not divisible by WORLD_SIZE*algo.num_policies="
                          f"{W}*{M}={W * M}: env.num_envs is the global count and every process "
                          "(torchrun rank) steps an equal share of every policy's block")
    local = e.num_envs // W * a.horizon
    if local % a.num_minibatches != 0:
        raise ConfigError(f"algo.num_minibatches={a.num_minibatches} does not divide the per-process "
                          f"batch env.num_envs/WORLD_SIZE*algo.horizon={e.num_envs}/{W}*{a.horizon}={local} "
                          f"(env.num_envs={e.num_envs}, WORLD_SIZE={W}, algo.horizon={a.horizon})")
    if cfg.device.startswith("cuda:"):
        raise ConfigError(f"device={cfg.device!r} pins one GPU, but torchrun runs WORLD_SIZE={W} "
                          "processes: use device=cuda or auto (each rank takes cuda:LOCAL_RANK)")


def validate(cfg: TrainConfig) -> None:
    """Check ranges and combinations of a composed config; raise :class:`ConfigError`."""
    a, e, n, g = cfg.algo, cfg.env, cfg.net, cfg.log
    _check(cfg.max_iterations >= 1, "max_iterations", cfg.max_iterations, "must be >= 1")
    _check(0 <= cfg.seed <= SEED_MAX, "seed", cfg.seed, f"must be an integer in [0, {SEED_MAX}]")
    _check(_DEVICE.fullmatch(str(cfg.device)) is not None,
           "device", cfg.device, "must be auto, cpu, cuda or cuda:<index>")
    _check(cfg.nonfinite in ("stop", "reset"), "nonfinite", cfg.nonfinite, "must be stop or reset")
    _check(cfg.nonfinite_check in ("step", "iteration"), "nonfinite_check", cfg.nonfinite_check,
           "must be step or iteration")
    if cfg.nonfinite == "reset":
        _check(cfg.nonfinite_check == "step", "nonfinite_check", cfg.nonfinite_check,
               "must be step when nonfinite=reset (envs are reset as soon as they go bad)")
    _check(cfg.torch_threads is None or 1 <= cfg.torch_threads <= MAX_THREADS, "torch_threads",
           cfg.torch_threads, f"must be in 1..{MAX_THREADS} or null (more threads than cores only slows torch "
           "down; OpenMP fails to create tens of thousands and the process crashes)")
    _check(cfg.perf.compile in ("none", "policy", "update", "all"), "perf.compile", cfg.perf.compile,
           "must be none, policy, update or all")
    _check(cfg.perf.update_step in ("eager", "compile", "cuda_graph"), "perf.update_step", cfg.perf.update_step,
           "must be eager, compile or cuda_graph")
    if cfg.perf.update_step != "eager":
        _check(cfg.perf.update_step != "cuda_graph" or cfg.device != "cpu", "perf.update_step",
               cfg.perf.update_step, "cuda_graph needs a CUDA device (device=cpu)")
        if cfg.perf.update_step == "cuda_graph" and cfg.device == "auto":
            _check(_cuda_available(), "perf.update_step", cfg.perf.update_step,
                   "cuda_graph needs a CUDA device (device=auto and torch.cuda.is_available() is False)")
        _check(cfg.net.rnn_hidden == 0, "perf.update_step", cfg.perf.update_step,
               f"covers feed-forward models only (net.rnn_hidden={cfg.net.rnn_hidden})")
        _check(cfg.algo.mixed_precision != "fp16", "perf.update_step", cfg.perf.update_step,
               "cannot hold fp16's loss scaler (algo.mixed_precision=fp16); use bf16 or eager")
        from cpo.utils.distributed import world_size_from_env

        _check(world_size_from_env() <= 1, "perf.update_step", cfg.perf.update_step,
               "runs in one process (the gradient all-reduce of torchrun is not captured)")
    _check(not (cfg.perf.cuda_graphs and cfg.device == "cpu"), "perf.cuda_graphs", cfg.perf.cuda_graphs,
           "needs a CUDA device (device=cpu)")
    _check(not (cfg.perf.cuda_graphs and cfg.net.rnn_hidden > 0), "perf.cuda_graphs", cfg.perf.cuda_graphs,
           f"captures the feed-forward policy step only (net.rnn_hidden={cfg.net.rnn_hidden})")
    if cfg.perf.cuda_graphs and cfg.device == "auto":
        _check(_cuda_available(), "perf.cuda_graphs", cfg.perf.cuda_graphs,
               "needs a CUDA device (device=auto and torch.cuda.is_available() is False)")
    # ---- ensemble layout
    M = a.num_policies
    _check(M >= 1, "algo.num_policies", M, "must be >= 1")
    _check(a.latent_dim >= 0, "algo.latent_dim", a.latent_dim, "must be >= 0")
    _check(e.num_envs >= 1, "env.num_envs", e.num_envs, "must be >= 1")
    if e.num_envs % M != 0:
        raise ConfigError(f"env.num_envs={e.num_envs} is not divisible by algo.num_policies={M}: "
                          "every policy needs a block of equal size")
    _check(a.horizon >= 1, "algo.horizon", a.horizon, "must be >= 1")
    _check(a.num_epochs >= 1, "algo.num_epochs", a.num_epochs, "must be >= 1")
    _check(a.num_minibatches >= 1, "algo.num_minibatches", a.num_minibatches, "must be >= 1")
    batch = e.num_envs * a.horizon
    if batch % a.num_minibatches != 0:
        raise ConfigError(f"algo.num_minibatches={a.num_minibatches} does not divide the batch "
                          f"env.num_envs*algo.horizon={batch} (env.num_envs={e.num_envs}, "
                          f"algo.horizon={a.horizon})")
    _validate_world(cfg)
    off = str(a.offpolicy_blocks).strip().lower()
    if off != "all":
        _check(re.fullmatch(r"[0-9]+", off) is not None, "algo.offpolicy_blocks", a.offpolicy_blocks,
               "must be an integer k in 1..num_policies-1 or 'all'")
        if M > 1:
            _check(1 <= int(off) <= M - 1, "algo.offpolicy_blocks", a.offpolicy_blocks,
                   f"must be in 1..num_policies-1={M - 1} or 'all'")
    # ---- scalar ranges
    for key, val in (("gamma", a.gamma), ("gae_lambda", a.gae_lambda)):
        _check(0.0 <= val <= 1.0, f"algo.{key}", val, "must be in [0, 1]")
    positive = ("clip_eps", "max_grad_norm", "lr", "kl_threshold", "lr_min", "lr_max",
                "reward_scale", "lambda_f", "weight_max", "disc_lr", "lambda_f_final",
                "kl_target", "beta_lr")
    for key in positive:
        val = getattr(a, key)
        _check(finite32(val) and val > 0, f"algo.{key}", val, "must be a finite number > 0 (float32: at most 3.4e38)")
    nonneg = ("value_coef", "entropy_coef", "entropy_scale", "bounds_coef", "beta", "lambda_ppo",
              "lambda_adv")
    for key in nonneg:
        val = getattr(a, key)
        _check(finite32(val) and val >= 0, f"algo.{key}", val, "must be a finite number >= 0 (float32: at most 3.4e38)")
    _check(a.lr_max >= a.lr_min, "algo.lr_max", a.lr_max, f"must be >= algo.lr_min={a.lr_min}")
    _check(a.lr_min <= a.lr <= a.lr_max, "algo.lr", a.lr,
           f"must lie within [algo.lr_min={a.lr_min}, algo.lr_max={a.lr_max}]")
    _check(a.lr_schedule in ("adaptive", "fixed", "linear"), "algo.lr_schedule", a.lr_schedule,
           "must be adaptive, fixed or linear")
    _check(a.lr_adapt_every in ("epoch", "minibatch"), "algo.lr_adapt_every", a.lr_adapt_every,
           "must be epoch or minibatch")
    _check(a.lambda_f_schedule in ("constant", "linear", "cosine"), "algo.lambda_f_schedule",
           a.lambda_f_schedule, "must be constant, linear or cosine")
    _check(0.0 < a.coupling_fraction <= 1.0, "algo.coupling_fraction", a.coupling_fraction,
           "must be in (0, 1]")
    _check(a.minibatch_mode in ("size", "count"), "algo.minibatch_mode", a.minibatch_mode,
           "must be size or count")
    _check(a.mixed_precision in ("none", "bf16", "fp16"), "algo.mixed_precision",
           a.mixed_precision, "must be none, bf16 or fp16")
    # fp16 with device=auto on a machine without CUDA is refused when the device is resolved
    # (cpo.runners.runner.resolve_device), so that a GPU config validates anywhere
    _check(not (a.mixed_precision == "fp16" and cfg.device == "cpu"), "algo.mixed_precision", a.mixed_precision,
           "fp16 needs a CUDA device (device=cpu); use bf16 on a CPU")
    _check(a.disc_steps >= 1, "algo.disc_steps", a.disc_steps, "must be >= 1")
    _check(a.disc_batch >= 1, "algo.disc_batch", a.disc_batch, "must be >= 1")
    _check(all(h >= 1 for h in a.disc_hidden), "algo.disc_hidden", a.disc_hidden,
           "widths must be >= 1")
    if a.lambda_f_tiers is not None:
        tiers = list(a.lambda_f_tiers)
        _check(len(tiers) == M - 1, "algo.lambda_f_tiers", tiers,
               f"needs one value per follower (num_policies-1={M - 1}; algo.num_policies={M})")
        _check(all(finite32(t) and t > 0 for t in tiers), "algo.lambda_f_tiers", tiers,
               "values must be finite numbers > 0")
    if a.beta_adapt:
        _check(a.beta > 0, "algo.beta", a.beta,
               "must be > 0 with algo.beta_adapt=true (dual ascent adapts beta multiplicatively)")
        _check(M >= 2, "algo.beta_adapt", a.beta_adapt,
               f"needs followers: algo.num_policies >= 2 (algo.num_policies={M})")
    if a.lambda_adv > 0:
        _check(M >= 2, "algo.lambda_adv", a.lambda_adv, f"needs algo.num_policies >= 2 (algo.num_policies={M})")
    if M == 1:  # terms that need followers would be silently ignored
        _check(a.beta == 0, "algo.beta", a.beta,
               "the coupling needs followers: algo.num_policies >= 2 (algo.num_policies=1)")
        _check(a.lambda_ppo == 0, "algo.lambda_ppo", a.lambda_ppo,
               "the follower shaping needs followers: algo.num_policies >= 2 (algo.num_policies=1)")
    # ---- network
    for key in ("actor_hidden", "critic_hidden"):
        widths = list(getattr(n, key))
        _check(len(widths) >= 1 and all(w >= 1 for w in widths), f"net.{key}", widths,
               "needs at least one layer, widths >= 1")
    _check(n.activation in ("elu", "relu", "tanh", "silu"), "net.activation", n.activation,
           "must be elu, relu, tanh or silu")
    _check(finite32(n.obs_clip) and n.obs_clip > 0, "net.obs_clip", n.obs_clip, "must be a finite number > 0")
    _check(math.isfinite(n.init_log_std) and LOG_STD_RANGE[0] <= n.init_log_std <= LOG_STD_RANGE[1],
           "net.init_log_std", n.init_log_std,
           f"must be a finite number in [{LOG_STD_RANGE[0]:g}, {LOG_STD_RANGE[1]:g}] (sigma = exp(init_log_std); "
           "beyond that float32 densities underflow or overflow)")
    _check(n.rnn_hidden >= 0, "net.rnn_hidden", n.rnn_hidden, "must be >= 0 (0 disables the LSTM)")
    # ---- logging
    for key in ("heatmap_every", "diag_samples", "ckpt_every", "keep_last"):
        val = getattr(g, key)
        _check(val >= 1, f"log.{key}", val, "must be >= 1")
    _check(g.wandb_mode in ("online", "offline", "disabled"), "log.wandb_mode", g.wandb_mode,
           "must be online, offline or disabled")
    _check(bool(str(g.wandb_project).strip()), "log.wandb_project", g.wandb_project, "must not be empty")
    if g.wandb:
        import importlib.util

        _check(importlib.util.find_spec("wandb") is not None, "log.wandb", g.wandb,
               'needs the wandb package: pip install -e ".[wandb]"')
    validate_pbt(cfg)
    validate_evo(cfg)
    check_memory(cfg)  # absurd sizes fail here, before any env or tensor is allocated
    # ---- env: name and parameters are checked against the task registry
    from envs import registry

    try:
        registry.check_params(e.name, e.params)
    except registry.EnvConfigError as err:
        raise ConfigError(str(err)) from None
    if e.max_episode_steps is not None:
        _check(e.max_episode_steps >= 1, "env.max_episode_steps", e.max_episode_steps,
               "must be >= 1 or null")


#: the largest float32: hyperparameters become float32 tensors, so larger values overflow
FLOAT32_MAX = 3.4028234663852886e38


def finite32(x: float) -> bool:
    """Whether ``x`` is finite and fits a float32 (the dtype of the tensors it ends up in)."""
    return math.isfinite(x) and abs(x) <= FLOAT32_MAX


#: accepted range of ``net.init_log_std``: sigma from ~2e-9 to ~150
LOG_STD_RANGE = (-20.0, 5.0)


def estimate_memory(cfg: TrainConfig, obs_dim: int = 1, act_dim: int = 1,
                    privileged_dim: int = 0) -> Dict[str, float]:
    """A lower-bound estimate of the bytes one training process allocates, by part (float32,
    the observation and action sizes given; 1 when unknown): ``rollout`` (storage and
    front-end features, ~N*T rows), ``batch`` (row indices and targets of every on-policy,
    off-policy and coupling row), ``activations`` (one minibatch through the networks,
    forward and backward), ``parameters`` (weights, gradients, two Adam moments and the
    start-of-iteration copy). Used to refuse sizes that cannot fit before anything is
    allocated (:func:`check_memory`)."""
    a, e, n = cfg.algo, cfg.env, cfg.net
    from cpo.utils.distributed import world_size_from_env

    # under torchrun each process holds env.num_envs / WORLD_SIZE envs and their rows
    N, T, M = float(e.num_envs) / max(world_size_from_env(), 1), float(a.horizon), max(int(a.num_policies), 1)
    D, A, P = float(obs_dim), float(act_dim), float(privileged_dim)
    rows_onp = N * T
    # rollout storage: obs (T+1) and final obs, privileged likewise, actions and means, five
    # per-step scalars; the front end keeps normalised copies of both observation tensors
    rollout = 4 * rows_onp * (4 * D + 2 * P + 2 * A + 6)
    extra = 0.0
    if M > 1:
        extra = rows_onp / M * (M - 1)  # coupling rows (leader's steps relabelled per follower)
        extra += rows_onp / M * (M - 1 if str(a.offpolicy_blocks).strip().lower() == "all" else 1)
    batch = (rows_onp + extra) * 8 * 12  # ~12 per-row fields of 8 bytes at most
    widths = list(n.actor_hidden) + (list(n.critic_hidden) if n.separate_critic else [])
    widths += [int(n.rnn_hidden)] * 4 if n.rnn_hidden else []
    # size mode: minibatches of NT / num_minibatches rows (extra rows add minibatches); count
    # mode and LSTM column groups: all rows split into num_minibatches
    wide = a.minibatch_mode == "count" or n.rnn_hidden > 0
    mb_rows = (rows_onp + (extra if wide else 0.0)) / max(int(a.num_minibatches), 1)
    activations = 4 * 3 * mb_rows * (sum(widths) + D + A)  # forward, saved tensors, gradients
    sizes_a = [D + a.latent_dim + (n.rnn_hidden or 0)] + list(n.actor_hidden) + [A]
    sizes_c = [(P or D) + a.latent_dim] + list(n.critic_hidden) + [1]
    params = sum(x * y for x, y in zip(sizes_a[:-1], sizes_a[1:]))
    params += sum(x * y for x, y in zip(sizes_c[:-1], sizes_c[1:])) if n.separate_critic else 0
    params += 4 * n.rnn_hidden * (n.rnn_hidden + D) if n.rnn_hidden else 0
    parameters = 4 * 5 * params  # weights, gradients, 2 Adam moments, the iteration-start copy
    return {"rollout": rollout, "batch": batch, "activations": activations, "parameters": parameters}


def available_memory(device: str) -> Optional[float]:
    """Bytes of memory of ``device`` as configured: the GPU's total for cuda / cuda:<i> (or
    auto on a machine with CUDA), physical RAM for cpu (or auto without CUDA); None when it
    cannot be told here (a CUDA config checked on a machine without that GPU)."""
    import os

    if device == "cpu" or (device == "auto" and not _cuda_available()):
        try:
            return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            return None
    if not _cuda_available():
        return None
    import torch

    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        return None
    return float(torch.cuda.get_device_properties(index).total_memory)


#: which keys to name when a part of :func:`estimate_memory` does not fit
_MEMORY_KEYS = {"rollout": ("env.num_envs", "algo.horizon"), "batch": ("env.num_envs", "algo.horizon"),
                "activations": ("env.num_envs", "algo.horizon", "algo.num_minibatches", "net.actor_hidden",
                                "net.critic_hidden", "net.rnn_hidden"),
                "parameters": ("net.actor_hidden", "net.critic_hidden", "net.rnn_hidden", "algo.latent_dim")}


def check_memory(cfg: TrainConfig, obs_dim: int = 1, act_dim: int = 1, privileged_dim: int = 0,
                 available: Optional[float] = None) -> None:
    """Raise :class:`ConfigError` when :func:`estimate_memory` exceeds the device's memory
    (:func:`available_memory`), naming the keys of the largest part, their values, the
    estimate and what the machine has. Silent when the memory cannot be told."""
    total_mem = available if available is not None else available_memory(cfg.device)
    if total_mem is None:
        return
    parts = estimate_memory(cfg, obs_dim, act_dim, privileged_dim)
    need = sum(parts.values())
    if need <= total_mem:
        return
    part = max(parts, key=parts.get)
    keys = _MEMORY_KEYS[part]
    values = ", ".join(f"{k}={_get(cfg, k)}" for k in keys)
    raise ConfigError(f"{values}: needs at least {_bytes(need)} ({part}: {_bytes(parts[part])}), more than "
                      f"the {_bytes(total_mem)} of device={cfg.device}; lower {' or '.join(keys)}")


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return list(cfg) if isinstance(cfg, (list, tuple)) else cfg


def _bytes(x: float) -> str:
    for unit, size in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20)):
        if x >= size:
            return f"{x / size:.3g} {unit}"
    return f"{x:.0f} B"


def _cuda_available() -> bool:
    """Whether torch sees a CUDA device (what ``device=auto`` resolves to cuda with)."""
    import torch

    return bool(torch.cuda.is_available())


def validate_evo(cfg: TrainConfig) -> None:
    """Check the ``evo`` section (EPO) and what it needs from the ensemble."""
    v, M = cfg.evo, cfg.algo.num_policies
    for key in ("interval_steps", "warmup_steps"):
        _check(getattr(v, key) >= 0, f"evo.{key}", getattr(v, key), "must be >= 0")
    _check(v.num_parents >= 1, "evo.num_parents", v.num_parents, "must be >= 1")
    _check(v.num_replace >= 1, "evo.num_replace", v.num_replace, "must be >= 1")
    _check(finite32(v.mutation_std) and v.mutation_std >= 0, "evo.mutation_std", v.mutation_std,
           "must be a finite number >= 0")
    _check(finite32(v.trigger_gamma) and v.trigger_gamma >= 0, "evo.trigger_gamma", v.trigger_gamma,
           "must be a finite number >= 0")
    _check(v.fitness in ("return", "success"), "evo.fitness", v.fitness, "must be return or success")
    _check(v.child_log_std in ("keep", "parents"), "evo.child_log_std", v.child_log_std, "must be keep or parents")
    if v.interval_steps == 0:
        return
    _check(cfg.pbt.population == 0, "evo.interval_steps", v.interval_steps,
           "evolves the latents of one ensemble; PBT (pbt.population > 0) has no latents")
    pool = M - (1 if v.protect_leader else 0)
    _check(M >= 3 and v.num_parents + v.num_replace <= M and v.num_replace <= pool, "evo.num_replace",
           v.num_replace, f"evo.num_parents={v.num_parents} + evo.num_replace must fit the {M} policies "
           f"(algo.num_policies={M}; the leader is never replaced with evo.protect_leader) and M >= 3")
    _check(cfg.algo.latent_dim > 0, "algo.latent_dim", cfg.algo.latent_dim,
           "must be > 0 with evolution (evo.interval_steps > 0): the latents are the genes")


def validate_pbt(cfg: TrainConfig) -> None:
    """Check the ``pbt`` section and what PBT needs from the rest; raise :class:`ConfigError`."""
    p, a, e = cfg.pbt, cfg.algo, cfg.env
    _check(p.population >= 0, "pbt.population", p.population, "must be >= 0 (0 turns PBT off)")
    _check(p.num_workers >= 1, "pbt.num_workers", p.num_workers, "must be >= 1")
    _check(0 <= p.worker_id < p.num_workers, "pbt.worker_id", p.worker_id,
           f"must be in 0..pbt.num_workers-1={p.num_workers - 1}")
    if p.population == 0:
        _check(p.num_workers == 1, "pbt.num_workers", p.num_workers, "needs pbt.population >= 1")
        return
    _check(p.population * p.num_workers >= 2, "pbt.population", p.population,
           f"the population (pbt.population * pbt.num_workers) needs at least 2 members "
           f"(pbt.num_workers={p.num_workers})")
    if p.num_workers > 1:
        _check(bool(p.shared_dir), "pbt.shared_dir", p.shared_dir,
               f"must name a directory shared by the pbt.num_workers={p.num_workers} processes")
    if e.num_envs % p.population != 0:
        raise ConfigError(f"env.num_envs={e.num_envs} is not divisible by pbt.population="
                          f"{p.population}: every member needs an env block of equal size")
    _check(a.num_policies == 1, "algo.num_policies", a.num_policies,
           "must be 1 with PBT (pbt.population > 0): every member is one PPO learner")
    member_batch = e.num_envs // p.population * a.horizon
    if member_batch % a.num_minibatches != 0:
        raise ConfigError(f"algo.num_minibatches={a.num_minibatches} does not divide a member's "
                          f"batch (env.num_envs/pbt.population)*algo.horizon={member_batch} "
                          f"(env.num_envs={e.num_envs}, pbt.population={p.population}, algo.horizon={a.horizon})")
    _check(a.lr_schedule == "fixed", "algo.lr_schedule", a.lr_schedule,
           "must be fixed with PBT: each member's learning rate is a hyperparameter PBT evolves")
    _check(cfg.net.rnn_hidden == 0, "net.rnn_hidden", cfg.net.rnn_hidden,
           "must be 0 with PBT (the stacked population is feed-forward)")
    _check(a.mixed_precision == "none", "algo.mixed_precision", a.mixed_precision,
           "must be none with PBT")
    _check(cfg.perf.compile in ("none", "policy"), "perf.compile", cfg.perf.compile,
           "must be none or policy with PBT (the stacked update is not compiled)")
    _check(cfg.perf.update_step == "eager", "perf.update_step", cfg.perf.update_step,
           "must be eager with PBT (the stacked update is not compiled)")
    for key in ("bottom_fraction", "top_fraction"):
        val = getattr(p, key)
        _check(0.0 < val <= 0.5, f"pbt.{key}", val, "must be in (0, 0.5]")
    it_steps = a.horizon * e.num_envs
    _check(p.interval_steps >= it_steps, "pbt.interval_steps", p.interval_steps,
           f"must be >= algo.horizon*env.num_envs={it_steps} (one iteration; algo.horizon={a.horizon}, "
           f"env.num_envs={e.num_envs})")
    _check(math.isfinite(p.threshold) and p.threshold >= 0, "pbt.threshold", p.threshold,
           "must be a finite number >= 0")
    _check(p.threshold_mode in ("relative", "absolute"), "pbt.threshold_mode", p.threshold_mode,
           "must be relative or absolute")
    _check(math.isfinite(p.init_spread) and p.init_spread >= 1.0, "pbt.init_spread",
           p.init_spread, "must be a finite number >= 1")
    _check(1 <= p.score_window <= 100000, "pbt.score_window", p.score_window, "must be in [1, 100000]")
    _check(math.isfinite(p.sync_timeout) and p.sync_timeout >= 0, "pbt.sync_timeout",
           p.sync_timeout, "must be a finite number >= 0")
    keys = list(p.mutate)
    _check(len(keys) >= 1 and len(set(keys)) == len(keys), "pbt.mutate", keys,
           "must list at least one hyperparameter, each once")
    for key in keys:
        _check(key in PBT_HYPERPARAMS, "pbt.mutate", keys,
               f"{key!r} cannot be evolved (valid: {', '.join(PBT_HYPERPARAMS)})")
        _, low, high = pbt_range(a, key)
        val = getattr(a, key)
        _check(low <= val <= high, f"algo.{key}", val,
               f"must lie within [{low:g}, {high:g}] when PBT evolves it (pbt.mutate); "
               "the explore step clamps to this range")


def to_dict(cfg: TrainConfig) -> Dict[str, Any]:
    """The config as a plain nested dict (for checkpoints and hparams)."""
    return dataclasses.asdict(cfg)


def flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
