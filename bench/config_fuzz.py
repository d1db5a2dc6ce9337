"""Configuration fuzzing: random override strings through train.py's composition path.

    python bench/config_fuzz.py [--n 2000] [--seed 0] [--out bench/results/config_fuzz.json]

Each case (tests/config_cases.py, the generator tests/test_config_property.py draws with
hypothesis) is a list of overrides: random values of every validated key, combinations of
keys whose rules interact, typos of real keys, wrongly typed values, unknown tasks and presets,
missing resume directories. It runs through the command-line check, Hydra, the schema and
validate(). Figures: the share of invalid cases refused with one clear error (naming key=value
and the rule, plus "did you mean" for typos) and the share of valid cases accepted; target
100 % for both.
"""
from __future__ import annotations

import os
import sys

import argparse
import collections
import random
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import emit  # noqa: E402
from tests import config_cases as cc  # noqa: E402


def fuzz(n: int, seed: int) -> Dict[str, Any]:
    """Run ``n`` random cases drawn from ``random.Random(seed)``; the counts as a dict."""
    draw = cc.RandomDraw(random.Random(seed))
    counts: Dict[str, int] = collections.Counter()
    by_category: Dict[str, Dict[str, int]] = collections.defaultdict(collections.Counter)
    failures: List[Dict[str, Any]] = []
    for _ in range(n):
        case = cc.draw_case(draw)
        out = cc.run_hydra(case)
        ok = cc.passed(case, out)
        kind = "valid" if case.valid else "invalid"
        counts[kind] += 1
        counts[kind + "_ok"] += ok
        by_category[case.category][kind] += 1
        by_category[case.category][kind + "_ok"] += ok
        if not ok and len(failures) < 20:
            failures.append({"overrides": case.overrides(), "valid": case.valid,
                             "accepted": out.accepted, "message": out.message[:500]})
    inv, val = counts["invalid"], counts["valid"]
    return {
        "invalid": inv, "invalid_clear_error": counts["invalid_ok"],
        "valid": val, "valid_accepted": counts["valid_ok"],
        "share_invalid_clear_pct": round(100.0 * counts["invalid_ok"] / max(inv, 1), 2),
        "share_valid_accepted_pct": round(100.0 * counts["valid_ok"] / max(val, 1), 2),
        "n": n, "seed": seed,
        "by_category": {k: dict(v) for k, v in sorted(by_category.items())},
        "failures": failures,
    }


def main() -> None:
    """Parse the arguments, fuzz, print (and save) the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="random cases to run")
    p.add_argument("--seed", type=int, default=0, help="seed of the case generator")
    p.add_argument("--out", default="", help="also write the JSON here")
    args = p.parse_args()
    t0 = time.time()
    result = fuzz(args.n, args.seed)
    result["seconds"] = round(time.time() - t0, 1)
    emit(result, args.out)


if __name__ == "__main__":
    main()
