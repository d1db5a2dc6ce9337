"""Configuration: Hydra composition, presets, and errors that name key, value and rule
before any compute."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from cpo.app import to_train_config
from cpo.utils.config import ConfigError, TrainConfig, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONF = os.path.join(ROOT, "conf")


def composed(*overrides: str) -> TrainConfig:
    """Compose conf/config.yaml with overrides and convert to the dataclass."""
    with initialize_config_dir(CONF, version_base="1.3"):
        return to_train_config(compose("config", overrides=list(overrides)))


@pytest.mark.parametrize("algo,M,beta", [("ppo", 1, 0.0), ("sapg", 6, 0.0), ("cpo", 6, 1e-3),
                                         ("cpo_noadv", 6, 1e-3), ("cpo_nokl", 6, 0.0)])
def test_presets_compose_and_validate(algo, M, beta):
    """Every algorithm preset composes with every embedded task and validates."""
    cfg = composed(f"algo={algo}")
    assert cfg.algo.num_policies == M and cfg.algo.beta == beta and cfg.algo.name == algo
    validate(cfg)


def test_every_env_preset_validates():
    """Every conf/env/*.yaml composes and passes validation with the default algorithm; the
    generic gymnasium preset once the user names the env id (and not before)."""
    names = sorted(f[:-5] for f in os.listdir(os.path.join(CONF, "env")) if f.endswith(".yaml"))
    assert names and "gymnasium" in names and "mjlab" in names
    needs = {"gymnasium": ["+env.params.id=HalfCheetah-v5"]}
    for name in names:
        validate(composed(f"env={name}", *needs.get(name, [])))
    with pytest.raises(ConfigError, match="env.params.id='' is invalid: must name a gymnasium env id"):
        validate(composed("env=gymnasium"))


@pytest.mark.parametrize("override,pattern", [
    ("env.num_envs=1000", r"env.num_envs=1000 is not divisible by algo.num_policies=6"),
    ("algo.lambda_f=0", r"algo.lambda_f=0.0: must be a finite number > 0"),
    ("algo.beta=-1", r"algo.beta=-1.0: must be a finite number >= 0"),
    ("algo.horizon=0", r"algo.horizon=0: must be >= 1"),
    ("algo.num_minibatches=7", r"algo.num_minibatches=7 does not divide the batch"),
    ("algo.gamma=1.5", r"algo.gamma=1.5: must be in \[0, 1\]"),
    ("algo.offpolicy_blocks=9", r"algo.offpolicy_blocks='9': must be in 1..num_policies-1=5"),
    ("algo.lr_schedule=warmup", r"algo.lr_schedule='warmup': must be adaptive, fixed or linear"),
    ("algo.coupling_fraction=1.5", r"algo.coupling_fraction=1.5: must be in \(0, 1\]"),
    ("env.name=cartpol", r"did you mean 'cartpole'"),
    ("+env.params.nope=1", r"env.params.nope=1 is not a parameter of task"),
])
def test_invalid_values_fail_naming_key_value_rule(override, pattern):
    """Invalid values and combinations raise ConfigError with key, value and rule."""
    cfg = composed("algo=cpo", "env.num_envs=1200", override)
    with pytest.raises(ConfigError, match=pattern):
        validate(cfg)


@pytest.mark.parametrize("override,pattern", [
    ("algo.lamda_f=0.1", "lamda_f"),
    ("+algo.lamda_f=0.1", r"algo.lamda_f=0.1 is not a config key .*did you mean algo.lambda_f"),
    ("+nets.actor_hidden=[8]", r"nets=.* is not a config key .*did you mean net"),
    ("algo.beta=abc", "beta"),
    ("env=cartpol", "cartpol"),
])
def test_unknown_keys_and_types_fail_at_composition(override, pattern):
    """Typos and wrong types are rejected by the structured schema while composing."""
    with pytest.raises(Exception, match=pattern):
        composed(override)


def test_cli_reports_config_error_before_compute(tmp_path):
    """`python train.py` with an invalid value exits with code 2 and one clear line."""
    proc = subprocess.run(
        [sys.executable, "train.py", "algo=cpo", "env.num_envs=1000", f"hydra.run.dir={tmp_path}/x"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "env.num_envs=1000 is not divisible by algo.num_policies=6" in proc.stderr
    assert not os.path.exists(tmp_path / "x" / "checkpoints")


def test_paper_presets_compose():
    """Every paper preset composes; CPO values per task as published, baselines switch only
    the ensemble knobs."""
    names = sorted(f[:-5] for f in os.listdir(os.path.join(CONF, "experiment")) if f.endswith(".yaml"))
    assert "shadow_hand" in names and "allegro_hand_sapg" in names
    for name in names:
        cfg = composed(f"experiment={name}")
        assert cfg.env.name == "isaacgym" and cfg.env.num_envs == 24576
        if name.endswith("_ppo"):
            assert cfg.algo.num_policies == 1
        else:
            assert cfg.algo.num_policies == 6
        if name.endswith("_sapg") or name.endswith("_ppo"):
            assert cfg.algo.beta == 0.0 and cfg.algo.lambda_adv == 0.0
    hand = composed("experiment=shadow_hand")
    assert (hand.algo.horizon, hand.algo.num_epochs, hand.algo.lr, hand.algo.clip_eps) == (8, 5, 5e-4, 0.2)
    assert hand.net.actor_hidden == [512, 512, 256, 128] and hand.algo.lambda_adv == 0.01
    allegro = composed("experiment=allegro_hand")
    assert (allegro.algo.beta, allegro.algo.lambda_f, allegro.algo.lambda_adv) == (5e-4, 0.1, 0.001)
    kuka = composed("experiment=allegro_kuka_throw")
    assert (kuka.algo.horizon, kuka.algo.num_epochs, kuka.algo.lr, kuka.algo.clip_eps, kuka.algo.lambda_f) == (16, 2, 1e-4, 0.1, 0.1)
    anymal = composed("experiment=anymal")
    assert kuka.net.rnn_hidden == 768 and hand.net.rnn_hidden == 0
    assert (anymal.algo.value_coef, anymal.algo.reward_scale, anymal.algo.kl_threshold) == (2.0, 1.0, 0.008)
    # matched to the authors' configs and launcher (Naoki04/paper-cpo-code; README: fidelity)
    N = 24576
    assert hand.algo.horizon * N // hand.algo.num_minibatches == 4 * N  # 4N-row minibatches
    assert allegro.algo.entropy_scale == 0.0 and allegro.algo.num_minibatches == 2
    assert kuka.algo.num_minibatches == 8 and kuka.algo.mixed_precision == "fp16"  # 2NT rows / 8 = 4N
    assert composed("experiment=allegro_kuka_throw_ppo").algo.num_minibatches == 4  # NT rows / 4 = 4N
    assert (anymal.algo.lr, anymal.algo.bounds_coef, anymal.algo.lr_adapt_every) == (3e-4, 1e-3, "minibatch")
    assert composed("experiment=humanoid").algo.lr_adapt_every == "minibatch"
    assert composed("experiment=franka_cube_push").net.actor_hidden == [256, 128, 64]
    assert (hand.max_iterations, kuka.max_iterations, anymal.max_iterations) == (104000, 52000, 13000)


@pytest.mark.parametrize("override,ok", [
    ("log.progress=2", False), ("perf.cuda_graphs=maybe", False), ("net.normalize_obs=yes", True),
    ("log.progress=False", True), ("perf.cuda_graphs=true,false", True), ("perf.fused_adam=null", True),
    ("log.tensorboard=null", False), ("log.progress=${oc.env:PROGRESS}", True)])
def test_bool_keys_refuse_what_omegaconf_would_read_as_true(override, ok):
    """OmegaConf reads log.progress=2 as true; the command-line check refuses anything but
    true/false/yes/no/on/off/1/0 (and null for optional bools), naming key and value."""
    from cpo.app import check_overrides

    if ok:
        check_overrides([override])
    else:
        key, _, value = override.partition("=")
        with pytest.raises(ConfigError, match=rf"^{re.escape(key)}={re.escape(value)}: must be true or false"):
            check_overrides([override])


@pytest.mark.parametrize("argv,pattern", [
    (["env.name=gymnasium", "+env.params.id=Hopper-v5"],
     r"env.name=gymnasium: the env preset 'point_maze' \(the default\) was tuned for env.name=point_maze.*"
     r"env=gym_halfcheetah.*env=gymnasium"),
    (["env=cartpole", "env.name=pendulum"], r"env.name=pendulum: the env preset 'cartpole' .*env=pendulum"),
    (["env=cartpole", "env.name=mjlab"], r"env=mjlab"),
])
def test_env_name_without_its_preset_is_refused(argv, pattern):
    """env.name=X with another task's preset would keep that preset's num_envs, horizon, lr and
    network: refused before Hydra, naming the presets made for X."""
    from cpo.app import check_overrides

    with pytest.raises(ConfigError, match=pattern):
        check_overrides(argv)


@pytest.mark.parametrize("argv", [
    ["env=gymnasium", "+env.params.id=Hopper-v5"], ["env=cartpole", "env.name=cartpole"],
    ["env=null", "env.name=pendulum"], ["experiment=shadow_hand", "env.name=isaacgym"],
    ["env.name=cartpole,pendulum"], ["env.name=cartpol"],
])
def test_env_name_with_a_matching_or_no_preset_passes_the_guard(argv):
    """A preset of the same task, env=null (schema defaults), an experiment preset, a sweep, or
    an unknown name (validation answers it with a "did you mean") pass this check."""
    from cpo.app import check_overrides

    check_overrides(argv)
