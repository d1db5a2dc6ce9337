"""cpo: ensemble policy-gradient learning (PPO, SAPG, CPO) on batched GPU simulators."""
__version__ = "0.1.0"
