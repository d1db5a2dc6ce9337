"""Nothing lost, nothing silent: checksummed checkpoints, one training process per run
directory, full and read-only disks, stale temporary files, and NaN-safe saves."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cpo.utils import checkpoint as ckpt
from cpo.app import claim_run_dir, resume_config, run
from cpo.utils.config import ConfigError
from cpo.runners.collect import NonFiniteError
from cpo.runners.runner import Runner
from tests.test_runner import small_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def trained(tmp_path, iters: int = 2, algo: str = "ppo") -> str:
    """A run directory with periodic checkpoints after ``iters`` iterations (one every 1)."""
    cfg = small_cfg(algo, iters=iters)
    cfg.log.tensorboard, cfg.log.ckpt_every = False, 1
    run_dir = str(tmp_path / "run")
    run(cfg, run_dir=run_dir)
    return run_dir


# ---- checksums ------------------------------------------------------------------------------
def test_digest_changes_with_any_value_and_ignores_dict_order():
    """The digest covers dtype, shape and every byte, in a fixed order."""
    a = {"x": torch.arange(6.0).view(2, 3), "y": [1, "a", None], "z": {"k": torch.tensor([True])}}
    b = {"z": {"k": torch.tensor([True])}, "y": [1, "a", None], "x": torch.arange(6.0).view(2, 3)}
    assert ckpt.digest(a) == ckpt.digest(b)
    for changed in ({**a, "x": torch.arange(6.0).view(3, 2)}, {**a, "x": torch.arange(6).view(2, 3)},
                    {**a, "y": [1, "b", None]}, {**a, "x": a["x"] + 1e-7}):
        assert ckpt.digest(changed) != ckpt.digest(a)


def test_a_flipped_data_byte_is_detected_not_loaded(tmp_path):
    """torch.load(weights_only=True) reads a checkpoint with a flipped byte in a tensor's data
    without complaint; ckpt.load refuses it naming the file and the digest."""
    run_dir = trained(tmp_path)
    path = ckpt.list_checkpoints(run_dir)[-1]
    data = bytearray(open(path, "rb").read())
    import zipfile

    with zipfile.ZipFile(path) as z:  # a byte in the middle of the largest tensor record
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.file_size // 2] ^= 0x40
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(data))
    torch.load(str(bad), weights_only=True)  # torch itself does not notice
    with pytest.raises(ckpt.CheckpointError, match=r"is damaged: its content does not match the SHA-256"):
        ckpt.load(str(bad))


@pytest.mark.parametrize("damage", ["truncate", "empty", "foreign"])
def test_truncated_empty_and_foreign_files_are_refused(tmp_path, damage):
    """Truncated, empty and pickled-object files each get a CheckpointError naming the file."""
    run_dir = trained(tmp_path)
    path = ckpt.list_checkpoints(run_dir)[-1]
    bad = tmp_path / "bad.pt"
    if damage == "truncate":
        bad.write_bytes(open(path, "rb").read()[: os.path.getsize(path) // 2])
    elif damage == "empty":
        bad.write_bytes(b"")
    else:
        torch.save({"format": 2, "evil": ckpt.CheckpointError("x")}, str(bad))
    with pytest.raises(ckpt.CheckpointError, match="bad.pt"):
        ckpt.load(str(bad))


def test_format_1_checkpoints_without_digest_still_load(tmp_path):
    """Checkpoints written before digests (format 1) load as before."""
    path = str(tmp_path / "old.pt")
    torch.save({"format": 1, "config": "", "model": {"w": torch.ones(2)}}, path)
    assert torch.equal(ckpt.load(path)["model"]["w"], torch.ones(2))


def test_damaged_newest_is_skipped_with_a_line_and_named_one_refused(tmp_path, capsys):
    """resume=<dir> skips a damaged newest checkpoint, saying which file it skipped and which
    it uses; resume=<that file> refuses it; eval's 'latest' does the same."""
    from cpo.tools.evaluation import find_checkpoint

    run_dir = trained(tmp_path, iters=3)
    files = ckpt.list_checkpoints(run_dir)
    newest = files[-1]
    raw = bytearray(open(newest, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    open(newest, "wb").write(bytes(raw))
    cfg, path = resume_config(run_dir, ["max_iterations=5"])
    assert path == files[-2]
    err = capsys.readouterr().err
    assert f"skipping damaged checkpoint {newest}" in err and f"using {files[-2]}" in err
    with pytest.raises(ckpt.CheckpointError, match="ckpt_000003.pt"):
        resume_config(newest, ["max_iterations=5"])
    assert find_checkpoint(run_dir, "latest") == files[-2]


# ---- resume edge cases ----------------------------------------------------------------------
def test_resume_refuses_empty_value_and_a_finished_budget(tmp_path):
    """resume= (empty) would start a fresh run: refused; resume=D max_iterations=2 with 3
    stored would train nothing: refused naming both numbers; resume=<file> continues its run."""
    run_dir = trained(tmp_path, iters=3)
    with pytest.raises(ConfigError, match=r"resume='': must name a run directory"):
        resume_config("", [])
    with pytest.raises(ConfigError, match=r"max_iterations=2: .* is already at iteration 3"):
        resume_config(run_dir, ["max_iterations=2"])
    file = ckpt.list_checkpoints(run_dir)[-1]
    cfg, path = resume_config(file, ["max_iterations=4"])
    assert path == file and cfg.resume == run_dir
    older = ckpt.list_checkpoints(run_dir)[-2]  # newer checkpoints exist: two histories would mix
    with pytest.raises(ConfigError, match=r"already holds checkpoints past it .*ckpt_000003.pt"):
        resume_config(older, ["max_iterations=4"])


# ---- one process per run directory ----------------------------------------------------------
def test_run_lock_refuses_a_second_holder_and_dies_with_its_process(tmp_path):
    """flock on <run>/.lock: a second claim (another open file, as another process would have)
    is refused naming the holder's pid; a SIGKILLed holder leaves no stale lock."""
    d = str(tmp_path / "run")
    first = claim_run_dir(d)
    with pytest.raises(ckpt.RunLocked, match=rf"is in use by another training process \(pid {os.getpid()}\)"):
        claim_run_dir(d)
    first.release()
    claim_run_dir(d).release()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom cpo.utils.checkpoint import RunLock\n"
                               f"RunLock({d!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(ckpt.RunLocked, match=rf"pid {holder.pid}"):
        claim_run_dir(d)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    claim_run_dir(d).release()  # the OS dropped the dead process's lock


def test_two_train_py_in_one_directory_one_is_refused(tmp_path):
    """`train.py hydra.run.dir=D` twice at once: the second exits 2 with one line and writes
    no checkpoint or event file; the first finishes and keeps its own checkpoints."""
    d = tmp_path / "D"
    common = [sys.executable, "train.py", "algo=ppo", "env=cartpole", "log.progress=false", "device=cpu",
              "torch_threads=1", f"hydra.run.dir={d}"]
    first = subprocess.Popen(common + ["seed=1", "max_iterations=400"], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (d / ".lock").exists() and time.time() - t0 < 120:
        time.sleep(0.2)
    time.sleep(1.0)
    second = subprocess.run(common + ["seed=2", "max_iterations=2"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    first.send_signal(signal.SIGINT)  # the first checkpoints and exits cleanly
    first.wait(timeout=300)
    assert second.returncode == 2
    lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "is in use by another training process" in lines[0] and str(first.pid) in lines[0]
    saved = ckpt.load(ckpt.latest(str(d)))
    assert "seed: 1" in saved["config"]
    assert len([f for f in os.listdir(d) if f.startswith("events.out")]) == 1


# ---- disks ----------------------------------------------------------------------------------
def test_full_disk_says_so_removes_the_temp_file_and_keeps_the_previous(tmp_path, monkeypatch):
    """An ENOSPC while writing: 'no space left on device writing <path>', no temp file left,
    the previous checkpoint under that name intact."""
    path = str(tmp_path / "checkpoints" / "ckpt_000001.pt")
    ckpt.save({"format": 2, "x": torch.ones(3)}, path)
    real_save = torch.save

    real_fsync = os.fsync

    def full(fd):  # the disk fills up while the temp file is flushed
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ckpt.CheckpointError, match=f"no space left on device writing {path}"):
        ckpt.save({"format": 2, "x": torch.zeros(3)}, path)
    monkeypatch.setattr(os, "fsync", real_fsync)
    del real_save
    assert os.listdir(tmp_path / "checkpoints") == ["ckpt_000001.pt"]
    assert torch.equal(ckpt.load(path)["x"], torch.ones(3))


def _mount_tmpfs(target, size: str, readonly: bool = False) -> bool:
    os.makedirs(target, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(target)],
                          capture_output=True).returncode == 0


def test_real_200kb_filesystem(tmp_path):
    """On a 200 KB tmpfs the first checkpoint that does not fit fails with one line, exit 2,
    and no temp file is left filling the disk (skipped where mounting is not allowed)."""
    mnt = tmp_path / "tiny"
    if not _mount_tmpfs(mnt, "200k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        proc = subprocess.run([sys.executable, "train.py", "algo=cpo", "env=cartpole", "log.progress=false",
                               "device=cpu", "torch_threads=1", "max_iterations=3", "log.ckpt_every=1",
                               "log.tensorboard=false", f"hydra.run.dir={mnt}/run"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("checkpoint error: no space left on device writing")
        assert not [f for _, _, fs in os.walk(mnt) for f in fs if ".tmp." in f]  # no temp file left
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_read_only_run_directory_fails_before_compute(tmp_path):
    """A read-only run directory: one line naming it, exit 2, before any env is built."""
    mnt = tmp_path / "ro"
    if not _mount_tmpfs(mnt, "1m", readonly=True):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        with pytest.raises(ConfigError, match=rf"run_dir='{mnt}/run' is not writable"):
            claim_run_dir(str(mnt / "run"))
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_stale_temp_files_are_removed_on_start_and_resume(tmp_path, capsys):
    """ckpt_*.pt.tmp.<pid> left by a SIGKILL mid-save is removed when the run (re)starts."""
    run_dir = trained(tmp_path)
    stale = os.path.join(run_dir, "checkpoints", "ckpt_000003.pt.tmp.999999")
    open(stale, "wb").write(b"x" * 1000)
    cfg, path = resume_config(run_dir, ["max_iterations=3"])
    run(cfg, run_dir=run_dir, overrides=[f"resume={run_dir}", "max_iterations=3"])
    assert not os.path.exists(stale)
    assert f"removed {stale}" in capsys.readouterr().err


# ---- non-finite numbers ---------------------------------------------------------------------
def test_nonfinite_loss_saves_the_iteration_start_and_resumes(tmp_path):
    """A learning rate of 1e6 makes the loss non-finite: the run stops with one message naming
    the quantity, the iteration and the minibatch; last_good.pt holds finite tensors equal to
    the state at the start of that iteration, and resume=<dir> and resume=<file> both load it."""
    cfg = small_cfg("ppo", iters=6)
    cfg.log.tensorboard = False
    cfg.algo.lr, cfg.algo.lr_max, cfg.algo.lr_schedule = 1e6, 1e7, "fixed"
    run_dir = str(tmp_path / "nan")
    runner = Runner(cfg, run_dir)
    before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    with pytest.raises(NonFiniteError, match=r"non-finite (loss|gradient|parameter) in iteration 1, "
                                             r"minibatch \d+ of epoch \d+ \(gradient step \d+ of 4\)"):
        runner.step()
    path = os.path.join(run_dir, "checkpoints", "last_good.pt")
    payload = ckpt.load(path)
    for k, v in payload["model"].items():
        assert torch.equal(v, before[k]), k
        assert not v.is_floating_point() or bool(torch.isfinite(v).all())
    assert payload["runner"]["iteration"] == 0
    for target in (run_dir, path):
        cfg2, found = resume_config(target, ["max_iterations=6"])
        assert found == path and cfg2.resume == run_dir


def test_nonfinite_on_the_command_line_is_one_line_exit_2(tmp_path):
    """The issue's command: exit 2, one `non-finite error:` line, last_good.pt all finite."""
    d = tmp_path / "nan"
    proc = subprocess.run([sys.executable, "train.py", "algo=ppo", "env=cartpole", "env.num_envs=16",
                           "algo.lr_max=1e7", "algo.lr=1e6", "algo.lr_schedule=fixed", "log.progress=false",
                           "device=cpu", "torch_threads=1", f"hydra.run.dir={d}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("non-finite error: non-finite ")
    payload = ckpt.load(str(d / "checkpoints" / "last_good.pt"))
    assert all(bool(torch.isfinite(v).all()) for v in payload["model"].values() if v.is_floating_point())
