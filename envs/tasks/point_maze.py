"""``point_maze``: a sparse-reward 2-D maze where the goal hides behind walls.

A point agent moves in an arena of unit grid cells. The maze (``layout``) is an ASCII grid:
``#`` wall, ``.`` free, ``S`` start cell, ``G`` goal cell. Walls are axis-aligned rectangles
(runs of ``#`` merged, then grown by ``WALL_MARGIN`` so that touching rectangles overlap and
leave no seam to slip through). In every layout the straight line to the goal is walled off
and the corridor first leads away from it, and there is no distance shaping: an agent only
learns once it has found the goal by exploring.

Dynamics
    Velocity control, one move per step: ``d = step_size * a``. The move is resolved per
    axis, x first then y: along each axis the agent advances until it would enter a wall and
    stops on the wall's face (so it slides along walls). Every wall is tested at once (a
    ``[N, W]`` tensor of tests); the path taken (x leg, then y leg) never enters a wall's
    interior, and the straight chord between two consecutive positions can at most cut a
    convex wall corner by less than ``step_size`` (walls are a cell thick: nothing tunnels).
Action
    ``a`` in [-1, 1]^2 -> displacement ``step_size * a`` (cells per step).
Observation
    Position scaled to [-1, 1]^2 over the arena's bounding box.
Reward
    ``goal_reward`` (1) on the step that enters the goal disc (radius ``goal_radius`` around
    the centre of the ``G`` cell), minus ``action_cost * |a|^2`` (default 0) every step.
    No shaping.
Termination
    On reaching the goal disc.
Time limit
    250 steps by default.
Success / solved
    ``log["success"]`` is 1 if the episode ended at the goal. Solved at a success rate >=
    0.9, i.e. (with the default zero action cost) a mean return >= 0.9.
Initial state
    Uniform in the ``S`` cell's central 0.8 x 0.8 square.

Layouts (success of a random Gaussian policy, sigma = 1 in action space, over 4096 envs x 1
episode with the default step size 0.25 and time limit 250, seeds 0-4)
    ``u_maze`` (default, moderate): a 5 x 7 U, the goal 2 cells below the start and 10 cells
    away by corridor: 0.12 % (0.05-0.20 %). The shortest path takes about 32 steps.
    ``s_maze`` (hard): a 7 x 9 serpentine, the goal 4 cells above the start and 16 cells away
    by corridor, whose first leg leads sideways away from it (plus a dead end beside the
    goal): 0 of 20480. The shortest path takes about 60 steps.
    With this repository's trainer at default settings on a 2-core CPU, ``u_maze``: PPO
    (2048 envs) found no success in 5 M steps (its entropy shrinks first); CPO with 6
    policies (2400 envs) reached success 1.0 after about 2.4 M steps, and on ``s_maze``
    after about 7 M steps.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from envs.spec import TaskSpec
from envs.tasks.common import DTYPES, Canvas, Task, TaskParams, check_number, require

#: how far every wall rectangle is grown (cells) so that touching walls overlap
WALL_MARGIN = 1e-2

LAYOUTS: Dict[str, Tuple[str, ...]] = {
    "u_maze": (
        "#######",
        "#S....#",
        "#####.#",
        "#G....#",
        "#######",
    ),
    "s_maze": (
        "#########",
        "#G......#",
        "#.#######",
        "#.......#",
        "#######.#",
        "#S......#",
        "#########",
    ),
}


def parse_layout(rows: Sequence[str]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Walls, start cell and goal cell of an ASCII layout.

    Cell ``(r, c)`` covers ``x in [c, c+1]``, ``y in [H-1-r, H-r]`` (y points up). Returns
    ``walls [W, 4]`` rows ``(x0, y0, x1, y1)`` (horizontal runs of ``#``, merged with identical
    runs directly below, each grown by :data:`WALL_MARGIN`), and the lower-left corners of
    the ``S`` and ``G`` cells.
    """
    height = len(rows)
    open_runs: Dict[Tuple[int, int], List[float]] = {}  # (c0, c1) -> [x0, y0, x1, y1]
    walls: List[List[float]] = []
    start = goal = None
    for r, row in enumerate(rows):
        y0, y1 = height - 1 - r, height - r
        runs = []
        c = 0
        while c < len(row):
            if row[c] == "#":
                c1 = c
                while c1 < len(row) and row[c1] == "#":
                    c1 += 1
                runs.append((c, c1))
                c = c1
            else:
                if row[c] == "S":
                    start = (c, y0)
                elif row[c] == "G":
                    goal = (c, y0)
                c += 1
        still_open: Dict[Tuple[int, int], List[float]] = {}
        for run in runs:
            rect = open_runs.pop(run, None)
            if rect is None:
                rect = [run[0], y1, run[1], y1]
            rect[1] = y0  # extend the rectangle down by this row
            still_open[run] = rect
        walls.extend(open_runs.values())  # runs that did not continue in this row
        open_runs = still_open
    walls.extend(open_runs.values())
    if start is None or goal is None:
        raise ValueError("a layout needs one 'S' and one 'G' cell")
    w = np.asarray(walls, np.float64) + np.array([-1, -1, 1, 1]) * WALL_MARGIN
    return w, np.asarray(start, np.float64), np.asarray(goal, np.float64)


