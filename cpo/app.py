"""Turn a composed Hydra config into a validated run: fresh, or resumed from a run directory."""
from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from cpo.utils import checkpoint as ckpt
from cpo.utils.config import RESUMABLE_KEYS, ConfigError, TrainConfig, config_yaml, register_configs, validate


def to_train_config(cfg: Any) -> TrainConfig:
    """A composed DictConfig (or a TrainConfig) -> a TrainConfig dataclass."""
    from omegaconf import OmegaConf

    if isinstance(cfg, TrainConfig):
        return cfg
    check_unknown_keys(OmegaConf.to_container(cfg, resolve=True), TrainConfig)
    base = OmegaConf.structured(TrainConfig)
    merged = OmegaConf.merge(base, cfg)
    out = OmegaConf.to_object(merged)
    check_list_types(out)
    return out


def check_list_types(obj: Any, prefix: str = "") -> None:
    """Raise :class:`ConfigError` for a list field holding items of the wrong type (OmegaConf
    lets an interpolation put strings into ``List[int]``, e.g. ``net.actor_hidden=${oc.env:PATH}``)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, hint = getattr(obj, f.name), hints.get(f.name)
        if dataclasses.is_dataclass(value):
            check_list_types(value, f"{prefix}{f.name}.")
            continue
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if typing.get_origin(hint) is typing.Union and args:  # Optional[List[...]]
            if value is None:
                continue
            hint = args[0]
        if typing.get_origin(hint) is dict and not isinstance(value, dict):
            raise ConfigError(f"{prefix}{f.name}={value!r}: must be a mapping of key: value")
        if typing.get_origin(hint) is list:
            item = (typing.get_args(hint) or (object,))[0]
            kinds = (int, float) if item is float else (item,)
            if not isinstance(value, list) or (
                    item in (int, float, str) and not all(isinstance(v, kinds) and not isinstance(v, bool) for v in value)):
                raise ConfigError(f"{prefix}{f.name}={value!r}: must be a list of {item.__name__} values")


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
    groups = _config_groups(conf_dir or None)  # the groups exist wherever presets come from
    if conf_dir != "":
        _check_env_name_has_preset(overrides, conf_dir)
    _check_ppo_is_one_policy(overrides)
    for ov in overrides:
        if ov.startswith(("-", "+", "~")) or "=" not in ov:
            continue
        key, _, value = ov.partition("=")
        if not key or key.startswith("hydra") or any(c in key for c in "/@[]${}"):
            continue
        if key in groups:
            if conf_dir != "":  # presets from elsewhere: Hydra checks the choice
                _check_group_choice(key, value, groups[key])
        else:
            _check_key_path(key, value)


def _check_ppo_is_one_policy(overrides: Sequence[str]) -> None:
    """``algo=ppo algo.num_policies=6`` would run SAPG labelled as PPO: refused, naming the
    presets that are ensembles."""
    values = dict(ov.lstrip("+").partition("=")[::2] for ov in overrides if "=" in ov)
    m = values.get("algo.num_policies", "1").strip()
    if values.get("algo") == "ppo" and m.isdigit() and m.isascii() and int(m) != 1:
        raise ConfigError(f"algo.num_policies={m}: algo=ppo is the one-policy learner (M = 1); for an "
                          "ensemble use algo=sapg, algo=cpo or algo=epo")


def _check_env_name_has_preset(overrides: Sequence[str], conf_dir: Optional[str]) -> None:
    """``env.name=X`` on the command line keeps the chosen env preset's tuning (the default
    point_maze's 1200 envs, T = 32, lr 5e-4, ...) for another task, silently. Refuse it unless
    the env preset (``env=``, default from conf/config.yaml) already names X, an
    ``experiment=`` preset decides, or ``env=null`` asks for the schema defaults; name the
    presets made for X."""
    from cpo.utils.config import preset_env_name

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
    """``train.py``'s command line, before Hydra creates a run directory: the typo and preset
    checks of :func:`check_overrides` (presets are not checked when ``--config-dir`` or
    ``hydra.searchpath`` may add some), then, for a single run, :func:`precheck` (compose,
    convert, validate). A refusal prints one ``config error:`` line and exits with code 2 (as
    :func:`main_entry` does), and nothing has been written."""
    elsewhere = ("-cd", "--config-dir", "-cp", "--config-path", "hydra.searchpath", "+hydra.searchpath",
                 "++hydra.searchpath")
    presets_elsewhere = any(a.startswith(elsewhere) for a in argv[1:])
    try:
        check_overrides(list(argv[1:]), "" if presets_elsewhere else None)
        precheck(list(argv[1:]))
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    except ckpt.CheckpointError as err:  # resume= names a damaged or foreign checkpoint
        print(f"checkpoint error: {err}", file=sys.stderr)
        sys.exit(2)


#: train.py flags after which the pre-Hydra check is left to Hydra: sweeps (validated per
#: job), another primary config, and the flags that print instead of running
_PRECHECK_SKIP = ("-m", "--multirun", "-c", "--cfg", "-h", "--help", "--hydra-help", "-i", "--info",
                  "--resolve", "-p", "--package", "-cp", "--config-path", "-cn", "--config-name",
                  "-sc", "--shell-completion", "--experimental-rerun")


def precheck(args: Sequence[str]) -> None:
    """Compose ``conf/`` with the command-line ``args`` as Hydra will (``--config-dir`` /
    ``-cd`` directories join the search path), convert to :class:`TrainConfig` and validate
    it (a resume: the stored config with the overrides, and the checkpoint to continue), so
    that a bad input fails with one line before Hydra creates the run directory. Hydra's and
    OmegaConf's own errors (wrong types, interpolations, unparsable overrides, bad values in
    a preset file) become one :class:`ConfigError` line naming the override or the file and
    the key. Sweeps and printing flags are left to Hydra."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    if any(a.split("=", 1)[0] in _PRECHECK_SKIP or a.lstrip("+").startswith("hydra.mode=") for a in args):
        return  # flags that print, another primary config, or a sweep (validated per job)
    dirs: List[str] = []
    overrides: List[str] = []
    it = iter(args)
    for a in it:
        if a in ("-cd", "--config-dir"):
            dirs.append(os.path.abspath(next(it, "")))
        elif a.startswith("--config-dir="):
            dirs.append(os.path.abspath(a.split("=", 1)[1]))
        elif a.startswith("-"):
            continue  # other flags (e.g. --verbose) do not change the config
        elif a.lstrip("+").startswith("hydra.searchpath"):
            overrides.append(a.lstrip("+"))  # the compose API sets the existing key
        elif a.lstrip("+~").startswith(("hydra.", "hydra/")):
            continue  # Hydra's own settings (run dir, launcher, logging)
        else:
            overrides.append(a)
    if dirs and not any(o.lstrip("+").startswith("hydra.searchpath") for o in overrides):
        overrides.append("hydra.searchpath=[" + ",".join(f"file://{d}" for d in dirs) + "]")
    try:
        with initialize_config_dir(_default_conf_dir(), version_base="1.3"):
            cfg = hydra_compose("config", overrides=overrides)
        tcfg = to_train_config(cfg)
    except ConfigError:
        raise
    except Exception as err:  # Hydra's and OmegaConf's errors: one line instead of several
        raise ConfigError(hydra_error_line(err, [_default_conf_dir()] + dirs)) from None
    if tcfg.resume is not None and tcfg.resume != AUTO_RESUME:
        tcfg, _ = resume_config(tcfg.resume, overrides)
    validate(tcfg)
    from cpo.runners.runner import resolve_device

    resolve_device(tcfg.device)  # device=cuda on a machine without that GPU: before the run dir


