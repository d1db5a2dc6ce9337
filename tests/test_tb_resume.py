"""A resumed run's TensorBoard curves equal a straight run's: same tags, same steps, same values.

The interrupted run logs one iteration past its last checkpoint (as a crash between two saves
would); resuming from that checkpoint must purge the stale event and continue at the right step.
"""
from __future__ import annotations

import os

import pytest

from cpo.utils import checkpoint as ckpt
from cpo.app import resume_config
from cpo.runners.runner import Runner
from tests.test_runner import small_cfg

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="tensorboard is needed to read event files")


def curves(run_dir: str) -> dict:
    """{tag: [(step, value), ...]} of every scalar in ``run_dir``'s event files (purges applied)."""
    acc = event_accumulator.EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]
            if not tag.startswith("perf/")}  # wall-clock timings differ between any two runs


def test_tensorboard_steps_after_resume_equal_straight_run(tmp_path):
    """6 iterations straight == 3 iterations (checkpoints at 2 and 3), resume from the one at
    2, 4 more: identical scalar curves, the stale event of iteration 3 replaced."""
    straight = small_cfg("cpo", iters=6)
    Runner(straight, str(tmp_path / "a")).train()

    first = small_cfg("cpo", iters=3)  # small_cfg saves every 2 iterations, and at the end
    Runner(first, str(tmp_path / "b")).train()
    ckpt_2 = [p for p in ckpt.list_checkpoints(str(tmp_path / "b")) if os.path.basename(p) == "ckpt_000002.pt"]
    assert ckpt_2, ckpt.list_checkpoints(str(tmp_path / "b"))
    cfg_b, _ = resume_config(str(tmp_path / "b"), ["max_iterations=6"])
    b = Runner(cfg_b, str(tmp_path / "b"), resume_from=ckpt_2[0])
    assert b.iteration == 2
    b.train()

    ca, cb = curves(str(tmp_path / "a")), curves(str(tmp_path / "b"))
    assert set(ca) == set(cb)
    assert "train/lr" in ca and "losses/policy" in ca
    steps = [s for s, _ in ca["losses/policy"]]
    assert steps == [48 * 8 * i for i in range(1, 7)]  # one point per iteration, in env steps
    for tag in ca:
        assert ca[tag] == cb[tag], tag
