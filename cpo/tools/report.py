"""Summarise a Hydra multirun (sweep) of training jobs: plots, ``summary.json`` and a table.

Usage::

    python train.py -m algo=cpo algo.lambda_f=0.05,0.1,0.2,0.5 algo.beta=1e-4,1e-3 seed=0,1,2
    python -m cpo.tools.report <multirun dir> [--out DIR] [--metric rollout/ep_return] [--last-frac 0.1]

Every directory below ``<multirun dir>`` holding a TensorBoard event file and a
``resolved_config.yaml`` is one job. Jobs are grouped into *configurations* by the swept
keys: the override keys (``.hydra/overrides.yaml``) whose values differ across jobs, ``seed``
excluded; without overrides (or when they show no difference) the resolved configs are
compared instead. Seeds of one configuration are aggregated as mean and population standard
deviation (``ddof=0``). Written into ``--out`` (default ``<multirun dir>/report/``):

* ``learning_curves.png``: ``--metric`` (the leader's episode return) vs env steps, mean +- std
  over seeds, each seed linearly interpolated onto the union of the seeds' steps;
* ``success_curves.png``: the same for ``rollout/success`` (only if logged);
* ``final_return_heatmap.png``: with exactly two swept keys, a grid (rows: first key, columns:
  second key) of the final return, mean +- std over seeds annotated in each cell; otherwise
  ``final_return_bars.png``, a bar chart per configuration;
* ``ess_curves.png``: ``diversity/ess/overall`` vs env steps (skipped when absent, e.g. PPO);
* ``summary.json`` and ``table.md`` (also printed to stdout);
* for PBT runs (``algo=pbt``): ``pbt_runs`` in ``summary.json``, a per-member table in
  ``table.md`` (best and final score, times it copied another member, evolved
  hyperparameters at the start and the end) and ``pbt_members_<k>.png`` (each member's score
  and evolved hyperparameters vs env steps, one figure per PBT run).

The *final* value of a run is the mean of its last ``ceil(last_frac * n)`` logged points
(at least one).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from cpo.utils.config import flatten

DEFAULT_METRIC = "rollout/ep_return"
SUCCESS_TAG = "rollout/success"
ESS_TAG = "diversity/ess/overall"
#: keys never treated as swept (they differ per job without defining a configuration)
IGNORED_KEYS = ("seed", "run_dir", "resume")
#: largest step grid used for mean/std curves; longer unions are resampled evenly
MAX_GRID = 2000

Series = Tuple[np.ndarray, np.ndarray]


@dataclass
class Job:
    """One training run: its directory, configuration, overrides and scalar series."""

    path: str
    config: Dict[str, Any]
    flat_config: Dict[str, Any]
    overrides: Optional[List[str]]
    scalars: Dict[str, Series] = field(default_factory=dict)

    @property
    def seed(self) -> Any:
        """The run's seed (from the resolved config)."""
        return self.flat_config.get("seed")

    @property
    def env_steps(self) -> int:
        """The largest step (global env steps) of any scalar of the run, 0 if none."""
        last = [int(s[-1]) for s, _ in self.scalars.values() if len(s)]
        return max(last) if last else 0


@dataclass
class Configuration:
    """Jobs sharing the same values of the swept keys (the seeds of one setting)."""

    values: Tuple[Any, ...]
    label: str
    jobs: List[Job]


# ---------------------------------------------------------------------------- discovery / IO
def find_jobs(root: str) -> List[str]:
    """Job directories under ``root`` (itself included): those holding a ``*tfevents*`` file and
    a ``resolved_config.yaml``, in natural order (``2`` before ``10``)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("checkpoints", ".hydra")]
        if "resolved_config.yaml" in filenames and any("tfevents" in f for f in filenames):
            found.append(dirpath)
    return sorted(found, key=_natural_key)


def _natural_key(path: str) -> List[Any]:
    parts: List[Any] = []
    for comp in os.path.normpath(path).split(os.sep):
        parts.append((0, int(comp), "") if comp.isdigit() else (1, 0, comp))
    return parts


def read_scalars(run_dir: str) -> Dict[str, Series]:
    """All scalar series of the event files in ``run_dir``: ``tag -> (steps, values)`` sorted by
    step; a repeated step keeps its last value and non-finite values are dropped."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0, "images": 1, "histograms": 1,
                                                   "tensors": 1, "audio": 1,
                                                   "compressedHistograms": 1})
    acc.Reload()
    out: Dict[str, Series] = {}
    for tag in acc.Tags().get("scalars", []):
        by_step: Dict[int, float] = {}
        for ev in acc.Scalars(tag):
            by_step[int(ev.step)] = float(ev.value)
        steps = np.array(sorted(by_step), dtype=np.int64)
        vals = np.array([by_step[s] for s in steps.tolist()], dtype=np.float64)
        keep = np.isfinite(vals)
        out[tag] = (steps[keep], vals[keep])
    return out


