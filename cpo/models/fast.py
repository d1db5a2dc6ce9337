"""Optional fast paths (``perf.*``): ``torch.compile``, CUDA-graph replay of the rollout
policy step, fused Adam.

Every path computes the same function as the eager default: the compiled or captured unit
is a pure function of its tensor inputs (:meth:`cpo.models.ensemble.EnsembleActorCritic.policy_step`
takes the exploration noise as an input, so no random generator lives inside it), and the
parameters, normaliser statistics and latents it reads are updated in place by the optimiser
and by ``RunningMeanStd.update``, so a captured graph always sees their current values.
``tests/test_fast.py`` checks each switch against eager on CPU (CUDA graphs on a GPU).

What is covered: the feed-forward rollout step (``policy``; with an asymmetric critic the
privileged observation is its fourth input; PBT's stacked step too), the minibatch forward of the
update (``update``: the whole minibatch loss, ``cpo.algo.learner.minibatch_loss`` — heads forward
and every loss term, whose backward AOTAutograd compiles with them), the Adam step
(``fused_adam``), and the whole minibatch step (``perf.update_step``: forward, backward,
gradient clip, Adam, the KL reference refresh, the per-minibatch LR rule and the statistics,
:class:`WholeStep`) for minibatches of one shape, compiled (``compile``, CPU or CUDA) or
captured in one CUDA graph (``cuda_graph``). Not covered: the recurrent front end (an LSTM step
is already one cuDNN call); minibatches of another shape (when the rows do not split evenly)
run eagerly.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch

from cpo.utils.config import PerfConfig
from cpo.models.ensemble import EnsembleActorCritic

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


class WholeStep:
    """``perf.update_step``: :meth:`cpo.algo.learner.Learner.minibatch_step` (forward, backward,
    clip, Adam, KL reference refresh, statistics) for minibatches of one shape, as one compiled
    function (``compile``: torch.compile with compiled autograd, so the backward and the
    optimiser step are traced too) or one CUDA graph (``cuda_graph``: captured after two eager
    warm-up steps, then replayed with the minibatch's row indices copied into a static buffer;
    the optimiser is built with ``capturable=True``). The shape of the first feed-forward
    minibatch is the one handled; any other shape, and LSTM minibatches, return False and run
    eagerly. Needs one process, no fp16 loss scaling (validated in cpo/utils/config.py)."""

    #: eager steps before a CUDA graph is captured (optimiser state, cuBLAS workspaces)
    WARMUP = 2

    def __init__(self, learner: Any, mode: str) -> None:
        if mode not in ("compile", "cuda_graph"):
            raise ValueError(f"perf.update_step={mode!r}: must be eager, compile or cuda_graph")
        self.learner, self.mode = learner, mode
        self.shape: Optional[Tuple[int, int]] = None  # (rows, PPO rows) of the handled minibatches
        self.capturing = False
        self.static: Any = None  # the UpdateState whose tensors the graph reads and writes
        self.idx: Optional[torch.Tensor] = None
        self.graph: Optional[Any] = None
        self.warm = 0
        if mode == "compile":
            import torch._dynamo

            torch._dynamo.config.compiled_autograd = True  # trace .backward() in the compiled step
            self.fn = torch.compile(self._run)

    def _run(self, st: Any, idx: torch.Tensor, k: int) -> None:
        self.learner.minibatch_step(st, idx, None, k)

    def load(self, st: Any) -> Any:
        """The iteration's :class:`cpo.algo.learner.UpdateState`: for a CUDA graph, copied into the
        static buffers it was captured with (allocated on first use; a change of shapes
        drops the graph); as it is otherwise."""
        if self.mode != "cuda_graph":
            return st
        import dataclasses

        if self.static is not None and not all(
                _same_shape(getattr(self.static, f.name), getattr(st, f.name)) for f in dataclasses.fields(st)):
            self.static, self.graph, self.shape, self.warm = None, None, None, 0
        if self.static is None:
            self.static = _clone_static(st)
            return self.static
        for f in dataclasses.fields(st):
            _copy_into(getattr(self.static, f.name), getattr(st, f.name))
        return self.static

    def __call__(self, st: Any, idx: torch.Tensor, base: Optional[torch.Tensor], k: int) -> bool:
        """Run the step for ``idx`` (``idx[:k]`` PPO rows) if its shape is the handled one;
        False when the caller must run it eagerly."""
        if base is not None:
            return False  # LSTM minibatches carry their own features
        if self.shape is None:
            self.shape = (idx.numel(), k)
        if (idx.numel(), k) != self.shape:
            return False
        if self.mode == "compile":
            self.fn(st, idx, k)
            return True
        if self.graph is None:
            if self.warm < self.WARMUP:
                self.warm += 1
                return False
            self._capture(st, idx, k)
        assert self.idx is not None and self.graph is not None
        self.idx.copy_(idx)
        self.graph.replay()
        return True

    def _capture(self, st: Any, idx: torch.Tensor, k: int) -> None:
        """Record one step on the static buffers (recording does not run it: the caller
        replays it). Gradients are set to None first, so the graph's backward allocates them
        from its own pool and overwrites them at every replay."""
        self.idx = idx.clone()
        self.learner.optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        self.capturing = True
        try:
            with torch.cuda.graph(graph):
                self.learner.minibatch_step(st, self.idx, None, k)
        finally:
            self.capturing = False
        self.graph = graph


def _same_shape(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_shape(a[k], b[k]) for k in a)
    return a == b


def _clone_static(st: Any) -> Any:
    """A copy of an UpdateState whose tensors are new, contiguous static buffers."""
    import dataclasses

    from cpo.utils.tree import map_tensors

    clone = lambda t: t.detach().clone().contiguous()  # noqa: E731
    return dataclasses.replace(st, **{f.name: map_tensors(getattr(st, f.name), clone) for f in dataclasses.fields(st)})


def _copy_into(dst: Any, src: Any) -> None:
    if isinstance(dst, torch.Tensor):
        dst.copy_(src)
    elif isinstance(dst, dict):
        for k in dst:
            _copy_into(dst[k], src[k])
