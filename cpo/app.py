"""Turn a composed Hydra config into a validated run: fresh, or resumed from a run directory."""
from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from cpo import checkpoint as ckpt
from cpo.config import RESUMABLE_KEYS, ConfigError, TrainConfig, config_yaml, register_configs, validate


def to_train_config(cfg: Any) -> TrainConfig:
    """A composed DictConfig (or a TrainConfig) -> a TrainConfig dataclass."""
    from omegaconf import OmegaConf

    if isinstance(cfg, TrainConfig):
        return cfg
    check_unknown_keys(OmegaConf.to_container(cfg, resolve=True), TrainConfig)
    base = OmegaConf.structured(TrainConfig)
    merged = OmegaConf.merge(base, cfg)
    return OmegaConf.to_object(merged)


def check_unknown_keys(values: Any, schema: Any, prefix: str = "") -> None:
    """Raise :class:`ConfigError` for any key of ``values`` that ``schema`` (a dataclass)
    does not declare, with a "did you mean" (Hydra's ``+key=`` can otherwise add one)."""
    import dataclasses

    if not isinstance(values, dict):
        return
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in values.items():
        if key == "hydra" and not prefix:
            continue
        if key not in fields:
            raise ConfigError(f"{prefix}{key}={value!r} is not a config key "
                              f"(valid under {prefix or 'the root'}: {', '.join(fields)})"
                              f"{_did_you_mean(prefix + str(key), [prefix + f for f in fields])}")
        sub = fields[key].type
        sub = sub if dataclasses.is_dataclass(sub) else _NESTED.get(f"{prefix}{key}")
        if sub is not None:
            check_unknown_keys(value, sub, f"{prefix}{key}.")


def schema_keys(schema: Any = None, prefix: str = "") -> List[str]:
    """Every dotted leaf key of the schema (``seed``, ``algo.lr``, ``env.params``, ...);
    ``schema`` defaults to :class:`TrainConfig`."""
    import dataclasses

    out: List[str] = []
    for f in dataclasses.fields(schema or TrainConfig):
        sub = _NESTED.get(prefix + f.name)
        out.extend(schema_keys(sub, f"{prefix}{f.name}.") if sub is not None else [prefix + f.name])
    return out


def _did_you_mean(key: str, level: Sequence[str]) -> str:
    """``"; did you mean X?"`` for the unknown dotted ``key`` (empty when nothing is close):
    a key of another section with the same last name first (``horizon`` -> ``algo.horizon``),
    else the closest of ``level`` (the keys beside it) and all schema keys."""
    import difflib

    every = schema_keys()
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in every if k.rsplit(".", 1)[-1] == leaf and k != key]
    close = same_leaf or difflib.get_close_matches(key, list(dict.fromkeys(list(level) + every)), n=1)
    return f"; did you mean {close[0]}?" if close else ""


def check_overrides(overrides: Sequence[str], conf_dir: Optional[str] = None) -> None:
    """Refuse, before Hydra composes, what Hydra would refuse without a hint: a plain
    ``key=value`` whose key the schema lacks, and a config-group choice (``algo=``, ``env=``,
    ``experiment=``) with no preset in ``conf_dir`` (default: the repository's ``conf/``;
    ``""``: skip the group check, e.g. when ``--config-dir`` adds presets from elsewhere).
    Raises :class:`ConfigError` naming the override and a "did you mean". Flags, ``+key=``
    (checked after composing by :func:`check_unknown_keys`), ``~key``, ``hydra*`` keys,
    ``group/sub=`` and sweep functions are left to Hydra."""
    groups = _config_groups(conf_dir) if conf_dir != "" else {}
    if conf_dir != "":
        _check_env_name_has_preset(overrides, conf_dir)
    for ov in overrides:
        if ov.startswith(("-", "+", "~")) or "=" not in ov:
            continue
        key, _, value = ov.partition("=")
        if not key or key.startswith("hydra") or any(c in key for c in "/@[]${}"):
            continue
        if key in groups:
            _check_group_choice(key, value, groups[key])
        else:
            _check_key_path(key, value)


