"""A run's state: the start-of-iteration snapshot, checkpoints (save, load, the torchrun rank
layout), last_good.pt when the numbers go non-finite, and best.pt."""
from __future__ import annotations

import copy
import os
from typing import Any, Dict, Optional

import numpy as np
import torch

from cpo.runners.collect import NonFiniteError
from cpo.utils import checkpoint as ckpt
from cpo.utils.tree import map_tensors


def _clone_tree(x: Any) -> Any:
    """A copy of nested dicts / lists of tensors (tensors cloned, other leaves deep-copied)."""
    return map_tensors(x, lambda t: t.detach().clone(), copy.deepcopy)


#: runner entries of a checkpoint that belong to one rank (its envs' side) under torchrun
_RANK_LOCAL = ("obs", "ep_ret", "ep_len", "act_gen", "torch_rng", "rnn_state", "priv", "nonfinite_resets")


class RunState:
    """Runner mixin: snapshot, save, load and the non-finite stop (attributes: the Runner's)."""

    def _good_state(self) -> Dict[str, Any]:
        """Copies of the model's and the learner's state (parameters, normalisers, optimiser,
        LR, beta, generators) at the start of an iteration: what ``last_good.pt`` holds when
        the update meets a non-finite loss, gradient or parameter."""
        return {"model": _clone_tree(self.model.state_dict()), "learner": _clone_tree(self.learner.state_dict())}

    def _stop_nonfinite(self, good: Dict[str, Any], snapshot: Dict[str, Any], code: int, step: int,
                        steps: int) -> None:
        """Restore the start-of-iteration state, save it as ``checkpoints/last_good.pt`` and
        raise :class:`NonFiniteError` naming the quantity, the iteration and the gradient step."""
        self.model.load_state_dict(good["model"])
        self.learner.load_state_dict(good["learner"])
        path = os.path.join(self.run_dir, "checkpoints", "last_good.pt")
        payload = self.state(snapshot)
        if self.dist.is_main:
            ckpt.save(payload, path)
        self.dist.barrier()
        quantity = {1: "loss", 2: "gradient", 3: "parameter"}.get(code, "loss")
        where = f"in iteration {self.iteration + 1}"
        if steps > 0:  # which gradient step (the PBT learner reports none)
            per_epoch = max(steps // max(int(self.cfg.algo.num_epochs), 1), 1)
            where += (f", minibatch {step % per_epoch} of epoch {step // per_epoch} "
                      f"(gradient step {step + 1} of {steps})")
        raise NonFiniteError(
            f"non-finite {quantity} {where}; the state from the start of the iteration is saved to "
            f"{path} (resume={self.run_dir} continues from it; a smaller step, e.g. algo.lr_max=<lower> or "
            "algo.max_grad_norm=<lower>, may change on resume)")

    def _maybe_save_best(self, out: Dict[str, float]) -> None:
        ret = out.get("rollout/ep_return")
        if ret is None:
            return
        self.history.append(ret)
        smooth = float(np.mean(self.history[-5:]))
        if smooth > self.best_return and self.iteration - self.last_best_iteration >= 5:
            self.best_return = smooth
            self.last_best_iteration = self.iteration
            self.save(path=os.path.join(self.run_dir, "checkpoints", "best.pt"))

    def _snapshot(self) -> Dict[str, Any]:
        """Copies of what collect() changes (env, observations, episode counters, RNG streams),
        taken at the start of an iteration so a failed rollout can still save a good state."""
        return {"env": {k: v.clone() for k, v in self.env.state_dict().items()},
                "obs": self.obs.clone(), "ep_ret": self.ep_ret.clone(), "ep_len": self.ep_len.clone(),
                "act_gen": self.act_gen.get_state(), "torch_rng": torch.get_rng_state(),
                "rnn_state": [x.clone() for x in self.rnn_state] if self.rnn_state is not None else [],
                "priv": [self.priv.clone()] if self.priv is not None else []}

    def state(self, snapshot: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Everything needed to continue exactly (tensors and plain containers only); with a
        ``snapshot`` the rollout-side parts come from it (the start of the iteration)."""
        out = self._state()
        if snapshot is not None:
            out["env"] = snapshot["env"]
            for key in ("obs", "ep_ret", "ep_len", "act_gen", "torch_rng", "rnn_state", "priv"):
                out["runner"][key] = snapshot[key]
        if self.dist.enabled:  # torchrun: every rank's envs, observations and RNG streams
            local = {"env": out["env"], **{k: out["runner"][k] for k in _RANK_LOCAL if k in out["runner"]}}
            out = self.dist.attach_rank_states(out, local)
        return out

    def _state(self) -> Dict[str, Any]:
        out = self._base_state()
        if getattr(self, "evolution", None) is not None:
            out["evolution"] = self.evolution.state_dict()
        return out

    def _base_state(self) -> Dict[str, Any]:
        return {
            "format": ckpt.FORMAT_VERSION,
            "config": self.config_yaml,
            "model": self.model.state_dict(),
            "learner": self.learner.state_dict(),
            "env": self.env.state_dict(),
            "runner": {
                "iteration": self.iteration, "env_steps": self.env_steps,
                "best_return": self.best_return, "last_best_iteration": self.last_best_iteration,
                "history": list(self.history[-10:]), "act_gen": self.act_gen.get_state(),
                "torch_rng": torch.get_rng_state(), "obs": self.obs.clone(),
                "ep_ret": self.ep_ret.clone(), "ep_len": self.ep_len.clone(),
                "last_stats": dict(self.last_stats),
                "rnn_state": list(self.rnn_state) if self.rnn_state is not None else [],
                "priv": [self.priv.clone()] if self.priv is not None else [],  # critic obs
                "nonfinite_resets": self.nonfinite_resets,
            },
        }

    def save(self, path: Optional[str] = None, tag: Optional[str] = None) -> str:
        """Write a checkpoint (periodic by default) and prune old periodic ones."""
        if path is None:
            name = f"{tag}.pt" if tag else f"ckpt_{self.iteration:06d}.pt"
            path = os.path.join(self.run_dir, "checkpoints", name)
        payload = self.state()  # every rank takes part (torchrun gathers rank states)
        if not self.dist.is_main:
            return path
        ckpt.save(payload, path)
        if tag is None and os.path.basename(path).startswith("ckpt_"):
            ckpt.prune(self.run_dir, self.cfg.log.keep_last)
        return path

    def load(self, path: str) -> None:
        """Restore a checkpoint written by :meth:`save`."""
        payload = self._rank_payload(ckpt.load(path, map_location=self.device))
        self.model.load_state_dict(payload["model"])
        self.learner.load_state_dict(payload["learner"])
        if payload["env"]:
            self.env.load_state_dict(payload["env"])
        r = payload["runner"]
        self.iteration, self.env_steps = int(r["iteration"]), int(r["env_steps"])
        self.best_return = float(r["best_return"])
        self.last_best_iteration = int(r["last_best_iteration"])
        self.history = [float(x) for x in r["history"]]
        self.act_gen.set_state(r["act_gen"].cpu())
        torch.set_rng_state(r["torch_rng"].cpu())
        self.obs = r["obs"].to(self.device)
        if self.priv is not None:
            self.priv = r["priv"][0].to(self.device)
        self.ep_ret = r["ep_ret"].to(self.device)
        self.ep_len = r["ep_len"].to(self.device)
        self.last_stats = {k: float(v) for k, v in r["last_stats"].items()}
        if self.rnn_state is not None:
            self.rnn_state = (r["rnn_state"][0].to(self.device), r["rnn_state"][1].to(self.device))
        self.nonfinite_resets = int(r.get("nonfinite_resets", 0))
        self._evolution_state = payload.get("evolution")  # applied once the Evolution exists


    def _rank_payload(self, payload: Dict[str, Any]) -> Dict[str, Any]:
        """A loaded checkpoint with this rank's envs' side in ``env``/``runner`` (torchrun
        checkpoints carry one per rank). Written by a different number of processes, the
        envs' side is kept as freshly seeded here: the run goes on from the stored model,
        optimiser and counters, but not bit for bit. One process on a one-process checkpoint:
        unchanged."""
        stored = int(payload.get("world_size", 1))
        if stored == self.dist.world_size:
            local = self.dist.rank_state(payload)
        else:
            if self.dist.is_main:
                print(f"[cpo] the checkpoint was written by {stored} process(es), this run has "
                      f"{self.dist.world_size}: envs restart from fresh episodes (not an exact resume)")
            fresh = self._state()
            local = {"env": fresh["env"], **{k: fresh["runner"][k] for k in _RANK_LOCAL}}
        if local is not None:
            payload["env"] = local["env"]
            payload["runner"].update({k: v for k, v in local.items() if k != "env"})
        return payload
