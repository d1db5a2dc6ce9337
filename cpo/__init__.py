"""cpo: ensemble policy-gradient learning (PPO, SAPG, CPO, EPO) on batched GPU simulators.

The Python API (cpo/api.py; imported on first use, so ``import cpo`` stays light)::

    import cpo
    res = cpo.train(["algo=cpo", "env=cartpole"])      # the presets and checks of train.py
    policy = cpo.load_policy(res.run_dir)               # best checkpoint, the leader
    cpo.evaluate(policy, episodes=100)                  # EvalResult(return_mean, ...)
"""
__version__ = "0.1.0"

#: names served lazily from cpo.api
_API = ("train", "compose", "load_policy", "evaluate", "Policy", "TrainResult", "EvalResult")


def __getattr__(name: str):
    """``cpo.train`` etc. import cpo.api on first use (PEP 562)."""
    if name in _API:
        from cpo import api

        return getattr(api, name)
    raise AttributeError(f"module 'cpo' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
