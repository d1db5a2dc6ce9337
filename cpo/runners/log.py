"""What a run reports: the logs it opens (TensorBoard, W&B, train.log, the progress bar), each
iteration's scalars, texts and KL heatmap, and the closing summary."""
from __future__ import annotations

import os
from typing import Any, Dict

import numpy as np
import torch

from cpo.algo.learner import lambda_f_at
from cpo.models.ensemble import gaussian_entropy
from cpo.utils import checkpoint as ckpt
from cpo.utils.config import flatten, to_dict
from cpo.utils.logger import Logger, RunLog, WandbSettings, progress_line, summary_lines


#: above this many policies the M x M KL heatmap image is not drawn (the diversity/kl/*
#: summaries and per-follower scalars stay)
HEATMAP_MAX_POLICIES = 16


class RunLogging:
    """Runner mixin: opens the logs, turns an iteration's statistics into scalars and logs
    them, and writes the closing summary (attributes: the Runner's)."""

    def _open_logs(self) -> Any:
        """TensorBoard (and the W&B mirror), train.log and the progress bar (rank 0 only);
        returns the bar or None."""
        cfg = self.cfg
        main = self.dist.is_main  # torchrun: only rank 0 writes files and shows progress
        if main:
            os.makedirs(self.run_dir, exist_ok=True)
        g = cfg.log
        wandb = (WandbSettings(g.wandb_project, g.wandb_entity, g.wandb_group, tuple(g.wandb_tags), g.wandb_mode,
                               name=f"{cfg.algo.name}_{cfg.env.name}_{os.path.basename(os.path.normpath(self.run_dir))}")
                 if g.wandb and main else None)
        self.logger = Logger(self.run_dir, cfg.log.tensorboard and main,
                             # drop events logged after the checkpoint (steps > env_steps)
                             purge_step=self.env_steps + 1 if self.iteration > 0 else None, wandb=wandb,
                             config=flatten(to_dict(cfg)) if wandb is not None else None)
        self.text_log = RunLog(self.run_dir, main)
        self.text_log.write(f"[cpo] {'resuming' if self.iteration else 'starting'} {cfg.algo.name}/{cfg.env.name} "
                            f"at iteration {self.iteration} of {cfg.max_iterations} in {self.run_dir}")
        if self.iteration == 0:
            self.logger.hparams(flatten(to_dict(cfg)), ["rollout/ep_return", "rollout/success"])
        if not (cfg.log.progress and main):
            return None
        from tqdm import tqdm

        return tqdm(total=cfg.max_iterations, initial=self.iteration, unit="it",
                    dynamic_ncols=True, desc=f"{cfg.algo.name}/{cfg.env.name}")

    def _log_iteration(self, out: Dict[str, float], bar: Any) -> None:
        """An iteration's scalars, texts (EPO events), KL heatmap and progress line."""
        cfg = self.cfg
        self.logger.scalars(out, self.env_steps)
        self.text_log.write(progress_line(self.iteration, cfg.max_iterations, out))
        for tag, text in self._texts:
            self.logger.text(tag, text, self.env_steps)
            self.text_log.write(text)
        self._texts.clear()
        if (self._kl is not None and self.M <= HEATMAP_MAX_POLICIES
                and (self.iteration % cfg.log.heatmap_every == 0 or self.iteration == 1)):
            self.logger.kl_heatmap(self._kl, self.env_steps)
        if bar is not None:
            bar.update(1)
            post = {"sps": f"{out['perf/sps']:.3g}"}
            for key, name, fmt in (("rollout/ep_return", "ret", ".3g"), ("rollout/success", "succ", ".2f")):
                if key in out:
                    post[name] = format(out[key], fmt)
            bar.set_postfix(post)

    def _iteration_scalars(self, host: Dict[str, torch.Tensor], sums: Dict[str, torch.Tensor]) -> Dict[str, float]:
        """The iteration's TensorBoard scalars from its host copies (``host``: episode sums,
        losses, diagnostics): losses/, rollout/ (the leader's and every policy's episodes; no
        episode ended: the last value is carried), diversity/ (ESS, |rho - 1|, KL matrix and
        its summaries, log-std), train/ (lr, beta, lambda_f). Also keeps the KL matrix for
        the heatmap."""
        cfg = self.cfg
        out: Dict[str, float] = {}
        for k in ("policy", "value", "entropy", "coupling", "bounds", "approx_kl", "clipfrac",
                  "grad_norm", "explained_variance"):
            out[f"losses/{k}"] = float(host[k])
        count = host["count"]
        metric_keys = [k for k in host if k in sums and k != "count"]
        for m in range(self.M):
            prefix = "rollout/" if m == 0 else f"rollout/policy_{m}/"
            if count[m] > 0:
                for key in metric_keys:
                    name = {"return": "ep_return", "length": "ep_len"}.get(key, key)
                    out[f"{prefix}{name}"] = float(host[key][m] / count[m])
                    if m == 0:
                        out[f"rollout/policy_0/{name}"] = out[f"{prefix}{name}"]
            elif f"{prefix}ep_return" in self.last_stats:  # no episode ended: carry the last value
                for key in metric_keys:
                    name = {"return": "ep_return", "length": "ep_len"}.get(key, key)
                    tag = f"{prefix}{name}"
                    if tag in self.last_stats:
                        out[tag] = self.last_stats[tag]
        log_std = self.model.log_std.detach().cpu()
        ent = gaussian_entropy(log_std)
        for m in range(self.M):
            out[f"rollout/policy_{m}/entropy"] = float(ent[m])
            if self.M > 1:  # log sigma per policy (mean over action dims): exploration width
                out[f"diversity/log_std/policy_{m}"] = float(log_std[m].mean())
        if "ess_overall" in host:
            out["diversity/ess/overall"] = float(host["ess_overall"])
            out["diversity/ess/followers_pooled"] = float(host["ess_followers_pooled"])
            K = host["kl_matrix"].numpy()
            for f in range(1, self.M):
                out[f"diversity/ess/follower_{f}"] = float(host["ess_follower"][f - 1])
                out[f"diversity/is_dev/follower_{f}"] = float(host["is_dev_follower"][f - 1])
                out[f"diversity/kl/leader_to_{f}"] = float(K[0, f])
                out[f"diversity/kl/{f}_to_leader"] = float(K[f, 0])
            self._kl = K
            # summaries that stay readable for a large population (EPO's M = 64)
            off = K + np.diag(np.full(self.M, np.inf))
            out["diversity/kl/offdiag_median"] = float(np.median(K[~np.eye(self.M, dtype=bool)]))
            out["diversity/kl/leader_row_mean"] = float(K[0, 1:].mean())
            out["diversity/followers_nearest_leader"] = float(sum(int(np.argmin(off[f])) == 0
                                                                  for f in range(1, self.M)))
        if "disc_loss" in host:
            out["diversity/disc_loss"] = float(host["disc_loss"])
            out["diversity/disc_acc"] = float(host["disc_acc"])
        out["train/lr"] = float(self.learner.lr)
        if self.M > 1:
            out["train/beta"] = float(self.learner.beta[1:].mean())
            out["train/lambda_f"] = float(lambda_f_at(cfg.algo, (self.iteration - 1) / max(cfg.max_iterations - 1, 1)).mean())
        return out

    def _summary(self, out: Dict[str, float], wall_s: float, session_steps: int, stopped: str) -> None:
        """Print the closing summary and append it to ``train.log`` (rank 0)."""
        ckpts = ckpt.list_checkpoints(self.run_dir)
        best = os.path.join(self.run_dir, "checkpoints", "best.pt")
        lines = summary_lines(f"{self.cfg.algo.name}/{self.cfg.env.name}", self.run_dir, out, self.iteration,
                              self.env_steps, wall_s, session_steps, best if os.path.isfile(best) else None,
                              ckpts[-1] if ckpts else None, stopped)
        for line in lines:
            self.text_log.say(line)
