"""Atomic, weights-only checkpoints.

A checkpoint is one ``torch.save`` file of tensors and plain containers only: it is written
to a temporary file, flushed to disk and renamed over the target, so a crash mid-save never
leaves a half-written checkpoint under a real name. Loading uses ``weights_only=True``; a
file that needs arbitrary unpickling is refused and nothing from it runs.
"""
from __future__ import annotations

import glob
import os
import re
import zipfile
from typing import Any, Dict, List, Optional

import torch

FORMAT_VERSION = 1
_CKPT_RE = re.compile(r"ckpt_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unsafe, corrupt, missing or incompatible."""


def save(payload: Dict[str, Any], path: str) -> None:
    """Write ``payload`` to ``path`` atomically (temp file, fsync, rename, fsync dir)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def load(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; refuse anything else clearly."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"cannot read checkpoint {path!r}: not a torch zip archive "
                              "(truncated or corrupt)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # UnpicklingError for unsafe payloads, RuntimeError for corrupt zips
        text = str(err)
        msg = text.splitlines()[-1].strip() if text else type(err).__name__
        if "WeightsUnpickler" in text or "Unsupported global" in text:
            raise CheckpointError(
                f"refusing {path!r}: it is not a weights-only checkpoint (it carries pickled "
                f"objects that would run code on load); nothing from it was executed. ({msg})") from None
        raise CheckpointError(f"cannot read checkpoint {path!r}: {msg}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path!r} is not a checkpoint of this trainer (format "
                              f"{payload.get('format') if isinstance(payload, dict) else '?'})")
    return payload


def list_checkpoints(run_dir: str) -> List[str]:
    """Periodic checkpoints of ``run_dir``, oldest first."""
    files = glob.glob(os.path.join(run_dir, "checkpoints", "ckpt_*.pt"))
    return sorted((f for f in files if _CKPT_RE.search(f)),
                  key=lambda f: int(_CKPT_RE.search(f).group(1)))


def latest(run_dir: str) -> Optional[str]:
    """Newest loadable periodic checkpoint of ``run_dir`` (skipping unreadable ones)."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            load(path)
            return path
        except CheckpointError:
            continue
    return None


def prune(run_dir: str, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` periodic checkpoints (best.pt is kept)."""
    files = list_checkpoints(run_dir)
    for path in files[:-keep_last] if keep_last > 0 else files:
        try:
            os.remove(path)
        except OSError:
            pass
