"""Shared fixtures of the embedded-task tests (CPU only)."""
from __future__ import annotations

import os
import sys
import types
from typing import Any, Callable, Optional

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:  # so that ``pytest tests/envs`` works without installing the package
    sys.path.insert(0, ROOT)


@pytest.fixture
def make_env() -> Callable[..., Any]:
    """``make_env(name, num_envs=16, max_episode_steps=None, seed=0, **params)`` through the
    registry, with the smallest config object it accepts (a namespace)."""
    from envs import registry

    def make(name: str, num_envs: int = 16, max_episode_steps: Optional[int] = None,
             seed: int = 0, **params: Any) -> Any:
        cfg = types.SimpleNamespace(name=name, num_envs=num_envs,
                                    max_episode_steps=max_episode_steps, params=params)
        return registry.make(cfg, device="cpu", seed=seed)

    return make