def hydra_error_line(err: BaseException, conf_dirs: Sequence[str] = ()) -> str:
    """One line for an error Hydra or OmegaConf raised while composing: the override (or the
    preset file, found in ``conf_dirs``) and the key it concerns, then the first line of the
    reason."""
    import re

    text = str(err).strip()
    cause = err.__cause__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    key_of = lambda t: (re.search(r"full_key: (\S+)", t) or [None, None])[1]  # noqa: E731
    if type(err).__name__ == "OverrideParseException":
        bad = lines[0].split(": ", 1)[-1] if lines else text
        return f"{bad}: cannot parse this override (Hydra's grammar: key=value; quote values with spaces " \
               "or special characters, e.g. key='a b')"
    m = re.match(r"Error merging override (.*)", lines[0]) if lines else None
    if m and cause is not None:
        reason = str(cause).strip().splitlines()[0]
        key = key_of(str(cause))
        return f"{m.group(1)}: {reason}" + (f" (key {key})" if key and not m.group(1).startswith(key + "=") else "")
    m = re.match(r"In '([^']+)': (.*)", lines[0]) if lines else None
    if m:
        where = m.group(1)
        files = [os.path.join(d, where + ".yaml") for d in conf_dirs if os.path.isfile(os.path.join(d, where + ".yaml"))]
        body = [ln for ln in lines[1:] if not ln.startswith(("full_key", "reference_type", "object_type",
                                                              "Config search path", "provider=", "Available"))]
        reason = body[0] if body else m.group(2)
        if "Could not find" in m.group(2):
            options = [ln for ln in lines[1:] if not ln.startswith(("Available", "Config search path", "provider="))]
            return f"{m.group(2)} (available: {', '.join(options)})"
        key = key_of(text)
        return f"in {files[0] if files else where}: " + (f"{key}: " if key else "") + reason
    key = key_of(text)
    hint = next((ln for ln in lines[1:] if ln.startswith("To append")), "")
    return (f"{key}: " if key else "") + (lines[0] if lines else type(err).__name__) + (f" {hint}" if hint else "")


