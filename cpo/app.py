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


def run(cfg: Any, run_dir: Optional[str] = None, overrides: Sequence[str] = ()) -> Dict[str, float]:
    """Validate, build and train. Returns the last iteration's statistics."""
    from cpo.runner import Runner

    tcfg = to_train_config(cfg)
    resume_from = None
    if tcfg.resume:
        tcfg, resume_from = resume_config(tcfg.resume, overrides)
        run_dir = tcfg.resume
    validate(tcfg)
    run_dir = tcfg.run_dir or run_dir or os.getcwd()
    if resume_from is None:
        existing = ckpt.list_checkpoints(run_dir)
        if existing:
            raise ConfigError(f"run_dir={run_dir!r} already holds checkpoints; use resume={run_dir} "
                              "to continue it or choose another run_dir (nothing is overwritten)")
    os.makedirs(run_dir, exist_ok=True)
    text = config_yaml(tcfg)
    with open(os.path.join(run_dir, "resolved_config.yaml"), "w") as f:
        f.write(text)
    runner = Runner(tcfg, run_dir, resume_from=resume_from, config_yaml=text)
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


from cpo.config import AlgoConfig, EnvConfig, LogConfig, NetConfig  # noqa: E402

#: nested sections (dataclass field types are strings under ``from __future__ import annotations``)
_NESTED = {"algo": AlgoConfig, "env": EnvConfig, "net": NetConfig, "log": LogConfig}

register_configs()
