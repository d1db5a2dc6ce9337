"""Turn a composed Hydra config into a validated run: fresh, or resumed from a run directory."""
from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from cpo import checkpoint as ckpt
from cpo.config import RESUMABLE_KEYS, ConfigError, TrainConfig, register_configs, validate


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
    import difflib

    if not isinstance(values, dict):
        return
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in values.items():
        if key == "hydra" and not prefix:
            continue
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else ""
            raise ConfigError(f"{prefix}{key}={value!r} is not a config key "
                              f"(valid under {prefix or 'the root'}: {', '.join(fields)}){hint}")
        sub = fields[key].type
        sub = sub if dataclasses.is_dataclass(sub) else _NESTED.get(f"{prefix}{key}")
        if sub is not None:
            check_unknown_keys(value, sub, f"{prefix}{key}.")


def config_yaml(cfg: TrainConfig) -> str:
    """The resolved config as YAML text (stored in every checkpoint and the run dir)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


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
    """Command-line arguments for this process: under torchrun, ranks > 0 add Hydra overrides
    so that they create no run directory of their own (their clock may give another
    timestamp) and write no ``.hydra/`` files or logs: they work in rank 0's directory."""
    from cpo.distributed import rank_from_env

    if rank_from_env() == 0:
        return argv
    extra = ["hydra.output_subdir=null", "hydra/job_logging=disabled"]
    if not any(a.startswith(("hydra.run.dir=", "+hydra.run.dir=", "-m", "--multirun")) for a in argv[1:]):
        extra.append("hydra.run.dir=.")
    return argv + [e for e in extra if not any(a.startswith(e.split("=")[0] + "=") for a in argv[1:])]


from cpo.config import AlgoConfig, EnvConfig, LogConfig, NetConfig, PBTConfig  # noqa: E402

#: nested sections (dataclass field types are strings under ``from __future__ import annotations``)
_NESTED = {"algo": AlgoConfig, "env": EnvConfig, "net": NetConfig, "log": LogConfig,
           "pbt": PBTConfig}

register_configs()