def resume_target(value: str) -> Tuple[str, Optional[str]]:
    """``resume=`` -> (run directory, the checkpoint file named, or None for the newest):
    a run directory, or a checkpoint file inside ``<run dir>/checkpoints/``. Refuses an
    empty value, a missing path and a file outside a run directory."""
    if not str(value).strip():
        raise ConfigError("resume='': must name a run directory, a checkpoint file in one, or auto "
                          "(an empty value would silently start a fresh run)")
    if os.path.isfile(value):
        parent = os.path.dirname(os.path.abspath(value))
        run_dir = os.path.dirname(parent)
        if os.path.basename(parent) != "checkpoints":
            raise ConfigError(f"resume={value!r}: a checkpoint file must lie in <run dir>/checkpoints/ "
                              "of the run it continues")
        return run_dir, value
    if not os.path.isdir(value):
        raise ConfigError(f"resume={value!r}: the directory does not exist")
    return value, None


def resume_config(run_dir: str, overrides: Sequence[str]) -> Tuple[TrainConfig, str]:
    """The stored config of the run ``resume=`` names (a run directory or a checkpoint file in
    one) with command-line ``overrides`` applied, and the checkpoint to resume from (the
    named file, or the newest loadable one, skipping damaged ones with a line). Only keys in
    :data:`RESUMABLE_KEYS` may change, and ``max_iterations`` must lie beyond the checkpoint."""
    from omegaconf import OmegaConf

    run_dir, named = resume_target(run_dir)
    path = named or ckpt.latest(run_dir)
    if path is None:
        raise ConfigError(f"resume={run_dir!r}: no loadable checkpoint in {run_dir}/checkpoints")
    payload = ckpt.load(path)  # an explicitly named damaged file is refused here
    if named:
        newer = [p for p in ckpt.list_checkpoints(run_dir)
                 if ckpt.checkpoint_iteration(p) > int(payload["runner"]["iteration"])]
        if newer:
            raise ConfigError(f"resume={named!r}: {run_dir} already holds checkpoints past it ({newer[-1]}); "
                              "continuing from an older file would mix two histories in one run (the periodic "
                              "pruning would delete the new ones). Copy the run directory without the newer "
                              "checkpoints, or resume the newest")
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.create(payload["config"]))
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
    done = int(payload["runner"]["iteration"])
    if obj.max_iterations <= done:
        raise ConfigError(f"max_iterations={obj.max_iterations}: {path} is already at iteration {done}, so "
                          f"resuming would train nothing; give max_iterations > {done}")
    obj.resume = run_dir
    return obj, path


#: ``resume=auto``: continue the run directory when it holds a checkpoint, else start fresh
AUTO_RESUME = "auto"