def load_job(run_dir: str) -> Job:
    """Read one job directory: resolved config, Hydra overrides (None without ``.hydra``) and
    every scalar series."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(os.path.join(run_dir, "resolved_config.yaml")),
                                 resolve=True)
    if not isinstance(cfg, dict):
        cfg = {}
    overrides = None
    ov_path = os.path.join(run_dir, ".hydra", "overrides.yaml")
    if os.path.isfile(ov_path):
        ov = OmegaConf.to_container(OmegaConf.load(ov_path))
        overrides = [str(x) for x in ov] if isinstance(ov, list) else []
    return Job(path=run_dir, config=cfg, flat_config=flatten(cfg), overrides=overrides,
               scalars=read_scalars(run_dir))


# ---------------------------------------------------------------------------- grouping
def parse_override(text: str) -> Tuple[str, str]:
    """``"+algo.beta=1e-3"`` -> ``("algo.beta", "1e-3")`` (``+``/``++``/``~`` prefixes dropped)."""
    key, _, value = text.partition("=")
    return key.lstrip("+~").strip(), value.strip()


def _coerce(text: str) -> Any:
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def _hashable(v: Any) -> Any:
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v, sort_keys=True)
    return v


def job_value(job: Job, key: str) -> Any:
    """The value of ``key`` in a job: the resolved config's (typed) value when the key is a
    config leaf, else the job's override (a config group like ``algo=cpo``), else ``None``."""
    if key in job.flat_config:
        return _hashable(job.flat_config[key])
    for ov in job.overrides or []:
        k, v = parse_override(ov)
        if k == key:
            return _coerce(v)
    group = job.config.get(key)
    if isinstance(group, dict) and "name" in group:
        return group["name"]
    return None


def _ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key == "hydra" or key.startswith("hydra.")


def swept_keys(jobs: Sequence[Job]) -> List[str]:
    """Keys whose values differ across ``jobs`` (``seed`` excluded): taken from the Hydra
    overrides in command-line order; when no job has overrides or they show no difference,
    from the flattened resolved configs in config order."""
    candidates: List[str] = []
    for job in jobs:
        for ov in job.overrides or []:
            k, _ = parse_override(ov)
            if k and not _ignored(k) and k not in candidates:
                candidates.append(k)
    keys = [k for k in candidates if len({job_value(j, k) for j in jobs}) > 1]
    if keys:
        return keys
    candidates = []
    for job in jobs:
        for k in job.flat_config:
            if not _ignored(k) and k not in candidates:
                candidates.append(k)
    return [k for k in candidates if len({job_value(j, k) for j in jobs}) > 1]