def slide(u: torch.Tensor, v: torch.Tensor, du: torch.Tensor, lo_u: torch.Tensor,
          hi_u: torch.Tensor, lo_v: torch.Tensor, hi_v: torch.Tensor) -> torch.Tensor:
    """New coordinate after moving ``u -> u + du`` along one axis at fixed ``v``.

    ``u, v, du`` are ``[N]``; the walls' extents ``lo_u, hi_u`` along the move and ``lo_v, hi_v``
    across it are ``[W]``. A wall blocks when the line ``v`` passes through its open interior and
    the move would cross its near face; the agent then stops exactly on that face. Only
    comparisons and min/max touch the faces, so no rounding can put the agent inside a wall.
    """
    u1 = u + du
    u_, u1_ = u.unsqueeze(1), u1.unsqueeze(1)
    across = (v.unsqueeze(1) > lo_v) & (v.unsqueeze(1) < hi_v)  # [N, W] wall spans this line
    enter_lo = across & (u_ <= lo_u) & (u1_ > lo_u)  # moving up through the low face
    enter_hi = across & (u_ >= hi_u) & (u1_ < hi_u)  # moving down through the high face
    stop_up = torch.where(enter_lo, lo_u, float("inf")).amin(1)  # nearest low face ahead
    stop_down = torch.where(enter_hi, hi_u, float("-inf")).amax(1)  # nearest high face ahead
    return torch.minimum(torch.maximum(u1, stop_down), stop_up)


@dataclasses.dataclass
class PointMazeParams(TaskParams):
    """Parameters of ``point_maze``."""

    layout: str = "u_maze"
    """Maze: u_maze (default, moderate) or s_maze (hard)."""
    step_size: float = 0.25
    """Largest move per step and axis, in cells (in (0, 0.5])."""
    goal_radius: float = 0.5
    """Radius of the goal disc around the centre of the G cell, in cells (in (0, 0.5])."""
    goal_reward: float = 1.0
    """Reward on reaching the goal (> 0)."""
    action_cost: float = 0.0
    """Per-step cost ``action_cost * |a|^2`` (>= 0; keep it tiny or 0: any cost makes standing
    still locally optimal until the goal has been found)."""

    def validate(self) -> None:
        """Check every parameter's range."""
        super().validate()
        require(self.layout in LAYOUTS, "layout", self.layout,
                f"must be one of {sorted(LAYOUTS)}")
        check_number("step_size", self.step_size, low=0.0, high=0.5, open_low=True)
        check_number("goal_radius", self.goal_radius, low=0.0, high=0.5, open_low=True)
        check_number("goal_reward", self.goal_reward, low=0.0, open_low=True)
        check_number("action_cost", self.action_cost, low=0.0)


