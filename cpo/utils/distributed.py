"""Several processes (torchrun), one learner: the plumbing that keeps every rank identical.

Launch with ``torchrun --nproc_per_node P train.py ...`` (or ``python -m torch.distributed.run``):
torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_from_env` joins the process group (NCCL on CUDA, gloo on CPU).

How the ensemble maps onto ranks: **every rank holds all M policies** (the whole network) and
steps its own ``N / P`` envs, split into the same M blocks of ``N / (P M)`` envs. So

* every rank's batch has the same composition (on-policy, off-policy and coupling rows in the
  same numbers), and the mean of the ranks' minibatch gradients is exactly the gradient of
  the union minibatch: the per-rank losses are means over equally many rows;
* the work is balanced whatever M is (splitting blocks across ranks would leave ranks idle
  when M is not a multiple of P, and PPO has M = 1);
* the leader's off-policy rows and the followers' coupling rows are read from the rank's own
  rollout: no observation ever crosses ranks, only gradients and a few statistics.

The global env id of rank r's local env i is ``m * B + r * (B / P) + i % (B / P)`` with
``m = i // (B / P)`` its policy block and ``B = N / M`` (each block is split contiguously
across ranks); ``env.num_envs`` is the global N.

What is synchronised, and how (all rank-symmetric, so every rank computes the same numbers):

* parameters and buffers: broadcast from rank 0 once at start (:meth:`Dist.broadcast_module`);
* gradients: one flattened all-reduce per optimiser step (:meth:`Dist.sync_grads`), which
  also carries the on-policy KL sums of the adaptive learning rate, so the LR stays equal;
* normaliser statistics: every rank's batch moments are combined by the parallel-variance
  rule (:func:`combine_moments`), never by averaging variances;
* advantage standardisation: one global mean and std over every rank's advantages;
* logged statistics: episode sums are summed, losses and diagnostics averaged (one
  all-reduce per iteration); the KL matrix that adapts beta is the average over ranks;
* stop decisions: SIGTERM/SIGINT on any rank or non-finite env output on any rank stops all
  ranks at the same point (:meth:`Dist.any_true`).

Only rank 0 writes TensorBoard, the progress bar and checkpoints; a checkpoint also carries
every rank's env state, observations and RNG streams (gathered to rank 0), so a resume with
the same number of processes is exact. Seeds: parameters come from ``seed`` (identical,
then broadcast), envs and action sampling from :func:`rank_seed`.

With one process every method returns its input untouched: no collective, no copy, the
single-process code path bit for bit.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from cpo.utils.tree import map_tensors

#: seed stride between ranks: rank r seeds its envs and action noise with seed + r * stride,
#: far from the seeds of neighbouring runs of a sweep (seed = 0, 1, 2, ...)
RANK_SEED_STRIDE = 100_003


def world_size_from_env() -> int:
    """``WORLD_SIZE`` set by torchrun (1 without torchrun): the number of processes."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def rank_from_env() -> int:
    """``RANK`` set by torchrun (0 without torchrun)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s envs and action sampling: ``seed + rank * RANK_SEED_STRIDE``
    (rank 0 keeps ``seed``, so one process is the single-process run)."""
    return int(seed) + int(rank) * RANK_SEED_STRIDE


