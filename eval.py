"""Evaluate a trained run: ``python eval.py run=<run dir> [episodes=100] [stochastic=false]
[policy=0] [checkpoint=latest|best|<file>] [export=<file.pt>] [device=cpu] [seed=12345]``.

Prints mean +- std episode return and the success rate over ``episodes`` episodes, and
optionally exports the deterministic policy as TorchScript.
"""
from __future__ import annotations

import json
import sys
from typing import Dict, List


def parse(argv: List[str]) -> Dict[str, str]:
    """``key=value`` arguments (Hydra style) -> dict; unknown keys fail naming the valid ones."""
    valid = {"run", "episodes", "stochastic", "policy", "checkpoint", "export", "device", "seed", "json"}
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
    from cpo.evaluate import evaluate, export_torchscript, find_checkpoint, load_policy

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
    if args.get("json", "false").lower() in truthy:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
