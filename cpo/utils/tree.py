"""Nested containers (dicts, lists, tuples) of tensors, as checkpoints and optimiser states are."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], Any], other: Optional[Callable[[Any], Any]] = None) -> Any:
    """``obj`` rebuilt with ``fn`` applied to every tensor and ``other`` (default: keep) to
    every other leaf; dicts, lists and tuples are rebuilt, so the result shares no container
    with ``obj``."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn, other) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(v, fn, other) for v in obj)
    return other(obj) if other is not None else obj
