"""Running mean and variance of a stream of vectors: the observation, privileged-observation
and value normalisers of the networks (their statistics live in every checkpoint)."""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch
from torch import nn


class RunningMeanStd(nn.Module):
    """Running mean and variance of a stream of vectors (Chan et al.'s parallel update).

    Statistics are float64 buffers so that they survive long runs without drift and are
    saved with the model. ``update`` is called once per rollout, never inside the minibatch
    loop, and always with raw (un-normalised) data.
    """

    def __init__(self, shape: Tuple[int, ...], eps: float = 1e-8, clip: float = 5.0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.eps = eps
        self.clip = clip
        #: optional hook ``(mean, var, count) -> (mean, var, count)`` that turns this process's
        #: batch moments into those of every process's batch (set by the runner under torchrun:
        #: :meth:`cpo.utils.distributed.Dist.moments`); None with one process
        self.sync: Optional[Callable[..., Tuple[torch.Tensor, torch.Tensor, Any]]] = None

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold a batch ``x [B, *shape]`` into the statistics (the union of every process's
        batch when :attr:`sync` is set)."""
        x = x.reshape(-1, *self.mean.shape).to(torch.float64)
        b_mean = x.mean(0)
        b_var = x.var(0, unbiased=False)
        b_count = float(x.shape[0])
        if self.sync is not None:
            b_mean, b_var, b_count = self.sync(b_mean, b_var, b_count)
        delta = b_mean - self.mean
        total = self.count + b_count
        # combined mean: old mean moved toward the batch mean by the batch's share
        self.mean += delta * (b_count / total)
        # combined M2 = M2_old + M2_batch + delta^2 * n_old * n_batch / n_total
        m2 = self.var * self.count + b_var * b_count + delta.pow(2) * self.count * b_count / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / sqrt(var + eps), clipped to [-clip, clip]."""
        mean = self.mean.to(x.dtype)
        std = torch.sqrt(self.var + self.eps).to(x.dtype)
        return ((x - mean) / std).clamp(-self.clip, self.clip)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std without clipping (for value targets)."""
        return (x - self.mean.to(x.dtype)) / torch.sqrt(self.var + self.eps).to(x.dtype)

    def unscale(self, y: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`scale`."""
        return y * torch.sqrt(self.var + self.eps).to(y.dtype) + self.mean.to(y.dtype)