def _check_env_name_has_preset(overrides: Sequence[str], conf_dir: Optional[str]) -> None:
    """``env.name=X`` on the command line keeps the chosen env preset's tuning (the default
    point_maze's 1200 envs, T = 32, lr 5e-4, ...) for another task, silently. Refuse it unless
    the env preset (``env=``, default from conf/config.yaml) already names X, an
    ``experiment=`` preset decides, or ``env=null`` asks for the schema defaults; name the
    presets made for X."""
    from cpo.config import preset_env_name

    conf_dir = conf_dir or _default_conf_dir()
    values: Dict[str, str] = {}
    for ov in overrides:
        key, sep, value = ov.lstrip("+").partition("=")
        if sep and key in ("env.name", "env", "experiment"):
            values[key] = value
    name = values.get("env.name")
    if name is None or "," in name or values.get("experiment", "null") != "null":
        return  # nothing to check, a sweep over names, or an experiment preset decides
    from envs import registry

    if name not in registry.names():
        return  # validation names the unknown task with a "did you mean"
    preset = values.get("env") or _default_choice(conf_dir, "env")
    if preset in (None, "null") or "," in preset:
        return
    preset_name = preset_env_name(os.path.join(conf_dir, "env", preset + ".yaml"))
    if preset_name is None or preset_name == name:
        return
    made_for = [p for p in _config_groups(conf_dir).get("env", [])
                if preset_env_name(os.path.join(conf_dir, "env", p + ".yaml")) == name]
    how = (f"choose one of its presets instead: {', '.join('env=' + p for p in made_for)}" if made_for
           else "give the task a preset of its own under conf/env/, or env=null for the schema defaults")
    raise ConfigError(f"env.name={name}: the env preset {preset!r}{' (the default)' if 'env' not in values else ''} "
                      f"was tuned for env.name={preset_name} (its env.num_envs, algo.horizon, algo.lr and network "
                      f"would silently carry over); {how}")


def _default_conf_dir() -> str:
    """The repository's ``conf/`` directory."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")


def _default_choice(conf_dir: str, group: str) -> Optional[str]:
    """The preset of ``group`` chosen by the ``defaults`` list of ``conf_dir/config.yaml``."""
    import yaml

    path = os.path.join(conf_dir, "config.yaml")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    for entry in data.get("defaults") or []:
        if isinstance(entry, dict) and group in entry:
            return None if entry[group] is None else str(entry[group])
    return None


def _config_groups(conf_dir: Optional[str]) -> Dict[str, List[str]]:
    """Config group -> its preset names (sub-folders of ``conf_dir`` but ``hydra``)."""
    conf_dir = conf_dir or _default_conf_dir()
    if not os.path.isdir(conf_dir):
        return {}
    out: Dict[str, List[str]] = {}
    for group in sorted(os.listdir(conf_dir)):
        path = os.path.join(conf_dir, group)
        if group != "hydra" and os.path.isdir(path):
            out[group] = sorted(f[:-5] for f in os.listdir(path) if f.endswith(".yaml"))
    return out


def _check_group_choice(group: str, value: str, options: List[str]) -> None:
    """``group=value`` must name presets of ``group`` (``a,b`` sweeps: each one; ``null``: none)."""
    import difflib
    import re

    avail = f"(available: {', '.join(options)})"
    if value.startswith(("[", "{")):
        raise ConfigError(f"{group}={value}: a config group takes one preset name {avail}")
    if not re.fullmatch(r"[\w.-]+(,[\w.-]+)*", value):
        return  # sweep functions (choice(...), glob(...)) and the like: Hydra checks them
    for name in value.split(","):
        if name != "null" and name not in options:
            close = difflib.get_close_matches(name, options, n=1)
            hint = f"; did you mean {group}={close[0]}?" if close else ""
            raise ConfigError(f"{group}={value}: there is no preset {name!r} in conf/{group} {avail}{hint}")


def _check_key_path(key: str, value: str) -> None:
    """Every part of the dotted ``key`` must be declared by the schema (below a dict-typed key
    such as ``env.params`` anything goes: the task's own schema checks it)."""
    import dataclasses

    schema: Any = TrainConfig
    prefix = ""
    for part in key.split("."):
        if schema is None:
            raise ConfigError(f"{key}={value} is not a config key ({prefix[:-1]} is a value, "
                              "not a section)")
        fields = {f.name: f for f in dataclasses.fields(schema)}
        if part not in fields:
            raise ConfigError(f"{key}={value} is not a config key (valid under {prefix or 'the root'}: "
                              f"{', '.join(fields)}){_did_you_mean(key, [prefix + f for f in fields])}")
        if "Dict[" in str(fields[part].type):
            return
        prefix += part + "."
        schema = _NESTED.get(prefix[:-1])
    kind = str(fields[part].type)
    if kind in ("bool", "Optional[bool]"):
        _check_bool(key, value, nullable=kind != "bool")


#: what OmegaConf reads as a bool; anything else (it turns ``2`` into true) is refused here
_BOOL_WORDS = ("true", "false", "yes", "no", "on", "off", "1", "0")


def _check_bool(key: str, value: str, nullable: bool = False) -> None:
    """A bool key takes true/false (yes/no, on/off, 1/0; ``null`` too when ``nullable``); a
    comma list is a sweep of them. OmegaConf would silently read ``log.progress=2`` as true."""
    if "$" in value or "(" in value:
        return  # interpolations and sweep functions: OmegaConf / Hydra check them
    words = _BOOL_WORDS + (("null",) if nullable else ())
    for item in value.split(","):
        if item.strip().lower() not in words:
            raise ConfigError(f"{key}={value}: must be true or false{' or null' if nullable else ''} "
                              f"({'/'.join(words)})")


def check_argv(argv: Sequence[str]) -> None:
    """``train.py``'s command line through :func:`check_overrides` (presets are not checked
    when ``--config-dir`` or ``hydra.searchpath`` may add some): on a refusal print one
    ``config error:`` line and exit with code 2 (as :func:`main_entry` does), before Hydra."""
    elsewhere = ("-cd", "--config-dir", "-cp", "--config-path", "hydra.searchpath", "+hydra.searchpath",
                 "++hydra.searchpath")
    presets_elsewhere = any(a.startswith(elsewhere) for a in argv[1:])
    try:
        check_overrides(list(argv[1:]), "" if presets_elsewhere else None)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)


