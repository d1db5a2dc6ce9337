"""Evaluate a trained run: ``python eval.py run=<run dir> [episodes=100] [stochastic=false]
[policy=0] [checkpoint=latest|best|<file>] [export=<file.pt>] [device=cpu] [seed=12345]
[video=false] [video_episodes=3] [video_path=<run>/videos/policy<k>.mp4] [video_fps=<env's>]``.

Prints mean +- std episode return and the success rate over ``episodes`` episodes, and
optionally exports the deterministic policy as TorchScript and, with ``video=true``, writes
an MP4 of ``video_episodes`` consecutive episodes (needs ``pip install -e ".[video]"`` and a
task that renders: every embedded task, or a gymnasium env with an OpenGL context).
"""
from __future__ import annotations

import json
import sys
from typing import Dict, List


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


def main(argv: List[str]) -> Dict[str, float]:
    """CLI body; returns the summary dict."""
    from cpo.evaluate import evaluate, export_torchscript, find_checkpoint, load_policy, record_video

    args = parse(argv)
    truthy = ("1", "true", "yes", "on")
    device = args.get("device", "cpu")
    path = find_checkpoint(args["run"], args.get("checkpoint", "latest"))
    model, cfg = load_policy(path, device=device)
    policy = int(args.get("policy", 0))
    res = evaluate(model, cfg, episodes=int(args.get("episodes", 100)),
                   stochastic=args.get("stochastic", "false").lower() in truthy, policy=policy,
                   seed=int(args.get("seed", 12345)), device=device)
    summary = {k: v for k, v in res.items() if k != "returns"}
    summary["checkpoint"] = path
    line = (f"{cfg.algo.name}/{cfg.env.name} policy {policy} over {res['episodes']} episodes: "
            f"return {res['return_mean']:.2f} +- {res['return_std']:.2f}")
    if "success_rate" in res:
        line += f", success {res['success_rate']:.3f}"
    print(line)
    if "export" in args:
        print(f"exported TorchScript to {export_torchscript(model, args['export'], policy)}")
    if args.get("video", "false").lower() in truthy:
        import os

        out = args.get("video_path") or os.path.join(args["run"], "videos", f"policy{policy}.mp4")
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


if __name__ == "__main__":
    main(sys.argv[1:])
