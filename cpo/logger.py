"""TensorBoard logging against global env steps, the KL heatmap image and hparams."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import numpy as np


class Logger:
    """Thin wrapper over ``SummaryWriter``; a disabled logger swallows every call."""

    def __init__(self, run_dir: str, enabled: bool = True, purge_step: Optional[int] = None) -> None:
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            os.makedirs(run_dir, exist_ok=True)
            # purge_step drops events written after the checkpoint we resume from
            self.writer = SummaryWriter(log_dir=run_dir, purge_step=purge_step)

    def scalars(self, values: Dict[str, float], step: int) -> None:
        """Write each ``tag: value`` at x = ``step`` (global env steps)."""
        if self.writer is None:
            return
        for tag, val in values.items():
            self.writer.add_scalar(tag, float(val), step)

    def kl_heatmap(self, matrix: np.ndarray, step: int, tag: str = "diversity/kl_matrix") -> None:
        """The M x M KL matrix as a labelled heatmap image with a colour bar (leader first)."""
        if self.writer is None:
            return
        self.writer.add_image(tag, kl_heatmap_image(matrix), step, dataformats="HWC")

    def hparams(self, hparams: Dict[str, Any], metrics: List[str]) -> None:
        """Record the run's hyperparameters (HParams tab), linked to scalar ``metrics`` tags."""
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
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def kl_heatmap_image(matrix: np.ndarray) -> np.ndarray:
    """Render K[i, j] = KL(pi_i || pi_j) as an RGB uint8 image (rows: from, columns: to)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, dtype=np.float64)
    M = m.shape[0]
    labels = ["L"] + [f"F{k}" for k in range(1, M)]
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * M, 1.0 + 0.5 * M), dpi=80)
    im = ax.imshow(m, cmap="viridis")
    ax.set_xticks(range(M), labels)
    ax.set_yticks(range(M), labels)
    ax.set_xlabel("j (to)")
    ax.set_ylabel("i (from)")
    ax.set_title("KL(pi_i || pi_j) [nats]", fontsize=9)
    if M <= 8:
        for i in range(M):
            for j in range(M):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", color="w", fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return img
