"""README's benchmark tables, regenerated from the JSON in ``bench/results/``.

    python bench/tables.py            # print every table (markdown)
    python bench/tables.py --write    # rewrite the tables in README.md in place
    python bench/tables.py --check    # exit 1 when README.md differs from the JSON (a test runs this)

Each table sits in README.md between ``<!-- table:NAME -->`` and ``<!-- /table -->``; the text
around the markers (the commands, the machine, the discussion) is written by hand. A table
whose JSON file is missing is left as it is. Needs only the standard library.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
README = os.path.join(ROOT, "README.md")


# ---- number formatting ---------------------------------------------------------------------
def count(x: float) -> str:
    """1 234 -> '1.23 k'-style counts: k below a million (integer k from 100 k), M above."""
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e5:
        return f"{x / 1e3:.0f} k"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f}"


def ratio(x: float) -> str:
    """A ratio with two decimals."""
    return f"{x:.2f}"


def table(header: List[str], rows: List[List[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def load(name: str) -> Optional[Dict[str, Any]]:
    """``bench/results/<name>.json`` or None when it does not exist."""
    path = os.path.join(RESULTS, name + ".json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


# ---- one function per table ----------------------------------------------------------------
OVERHEAD_LABELS = {"ppo": "PPO", "sapg": "SAPG (1 off-policy block)",
                   "cpo": "CPO (coupling on all leader rows)",
                   "cpo_cf02": "CPO, `algo.coupling_fraction=0.2`",
                   "ppo_step": "PPO, `perf.update_step=compile`", "sapg_step": "SAPG, `perf.update_step=compile`",
                   "cpo_step": "CPO, `perf.update_step=compile`"}


def overhead(d: Dict[str, Any]) -> str:
    """bench/overhead.py: rows, iteration time and the ratios to PPO of every variant."""
    v = d["variants"]
    base = v["ppo"]
    rows = []
    for name, r in v.items():
        rows_ratio = r["rows_per_iteration"] / base["rows_per_iteration"]
        upd = r["update_s"] / base["update_s"]
        rows.append([OVERHEAD_LABELS.get(name, f"`{name}`"), count(r["rows_per_iteration"]),
                     f"{1e3 * r['iter_s']:.0f}", ratio(r["iter_s"] / base["iter_s"]), ratio(upd),
                     ratio(upd / rows_ratio)])
    return table(["variant", "rows per iteration", "iteration (ms)", "iteration / PPO", "update / PPO",
                  "update per row / PPO's"], rows)


UPDATE_LABELS = {"eager_fp32": "eager fp32", "eager_bf16": "eager bf16 (`algo.mixed_precision=bf16`)",
                 "compiled_fp32": "compiled fp32 (`perf.compile=update`)", "compiled_bf16": "compiled bf16"}


def gpu_update(d: Dict[str, Any]) -> str:
    """bench/gpu.py --parts update: update time of each mode next to the memory floor."""
    rows = [[UPDATE_LABELS.get(k, k), f"{m['update_ms']:.0f}", f"{m['x_memory_floor']:.1f}"]
            for k, m in d["update"]["modes"].items()]
    return table(["mode", "update (ms)", "× memory floor"], rows)


def gpu_scaling(d: Dict[str, Any]) -> str:
    """bench/gpu.py --parts scaling: SPS and GPU memory per env of PPO and CPO by N."""
    rows_in = d["scaling"]["rows"]
    ns = sorted({int(k.split("_N")[1]) for k in rows_in})
    rows = []
    for n in ns:
        p, c = rows_in.get(f"ppo_N{n}"), rows_in.get(f"cpo_N{n}")
        rows.append([f"{n:,}".replace(",", " "),
                     count(p["sps"]) if p else "–", f"{p['mem_kb_per_env']:.0f} KB" if p else "–",
                     count(c["sps"]) if c else "–", f"{c['mem_kb_per_env']:.0f} KB" if c else "–"])
    return table(["N", "PPO SPS", "PPO GPU memory / env", "CPO SPS", "CPO GPU memory / env"], rows)


FAST_LABELS = {"eager": "eager (fused Adam on, the CUDA default)", "fused_adam_off": "`perf.fused_adam=false`",
               "bf16": "`algo.mixed_precision=bf16`", "compile_all": "`perf.compile=all`",
               "cuda_graphs": "`perf.cuda_graphs=true` (rollout policy step replayed from a graph)",
               "compile_all+cuda_graphs+bf16": "all three"}


def gpu_fast(d: Dict[str, Any]) -> str:
    """bench/gpu.py --parts fast: end-to-end SPS of each switch relative to eager."""
    rows = [[FAST_LABELS.get(k, f"`{k}`"), ratio(x)] for k, x in d["fast"]["sps_vs_eager"].items()]
    return table(["switch", "SPS vs eager"], rows)


def peers_speed(d: Dict[str, Any]) -> str:
    """bench/peers.py speed: ours / rsl_rl per variant and N (range of the paired rounds)."""
    variants = list(d["variants"])
    rows = []
    for r in d["speed"]:
        cells = [f"{r['num_envs']:,}".replace(",", " ")]
        for v in variants:
            paired = r[f"paired_ratios_{v}"]
            cells.append(f"**{r[f'ratio_{v}']:.2f}×** ({min(paired):.2f}–{max(paired):.2f})")
        cells.append(" / ".join(count(r["median_sps"][k]) for k in variants + ["rsl_rl"]))
        rows.append(cells)
    header = ["N"] + [f"ours ({v}) / rsl_rl" for v in variants] + \
             ["median SPS: " + " / ".join(variants + ["rsl_rl"])]
    return table(header, rows)


def peers_parity(d: Dict[str, Any]) -> str:
    """bench/peers.py parity: final return per trainer and the seeds that reached 500."""
    p = d["parity"]
    names = list(p["summary"])
    rows = [["final return, mean ± std"] + [
        f"{p['summary'][n]['final_return_mean']:.0f} ± {p['summary'][n]['final_return_std']:.0f}" for n in names]]
    cells = ["seeds at ≥ 475 (final returns of the others)"]
    for n in names:
        finals = [r[n]["final_return"] for r in p["runs"]]
        ok = sum(1 for x in finals if x is not None and x >= 475)
        rest = [f"{x:.0f}" if x is not None else "–" for x in finals if x is None or x < 475]
        cells.append(f"{ok} / {len(finals)}" + (f" ({', '.join(rest)})" if rest else ""))
    rows.append(cells)
    return table([""] + [f"ours ({n})" if n != "rsl_rl" else "rsl_rl" for n in names], rows)


#: table name -> (JSON file in bench/results without .json, formatter)
TABLES: Dict[str, Any] = {
    "overhead_h100": ("overhead_h100", overhead),
    "overhead_cpu": ("overhead_cpu", overhead),
    "gpu_update_h100": ("gpu_update_h100", gpu_update),
    "gpu_scaling_h100": ("gpu_scaling_h100", gpu_scaling),
    "gpu_fast_h100": ("gpu_fast_h100", gpu_fast),
    "peers_cpu_speed": ("peers_cpu", peers_speed),
    "peers_cpu_parity": ("peers_cpu", peers_parity),
}

#: one marked block; its body may be empty and never reaches into another block
MARKER = re.compile(r"(<!-- table:(?P<name>\w+) -->\n)(?P<body>(?:(?!<!-- /?table).)*?)(<!-- /table -->)", re.S)


def render(name: str) -> Optional[str]:
    """The markdown of table ``name`` from its JSON, or None when the JSON is missing."""
    src, fn = TABLES[name]
    d = load(src)
    return None if d is None else fn(d)


def rewrite(text: str) -> str:
    """``text`` (README) with every marked table regenerated; unknown names fail."""
    def sub(m: "re.Match[str]") -> str:
        name = m.group("name")
        if name not in TABLES:
            raise SystemExit(f"README.md: unknown table {name!r} (known: {', '.join(TABLES)})")
        body = render(name)
        return m.group(0) if body is None else m.group(1) + body + "\n" + m.group(4)
    return MARKER.sub(sub, text)


def main(argv: Optional[List[str]] = None) -> int:
    """CLI: print, ``--write`` or ``--check``; returns the exit code."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true", help="rewrite README.md's marked tables")
    g.add_argument("--check", action="store_true", help="exit 1 when README.md is out of date")
    p.add_argument("--readme", default=README)
    args = p.parse_args(argv)
    if not (args.write or args.check):
        for name in TABLES:
            body = render(name)
            print(f"<!-- table:{name} -->\n{body if body is not None else '(no JSON)'}\n<!-- /table -->\n")
        return 0
    with open(args.readme) as f:
        text = f.read()
    new = rewrite(text)
    if args.check:
        if new != text:
            print(f"{args.readme}: tables out of date; run python bench/tables.py --write", file=sys.stderr)
            return 1
        return 0
    if new != text:
        with open(args.readme, "w") as f:
            f.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