def short_names(keys: Sequence[str]) -> Dict[str, str]:
    """Display names: the last dotted component (``algo.lambda_f`` -> ``lambda_f``) unless two
    keys would share it, in which case the full key."""
    last = [k.split(".")[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def format_value(v: Any) -> str:
    """Compact text of a swept value (``0.001``, ``0.0001``, ``cpo``)."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _sort_key(v: Any) -> Tuple[int, Any]:
    if v is None:
        return (2, "")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, float(v))
    return (1, str(v))


def group_jobs(jobs: Sequence[Job], keys: Sequence[str]) -> List[Configuration]:
    """Group ``jobs`` by their values of ``keys``; configurations sorted by those values, jobs
    within one by seed. Labels read like ``lambda_f=0.1, beta=0.001`` (``all`` if no key)."""
    names = short_names(keys)
    groups: Dict[Tuple[Any, ...], List[Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(job_value(job, k) for k in keys), []).append(job)
    out = []
    for values in sorted(groups, key=lambda vs: [_sort_key(v) for v in vs]):
        label = ", ".join(f"{names[k]}={format_value(v)}" for k, v in zip(keys, values)) or "all"
        members = sorted(groups[values], key=lambda j: (_sort_key(j.seed), _natural_key(j.path)))
        out.append(Configuration(values=values, label=label, jobs=members))
    return out


# ---------------------------------------------------------------------------- statistics
def final_value(steps: np.ndarray, values: np.ndarray, last_frac: float) -> float:
    """Mean of the last ``ceil(last_frac * n)`` points (at least one); NaN for an empty series."""
    n = len(values)
    if n == 0:
        return float("nan")
    k = min(n, max(1, int(math.ceil(last_frac * n - 1e-9))))
    return float(np.mean(values[-k:]))


def mean_std(xs: Sequence[float]) -> Tuple[float, float]:
    """Mean and population std (ddof=0) of the finite entries; NaNs when there are none."""
    a = np.asarray([x for x in xs if x is not None and math.isfinite(x)], dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std())


def aggregate_curves(series: Sequence[Series]) -> Tuple[np.ndarray, np.ndarray, np.ndarray,
                                                          np.ndarray]:
    """Seeds onto a common step grid: ``(grid, mean, std, count)``. The grid is the union of
    the seeds' steps (resampled evenly to :data:`MAX_GRID` points when longer); each seed is
    linearly interpolated inside its own step range and missing outside it."""
    series = [(np.asarray(s), np.asarray(v, dtype=np.float64)) for s, v in series if len(s)]
    if not series:
        e = np.zeros(0)
        return e, e, e, e
    grid = np.unique(np.concatenate([s for s, _ in series])).astype(np.float64)
    if grid.size > MAX_GRID:
        grid = np.linspace(grid[0], grid[-1], MAX_GRID)
    ys = np.full((len(series), grid.size), np.nan)
    for i, (s, v) in enumerate(series):
        inside = (grid >= s[0]) & (grid <= s[-1])
        ys[i, inside] = np.interp(grid[inside], s.astype(np.float64), v)
    count = np.sum(np.isfinite(ys), axis=0)
    with np.errstate(invalid="ignore"):
        mean = np.nansum(ys, axis=0) / np.maximum(count, 1)
        dev = np.where(np.isfinite(ys), ys - mean, 0.0)
        std = np.sqrt(np.sum(dev ** 2, axis=0) / np.maximum(count, 1))
    mean[count == 0] = np.nan
    std[count == 0] = np.nan
    return grid, mean, std, count


def _has(cfgs: Sequence[Configuration], tag: str) -> bool:
    return any(tag in j.scalars and len(j.scalars[tag][0]) for c in cfgs for j in c.jobs)


def _finals(conf: Configuration, tag: str, last_frac: float) -> List[Optional[float]]:
    out: List[Optional[float]] = []
    for j in conf.jobs:
        if tag in j.scalars and len(j.scalars[tag][0]):
            out.append(final_value(j.scalars[tag][0], j.scalars[tag][1], last_frac))
        else:
            out.append(None)
    return out


def _clean(x: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python numbers, recursively (valid JSON)."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def summarize(cfgs: Sequence[Configuration], keys: Sequence[str], metric: str = DEFAULT_METRIC,
              last_frac: float = 0.1) -> Dict[str, Any]:
    """The ``summary.json`` content: per configuration its swept values, seeds, run dirs, the
    final ``metric`` (``final_return_*``), success and ESS (when logged) and env steps."""
    has_succ, has_ess = _has(cfgs, SUCCESS_TAG), _has(cfgs, ESS_TAG)
    rows = []
    for c in cfgs:
        finals = _finals(c, metric, last_frac)
        m, s = mean_std([f for f in finals if f is not None])
        row: Dict[str, Any] = {
            "label": c.label,
            "swept": {k: v for k, v in zip(keys, c.values)},
            "seeds": [j.seed for j in c.jobs],
            "num_runs": len(c.jobs),
            "run_dirs": [j.path for j in c.jobs],
            "final_return_mean": m,
            "final_return_std": s,
            "final_return_per_run": finals,
            "runs_missing_metric": sum(f is None for f in finals),
        }
        if has_succ:
            sm, ss = mean_std([f for f in _finals(c, SUCCESS_TAG, last_frac) if f is not None])
            row["final_success_mean"], row["final_success_std"] = sm, ss
        if has_ess:
            em, es = mean_std([f for f in _finals(c, ESS_TAG, last_frac) if f is not None])
            row["final_ess_mean"], row["final_ess_std"] = em, es
        steps = [j.env_steps for j in c.jobs]
        row["env_steps"] = max(steps) if steps else 0
        row["env_steps_per_run"] = steps
        rows.append(row)
    return _clean({
        "metric": metric,
        "last_frac": last_frac,
        "std": "population standard deviation (ddof=0) over the seeds of a configuration",
        "swept_keys": list(keys),
        "configurations": rows,
    })


# ---------------------------------------------------------------------------- PBT runs
PBT_PREFIX = "pbt/member_"


def pbt_series(job: Job) -> Dict[int, Dict[str, Series]]:
    """``{member id: {name: (steps, values)}}`` from a PBT run's ``pbt/member_<g>/<name>`` tags
    (empty for other runs)."""
    out: Dict[int, Dict[str, Series]] = {}
    for tag, series in job.scalars.items():
        if tag.startswith(PBT_PREFIX):
            member, _, name = tag[len(PBT_PREFIX):].partition("/")
            if member.isdigit() and name:
                out.setdefault(int(member), {})[name] = series
    return out


def pbt_summary(job: Job) -> Optional[Dict[str, Any]]:
    """One PBT run's members: best and final score (windowed mean return), best episode
    return, how many rounds it copied another member, and each evolved hyperparameter at the
    first and last logged step; None when the run logged no member."""
    members = pbt_series(job)
    if not members:
        return None
    keys = [str(k) for k in (job.flat_config.get("pbt.mutate") or [])]
    rows = []
    for g in sorted(members):
        s = members[g]
        row: Dict[str, Any] = {"member": g}
        for name, field_ in (("score", "score"), ("ep_return", "ep_return")):
            if name in s and len(s[name][1]):
                row[f"best_{field_}"] = float(np.max(s[name][1]))
                row[f"final_{field_}"] = float(s[name][1][-1])
        row["times_copied"] = int(np.sum(s["copied_from"][1] >= 0)) if "copied_from" in s else 0
        row["hp_start"] = {k: float(s[k][1][0]) for k in keys if k in s and len(s[k][1])}
        row["hp_final"] = {k: float(s[k][1][-1]) for k in keys if k in s and len(s[k][1])}
        rows.append(row)
    best = max((r for r in rows if "final_score" in r), key=lambda r: r["final_score"], default=None)
    return {"run_dir": job.path, "seed": job.seed, "mutate": keys, "members": rows,
            "best_member": best["member"] if best else None,
            "best_score_curve_first_last": _first_last(job.scalars.get("pbt/best_score"))}


def _first_last(series: Optional[Series]) -> Optional[List[float]]:
    if series is None or not len(series[1]):
        return None
    return [float(series[1][0]), float(series[1][-1])]


def pbt_table(run: Dict[str, Any]) -> str:
    """Markdown table of one PBT run's members (:func:`pbt_summary`)."""
    keys = run["mutate"]
    head = ["member", "best score", "final score", "copied"] + [f"{k} start → final" for k in keys]
    curve = run["best_score_curve_first_last"]
    lines = [f"PBT members of {run['run_dir']} (seed {run['seed']}; best member "
             f"{run['best_member']}" + (f"; population best score {curve[0]:.4g} → {curve[1]:.4g}"
                                        if curve else "") + "):", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in run["members"]:
        cells = [str(r["member"]), _pm(r.get("best_score"), None), _pm(r.get("final_score"), None),
                 str(r["times_copied"])]
        for k in keys:
            a, b = r["hp_start"].get(k), r["hp_final"].get(k)
            cells.append("n/a" if a is None else f"{a:.3g} → {b:.3g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_pbt_members(job: Job, path: str) -> bool:
    """Each member's score and evolved hyperparameters vs env steps (one panel per quantity,
    one line per member, log scale for hyperparameters); False when the run has no members."""
    members = pbt_series(job)
    if not members:
        return False
    keys = ["score"] + [str(k) for k in (job.flat_config.get("pbt.mutate") or [])]
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.0 * len(keys), 3.6), dpi=100, squeeze=False)
    colors = plt.get_cmap("tab10" if len(members) <= 10 else "tab20")
    for ax, key in zip(axes[0], keys):
        for i, g in enumerate(sorted(members)):
            if key in members[g]:
                steps, vals = members[g][key]
                ax.plot(steps, vals, color=colors(i % colors.N), lw=1.2,
                        drawstyle="default" if key == "score" else "steps-post", label=f"member {g}")
        if key != "score":
            ax.set_yscale("log")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6, loc="best")
    fig.suptitle(f"PBT members: {job.path}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------- tables
def _pm(m: Optional[float], s: Optional[float], digits: int = 4) -> str:
    if m is None:
        return "n/a"
    if s is None:
        return f"{m:.{digits}g}"
    return f"{m:.{digits}g} ± {s:.{digits}g}"


def grid_table(summary: Dict[str, Any]) -> Optional[str]:
    """Markdown grid of the final return (mean ± std) for exactly two swept keys: rows are the
    first key's values, columns the second's; ``None`` otherwise."""
    keys = summary["swept_keys"]
    if len(keys) != 2:
        return None
    names = short_names(keys)
    rows_v, cols_v, cells = _grid_values(summary)
    lines = ["| " + f"{names[keys[0]]} \\ {names[keys[1]]}" + " | "
             + " | ".join(format_value(v) for v in cols_v) + " |",
             "|" + "---|" * (len(cols_v) + 1)]
    for r in rows_v:
        vals = []
        for c in cols_v:
            row = cells.get((_hashable(r), _hashable(c)))
            vals.append(_pm(row["final_return_mean"], row["final_return_std"]) if row else "")
        lines.append(f"| {format_value(r)} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def _grid_values(summary: Dict[str, Any]) -> Tuple[List[Any], List[Any], Dict[Tuple[Any, Any],
                                                                              Dict[str, Any]]]:
    k0, k1 = summary["swept_keys"]
    rows_v: List[Any] = []
    cols_v: List[Any] = []
    cells: Dict[Tuple[Any, Any], Dict[str, Any]] = {}
    for row in summary["configurations"]:
        r, c = row["swept"][k0], row["swept"][k1]
        if r not in rows_v:
            rows_v.append(r)
        if c not in cols_v:
            cols_v.append(c)
        cells[(_hashable(r), _hashable(c))] = row
    rows_v.sort(key=_sort_key)
    cols_v.sort(key=_sort_key)
    return rows_v, cols_v, cells


def markdown_table(summary: Dict[str, Any]) -> str:
    """The ``table.md`` text: one row per configuration (swept values, seeds, final return,
    success and ESS when logged, env steps) and, for two swept keys, the grid of the final
    return."""
    keys = summary["swept_keys"]
    names = short_names(keys)
    rows = summary["configurations"]
    has_succ = any("final_success_mean" in r for r in rows)
    has_ess = any("final_ess_mean" in r for r in rows)
    frac = summary["last_frac"]
    head = ["configuration"] + [names[k] for k in keys] + ["seeds", f"final {summary['metric']}"]
    if has_succ:
        head.append("final success")
    if has_ess:
        head.append("final ESS")
    head.append("env steps")
    lines = [f"Final values: mean over the last {frac:g} of each run's points, then mean ± std "
             "over seeds.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["label"]] + [format_value(r["swept"][k]) for k in keys]
        cells.append(", ".join(str(s) for s in r["seeds"]))
        cells.append(_pm(r["final_return_mean"], r["final_return_std"]))
        if has_succ:
            cells.append(_pm(r.get("final_success_mean"), r.get("final_success_std"), 3))
        if has_ess:
            m = r.get("final_ess_mean")
            cells.append("n/a" if m is None else f"{m:.3g}")
        cells.append(str(r["env_steps"]))
        lines.append("| " + " | ".join(cells) + " |")
    grid = grid_table(summary)
    if grid is not None:
        lines += ["", f"Final {summary['metric']} (mean ± std over seeds):", "", grid]
    for run in summary.get("pbt_runs", []):
        lines += ["", pbt_table(run)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- plots
#: per-configuration line styles and markers of the curve plots (cycled with the colours)
LINE_STYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
MARKERS = ("o", "s", "^", "D", "v", "x", "P", "*")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(cfgs: Sequence[Configuration], tag: str, path: str, ylabel: str,
                title: str) -> bool:
    """Mean ± std over seeds of ``tag`` vs env steps, one line per configuration, saved as a
    PNG at ``path``; returns False (and writes nothing) when no job logged ``tag``."""
    if not _has(cfgs, tag):
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=100)
    colors = plt.get_cmap("tab10" if len(cfgs) <= 10 else "tab20")
    for i, c in enumerate(cfgs):
        series = [j.scalars[tag] for j in c.jobs if tag in j.scalars]
        grid, mean, std, count = aggregate_curves(series)
        if grid.size == 0:
            continue
        col = colors(i % colors.N)
        # line style and marker vary with the colour, so curves that coincide stay visible
        style = LINE_STYLES[i % len(LINE_STYLES)]
        ax.plot(grid, mean, color=col, lw=2.0 if i == 0 else 1.5, linestyle=style,
                marker=MARKERS[i % len(MARKERS)], markevery=max(1, grid.size // 8), markersize=5,
                label=f"{c.label} (n={len(series)})")
        ax.fill_between(grid, mean - std, mean + std, color=col, alpha=0.15, lw=0)
    ax.set_xlabel("env steps")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    # outside the axes, so that it never hides a curve
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_final_heatmap(summary: Dict[str, Any], path: str) -> None:
    """Heatmap of the final return over the two swept keys (rows: first key, columns: second),
    each cell annotated with mean ± std over seeds; empty cells stay blank."""
    plt = _plt()
    keys = summary["swept_keys"]
    names = short_names(keys)
    rows_v, cols_v, cells = _grid_values(summary)
    data = np.full((len(rows_v), len(cols_v)), np.nan)
    for i, r in enumerate(rows_v):
        for j, c in enumerate(cols_v):
            row = cells.get((_hashable(r), _hashable(c)))
            if row and row["final_return_mean"] is not None:
                data[i, j] = row["final_return_mean"]
    fig, ax = plt.subplots(figsize=(2.0 + 1.6 * len(cols_v), 1.6 + 0.8 * len(rows_v)), dpi=100)
    im = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols_v)))
    ax.set_xticklabels([format_value(v) for v in cols_v])
    ax.set_yticks(range(len(rows_v)))
    ax.set_yticklabels([format_value(v) for v in rows_v])
    ax.set_xlabel(names[keys[1]])
    ax.set_ylabel(names[keys[0]])
    ax.set_title(f"final {summary['metric']} (mean ± std over seeds)", fontsize=9)
    finite = data[np.isfinite(data)]
    mid = float(np.mean([finite.min(), finite.max()])) if finite.size else 0.0
    for i, r in enumerate(rows_v):
        for j, c in enumerate(cols_v):
            row = cells.get((_hashable(r), _hashable(c)))
            if row is None:
                continue
            txt = _pm(row["final_return_mean"], row["final_return_std"])
            dark = np.isfinite(data[i, j]) and data[i, j] < mid
            ax.text(j, i, txt, ha="center", va="center", fontsize=8,
                    color="w" if dark else "k")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_final_bars(summary: Dict[str, Any], path: str) -> None:
    """Bar chart of the final return per configuration with ± std error bars."""
    plt = _plt()
    rows = summary["configurations"]
    means = [np.nan if r["final_return_mean"] is None else r["final_return_mean"] for r in rows]
    stds = [0.0 if r["final_return_std"] is None else r["final_return_std"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 + 0.9 * len(rows)), 4.5), dpi=100)
    x = np.arange(len(rows))
    ax.bar(x, means, yerr=stds, capsize=4, color="tab:blue", alpha=0.8, edgecolor="black", linewidth=0.8)
    ax.axhline(0.0, color="black", linewidth=0.8)
    for xi, m in zip(x, means):  # the value over every bar: a bar of 0 (or missing) stays visible
        if np.isfinite(m):
            ax.annotate(f"{m:.3g}", (xi, m), textcoords="offset points", xytext=(0, 3 if m >= 0 else -10),
                        ha="center", fontsize=7)
            if m == 0:
                ax.plot([xi - 0.4, xi + 0.4], [0, 0], color="tab:red", linewidth=2.5)
        else:
            ax.annotate("n/a", (xi, 0), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels([r["label"] for r in rows], rotation=30 if len(rows) > 3 else 0,
                       ha="right" if len(rows) > 3 else "center", fontsize=8)
    keys = summary["swept_keys"]
    ax.set_xlabel(", ".join(short_names(keys).values()) if keys else "configuration")
    ax.set_ylabel(f"final {summary['metric']}")
    ax.set_title("final value (mean ± std over seeds)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------- driver
def make_report(root: str, out: Optional[str] = None, metric: str = DEFAULT_METRIC,
                last_frac: float = 0.1) -> Dict[str, Any]:
    """Build the full report of the multirun at ``root`` into ``out`` (default
    ``<root>/report``). Returns the summary dict, with ``files`` (written paths) and ``table``
    (the markdown text) added."""
    if not 0.0 < last_frac <= 1.0:
        raise ValueError(f"last_frac={last_frac}: must be in (0, 1]")
    out = out or os.path.join(root, "report")
    paths = [p for p in find_jobs(root)
             if os.path.abspath(p) != os.path.abspath(out)]
    if not paths:
        raise FileNotFoundError(f"no job directory (tfevents file + resolved_config.yaml) "
                                f"under {root}")
    jobs = [load_job(p) for p in paths]
    keys = swept_keys(jobs)
    cfgs = group_jobs(jobs, keys)
    os.makedirs(out, exist_ok=True)
    summary = summarize(cfgs, keys, metric, last_frac)
    summary["multirun_dir"] = os.path.abspath(root)
    files: List[str] = []

    def target(name: str) -> str:
        """The output path of ``name``, recorded in ``files``."""
        p = os.path.join(out, name)
        files.append(p)
        return p

    algo = ", ".join(sorted({str(j.flat_config.get("algo.name", "?")) for j in jobs}))
    env = ", ".join(sorted({str(j.flat_config.get("env.name", "?")) for j in jobs}))
    if plot_curves(cfgs, metric, os.path.join(out, "learning_curves.png"), metric,
                   f"{algo} on {env}: {metric} (mean ± std over seeds)"):
        files.append(os.path.join(out, "learning_curves.png"))
    if plot_curves(cfgs, SUCCESS_TAG, os.path.join(out, "success_curves.png"), "success rate",
                   f"{algo} on {env}: leader success (mean ± std over seeds)"):
        files.append(os.path.join(out, "success_curves.png"))
    if len(keys) == 2:
        plot_final_heatmap(summary, target("final_return_heatmap.png"))
    else:
        plot_final_bars(summary, target("final_return_bars.png"))
    if plot_curves(cfgs, ESS_TAG, os.path.join(out, "ess_curves.png"), "ESS (overall)",
                   f"{algo} on {env}: {ESS_TAG} (mean ± std over seeds)"):
        files.append(os.path.join(out, "ess_curves.png"))
    pbt_runs = []
    for job in jobs:  # PBT runs: per-member table and figure
        run = pbt_summary(job)
        if run is not None:
            if plot_pbt_members(job, os.path.join(out, f"pbt_members_{len(pbt_runs)}.png")):
                files.append(os.path.join(out, f"pbt_members_{len(pbt_runs)}.png"))
            pbt_runs.append(run)
    if pbt_runs:
        summary["pbt_runs"] = _clean(pbt_runs)
    warnings = []
    for row in summary["configurations"]:
        if row["runs_missing_metric"]:
            missing = [d for d, v in zip(row["run_dirs"], row["final_return_per_run"]) if v is None]
            warnings.append(f"{row['label']}: no {metric} logged in {', '.join(missing)}")
    if not _has(cfgs, metric):
        warnings.append(f"no job logged {metric}: learning_curves.png skipped")
    summary["warnings"] = warnings
    table = markdown_table(summary)
    with open(target("summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(target("table.md"), "w") as f:
        f.write(table)
    result = dict(summary)
    result["files"] = files
    result["table"] = table
    return result


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point (see the module docstring); returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m cpo.tools.report", description=__doc__.split("\n")[0])
    p.add_argument("multirun_dir", help="Hydra multirun (sweep) directory")
    p.add_argument("--out", default=None, help="output folder (default <multirun dir>/report)")
    p.add_argument("--metric", default=DEFAULT_METRIC, help="scalar tag of the headline metric")
    p.add_argument("--last-frac", type=float, default=0.1,
                   help="fraction of each run's last points averaged as its final value")
    args = p.parse_args(argv)
    try:
        res = make_report(args.multirun_dir, args.out, args.metric, args.last_frac)
    except (FileNotFoundError, ValueError) as err:
        print(f"report error: {err}", file=sys.stderr)
        return 2
    print(res["table"], end="")
    for w in res["warnings"]:
        print(f"[report] warning: {w}", file=sys.stderr)
    print(f"\n[report] {len(res['files'])} files in {os.path.dirname(res['files'][0])}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
