"""Atomic, checksummed, weights-only checkpoints, and the lock that keeps one run per directory.

A checkpoint is one ``torch.save`` file of tensors and plain containers only:

* it is written to a temporary file, flushed to disk and renamed over the target, so a crash
  mid-save never leaves a half-written checkpoint under a real name; a full disk removes the
  temporary file, keeps the previous checkpoint and says "no space left on device writing
  <path>"; temporary files left by a killed process are removed when a run (re)starts;
* it carries a SHA-256 digest of its whole content (every tensor's bytes, dtype and shape and
  every other value, in a fixed order), checked on every load: a flipped bit anywhere in the
  data, which ``torch.load`` itself never notices, is reported instead of loaded;
* loading uses ``weights_only=True``: a file that needs arbitrary unpickling is refused and
  nothing from it runs.

:func:`latest` skips a damaged newest checkpoint with a line naming it and the one used;
:func:`load` of an explicitly named damaged file refuses it. :class:`RunLock` holds an
exclusive ``flock`` on ``<run dir>/.lock`` for the life of the process (the OS releases it when
the process dies, so a SIGKILL never leaves a stale lock).
"""
from __future__ import annotations

import errno
import glob
import hashlib
import io
import os
import re
import sys
import zipfile
from typing import Any, Dict, List, Optional

import torch

