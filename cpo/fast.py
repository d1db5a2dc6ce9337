"""Optional fast paths (``perf.*``): ``torch.compile``, CUDA-graph replay of the rollout
policy step, fused Adam.

Every path computes the same function as the eager default: the compiled or captured unit
is a pure function of its tensor inputs (:meth:`cpo.nets.EnsembleActorCritic.policy_step`
takes the exploration noise as an input, so no random generator lives inside it), and the
parameters, normaliser statistics and latents it reads are updated in place by the optimiser
and by ``RunningMeanStd.update``, so a captured graph always sees their current values.
``tests/test_fast.py`` checks each switch against eager on CPU (CUDA graphs on a GPU).

What is covered: the feed-forward rollout step (``policy``; with an asymmetric critic the
privileged observation is its fourth input; PBT's stacked step too), the minibatch forward of the
update (``update``: the whole minibatch loss, ``cpo.learner.minibatch_loss`` — heads forward
and every loss term, whose backward AOTAutograd compiles with them), and
the Adam step (``fused_adam``). Not covered: the recurrent front end (an LSTM step is already
one cuDNN call) and a CUDA graph of the whole update step, whose minibatch shapes vary by
one row between chunks.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from cpo.config import PerfConfig
from cpo.nets import EnsembleActorCritic

StepOut = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def use_fused_adam(perf: PerfConfig, device: torch.device) -> bool:
    """Whether the optimiser uses the fused Adam kernel: ``perf.fused_adam`` when set, else
    on for CUDA (one kernel for all parameters instead of a few per tensor) and off for CPU."""
    if perf.fused_adam is None:
        return device.type == "cuda"
    return bool(perf.fused_adam)


def compiled(fn: Callable, on: bool) -> Callable:
    """``torch.compile(fn)`` when ``on`` (shapes are treated as dynamic after the first
    recompilation, so minibatches that differ by a row do not compile again), else ``fn``."""
    return torch.compile(fn) if on else fn


def policy_step(model: EnsembleActorCritic, perf: PerfConfig, device: torch.device
                ) -> Callable[..., StepOut]:
    """The rollout's ``step(obs, pol, eps[, critic_obs]) -> (action, logp, mu, value)`` for
    ``perf`` (``critic_obs``: the raw privileged observation of an asymmetric model):
    eager, compiled, CUDA-graph replayed, or compiled and then captured."""
    if model.is_recurrent:
        return model.policy_step  # recurrent models step their LSTM outside (see module doc)
    fn = compiled(model.policy_step, perf.compile in ("policy", "all"))
    if perf.cuda_graphs:
        if device.type != "cuda":
            raise ValueError(f"perf.cuda_graphs=true needs a CUDA device, got device={device}")
        return GraphedStep(fn)
    return fn


class GraphedStep:
    """Replays a pure ``fn(obs, pol, eps[, critic_obs])`` from a CUDA graph captured on the
    first call.

    Inputs are copied into static buffers and the graph is replayed: one launch per env step
    instead of one per kernel. Outputs are cloned because the next replay overwrites the
    static output buffers. A call with different shapes (or another number of inputs)
    re-captures.
    """

    def __init__(self, fn: Callable[..., StepOut], warmup: int = 3) -> None:
        self.fn = fn
        self.warmup = warmup
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.shapes: Optional[Tuple[torch.Size, ...]] = None

    def _capture(self, *inputs: torch.Tensor) -> None:
        self.inputs = tuple(x.clone() for x in inputs)
        # warm up on a side stream (allocator and any lazy initialisation happen outside)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = self.fn(*self.inputs)
        self.shapes = tuple(x.shape for x in inputs)

    @torch.no_grad()
    def __call__(self, *inputs: torch.Tensor) -> StepOut:
        """Same result as ``fn(*inputs)``."""
        if self.graph is None or self.shapes != tuple(x.shape for x in inputs):
            self._capture(*inputs)
        for buf, x in zip(self.inputs, inputs):
            buf.copy_(x)
        assert self.graph is not None
        self.graph.replay()
        return tuple(o.clone() for o in self.outputs)  # type: ignore[return-value]
