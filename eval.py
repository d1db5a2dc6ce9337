"""Evaluate a trained run: ``python eval.py run=<run dir> [episodes=100] [stochastic=false]
[policy=0] [checkpoint=latest|best|<file>] [export=<file.onnx>] [device=cpu] [seed=12345]
[video=false] [video_episodes=3] [video_path=<run>/videos/policy<k>.mp4] [video_fps=<env's>]``.

``policy`` is the ensemble index; for a PBT run (algo=pbt) it is a member's global id and
defaults to the member with the best windowed score in the checkpoint (videos then go to
``<run>/videos/member<id>.mp4``). A run on the Isaac Gym backend gets ``import isaacgym``
before torch, as in train.py.

Prints mean +- std episode return and the success rate over ``episodes`` episodes, and
optionally exports the deterministic policy (``export=policy.onnx``: ONNX, checked against the
eager policy with onnxruntime when installed; ``export=policy.pt``: TorchScript, deprecated in
torch) and, with ``video=true``, writes
an MP4 of ``video_episodes`` consecutive episodes (needs ``pip install -e ".[video]"`` and a
task that renders: every embedded task, or a gymnasium env with an OpenGL context).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Optional


def parse(argv: List[str]) -> Dict[str, str]:
    """``key=value`` arguments (Hydra style) -> dict; unknown keys fail naming the valid ones."""
    valid = {"run", "episodes", "stochastic", "policy", "checkpoint", "export", "device", "seed", "json",
             "video", "video_episodes", "video_path", "video_fps"}
    args: Dict[str, str] = {}
    for a in argv:
        key, sep, value = a.partition("=")
        if not sep or key not in valid:
            raise SystemExit(f"eval.py: bad argument {a!r}; use key=value with key in {sorted(valid)}")
        args[key] = value
    if "run" not in args:
        raise SystemExit("eval.py: run=<run dir> is required")
    return args


def run_env_name(run_dir: str, checkpoint: str = "") -> Optional[str]:
    """``env.name`` of the run, read from its ``resolved_config.yaml`` (in ``run_dir``, or two
    folders above a ``checkpoint=<file>``); None when there is none. Reads YAML only: nothing
    here imports torch, so Isaac Gym can still be imported first."""
    from cpo.utils.config import preset_env_name

    dirs = [run_dir]
    if checkpoint and os.path.isfile(checkpoint):  # <run>/checkpoints/<file>.pt
        dirs.append(os.path.dirname(os.path.dirname(os.path.abspath(checkpoint))))
    for d in dirs:
        path = os.path.join(d, "resolved_config.yaml")
        if os.path.isfile(path):
            return preset_env_name(path)
    return None


def import_isaacgym_first(args: Dict[str, str]) -> bool:
    """Import ``isaacgym`` before anything imports torch when the run uses the Isaac Gym
    backend (Isaac Gym refuses to load after torch; train.py does the same). Returns True for
    such a run. When isaacgym cannot be imported, raises the backend's own error
    (envs.isaacgym.import_isaacgym: an EnvConfigError naming what to install), as training would."""
    if run_env_name(args["run"], args.get("checkpoint", "")) != "isaacgym":
        return False
    try:
        import isaacgym  # noqa: F401
    except ImportError:
        from envs.isaacgym import import_isaacgym

        import_isaacgym()  # says what to install, or that torch came first
    return True


def _policy_arg(value: str) -> Optional[int]:
    """``policy=`` as an int (None when not given); anything else fails naming the rule."""
    if value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"eval.py: policy={value!r}: must be an integer (an ensemble index or "
                         "a PBT member id)") from None


def main(argv: List[str]) -> Dict[str, Any]:
    """CLI body; returns the summary dict. ``policy=`` is the ensemble index, or for a PBT
    run (algo=pbt) a member's global id (default: the best-scored member)."""
    args = parse(argv)
    import_isaacgym_first(args)
    from cpo.tools.evaluation import check_onnx, evaluate, export, find_checkpoint, record_video, select_policy

    truthy = ("1", "true", "yes", "on")
    device = args.get("device", "cpu")
    path = find_checkpoint(args["run"], args.get("checkpoint", "latest"))
    loaded = select_policy(path, device=device, policy=_policy_arg(args.get("policy", "")))
    model, cfg, policy = loaded.model, loaded.cfg, loaded.index
    res = evaluate(model, cfg, episodes=int(args.get("episodes", 100)),
                   stochastic=args.get("stochastic", "false").lower() in truthy, policy=policy,
                   seed=int(args.get("seed", 12345)), device=device)
    summary: Dict[str, Any] = {k: v for k, v in res.items() if k != "returns"}
    summary["checkpoint"] = path
    summary["policy"] = policy if loaded.member is None else loaded.member
    if loaded.member is not None:
        summary["member"] = loaded.member
    line = (f"{cfg.algo.name}/{cfg.env.name} {loaded.name} over {res['episodes']} episodes: "
            f"return {res['return_mean']:.2f} +- {res['return_std']:.2f}")
    if "success_rate" in res:
        line += f", success {res['success_rate']:.3f}"
    print(line)
    if "export" in args:
        meta = {"algo": cfg.algo.name, "env": cfg.env.name, "checkpoint": os.path.abspath(path)}
        out = export(model, args["export"], policy, meta)
        if out.lower().endswith(".onnx"):
            diff = check_onnx(model, out, policy)
            check = (f"onnxruntime matches the eager policy to {diff:.1e}" if diff is not None
                     else "install onnxruntime to check it")
            print(f"exported ONNX to {out} (input obs [batch, {model.obs_dim}]; {check})")
            summary["export_max_abs_diff"] = diff
        else:
            print(f"exported TorchScript to {out} (deprecated in torch; export=<file>.onnx is the "
                  "documented path)")
        summary["export"] = out
    if args.get("video", "false").lower() in truthy:
        stem = f"policy{policy}" if loaded.member is None else f"member{loaded.member}"
        out = args.get("video_path") or os.path.join(args["run"], "videos", stem + ".mp4")
        vid = record_video(model, cfg, out, episodes=int(args.get("video_episodes", 3)),
                           stochastic=args.get("stochastic", "false").lower() in truthy,
                           policy=policy, seed=int(args.get("seed", 12345)), device=device,
                           fps=float(args["video_fps"]) if "video_fps" in args else None)
        summary["video"] = vid["path"]
        print(f"wrote {vid['frames']} frames ({vid['size'][1]}x{vid['size'][0]}, "
              f"{len(vid['episode_lengths'])} episodes) to {vid['path']}")
    if args.get("json", "false").lower() in truthy:
        print(json.dumps(summary))
    return summary


def cli(argv: List[str]) -> int:
    """``main`` with one-line errors and exit code 2, as train.py: ``config error: ...``
    (bad config, simulator missing), ``checkpoint error: ...``, ``eval.py: ...`` (a policy the
    checkpoint does not hold)."""
    try:
        main(argv)
    except Exception as err:  # only the kinds below are reported on one line
        from cpo.utils.checkpoint import CheckpointError
        from cpo.utils.config import ConfigError
        from envs.registry import EnvConfigError

        if isinstance(err, (ConfigError, EnvConfigError)):
            print(f"config error: {err}", file=sys.stderr)
        elif isinstance(err, CheckpointError):
            print(f"checkpoint error: {err}", file=sys.stderr)
        elif isinstance(err, ValueError) and str(err).startswith("policy="):
            print(f"eval.py: {err}", file=sys.stderr)
        else:
            raise
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