#: 2: with a SHA-256 digest (``checksum``); 1: the layout before digests (still loads)
FORMAT_VERSION = 2
_READABLE_FORMATS = (1, 2)
_CKPT_RE = re.compile(r"ckpt_(\d+)\.pt$")
_TMP_RE = re.compile(r"\.pt\.tmp\.\d+$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unsafe, corrupt, missing or incompatible."""


def digest(payload: Any) -> str:
    """SHA-256 over ``payload`` (nested dicts, lists, tensors and plain values) in a fixed
    order: dict keys sorted, each tensor as dtype, shape and raw bytes, other values by type
    and ``repr``. Equal payloads give equal digests; any changed bit gives another."""
    h = hashlib.sha256()
    _feed(h, payload)
    return h.hexdigest()


def _feed(h: Any, x: Any) -> None:
    if isinstance(x, dict):
        h.update(b"{%d" % len(x))
        for key in sorted(x, key=repr):
            _feed(h, key)
            _feed(h, x[key])
        h.update(b"}")
    elif isinstance(x, (list, tuple)):
        h.update(b"[%d" % len(x))
        for item in x:
            _feed(h, item)
        h.update(b"]")
    elif isinstance(x, torch.Tensor):
        t = x.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(x.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    else:
        h.update(f"{type(x).__name__}:{x!r};".encode())


def save(payload: Dict[str, Any], path: str) -> None:
    """Write ``payload`` (with its digest under ``checksum``) to ``path`` atomically: temp
    file, fsync, rename, fsync of the directory. A full disk (ENOSPC, EDQUOT) removes the temp
    file, leaves any previous ``path`` intact and raises :class:`CheckpointError` saying "no
    space left on device writing <path>"; other write errors likewise name the path."""
    directory = os.path.dirname(os.path.abspath(path))
    body = {k: v for k, v in payload.items() if k != "checksum"}
    body["checksum"] = digest(body)
    tmp = f"{path}.tmp.{os.getpid()}"
    buf = io.BytesIO()
    torch.save(body, buf)  # serialised in memory first: a full disk then raises a plain ENOSPC
    try:
        os.makedirs(directory, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        _remove(tmp)
        if _is_no_space(err):
            raise CheckpointError(f"no space left on device writing {path} (the previous checkpoint "
                                  "is kept; free some space and resume)") from None
        raise CheckpointError(f"cannot write checkpoint {path}: {_one_line(err)}") from None
    try:  # make the rename itself durable
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _is_no_space(err: BaseException) -> bool:
    """Whether ``err`` is a full disk or a full quota."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[-1].strip() if text else type(err).__name__


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def load(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check its digest; refuse anything
    else with a :class:`CheckpointError` naming the file and what is wrong."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"cannot read checkpoint {path!r}: the file is empty")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"cannot read checkpoint {path!r}: not a torch zip archive "
                              "(truncated or corrupt)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # UnpicklingError for unsafe payloads, RuntimeError for corrupt zips
        text = str(err)
        if "WeightsUnpickler" in text or "Unsupported global" in text:
            raise CheckpointError(
                f"refusing {path!r}: it is not a weights-only checkpoint (it carries pickled "
                f"objects that would run code on load); nothing from it was executed. ({_one_line(err)})") from None
        raise CheckpointError(f"cannot read checkpoint {path!r}: {_one_line(err)}") from None
    if not isinstance(payload, dict) or payload.get("format") not in _READABLE_FORMATS:
        raise CheckpointError(f"{path!r} is not a checkpoint of this trainer (format "
                              f"{payload.get('format') if isinstance(payload, dict) else '?'})")
    if payload["format"] >= 2:
        stored = payload.pop("checksum", None)
        if not isinstance(stored, str) or digest(payload) != stored:
            raise CheckpointError(f"checkpoint {path!r} is damaged: its content does not match the "
                                  "SHA-256 digest stored at save time (a changed or truncated byte)")
    return payload


def list_checkpoints(run_dir: str) -> List[str]:
    """Periodic checkpoints of ``run_dir``, oldest first."""
    files = glob.glob(os.path.join(run_dir, "checkpoints", "ckpt_*.pt"))
    return sorted((f for f in files if _CKPT_RE.search(f)),
                  key=lambda f: int(_CKPT_RE.search(f).group(1)))


def checkpoint_iteration(path: str) -> int:
    """The iteration a periodic checkpoint holds, from its name ``ckpt_<iteration>.pt``."""
    m = _CKPT_RE.search(path)
    if m is None:
        raise ValueError(f"{path!r} is not a periodic checkpoint (ckpt_<iteration>.pt)")
    return int(m.group(1))


def resumable(run_dir: str) -> List[str]:
    """Checkpoints a resume may continue from, oldest first: the periodic ones and
    ``last_good.pt`` (the state at the start of an iteration that met non-finite numbers),
    ordered by the iteration they hold (last_good.pt's is read from the file; an unreadable one
    goes first, so that a readable periodic checkpoint is preferred; at equal iterations
    last_good.pt comes last)."""
    periodic = list_checkpoints(run_dir)
    good = os.path.join(run_dir, "checkpoints", "last_good.pt")
    if not os.path.isfile(good):
        return periodic
    try:
        it_good = int(load(good)["runner"]["iteration"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return [good] + periodic
    return ([p for p in periodic if checkpoint_iteration(p) <= it_good] + [good]
            + [p for p in periodic if checkpoint_iteration(p) > it_good])


def latest(run_dir: str, say: Any = None) -> Optional[str]:
    """Newest loadable checkpoint of ``run_dir`` (:func:`resumable`): a damaged or unreadable
    newer one is skipped with one line (to stderr, or ``say``) naming it, why, and the file
    used instead."""
    skipped: List[str] = []
    for path in reversed(resumable(run_dir)):
        try:
            load(path)
        except CheckpointError as err:
            skipped.append(f"{path} ({err})")
            continue
        for line in skipped:
            _say(say, f"[cpo] skipping damaged checkpoint {line}; using {path}")
        return path
    for line in skipped:
        _say(say, f"[cpo] skipping damaged checkpoint {line}; no other checkpoint loads")
    return None


def _say(say: Any, line: str) -> None:
    (say or (lambda text: print(text, file=sys.stderr, flush=True)))(line)


def prune(run_dir: str, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` periodic checkpoints (best.pt is kept)."""
    files = list_checkpoints(run_dir)
    for path in files[:-keep_last] if keep_last > 0 else files:
        _remove(path)


def remove_stale_temp_files(run_dir: str) -> List[str]:
    """Delete ``checkpoints/*.pt.tmp.<pid>`` left by a process killed mid-save (call it while
    holding the run's :class:`RunLock`, so no live writer owns them); returns what was removed."""
    gone = []
    for path in glob.glob(os.path.join(run_dir, "checkpoints", "*.tmp.*")):
        if _TMP_RE.search(path):
            _remove(path)
            gone.append(path)
    return gone


class RunLock:
    """An exclusive lock on a run directory (``<run_dir>/.lock``, ``fcntl.flock``), held until
    :meth:`release` or the process ends; the OS drops it when the process dies, even by
    SIGKILL. A second training process on the same directory gets a :class:`RunLocked`
    naming the holder's pid. Where ``fcntl`` does not exist (Windows) it does nothing."""

    def __init__(self, run_dir: str) -> None:
        self.path = os.path.join(run_dir, ".lock")
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise :class:`RunLocked`."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return self
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                # a filesystem without flock (some NFS and Lustre mounts): run unlocked, say so
                os.close(fd)
                print(f"[cpo] cannot lock {self.path} ({err.strerror}); this filesystem has no flock, so "
                      "a second run in the same directory would not be refused", file=sys.stderr)
                return self
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunLocked(f"run directory {os.path.dirname(self.path)} is in use by another training "
                            f"process (pid {holder}); wait for it to finish or choose another directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (the file stays; it is reused)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None


class RunLocked(CheckpointError):
    """Another live process holds the run directory's lock."""
