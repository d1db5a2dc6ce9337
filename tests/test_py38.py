"""The core must stay importable on Python 3.8 (Isaac Gym runs only there)."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = ["cpo", "envs", "train.py", "eval.py"]


@pytest.mark.skipif(shutil.which("vermin") is None, reason="vermin is not installed (pip install vermin)")
def test_core_is_python38_compatible():
    """vermin finds no construct that needs Python > 3.8 in the core import path."""
    proc = subprocess.run(["vermin", "-q", "--no-tips", "--eval-annotations", "-t=3.8-",
                           "--violations", *CORE], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr
