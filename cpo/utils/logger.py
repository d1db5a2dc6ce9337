"""TensorBoard logging against global env steps, the KL heatmap image and hparams."""
from __future__ import annotations

import os
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np


class RunLog:
    """The run's text log, ``<run_dir>/train.log``: one line per iteration and the closing
    summary (appended, so a resumed run continues the same file; Hydra's own ``train.log``
    handler writes to the same file). :meth:`say` also prints the line; a disabled log (torchrun
    ranks > 0) does neither."""

    def __init__(self, run_dir: str, enabled: bool = True, filename: str = "train.log") -> None:
        self.path = os.path.join(run_dir, filename) if enabled else None
        self.enabled = enabled
        if enabled:
            os.makedirs(run_dir, exist_ok=True)

    def write(self, line: str) -> None:
        """Append ``line`` (time-stamped) to the log file."""
        if self.path is None:
            return
        import time

        with open(self.path, "a") as f:
            f.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {line}\n")

    def say(self, line: str) -> None:
        """Print ``line`` and append it to the log file."""
        if not self.enabled:
            return
        print(line, flush=True)
        self.write(line)


def progress_line(iteration: int, total: int, stats: Dict[str, float]) -> str:
    """One iteration in one line: env steps, SPS, the leader's return and success, overall
    ESS (ensembles), the learning rate and the iteration's wall time."""
    parts = [f"it {iteration}/{total}", f"steps {stats.get('perf/env_steps', 0):.0f}",
             f"sps {stats.get('perf/sps', 0):.0f}"]
    for key, name in (("rollout/ep_return", "return"), ("rollout/success", "success"),
                      ("diversity/ess/overall", "ess"), ("train/lr", "lr")):
        if key in stats:
            parts.append(f"{name} {stats[key]:.4g}")
    parts.append(f"{stats.get('perf/collect_s', 0) + stats.get('perf/learn_s', 0):.2f} s")
    return " | ".join(parts)


def summary_lines(name: str, run_dir: str, stats: Dict[str, float], iterations: int,
                  env_steps: int, wall_s: float, session_steps: int, best: Optional[str],
                  last: Optional[str], stopped: str = "") -> List[str]:
    """The closing summary of a run: what ran and how far, the leader's last return and
    success, the speed, where everything is, and the commands to use next."""
    head = f"[cpo] {stopped or 'done'}: {name}, {iterations} iterations, {env_steps:,} env steps"
    sps = session_steps / wall_s if wall_s > 0 else 0.0
    lines = [head + f" ({session_steps:,} this session in {wall_s:.1f} s, {sps:,.0f} SPS)"]
    leader = []
    if "rollout/ep_return" in stats:
        leader.append(f"return {stats['rollout/ep_return']:.4g}")
    if "rollout/success" in stats:
        leader.append(f"success {stats['rollout/success']:.3f}")
    if "diversity/ess/overall" in stats:
        leader.append(f"overall ESS {stats['diversity/ess/overall']:.3f}")
    lines.append("[cpo] leader (last iteration): " + (", ".join(leader) if leader else "no episode ended yet"))
    lines.append(f"[cpo] run directory: {run_dir}")
    if best:
        lines.append(f"[cpo] best checkpoint: {best}")
    if last:
        lines.append(f"[cpo] last checkpoint: {last}")
    lines.append(f"[cpo] next: python eval.py run={run_dir}    |    tensorboard --logdir {run_dir}")
    return lines


class WandbSettings(NamedTuple):
    """Where a run's Weights & Biases mirror goes (``log.wandb_*``; cpo/utils/config.py)."""

    project: str = "cpo-trainer"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: Tuple[str, ...] = ()
    mode: str = "online"
    name: Optional[str] = None


class Logger:
    """TensorBoard (``SummaryWriter``), optionally mirrored to Weights & Biases; a disabled
    logger swallows every call."""

    def __init__(self, run_dir: str, enabled: bool = True, purge_step: Optional[int] = None,
                 wandb: Optional[WandbSettings] = None, config: Optional[Dict[str, Any]] = None) -> None:
        self.writer = None
        self.wandb_run: Any = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            os.makedirs(run_dir, exist_ok=True)
            # purge_step drops events written after the checkpoint we resume from
            self.writer = SummaryWriter(log_dir=run_dir, purge_step=purge_step)
        if wandb is not None:
            self.wandb_run = _wandb_init(run_dir, wandb, config or {})

    def scalars(self, values: Dict[str, float], step: int) -> None:
        """Write each ``tag: value`` at x = ``step`` (global env steps)."""
        if self.writer is not None:
            for tag, val in values.items():
                self.writer.add_scalar(tag, float(val), step)
        if self.wandb_run is not None:
            self.wandb_run.log({**{k: float(v) for k, v in values.items()}, "env_steps": step})

    def kl_heatmap(self, matrix: np.ndarray, step: int, tag: str = "diversity/kl_matrix") -> None:
        """The M x M KL matrix as a labelled heatmap image with a colour bar (leader first)."""
        if self.writer is None and self.wandb_run is None:
            return
        img = kl_heatmap_image(matrix)
        if self.writer is not None:
            self.writer.add_image(tag, img, step, dataformats="HWC")
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({tag: wandb.Image(img), "env_steps": step})

    def text(self, tag: str, text: str, step: int) -> None:
        """A line of text at x = ``step`` (TensorBoard's Text tab; the W&B run's history)."""
        if self.writer is not None:
            self.writer.add_text(tag, text, step)
        if self.wandb_run is not None:
            self.wandb_run.log({tag: text, "env_steps": step})

    def hparams(self, hparams: Dict[str, Any], metrics: List[str]) -> None:
        """Record the run's hyperparameters (TensorBoard's HParams tab), linked to scalar
        ``metrics`` tags (the W&B run gets the config when it starts)."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams as hp_summary

        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        exp, ssi, sei = hp_summary(clean, {m: 0.0 for m in metrics})
        fw = self.writer._get_file_writer()
        for s in (exp, ssi, sei):
            fw.add_summary(s)

    def flush(self) -> None:
        """Push pending events to disk."""
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file and the W&B run."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def _wandb_init(run_dir: str, settings: WandbSettings, config: Dict[str, Any]) -> Any:
    """Start (or, for a resumed run, continue) the W&B run of ``run_dir``: its id is derived
    from the run directory, so a resume appends to the same W&B run; every metric is plotted
    against ``env_steps`` (a resume may log steps again after the checkpoint, which W&B's own
    monotone step counter would drop)."""
    import hashlib

    import wandb

    run_id = hashlib.sha1(os.path.abspath(run_dir).encode()).hexdigest()[:16]
    run = wandb.init(project=settings.project, entity=settings.entity, group=settings.group,
                     tags=list(settings.tags), mode=settings.mode, dir=run_dir, id=run_id,
                     name=settings.name or os.path.basename(os.path.normpath(run_dir)),
                     resume="allow", reinit="finish_previous", config=config)
    run.define_metric("env_steps")
    run.define_metric("*", step_metric="env_steps")
    return run


#: colour range of the KL heatmap in nats: a fixed log scale, so that images of different
#: iterations and runs compare, and one far follower does not flatten every other cell
#: (the paper's figures use a clipped [0, 3] range; below 0.01 nats reads as identical)
KL_COLOR_RANGE = (1e-2, 1e2)


def kl_heatmap_image(matrix: np.ndarray) -> np.ndarray:
    """Render K[i, j] = KL(pi_i || pi_j) as an RGB uint8 image (rows: from, columns: to;
    leader first). Colours follow a log scale clipped to :data:`KL_COLOR_RANGE` (the
    diagonal, 0 by definition, is grey); each cell prints its value for M <= 16."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    m = np.asarray(matrix, dtype=np.float64)
    M = m.shape[0]
    lo, hi = KL_COLOR_RANGE
    labels = ["L"] + [f"F{k}" for k in range(1, M)]
    side = min(2.0 + 0.75 * M, 14.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side), dpi=100)
    shown = np.ma.masked_where(np.eye(M, dtype=bool), np.clip(m, lo, hi))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.8")
    im = ax.imshow(shown, cmap=cmap, norm=LogNorm(vmin=lo, vmax=hi))
    ax.set_xticks(range(M), labels)
    ax.set_yticks(range(M), labels)
    ax.set_xlabel("j (to)")
    ax.set_ylabel("i (from)")
    ax.set_title("KL(pi_i || pi_j) [nats], log colour scale", fontsize=10)
    if M <= 16:
        for i in range(M):
            for j in range(M):
                if i == j:
                    continue
                v = m[i, j]
                text = f"{v:.2f}" if v < 10 else (f"{v:.1f}" if v < 100 else f"{v:.0f}")
                # dark cells (low values) get white text, bright cells black
                dark = np.log(max(v, lo) / lo) < 0.6 * np.log(hi / lo)
                ax.text(j, i, text, ha="center", va="center", fontsize=8 if M <= 8 else 6,
                        color="w" if dark else "k")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, extend="both")
    fig.tight_layout()
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return img
