"""Helpers shared by the benchmarks: config building, machine description, JSON output."""
from __future__ import annotations

import json
import os
import platform
import sys
from typing import Any, Dict, List, Tuple

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def compose(overrides: List[str]):
    """conf/config.yaml composed with ``overrides`` -> TrainConfig (validated)."""
    from hydra import compose as hcompose, initialize_config_dir

    from cpo.app import to_train_config
    from cpo.utils.config import validate

    with initialize_config_dir(os.path.join(ROOT, "conf"), version_base="1.3"):
        cfg = to_train_config(hcompose("config", overrides=list(overrides)))
    validate(cfg)
    return cfg


def variant(spec: str) -> Tuple[str, List[str]]:
    """A benchmark variant from the command line: ``cpo`` -> ("cpo", ["algo=cpo"]), or
    ``NAME:algo=cpo,algo.coupling_fraction=0.2`` -> (NAME, those overrides)."""
    name, _, extra = spec.partition(":")
    return name, (extra.split(",") if extra else [f"algo={name}"])


def machine() -> Dict[str, Any]:
    """What the numbers were measured on."""
    info: Dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cpu": platform.processor() or platform.machine(),
                            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def emit(result: Dict[str, Any], path: str = "") -> None:
    """Print ``result`` as JSON (and write it to ``path`` when given)."""
    text = json.dumps(result, indent=2, default=float)
    print(text)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")
