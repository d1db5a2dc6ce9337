"""Pieces shared by the embedded tasks.

* :class:`TaskParams`: the parameter every task accepts (``dtype``) and the checks
  (:func:`require`, :func:`check_number`) that raise :class:`envs.registry.EnvConfigError`
  naming ``env.params.<key>=<value>`` and the rule.
* :class:`Task`: a :class:`envs.base.BatchedTask` with a configurable floating dtype, box
  spaces and a sampler that draws from the task's own generator.
* :class:`Canvas`: a few-line numpy rasteriser (rectangles, discs, thick lines) for
  ``render()``; no matplotlib or pygame needed.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence, Tuple

import gymnasium as gym
import numpy as np
import torch

from envs.base import BatchedTask
from envs.spec import EnvConfigError

#: accepted values of the ``dtype`` parameter
DTYPES = {"float32": torch.float32, "float64": torch.float64}

Color = Tuple[int, int, int]


def require(ok: bool, key: str, value: Any, rule: str) -> None:
    """Raise :class:`EnvConfigError` ``env.params.<key>=<value>: <rule>`` unless ``ok``."""
    if not ok:
        raise EnvConfigError(f"env.params.{key}={value!r} is invalid: {rule}")


def check_number(key: str, value: Any, low: Optional[float] = None,
                 high: Optional[float] = None, integer: bool = False,
                 open_low: bool = False) -> None:
    """Check that ``value`` is a number (an int when ``integer``) in ``[low, high]``.

    ``open_low`` makes the lower bound strict (``value > low``).
    """
    kinds = (int,) if integer else (int, float)
    is_num = isinstance(value, kinds) and not isinstance(value, bool)
    require(is_num, key, value, "must be an integer" if integer else "must be a number")
    if low is not None:
        ok = value > low if open_low else value >= low
        require(ok, key, value, f"must be {'>' if open_low else '>='} {low}")
    if high is not None:
        require(value <= high, key, value, f"must be <= {high}")
    require(math.isfinite(value) and abs(value) <= 3.4e38, key, value, "must be a finite number (float32 range)")


@dataclasses.dataclass
class TaskParams:
    """Parameters every embedded task accepts."""

    dtype: str = "float32"
    """Floating type of the simulator state: float32 (default, fast) or float64 (used by the
    gymnasium agreement tests)."""

    def validate(self) -> None:
        """Raise :class:`EnvConfigError` naming the first invalid parameter."""
        require(self.dtype in DTYPES, "dtype", self.dtype, f"must be one of {sorted(DTYPES)}")


class Task(BatchedTask):
    """A :class:`BatchedTask` with a floating ``dtype``, box spaces and a uniform sampler.

    Subclasses set their own constants first and then call ``super().__init__``, because the
    base class draws the first states (``sample_init``) in its constructor.
    """

    def __init__(self, num_envs: int, device: Any, seed: int, max_episode_steps: int,
                 obs_low: Sequence[float], obs_high: Sequence[float], act_dim: int,
                 dtype: str = "float32") -> None:
        self.dtype = DTYPES[dtype]
        np_dtype = np.float64 if dtype == "float64" else np.float32
        self.observation_space = gym.spaces.Box(np.asarray(obs_low, np_dtype),
                                                np.asarray(obs_high, np_dtype), dtype=np_dtype)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (act_dim,), np.float32)
        super().__init__(num_envs, device=device, seed=seed, max_episode_steps=max_episode_steps)

    def tensor(self, values: Any) -> torch.Tensor:
        """``values`` as a tensor of the task's dtype on its device."""
        return torch.as_tensor(np.asarray(values, np.float64), dtype=self.dtype, device=self.device)

    def host_state(self, env_id: int) -> np.ndarray:
        """State row ``env_id`` as a float64 numpy array (for :meth:`render`; syncs)."""
        return self.state[env_id].detach().to("cpu", torch.float64).numpy()


class Canvas:
    """An ``H x W x 3`` uint8 image drawn in world coordinates (y up).

    Each primitive tests every pixel centre at once with numpy, so drawing costs a few
    vectorised passes over the image: fine for videos, never on the step path.
    """

    def __init__(self, xlim: Tuple[float, float], ylim: Tuple[float, float],
                 width: int = 256, background: Color = (255, 255, 255)) -> None:
        self.scale = width / (xlim[1] - xlim[0])  # pixels per world unit
        height = max(1, int(round((ylim[1] - ylim[0]) * self.scale)))
        self.img = np.empty((height, width, 3), np.uint8)
        self.img[:] = background
        xs = xlim[0] + (np.arange(width) + 0.5) / self.scale  # pixel-centre x
        ys = ylim[1] - (np.arange(height) + 0.5) / self.scale  # pixel-centre y, row 0 at top
        self.x, self.y = np.meshgrid(xs, ys)

    def rect(self, x0: float, y0: float, x1: float, y1: float, color: Color) -> None:
        """Fill the axis-aligned rectangle ``[x0, x1] x [y0, y1]``."""
        mask = (self.x >= x0) & (self.x <= x1) & (self.y >= y0) & (self.y <= y1)
        self.img[mask] = color

    def disc(self, cx: float, cy: float, r: float, color: Color) -> None:
        """Fill a disc of radius ``r`` (at least one pixel) around ``(cx, cy)``."""
        r = max(r, 0.75 / self.scale)
        self.img[(self.x - cx) ** 2 + (self.y - cy) ** 2 <= r * r] = color

    def line(self, p0: Sequence[float], p1: Sequence[float], width: float, color: Color) -> None:
        """Draw the segment ``p0 -> p1`` with thickness ``width`` (world units)."""
        (ax, ay), (bx, by) = p0, p1
        dx, dy = bx - ax, by - ay
        # parameter of the closest point of the segment to each pixel centre
        t = ((self.x - ax) * dx + (self.y - ay) * dy) / max(dx * dx + dy * dy, 1e-12)
        t = np.clip(t, 0.0, 1.0)
        d2 = (self.x - ax - t * dx) ** 2 + (self.y - ay - t * dy) ** 2
        half = max(width / 2, 0.75 / self.scale)
        self.img[d2 <= half * half] = color

    def polyline(self, points: Sequence[Sequence[float]], width: float, color: Color) -> None:
        """Draw consecutive segments through ``points``."""
        for a, b in zip(points[:-1], points[1:]):
            self.line(a, b, width, color)