class PointMaze(Task):
    """Batched point-mass maze; see the module docstring."""

    def __init__(self, num_envs: int, device: Any = "cpu", seed: int = 0,
                 max_episode_steps: int = 250, dtype: str = "float32", layout: str = "u_maze",
                 step_size: float = 0.25, goal_radius: float = 0.5, goal_reward: float = 1.0,
                 action_cost: float = 0.0) -> None:
        self.layout = LAYOUTS[layout]
        self.step_size, self.goal_radius = float(step_size), float(goal_radius)
        self.goal_reward, self.action_cost = float(goal_reward), float(action_cost)
        walls, start, goal = parse_layout(self.layout)
        self.size = np.array([len(self.layout[0]), len(self.layout)], np.float64)  # (W, H) cells
        dev = torch.device(device)
        as_t = lambda x: torch.as_tensor(x, dtype=DTYPES[dtype], device=dev)  # noqa: E731
        self.walls_np = walls
        self.wx0, self.wy0, self.wx1, self.wy1 = as_t(walls.T).unbind(0)  # each [W]
        self.start_lo = as_t(start + 0.1)  # central 0.8 x 0.8 of the S cell
        self.goal = as_t(goal + 0.5)  # centre of the G cell
        self.half = as_t(self.size / 2)
        super().__init__(num_envs, device, seed, max_episode_steps, [-1.0, -1.0], [1.0, 1.0],
                         act_dim=2, dtype=dtype)

    def sample_init(self, n: int) -> torch.Tensor:
        """``[n, 2]`` positions uniform in the start cell's central 0.8 x 0.8 square."""
        return self.start_lo + self.rand(n, 2, 0.0, 0.8)

    def dynamics(self, state: torch.Tensor, action: torch.Tensor
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        """Move x then y with wall sliding; reward and terminate inside the goal disc."""
        a = action.to(state.dtype)
        d = self.step_size * a  # displacement [N, 2]
        x, y = state.unbind(-1)
        x = slide(x, y, d[:, 0], self.wx0, self.wx1, self.wy0, self.wy1)  # x leg at the old y
        y = slide(y, x, d[:, 1], self.wy0, self.wy1, self.wx0, self.wx1)  # y leg at the new x
        pos = torch.stack((x, y), -1)
        terminated = (pos - self.goal).square().sum(-1) <= self.goal_radius ** 2
        reward = self.goal_reward * terminated.to(state.dtype)
        if self.action_cost > 0:
            reward = reward - self.action_cost * a.square().sum(-1)
        return pos, reward, terminated, {"success": terminated.float()}

    def observe(self, state: torch.Tensor) -> torch.Tensor:
        """Position scaled to [-1, 1] over the arena."""
        return state / self.half - 1.0

    def render(self, env_id: int = 0) -> Optional[np.ndarray]:
        """Walls (grey), goal disc (green) and agent (red) of env ``env_id``, uint8 RGB."""
        x, y = self.host_state(env_id)
        w, h = self.size
        c = Canvas((0.0, float(w)), (0.0, float(h)), width=int(32 * w))
        for x0, y0, x1, y1 in self.walls_np:
            c.rect(x0, y0, x1, y1, (90, 90, 90))
        gx, gy = self.goal.detach().cpu().double().numpy()
        c.disc(gx, gy, self.goal_radius, (60, 180, 75))
        c.disc(x, y, 0.15, (220, 40, 40))
        return c.img


#: the registry entry (envs/registry.py registers "point_maze" as "envs.tasks.point_maze:SPEC")
SPEC = TaskSpec(
    factory=PointMaze, params=PointMazeParams, max_episode_steps=250, solved_return=0.9,
    success_threshold=0.9,
    description="sparse-reward point-mass maze, goal behind walls (layout u_maze | s_maze)")
