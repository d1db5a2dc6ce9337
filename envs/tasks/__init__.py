"""The embedded pure-torch tasks, each module exporting its ``SPEC`` (envs/registry.py registers
them by name and imports a module on first use).

classic control (exact ports of gymnasium 1.x): ``cartpole``, ``pendulum``, ``mountain_car``,
``acrobot``; exploration: ``point_maze``; many-joint control: ``arm_reach``.
Env-only and training throughput: ``python bench/throughput.py``.
"""