def auto_resume_config(tcfg: TrainConfig, run_dir: str, path: str) -> Tuple[TrainConfig, str]:
    """``resume=auto`` on a run directory holding the checkpoint ``path``: the composed config
    must equal the stored one on every key outside :data:`RESUMABLE_KEYS` (the same job
    started again, e.g. requeued by SLURM); returns it with ``resume`` set to ``run_dir``."""
    from omegaconf import OmegaConf

    from cpo.utils.config import flatten, to_dict

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
    from cpo.utils import distributed

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
    """:func:`run` inside the process group (``dist``, cpo/utils/distributed.py)."""
    from cpo.runners.runner import Runner

    resume_from = None
    if tcfg.resume is not None and tcfg.resume != AUTO_RESUME:
        tcfg, resume_from = resume_config(tcfg.resume, overrides)
        run_dir = tcfg.resume
    validate(tcfg)
    if not resume_from:  # a resume works where its checkpoints are (even if the run was copied)
        run_dir = tcfg.run_dir or run_dir or os.getcwd()
    # one training process per run directory: rank 0 holds the lock until this process ends
    lock = claim_run_dir(run_dir) if dist.is_main else None
    try:
        if tcfg.resume == AUTO_RESUME:  # rank 0 decides, so that every rank takes the same path
            found = dist.broadcast(ckpt.latest(run_dir) if dist.is_main and os.path.isdir(run_dir) else None)
            if found is not None:
                tcfg, resume_from = auto_resume_config(tcfg, run_dir, found)
        if resume_from is None:
            existing = dist.broadcast(ckpt.resumable(run_dir) if dist.is_main else None)
            if existing:
                raise ConfigError(f"run_dir={run_dir!r} already holds checkpoints; use resume={run_dir} "
                                  "(or resume=auto) to continue it or choose another run_dir (nothing is overwritten)")
        text = config_yaml(tcfg)
        if dist.is_main:
            with open(os.path.join(run_dir, "resolved_config.yaml"), "w") as f:
                f.write(text)
        runner_cls = Runner
        if tcfg.pbt.population > 0:  # a population of independent PPO learners (ALGORITHMS.md 7)
            from cpo.runners.pbt import PBTRunner

            runner_cls = PBTRunner
        runner = runner_cls(tcfg, run_dir, resume_from=resume_from, config_yaml=text)
        global _TRAINING_STARTED
        _TRAINING_STARTED = True
        return runner.train()
    finally:
        if lock is not None:
            lock.release()


def claim_run_dir(run_dir: str) -> "ckpt.RunLock":
    """Before any compute: take the run directory's lock (a second training process there is
    refused with one line), check that the directory is writable (a read-only one fails here,
    naming it), and remove temporary checkpoint files left by a killed process."""
    try:
        os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
        lock = ckpt.RunLock(run_dir).acquire()
    except ckpt.RunLocked:
        raise
    except OSError as err:
        raise ConfigError(f"run_dir={run_dir!r} is not writable: {err.strerror or err}") from None
    probe = os.path.join(run_dir, "checkpoints", f".write_test.{os.getpid()}")
    try:
        with open(probe, "wb") as f:
            f.write(b"ok")
        os.remove(probe)
    except OSError as err:
        lock.release()
        raise ConfigError(f"run_dir={run_dir!r} is not writable: {err.strerror or err}") from None
    for path in ckpt.remove_stale_temp_files(run_dir):
        print(f"[cpo] removed {path}, left by a process killed while saving", file=sys.stderr)
    return lock


