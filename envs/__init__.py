"""Environments behind one batched-tensor contract (see :mod:`envs.base`)."""