def resume_config(run_dir: str, overrides: Sequence[str]) -> Tuple[TrainConfig, str]:
    """The stored config of ``run_dir`` with command-line ``overrides`` applied, and the
    checkpoint to resume from. Only keys in :data:`RESUMABLE_KEYS` may change."""
    from omegaconf import OmegaConf

    if not os.path.isdir(run_dir):
        raise ConfigError(f"resume={run_dir!r}: the directory does not exist")
    path = ckpt.latest(run_dir)
    if path is None:
        raise ConfigError(f"resume={run_dir!r}: no loadable checkpoint in {run_dir}/checkpoints")
    stored = ckpt.load(path)["config"]
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.create(stored))
    changes: List[str] = []
    for ov in overrides:
        key, _, value = ov.lstrip("+~").partition("=")
        if key == "resume" or key.startswith("hydra"):
            continue
        if not any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE_KEYS):
            if "/" not in key and "." not in key and key in ("algo", "env", "net", "experiment"):
                raise ConfigError(f"{key}={value}: cannot change a config group when resuming "
                                  f"{run_dir} (it continues its stored config)")
            old = OmegaConf.select(cfg, key, default="<missing>")
            raise ConfigError(f"{key}={value}: cannot change this key when resuming {run_dir} "
                              f"(stored value {old}); only {', '.join(RESUMABLE_KEYS)} may change")
        changes.append(f"{key}={value}")
    if changes:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(changes))
    obj = OmegaConf.to_object(cfg)
    obj.resume = run_dir
    return obj, path


#: ``resume=auto``: continue the run directory when it holds a checkpoint, else start fresh
AUTO_RESUME = "auto"


def auto_resume_config(tcfg: TrainConfig, run_dir: str, path: str) -> Tuple[TrainConfig, str]:
    """``resume=auto`` on a run directory holding the checkpoint ``path``: the composed config
    must equal the stored one on every key outside :data:`RESUMABLE_KEYS` (the same job
    started again, e.g. requeued by SLURM); returns it with ``resume`` set to ``run_dir``."""
    from omegaconf import OmegaConf

    from cpo.config import flatten, to_dict

    stored = to_train_config(OmegaConf.create(ckpt.load(path)["config"]))
    mine, theirs = flatten(to_dict(tcfg)), flatten(to_dict(stored))
    for key in sorted(set(mine) | set(theirs)):
        if any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE_KEYS):
            continue
        if mine.get(key, "<missing>") != theirs.get(key, "<missing>"):
            raise ConfigError(f"{key}={mine.get(key, '<missing>')!r}: resume=auto found checkpoints of another "
                              f"config in {run_dir} (stored value {theirs.get(key, '<missing>')!r}); only "
                              f"{', '.join(RESUMABLE_KEYS)} may change when resuming (nothing is overwritten)")
    tcfg.resume = run_dir
    return tcfg, path