def main_entry(cfg: Any) -> Optional[float]:
    """Body of ``train.py`` under ``@hydra.main``: clear one-line errors, exit code 2."""
    from hydra.core.hydra_config import HydraConfig

    from cpo.runners.collect import NonFiniteError

    hc = HydraConfig.get()
    out_dir = hc.runtime.output_dir
    try:
        out = run(cfg, run_dir=out_dir, overrides=list(hc.overrides.task))
    except ConfigError as err:
        discard_unused_run_dir(out_dir)
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    except ckpt.RunLocked as err:  # another process's run: its directory is not ours to clean
        print(f"checkpoint error: {err}", file=sys.stderr)
        sys.exit(2)
    except ckpt.CheckpointError as err:
        discard_unused_run_dir(out_dir)
        print(f"checkpoint error: {err}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteError as err:
        print(f"non-finite error: {err}", file=sys.stderr)
        sys.exit(2)
    return out.get("rollout/ep_return")


#: when this process imported cpo.app (train.py does so before Hydra creates a run directory)
_STARTED = __import__("time").time()
#: set once a Runner starts training: later failures keep the run directory
_TRAINING_STARTED = False
#: what a run directory holds before training wrote anything of its own
_SCAFFOLD = {".hydra", "train.log", ".lock", "checkpoints", "resolved_config.yaml"}


def discard_unused_run_dir(run_dir: str) -> bool:
    """Remove the run directory Hydra created for this process when the run failed before
    writing anything of its own (only Hydra's ``.hydra/``, an empty ``checkpoints/``, the lock,
    the resolved config and the log): a refused input leaves no directory behind. A directory
    that existed before this process started, or holds events or checkpoints, is kept."""
    import shutil

    if _TRAINING_STARTED:  # a failure during training: its logs and .hydra/ stay
        return False
    try:
        if not os.path.isdir(run_dir) or os.stat(run_dir).st_ctime < _STARTED - 1.0:
            return False
        names = set(os.listdir(run_dir))
        ckpts = os.path.join(run_dir, "checkpoints")
        if not names <= _SCAFFOLD or (os.path.isdir(ckpts) and os.listdir(ckpts)):
            return False
        try:  # a directory another live process holds is never removed
            lock = ckpt.RunLock(run_dir).acquire()
        except ckpt.RunLocked:
            return False
        lock.release()
        shutil.rmtree(run_dir)
        # and the parents Hydra made for it (outputs/<algo>_<env>/) when this process made them
        # and they are empty now; never the working directory or anything above it
        stop = os.path.abspath(os.getcwd())
        parent = os.path.dirname(os.path.abspath(run_dir))
        while parent.startswith(stop + os.sep) and os.path.isdir(parent) and not os.listdir(parent) \
                and os.stat(parent).st_ctime >= _STARTED - 1.0:
            os.rmdir(parent)
            parent = os.path.dirname(parent)
        return True
    except OSError:
        return False


#: Hydra's command-line flags that take a value in the next argument (``--info`` takes one only
#: when the next argument is one of its choices)
_HYDRA_VALUED = ("-c", "--cfg", "-p", "--package", "-cp", "--config-path", "-cn", "--config-name",
                 "-cd", "--config-dir", "--experimental-rerun")
_HYDRA_INFO = ("-i", "--info")
_INFO_CHOICES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")


def hydra_flags_first(argv: Sequence[str]) -> List[str]:
    """``argv`` with Hydra's flags (and their values) moved before the overrides, the order of
    each kept: Hydra's argparse takes the overrides as one positional list, so
    ``train.py seed=1 --config-dir D env=x`` would otherwise stop at "unrecognized arguments:
    env=x" with a page of usage."""
    flags: List[str] = []
    overrides: List[str] = []
    rest = list(argv[1:])
    i = 0
    while i < len(rest):
        a = rest[i]
        if a.startswith("-") and not a.startswith(("+", "~")):
            flags.append(a)
            takes = (a in _HYDRA_VALUED) or (a in _HYDRA_INFO and i + 1 < len(rest) and rest[i + 1] in _INFO_CHOICES)
            if takes and i + 1 < len(rest):
                flags.append(rest[i + 1])
                i += 1
        else:
            overrides.append(a)
        i += 1
    return list(argv[:1]) + flags + overrides


def rank_argv(argv: List[str]) -> List[str]:
    """Command-line arguments for this process (checked first by :func:`check_argv`), Hydra's
    flags first (:func:`hydra_flags_first`): under torchrun, ranks > 0 add Hydra overrides so
    that they create no run directory of their own (their clock may give another timestamp)
    and write no ``.hydra/`` files or logs: they work in rank 0's directory."""
    from cpo.utils.distributed import rank_from_env

    argv = hydra_flags_first(argv)
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
