"""Command-line fuzzing of train.py: every bad input gets one line and exit code 2, before
anything is written.

    python bench/cli_fuzz.py [--n 2000] [--seed 0] [--subprocess 60] [--out bench/results/cli_fuzz.json]

Each try is a full ``train.py`` command line, run the way ``python train.py ...`` runs it:
``rank_argv`` (the pre-Hydra check) and then the ``@hydra.main`` entry point, in this process
(``--subprocess K`` more tries run as real ``python train.py`` processes, to show that the
two paths agree). Training itself is replaced by a stub that records the run as accepted (after
the Runner built its env and model, so that an input which only fails there is still seen).
Inputs, by class:

* ``case``: tests/config_cases.py's generator (values of every validated key, combinations,
  typos, wrong types, unknown tasks and presets, missing resume directories);
* ``interpolation``: ``${oc.env:...}``, missing env vars, missing keys, self references;
* ``huge``: sizes (envs, horizon, widths, LSTM, latent, minibatches) up to 1e13;
* ``empty``: ``key=`` for every kind of key;
* ``unicode``: non-ASCII digits, full-width numbers, symbols and letters;
* ``user_yaml``: a preset file of the user's own (``--config-dir``) holding a random value;
* ``resume``: empty, missing, damaged or finished runs to resume.

Per try: exit code, stderr lines, whether a traceback was printed, whether the input was
accepted, and whether a directory was created (the run directory or anything new under the
working directory). Goal: 0 tracebacks, 0 invalid inputs accepted, 0 directories created by a
refused input, every refusal one line with exit code 2.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import ROOT, emit, machine  # noqa: E402
from tests import config_cases as cc  # noqa: E402

#: keys whose value sets a size (memory scales with it)
SIZE_KEYS = ("env.num_envs", "algo.horizon", "net.actor_hidden", "net.critic_hidden", "net.rnn_hidden",
             "algo.latent_dim", "algo.num_minibatches")
UNICODE = ("\u0663", "\uff11\uff12", "\u2167", "\u221e", "1\u00b72", "\u00bd", "\U0001f600", "\u00e9t\u00e9", "\u0661e3",
           "\u2212" + "1", "\u0968\u0966")


class Accepted(BaseException):
    """Raised by the training stub: the input went through every check (a BaseException, so
    that Hydra's own error report does not catch it)."""


class Try:
    """One command line: ``args`` for train.py, whether it is ``valid``, its class."""

    def __init__(self, kind: str, args: List[str], valid: bool, files: Optional[Dict[str, str]] = None) -> None:
        self.kind, self.args, self.valid, self.files = kind, args, valid, files or {}


# ---- input classes --------------------------------------------------------------------------
def from_case(d: Any) -> Try:
    """tests/config_cases.py's generator, as command-line text."""
    case = cc.draw_case(d)
    valid = case.valid
    name = case.values.get("env.name")
    if name is not None and name != "point_maze" and name in cc.ok_env_names():
        valid = False  # another task's preset would carry over: refused before Hydra
    valid = valid and usable_device("device", case.values.get("device"))
    return Try("case", case.overrides(), valid)


def usable_device(key: str, value: Any) -> bool:
    """False for a ``device=cuda[:i]`` this machine lacks (valid for ``validate()`` anywhere,
    refused by train.py here: the Runner's own check decides), True for anything else."""
    if key != "device" or not str(value).startswith("cuda"):
        return True
    from cpo.runners.runner import resolve_device
    from cpo.utils.config import ConfigError

    try:
        resolve_device(str(value))
    except (ConfigError, RuntimeError):  # RuntimeError: a string torch.device cannot parse
        return False
    return True


def interpolation(d: Any) -> Try:
    """Interpolations resolving to wrong types, to nothing, or to missing keys."""
    rule = d.pick([r for r in cc.RULES if r.base == "default" and r.kind in ("int", "float", "ints", "bool")])
    text = d.pick(["${oc.env:HOME}", "${oc.env:CPO_NO_SUCH_VAR}", "${no.such.key}", "${oc.env:PATH}",
                   "${" + rule.key + "}", "${oc.decode:abc}"])
    return Try("interpolation", [f"{rule.key}={text}"], False)


def huge(d: Any) -> Try:
    """A size key set to a huge value: refused by the memory estimate unless it fits."""
    key = d.pick(list(SIZE_KEYS))
    rule = next(r for r in cc.RULES if r.key == key and r.base == "default")
    exp = d.integer(5, 13)
    v: Any = int(d.pick([1, 2, 5]) * 10 ** exp)
    if rule.kind == "ints":
        v = [v]
    case = cc.value_case(rule, v)
    return Try("huge", case.overrides(), case.valid)


def empty(d: Any) -> Try:
    """``key=`` (an empty value) for a random key with a rule, or resume=."""
    rule = d.pick([r for r in cc.RULES if r.base == "default" and not r.key.startswith("env.params")])
    if d.integer(0, 9) == 0:
        return Try("empty", ["resume="], False)
    if rule.kind != "str":
        return Try("empty", [f"{rule.key}="], False)
    case = cc.value_case(rule, "")
    return Try("empty", case.overrides(), case.valid)


def unicode(d: Any) -> Try:
    """Non-ASCII digits, numbers and letters for random keys (valid only where a string
    key's rule takes them, which none of the enumerated keys does)."""
    rule = d.pick([r for r in cc.RULES if r.base == "default" and not r.key.startswith("env.params")])
    text = d.pick(list(UNICODE))
    if rule.kind == "str" and rule.key == "algo.name":
        return Try("unicode", [f"{rule.key}={text}"], True)
    return Try("unicode", [f"{rule.key}={text}"], False)


def user_yaml(d: Any) -> Try:
    """A preset of the user's own under --config-dir, holding one random value of a rule."""
    case = cc.draw_value_case(d, hydra=True)
    if case.base != "default" or not case.values:
        return user_yaml(d)
    key, value = next(iter(case.values.items()))
    if key.startswith("env.params") or key == "env.name":
        return user_yaml(d)
    parts = key.split(".")
    text = "# @package _global_\n"
    for i, part in enumerate(parts[:-1]):
        text += "  " * i + f"{part}:\n"
    text += "  " * (len(parts) - 1) + f"{parts[-1]}: {cc.render(value) if not isinstance(value, str) else repr(value)}\n"
    return Try("user_yaml", ["--config-dir", "{CONF}", "experiment=mine"], case.valid and usable_device(key, value),
               files={"experiment/mine.yaml": text})


def resume(d: Any) -> Try:
    """Resume targets that cannot continue: missing, empty, damaged, already finished."""
    k = d.integer(0, 3)
    if k == 0:
        return Try("resume", ["resume=/nonexistent/run"], False)
    if k == 1:
        return Try("resume", ["resume={DONE}", "max_iterations=" + str(d.integer(1, 2))], False)
    if k == 2:
        return Try("resume", ["resume={DAMAGED}/checkpoints/ckpt_000002.pt"], False)
    return Try("resume", ["resume={EMPTY}"], False)


CLASSES = {"case": (40, from_case), "interpolation": (10, interpolation), "huge": (12, huge), "empty": (10, empty),
           "unicode": (10, unicode), "user_yaml": (12, user_yaml), "resume": (6, resume)}


def draw(d: Any) -> Try:
    names = [n for n, (w, _) in CLASSES.items() for _ in range(w)]
    return CLASSES[d.pick(names)][1](d)


# ---- running --------------------------------------------------------------------------------
def fixtures(base: str) -> Dict[str, str]:
    """Run directories for the resume class: finished at 2 iterations, damaged, empty."""
    from cpo.utils import checkpoint as ckpt
    from cpo.api import compose
    from cpo.app import run

    done = os.path.join(base, "done")
    cfg, _ = compose(["algo=ppo", "env=cartpole", "max_iterations=2", "log.ckpt_every=1", "log.tensorboard=false",
                      "log.progress=false", "device=cpu"])
    with contextlib.redirect_stdout(io.StringIO()):
        run(cfg, run_dir=done)
    damaged = os.path.join(base, "damaged")
    shutil.copytree(done, damaged)
    path = os.path.join(damaged, "checkpoints", "ckpt_000002.pt")
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    open(path, "wb").write(bytes(raw))
    empty_dir = os.path.join(base, "empty")
    os.makedirs(os.path.join(empty_dir, "checkpoints"))
    assert ckpt.latest(done)
    return {"{DONE}": done, "{DAMAGED}": damaged, "{EMPTY}": empty_dir}


def materialise(t: Try, work: str, i: int, subs: Dict[str, str]) -> Tuple[List[str], str]:
    """The try's command line with its files written and placeholders filled; the run dir."""
    conf = os.path.join(work, f"conf_{i}")
    for rel, text in t.files.items():
        os.makedirs(os.path.dirname(os.path.join(conf, rel)), exist_ok=True)
        with open(os.path.join(conf, rel), "w") as f:
            f.write(text)
    subs = dict(subs, **{"{CONF}": conf})
    args = []
    for a in t.args:
        for k, v in subs.items():
            a = a.replace(k, v)
        args.append(a)
    run_dir = os.path.join(work, f"run_{i}")
    # the fixed settings first, so that the try's own value of a key (device=...) wins; a
    # user's preset that sets the device must not be overridden from the command line
    fixed = ["log.progress=false"] + ([] if any("\ndevice:" in text for text in t.files.values()) else ["device=cpu"])
    return fixed + args + [f"hydra.run.dir={run_dir}"], run_dir


def run_in_process(args: List[str]) -> Tuple[Optional[int], str, bool, bool]:
    """train.py run as ``__main__`` in this process (runpy: rank_argv's pre-Hydra check,
    then ``@hydra.main``): (exit code, stderr, traceback?, accepted?)."""
    import runpy

    err, out = io.StringIO(), io.StringIO()
    code: Optional[int] = 0
    accepted = traceback = False
    old_argv = sys.argv
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            sys.argv = [os.path.join(ROOT, "train.py")] + args
            runpy.run_path(os.path.join(ROOT, "train.py"), run_name="__main__")
    except Accepted:
        accepted = True
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - a traceback reaching the user
        import traceback as tb

        traceback = True
        err.write(tb.format_exc())
        code = 1
    finally:
        sys.argv = old_argv
    text = err.getvalue()
    return code, text, traceback or "Traceback (most recent call last)" in text, accepted


def run_subprocess(args: List[str], work: str) -> Tuple[Optional[int], str, bool, bool]:
    """``python train.py <args> max_iterations=1`` as a real process (only inputs meant to be
    refused go this way; one wrongly accepted trains a single iteration)."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py")] + args + ["max_iterations=1"],
                          cwd=work, capture_output=True, text=True, timeout=600)
    text = proc.stderr
    return proc.returncode, text, "Traceback (most recent call last)" in text, proc.returncode == 0


def judge(t: Try, code: Optional[int], text: str, traceback: bool, accepted: bool, created: bool) -> Dict[str, Any]:
    """One try's outcome against the goals."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("[cpo] ")]
    one_line = code == 2 and len(lines) == 1 and lines[0].startswith(("config error:", "checkpoint error:"))
    return {"kind": t.kind, "valid": t.valid, "accepted": accepted, "exit": code, "one_line_exit2": one_line,
            "traceback": traceback, "wrongly_accepted": accepted and not t.valid,
            "wrongly_refused": t.valid and not accepted, "dir_created": created and not accepted,
            "lines": lines[:3]}


def main() -> None:
    """Parse the arguments, fuzz, print (and save) the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="tries in this process")
    p.add_argument("--subprocess", type=int, default=60, help="extra tries as real train.py processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    from cpo.runners import runner as runner_mod

    def stub_train(self):  # noqa: ANN001 - replaces Runner.train: the input was accepted
        raise Accepted()

    d = cc.RandomDraw(random.Random(args.seed))
    t0 = time.time()
    work = tempfile.mkdtemp(prefix="cli_fuzz_")
    subs = fixtures(os.path.join(work, "fixtures"))
    runner_mod.Runner.train = stub_train
    cwd = os.getcwd()
    os.chdir(work)  # a default outputs/ would appear here
    rows: List[Dict[str, Any]] = []
    try:
        for i in range(args.n + args.subprocess):
            t = draw(d)
            while i >= args.n and (t.valid or any("max_iterations" in a for a in t.args)):
                t = draw(d)  # real processes: refusals only (an accepted one would train)
            cmd, run_dir = materialise(t, work, i, subs)
            before = set(os.listdir(work))
            if os.environ.get("CLI_FUZZ_TRACE"):
                os.write(2, (" ".join(cmd) + "\n").encode())
            if i < args.n:
                outcome = run_in_process(cmd)
                torch.set_num_threads(1)  # an accepted torch_threads=k changed it for this process
            else:
                outcome = run_subprocess(cmd, work)
            after = set(os.listdir(work)) - before - {f"conf_{i}"}
            created = os.path.exists(run_dir) or bool(after)
            row = judge(t, *outcome, created=created)
            row["path"] = "process" if i >= args.n else "in_process"
            row["args"] = cmd[2:-1]
            rows.append(row)
            if os.path.exists(run_dir):
                shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        os.chdir(cwd)
    refused = [r for r in rows if not r["accepted"]]
    invalid = [r for r in rows if not r["valid"]]
    by_kind: Dict[str, Dict[str, int]] = collections.defaultdict(collections.Counter)
    for r in rows:
        k = by_kind[r["kind"]]
        k["tries"] += 1
        k["invalid"] += not r["valid"]
        k["one_line_exit2"] += r["one_line_exit2"]
        k["tracebacks"] += r["traceback"]
        k["wrongly_accepted"] += r["wrongly_accepted"]
        k["wrongly_refused"] += r["wrongly_refused"]
        k["dirs_created"] += r["dir_created"]
    result = {
        "benchmark": "cli_fuzz", "seed": args.seed, "machine": machine(),
        "command": "python bench/cli_fuzz.py " + " ".join(sys.argv[1:]),
        "tries": len(rows), "in_process": args.n, "subprocess": args.subprocess,
        "invalid": len(invalid), "valid": len(rows) - len(invalid),
        "refusals_one_line_exit2": sum(r["one_line_exit2"] for r in refused),
        "refusals": len(refused),
        "tracebacks": sum(r["traceback"] for r in rows),
        "wrongly_accepted": sum(r["wrongly_accepted"] for r in rows),
        "wrongly_refused": sum(r["wrongly_refused"] for r in rows),
        "dirs_created_by_refusals": sum(r["dir_created"] for r in rows),
        "by_class": {k: dict(v) for k, v in sorted(by_kind.items())},
        # the worst first: tracebacks, wrongly accepted, directories left, then the rest
        "problems": sorted([r for r in rows if r["traceback"] or r["wrongly_accepted"] or r["wrongly_refused"]
                            or r["dir_created"] or (not r["accepted"] and not r["one_line_exit2"])],
                           key=lambda r: (not r["traceback"], not r["wrongly_accepted"], not r["dir_created"]))[:40],
        "seconds": round(time.time() - t0, 1),
    }
    shutil.rmtree(work, ignore_errors=True)
    emit(result, args.out)


if __name__ == "__main__":
    main()