def global_env_ids(local_ids: Sequence[int], dist: "Dist", local_envs: int, num_policies: int) -> List[int]:
    """Global ids of rank ``dist.rank``'s local env ids (``local_envs`` envs per rank in
    ``num_policies`` blocks): block m of every rank together forms policy m's global block."""
    b = local_envs // num_policies  # envs per block on one rank
    # global id = block start (m * b * P) + this rank's slice of the block (rank * b) + offset
    return [(i // b) * b * dist.world_size + dist.rank * b + i % b for i in local_ids]


def combine_moments(count: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pool per-rank moments (Chan et al.'s parallel rule), rank-major ``count [P]``,
    ``mean [P, D]``, ``m2 [P, D]`` (sum of squared deviations) -> pooled
    ``(count, mean [D], m2 [D])``."""
    n = count.sum()
    w = count.unsqueeze(-1)
    # pooled mean: count-weighted mean of the rank means
    mu = (w * mean).sum(0) / n
    # pooled M2 = sum of the ranks' M2 + sum of n_r * (mean_r - mean)^2 (between-rank spread)
    m2_all = m2.sum(0) + (w * (mean - mu).pow(2)).sum(0)
    return n, mu, m2_all


class Dist:
    """This process's place in the job: ``rank`` of ``world_size`` processes.

    A world of one (no torchrun) is the no-op case: every method returns its input as is.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0,
                 comm_device: Optional[torch.device] = None) -> None:
        self.rank, self.world_size, self.local_rank = int(rank), int(world_size), int(local_rank)
        #: where collectives' tensors must live: the rank's GPU under NCCL, else the CPU
        self.comm_device = comm_device or torch.device("cpu")

    # ---- who am I ------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """True with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that logs, shows progress and writes checkpoints."""
        return self.rank == 0

    def place(self, device: torch.device) -> torch.device:
        """A CUDA device without an index becomes this rank's GPU ``cuda:LOCAL_RANK``
        (modulo the visible GPUs, so that gloo tests can share one)."""
        if self.enabled and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank % max(torch.cuda.device_count(), 1))
        return device

    def seed(self, seed: int) -> int:
        """This rank's env and action-sampling seed (:func:`rank_seed`)."""
        return rank_seed(seed, self.rank)

    # ---- tensors -------------------------------------------------------------------------
    def _dist(self):
        import torch.distributed as dist

        return dist

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers into every rank (one broadcast per dtype)."""
        if not self.enabled:
            return
        tensors = [p.data for p in module.parameters()] + list(module.buffers())
        for dtype in sorted({t.dtype for t in tensors}, key=str):
            group = [t for t in tensors if t.dtype == dtype]
            flat = torch.cat([t.reshape(-1).to(self.comm_device) for t in group])
            self._dist().broadcast(flat, src=0)
            self._unflatten(flat, group)

    @staticmethod
    def _unflatten(flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view_as(t))
            offset += n

    def sync_grads(self, params: Iterable[torch.nn.Parameter],
                   extras: Sequence[torch.Tensor] = ()) -> Tuple[torch.Tensor, ...]:
        """Average the gradients of ``params`` over ranks with ONE all-reduce of a flat bucket
        (parameters without a gradient are skipped: the same ones on every rank, since every
        rank runs the same rows through the same graph). ``extras`` (scalars) ride in the same
        bucket and come back summed over ranks (e.g. KL numerator and row count)."""
        extras = tuple(extras)
        if not self.enabled:
            return extras
        grads = [p.grad for p in params if p.grad is not None]
        dtype = grads[0].dtype if grads else torch.float32
        parts = [g.reshape(-1).to(dtype) for g in grads] + [e.reshape(-1).to(dtype) for e in extras]
        flat = torch.cat(parts).to(self.comm_device)
        self._dist().all_reduce(flat)  # sum over ranks
        n_grad = sum(g.numel() for g in grads)
        # mean of the ranks' minibatch-mean gradients = gradient of the union minibatch
        self._unflatten(flat[:n_grad] / self.world_size, grads)
        out = flat[n_grad:]
        return tuple(out[i].to(e.device, e.dtype).reshape(e.shape) for i, e in enumerate(extras))

    def moments(self, mean: torch.Tensor, var: torch.Tensor, count: Any
                ) -> Tuple[torch.Tensor, torch.Tensor, Any]:
        """One rank's batch moments (``mean``, biased ``var``, ``count``) -> the moments of
        the union of every rank's batch (one all-gather). Used as the normalisers' sync hook
        (:attr:`cpo.models.ensemble.RunningMeanStd.sync`)."""
        if not self.enabled:
            return mean, var, count
        shape, dev = mean.shape, mean.device
        c = torch.as_tensor(count, dtype=torch.float64, device=dev).reshape(1)
        mu = mean.reshape(-1).to(torch.float64)
        # pack [count, mean, M2] with M2 = var * count (sum of squared deviations)
        local = torch.cat([c, mu, var.reshape(-1).to(torch.float64) * c]).to(self.comm_device)
        rows = [torch.empty_like(local) for _ in range(self.world_size)]
        self._dist().all_gather(rows, local)
        g = torch.stack(rows).to(dev)
        D = mu.numel()
        n, m, m2 = combine_moments(g[:, 0], g[:, 1:1 + D], g[:, 1 + D:])
        return m.reshape(shape).to(mean.dtype), (m2 / n).reshape(shape).to(var.dtype), n

    def mean_std(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean and unbiased std of ``x`` over all ranks' elements (one process: ``x.mean()``
        and ``x.std()`` exactly)."""
        if not self.enabled:
            return x.mean(), x.std()
        x64 = x.reshape(-1).to(torch.float64)
        mean, var, n = self.moments(x64.mean(), x64.var(unbiased=False), float(x64.numel()))
        # unbiased variance from the pooled biased one: var * n / (n - 1)
        std = torch.sqrt(var * n / (n - 1).clamp(min=1.0))
        return mean.to(x.dtype), std.to(x.dtype)

    def reduce_stats(self, sums: Dict[str, torch.Tensor], means: Sequence[Dict[str, torch.Tensor]]
                     ) -> Tuple[Dict[str, torch.Tensor], List[Dict[str, torch.Tensor]]]:
        """One all-reduce for an iteration's statistics: ``sums`` (episode sums per block) are
        summed over ranks, every dict in ``means`` (losses, diagnostics) averaged."""
        if not self.enabled:
            return sums, list(means)
        dicts = [sums] + list(means)
        keys = [sorted(d) for d in dicts]  # the same keys on every rank: the same code ran
        parts = [dicts[i][k].detach().reshape(-1).to(torch.float64) for i in range(len(dicts)) for k in keys[i]]
        if not parts:
            return sums, list(means)
        dev = parts[0].device
        flat = torch.cat(parts).to(self.comm_device)
        self._dist().all_reduce(flat)
        flat = flat.to(dev)
        out: List[Dict[str, torch.Tensor]] = []
        offset = 0
        for i, d in enumerate(dicts):
            res: Dict[str, torch.Tensor] = {}
            for k in keys[i]:
                t = d[k]
                v = flat[offset:offset + t.numel()]
                offset += t.numel()
                v = v if i == 0 else v / self.world_size
                res[k] = v.reshape(t.shape).to(t.dtype)
            out.append(res)
        return out[0], out[1:]

    def any_true(self, flag: bool) -> bool:
        """True when ``flag`` is true on any rank (a stop decision every rank takes together)."""
        if not self.enabled:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=self.comm_device)
        self._dist().all_reduce(t, op=self._dist().ReduceOp.MAX)
        return bool(t.item() > 0)

    # ---- python objects (rare: start, checkpoints, errors) ---------------------------------
    def gather(self, obj: Any) -> Optional[List[Any]]:
        """Every rank's ``obj`` (tensors moved to the CPU first) as a list on rank 0; None on
        the other ranks."""
        if not self.enabled:
            return [obj]
        out: Optional[List[Any]] = [None] * self.world_size if self.is_main else None
        self._dist().gather_object(to_cpu(obj), out, dst=0)
        return out

    def all_gather(self, obj: Any) -> List[Any]:
        """Every rank's ``obj`` on every rank."""
        if not self.enabled:
            return [obj]
        out: List[Any] = [None] * self.world_size
        self._dist().all_gather_object(out, to_cpu(obj))
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [to_cpu(obj) if self.is_main else None]
        self._dist().broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.enabled:
            self._dist().barrier()

    # ---- checkpoints ---------------------------------------------------------------------
    def attach_rank_states(self, payload: Dict[str, Any], local: Dict[str, Any]) -> Dict[str, Any]:
        """Add every rank's local state (its envs, observations, RNG streams: ``local``) to a
        checkpoint ``payload`` as ``payload["ranks"][r]`` on rank 0, with ``world_size``.
        Every rank must call it (it gathers); one process leaves ``payload`` unchanged."""
        if not self.enabled:
            return payload
        ranks = self.gather(local)
        if self.is_main:
            payload["ranks"] = ranks
            payload["world_size"] = self.world_size
        return payload

    def rank_state(self, payload: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """This rank's local state from a checkpoint written by the same number of processes
        (``payload["ranks"][rank]``); None when the process counts differ (the caller then
        keeps freshly seeded envs). One process reading a one-process checkpoint gets None
        too: its local state is the payload's own ``env``/``runner`` entries."""
        stored = int(payload.get("world_size", 1))
        if stored != self.world_size or stored == 1:
            return None
        return payload["ranks"][self.rank]


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor moved to the CPU (containers rebuilt)."""
    return map_tensors(obj, lambda t: t.detach().cpu())


#: the one-process context
SINGLE = Dist()

_OWNED = {"group": False}


def current() -> Dist:
    """The context of the initialised process group, or :data:`SINGLE` without one."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return SINGLE
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", rank))
    comm = torch.device("cpu")
    if dist.get_backend() == "nccl":
        comm = torch.device("cuda", torch.cuda.current_device())
    return Dist(rank, world, local, comm)


def init_from_env(device: str = "auto") -> Dist:
    """Join the process group described by torchrun's environment variables, once.

    ``device`` is the config's device (auto | cpu | cuda...): CUDA ranks use NCCL on
    ``cuda:LOCAL_RANK``, CPU ranks gloo (``CPO_DIST_BACKEND`` overrides the choice, e.g.
    gloo to let several ranks share one GPU in a test). Without torchrun
    (``WORLD_SIZE`` unset or 1) nothing happens and :data:`SINGLE` is returned.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return current()
    if world_size_from_env() <= 1:
        return SINGLE
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    backend = os.environ.get("CPO_DIST_BACKEND") or ("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local % torch.cuda.device_count())
    dist.init_process_group(backend=backend, init_method="env://")
    _OWNED["group"] = True
    return current()


def shutdown() -> None:
    """Leave the process group if :func:`init_from_env` created it."""
    import torch.distributed as dist

    if _OWNED["group"] and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        import gc

        # free whatever still holds the group (reference cycles) now, while the interpreter is
        # whole, not in its finalisation (where a gloo thread torn down late can abort)
        gc.collect()
    _OWNED["group"] = False