def run(cfg: Any, run_dir: Optional[str] = None, overrides: Sequence[str] = ()) -> Dict[str, float]:
    """Validate, build and train. Returns the last iteration's statistics.

    Under torchrun every rank calls it: the process group is joined here (and left at the
    end), every rank works in rank 0's run directory, and only rank 0 writes files."""
    from cpo import distributed

    tcfg = to_train_config(cfg)
    dist = distributed.init_from_env(tcfg.device)  # torchrun: join the process group; else no-op
    try:
        out = _run(tcfg, dist.broadcast(run_dir), overrides, dist)
        # every rank done (rank 0 has written its last checkpoint) before any rank closes its
        # connections: gloo aborts a process whose peer vanishes under it
        dist.barrier()
        return out
    finally:
        distributed.shutdown()  # on an error no barrier: the failing rank must exit, torchrun stops the rest


def _run(tcfg: TrainConfig, run_dir: Optional[str], overrides: Sequence[str], dist: Any) -> Dict[str, float]:
    """:func:`run` inside the process group (``dist``, cpo/distributed.py)."""
    from cpo.runner import Runner

    resume_from = None
    if tcfg.resume and tcfg.resume != AUTO_RESUME:
        tcfg, resume_from = resume_config(tcfg.resume, overrides)
        run_dir = tcfg.resume
    validate(tcfg)
    run_dir = tcfg.run_dir or run_dir or os.getcwd()
    if tcfg.resume == AUTO_RESUME:  # rank 0 decides, so that every rank takes the same path
        found = dist.broadcast(ckpt.latest(run_dir) if dist.is_main and os.path.isdir(run_dir) else None)
        if found is not None:
            tcfg, resume_from = auto_resume_config(tcfg, run_dir, found)
    if resume_from is None:
        existing = dist.broadcast(ckpt.list_checkpoints(run_dir) if dist.is_main else None)
        if existing:
            raise ConfigError(f"run_dir={run_dir!r} already holds checkpoints; use resume={run_dir} "
                              "(or resume=auto) to continue it or choose another run_dir (nothing is overwritten)")
    text = config_yaml(tcfg)
    if dist.is_main:
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "resolved_config.yaml"), "w") as f:
            f.write(text)
    runner_cls = Runner
    if tcfg.pbt.population > 0:  # a population of independent PPO learners (ALGORITHMS.md 7)
        from cpo.pbt import PBTRunner

        runner_cls = PBTRunner
    runner = runner_cls(tcfg, run_dir, resume_from=resume_from, config_yaml=text)
    return runner.train()


def main_entry(cfg: Any) -> Optional[float]:
    """Body of ``train.py`` under ``@hydra.main``: clear one-line errors, exit code 2."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    try:
        out = run(cfg, run_dir=hc.runtime.output_dir, overrides=list(hc.overrides.task))
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    except ckpt.CheckpointError as err:
        print(f"checkpoint error: {err}", file=sys.stderr)
        sys.exit(2)
    return out.get("rollout/ep_return")


def rank_argv(argv: List[str]) -> List[str]:
    """Command-line arguments for this process (checked first by :func:`check_argv`): under
    torchrun, ranks > 0 add Hydra overrides so that they create no run directory of their own
    (their clock may give another timestamp) and write no ``.hydra/`` files or logs: they work
    in rank 0's directory."""
    from cpo.distributed import rank_from_env

    check_argv(argv)  # unknown keys and presets get a "did you mean" before Hydra composes
    if rank_from_env() == 0:
        return argv
    extra = ["hydra.output_subdir=null", "hydra/job_logging=disabled"]
    if not any(a.startswith(("hydra.run.dir=", "+hydra.run.dir=", "-m", "--multirun")) for a in argv[1:]):
        extra.append("hydra.run.dir=.")
    return argv + [e for e in extra if not any(a.startswith(e.split("=")[0] + "=") for a in argv[1:])]


def _nested_sections() -> Dict[str, Any]:
    """Section name -> its dataclass, for every dataclass-typed field of :class:`TrainConfig`
    (field types are strings under ``from __future__ import annotations``: resolve them)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(TrainConfig)
    return {name: cls for name, cls in hints.items() if dataclasses.is_dataclass(cls)}


#: nested sections: algo, env, net, log, perf, pbt
_NESTED = _nested_sections()

register_configs()
