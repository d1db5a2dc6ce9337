"""The embedded pure-torch tasks; importing this package registers every one of them.

classic control (exact ports of gymnasium 1.x): ``cartpole``, ``pendulum``, ``mountain_car``,
``acrobot``; exploration: ``point_maze``; many-joint control: ``arm_reach``.
Env-only and training throughput: ``python bench/throughput.py``.
"""
from envs.tasks import acrobot, arm_reach, cartpole, mountain_car, pendulum  # noqa: F401
from envs.tasks import point_maze  # noqa: F401
