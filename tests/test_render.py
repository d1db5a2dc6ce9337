"""Frames of the embedded tasks (``render()``, envs/tasks): the cartpole track line is drawn,
mountain_car draws its hill, flag and car where the state puts them, quickly."""
from __future__ import annotations

import types

import numpy as np
import torch

from envs import registry
from envs.tasks import mountain_car as mc

BLACK = (0, 0, 0)
WHITE = (255, 255, 255)


def _env(name: str, state):
    """One env of ``name`` whose state is set to ``state``."""
    env = registry.make(types.SimpleNamespace(name=name, num_envs=1, max_episode_steps=50, params={}))
    env.reset(seed=0)
    env.state[0] = torch.tensor(state, dtype=env.state.dtype)
    return env


def _is(frame: np.ndarray, color) -> np.ndarray:
    """``[H, W]`` mask of the pixels of exactly ``color``."""
    return np.all(frame == np.array(color, np.uint8), axis=-1)


def test_cartpole_track_line_is_drawn():
    """110 x 300 frame at 50 px/m; cart at x = 1 m (columns 187..212). The track is black on
    rows 79 and 80 (y = +-0.01 m) in every column away from the cart and the pole, with white
    rows 77 and 82 around it."""
    frame = _env("cartpole", [1.0, 0.0, 0.0, 0.0]).render(0)
    assert frame.shape == (110, 300, 3) and frame.dtype == np.uint8
    black = _is(frame, BLACK)
    away = np.r_[0:180, 220:300]  # columns clear of the cart (x +- 0.25 m) and the pole
    assert black[79, away].all() and black[80, away].all()
    assert _is(frame, WHITE)[[77, 82]][:, away].all()
    assert black[:, away].sum() == 2 * len(away)  # the track is the only black there
    # the cart (dark grey) covers the track either side of the pole and hinge at x = 1 m
    assert _is(frame, (40, 40, 40))[79:81, np.r_[189:194, 207:212]].all()


def _car_row_col(pos: float):
    """Pixel (row, column) of the car's centre: x in [-1.2, 0.6] over 300 columns, y in
    [-0.05, 1.15] over 200 rows (166.7 px per unit)."""
    scale = 300 / (mc.MAX_POSITION - mc.MIN_POSITION)
    col = (pos - mc.MIN_POSITION) * scale - 0.5
    row = (1.15 - (mc.hill_height(pos) + 0.04)) * scale - 0.5
    return row, col, scale


def test_mountain_car_frame_shows_hill_flag_and_car():
    """200 x 300 frame; the car's pixels (its blue disc, radius 0.04) are centred on the
    state's position within half a pixel and cover pi r^2 pixels within 10 %; the goal flag
    is yellow at x = 0.45..0.5; each column away from car and flag has its black track pixels
    on the curve y = 0.45 sin(3x) + 0.55."""
    for pos in (-0.9, -0.5, 0.3):
        frame = _env("mountain_car", [pos, 0.0]).render(0)
        assert frame.shape == (200, 300, 3) and frame.dtype == np.uint8
        car = _is(frame, mc.CAR_COLOR)
        rows, cols = np.nonzero(car)
        row, col, scale = _car_row_col(pos)
        assert abs(cols.mean() - col) < 0.5 and abs(rows.mean() - row) < 0.5, pos
        assert abs(car.sum() - np.pi * (0.04 * scale) ** 2) < 0.1 * np.pi * (0.04 * scale) ** 2
        flag_cols = np.nonzero(_is(frame, mc.FLAG_COLOR).any(0))[0]
        assert flag_cols.min() == round((0.45 - mc.MIN_POSITION) * scale)  # 275
        assert flag_cols.max() == round((0.5 - mc.MIN_POSITION) * scale) - 1  # 283
        black = _is(frame, BLACK)
        for j in (10, 60, 120, 200, 250):
            if abs(j - col) < 12:
                continue
            x = mc.MIN_POSITION + (j + 0.5) / scale
            curve_row = (1.15 - mc.hill_height(x)) * scale - 0.5
            on = np.nonzero(black[:, j])[0]
            assert 1 <= len(on) <= 4 and abs(on.mean() - curve_row) < 1.0, (pos, j, on)

