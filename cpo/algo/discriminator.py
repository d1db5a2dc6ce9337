"""DIAYN-style discriminator q(z | s, a) over the ensemble's policies (ALGORITHMS.md section 6).

It is trained by cross-entropy on logits with label = the policy (block) that generated the
row, and gives followers the bonus r_adv = lambda_adv * (log q(z = f | s, a) - log(1 / M)),
which is zero at chance level.
"""
from __future__ import annotations

import math
from typing import List, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from cpo.models.ensemble import mlp


class Discriminator(nn.Module):
    """MLP on (normalised observation, clipped action) -> M logits."""

    def __init__(self, obs_dim: int, act_dim: int, num_policies: int, hidden: List[int],
                 activation: str = "elu") -> None:
        super().__init__()
        self.num_policies = num_policies
        self.net = mlp([obs_dim + act_dim] + list(hidden) + [num_policies], activation)

    def forward(self, obs_n: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Logits ``[R, M]`` for normalised observations and actions (clipped to [-1, 1])."""
        return self.net(torch.cat([obs_n, action.clamp(-1.0, 1.0)], dim=-1))

    @torch.no_grad()
    def bonus(self, obs_n: torch.Tensor, action: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """log q(z = label | s, a) - log(1 / M) per row (multiply by lambda_adv outside)."""
        logq = F.log_softmax(self.forward(obs_n, action), dim=-1)
        return logq.gather(-1, label.unsqueeze(-1)).squeeze(-1) + math.log(self.num_policies)

    def loss(self, obs_n: torch.Tensor, action: torch.Tensor, label: torch.Tensor
             ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy on logits against ``label`` and the accuracy (no grad)."""
        logits = self.forward(obs_n, action)
        ce = F.cross_entropy(logits, label)
        acc = (logits.argmax(-1) == label).float().mean().detach()
        return ce, acc
