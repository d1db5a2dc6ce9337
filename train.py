"""Train an ensemble (PPO / SAPG / CPO) policy: ``python train.py algo=cpo env=point_maze``.

Sweeps: ``python train.py -m algo.lambda_f=0.05,0.1,0.2,0.5 algo.beta=1e-4,1e-3 seed=0,1,2``.
Resume: ``python train.py resume=<run dir> [max_iterations=...]``.
Several processes: ``torchrun --nproc_per_node 4 train.py ...`` (README: Scaling out).
"""
from __future__ import annotations

import os
import sys
from typing import List

from cpo.utils.config import preset_env_name  # YAML only: torch is not imported yet


def isaacgym_requested(argv: List[str]) -> bool:
    """True when the command line selects the Isaac Gym backend: ``env.name=isaacgym`` (which
    decides when given), or an ``experiment=`` / ``env=`` preset or the ``resume=`` run whose
    ``env.name`` is isaacgym."""
    here = os.path.dirname(os.path.abspath(__file__))
    explicit, preset = None, False
    for arg in argv[1:]:
        key, _, value = arg.lstrip("+~").partition("=")
        if key == "env.name":
            explicit = value == "isaacgym"
        elif key in ("experiment", "env"):
            preset = preset or preset_env_name(os.path.join(here, "conf", key, value + ".yaml")) == "isaacgym"
        elif key == "resume":
            preset = preset or preset_env_name(os.path.join(value, "resolved_config.yaml")) == "isaacgym"
    return explicit if explicit is not None else preset


if isaacgym_requested(sys.argv):  # Isaac Gym must be imported before torch (envs/isaacgym.py)
    try:
        import isaacgym  # noqa: F401
    except ImportError:
        pass  # envs/isaacgym.py then says what to install

import hydra  # noqa: E402  (after the Isaac Gym import above)

from cpo.app import main_entry, rank_argv  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg) -> None:
    """Hydra entry point: compose, validate, train."""
    return main_entry(cfg)


if __name__ == "__main__":
    sys.argv = rank_argv(sys.argv)  # torchrun ranks > 0 write nothing of Hydra's
    main()
