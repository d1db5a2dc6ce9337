"""Damaged checkpoints: how many are detected, and whether any is used silently.

    python bench/corrupt.py [--trials 600] [--seed 0] [--out bench/results/corrupt.json]

Trains a small CPO run (6 policies, cartpole, 2 iterations) for a real checkpoint, then damages
copies of it ``--trials`` times, drawing one kind of damage per trial: a flipped bit anywhere in
the file, a flipped bit inside a tensor's data (which torch.load itself never notices), a
random byte overwritten, a truncation, an empty file, garbage appended, a foreign pickle (an
object whose unpickling would run code) and a foreign but valid torch file. Each damaged file
goes through ``cpo.utils.checkpoint.load``. Outcomes: ``detected`` (a CheckpointError naming the file),
``identical`` (it loads and its content equals the original: the damage hit bytes nothing
reads, e.g. zip padding), or ``used_silently`` (it loads with other content). Goal: every trial
detected or identical, none used silently.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import os
import random
import shutil
import sys
import tempfile
import time
import zipfile
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import emit, machine  # noqa: E402


class Foreign:
    """An object whose unpickling needs this class (what a weights-only load must refuse)."""

    def __reduce__(self):
        return (print, ("this would run on load",))


def data_spans(path: str) -> List[range]:
    """Byte ranges of the tensor records inside the checkpoint's zip."""
    import struct

    raw = open(path, "rb").read()
    spans = []
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if "/data/" in info.filename and info.file_size:
                # the local header's own name and extra lengths (torch pads the local extra field
                # for alignment, so the central directory's differs)
                name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
                start = info.header_offset + 30 + name_len + extra_len
                spans.append(range(start, start + info.file_size))
    return spans


def damage(kind: str, raw: bytes, spans: List[range], rng: random.Random, out: str) -> None:
    """Write a damaged copy of ``raw`` to ``out``."""
    import torch

    b = bytearray(raw)
    if kind == "bit_anywhere":
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    elif kind == "bit_in_tensor_data":
        span = rng.choice(spans)
        i = rng.choice(span)
        b[i] ^= 1 << rng.randrange(8)
    elif kind == "byte_overwrite":
        i = rng.randrange(len(b))
        b[i] = (b[i] + rng.randrange(1, 256)) % 256
    elif kind == "truncate":
        b = b[: rng.randrange(len(b))]
    elif kind == "empty":
        b = bytearray()
    elif kind == "garbage_appended":
        b += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4096)))
    elif kind == "foreign_pickle":
        buf = io.BytesIO()
        torch.save({"format": 2, "model": Foreign()}, buf)
        b = bytearray(buf.getvalue())
    elif kind == "foreign_torch_file":
        buf = io.BytesIO()
        torch.save({"state_dict": {"w": torch.randn(4, 4)}}, buf)
        b = bytearray(buf.getvalue())
    with open(out, "wb") as f:
        f.write(bytes(b))


KINDS = ("bit_anywhere", "bit_in_tensor_data", "byte_overwrite", "truncate", "empty", "garbage_appended",
         "foreign_pickle", "foreign_torch_file")


def main() -> None:
    """Make the checkpoint, damage it ``--trials`` times, print (and save) the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    args = p.parse_args()
    import torch

    from cpo.api import compose
    from cpo.app import run
    from cpo.utils import checkpoint as ckpt

    torch.set_num_threads(1)
    work = tempfile.mkdtemp(prefix="corrupt_")
    cfg, _ = compose(["algo=cpo", "env=cartpole", "max_iterations=2", "log.tensorboard=false", "log.progress=false",
                      "device=cpu"])
    with contextlib.redirect_stdout(io.StringIO()):
        run(cfg, run_dir=os.path.join(work, "run"))
    source = ckpt.list_checkpoints(os.path.join(work, "run"))[-1]
    raw = open(source, "rb").read()
    original = ckpt.digest(ckpt.load(source))
    spans = data_spans(source)
    rng = random.Random(args.seed)
    t0 = time.time()
    counts: Dict[str, Dict[str, int]] = collections.defaultdict(collections.Counter)
    silent: List[Dict[str, Any]] = []
    target = os.path.join(work, "damaged.pt")
    for trial in range(args.trials):
        kind = KINDS[trial % len(KINDS)]
        damage(kind, raw, spans, rng, target)
        try:
            payload = ckpt.load(target)
        except ckpt.CheckpointError as err:
            outcome = "detected" if "damaged.pt" in str(err) else "detected_unnamed"
        else:
            outcome = "identical" if ckpt.digest(payload) == original else "used_silently"
            if outcome == "used_silently":
                silent.append({"trial": trial, "kind": kind})
        counts[kind][outcome] += 1
    total = collections.Counter()
    for c in counts.values():
        total.update(c)
    result = {
        "benchmark": "corrupt", "machine": machine(), "command": "python bench/corrupt.py " + " ".join(sys.argv[1:]),
        "checkpoint_bytes": len(raw), "tensor_records": len(spans), "trials": args.trials,
        "detected": total["detected"], "detected_unnamed": total["detected_unnamed"],
        "identical": total["identical"], "used_silently": total["used_silently"],
        "share_detected_or_identical_pct": round(100.0 * (total["detected"] + total["identical"]) / args.trials, 2),
        "by_kind": {k: dict(v) for k, v in counts.items()}, "silent": silent[:20],
        "seconds": round(time.time() - t0, 1),
    }
    shutil.rmtree(work, ignore_errors=True)
    emit(result, args.out)


if __name__ == "__main__":
    main()
