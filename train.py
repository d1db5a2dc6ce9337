"""Train an ensemble (PPO / SAPG / CPO) policy: ``python train.py algo=cpo env=point_maze``.

Sweeps: ``python train.py -m algo.lambda_f=0.05,0.1,0.2,0.5 algo.beta=1e-4,1e-3 seed=0,1,2``.
Resume: ``python train.py resume=<run dir> [max_iterations=...]``.
"""
from __future__ import annotations

import hydra

from cpo.app import main_entry


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg) -> None:
    """Hydra entry point: compose, validate, train."""
    return main_entry(cfg)


if __name__ == "__main__":
    main()
