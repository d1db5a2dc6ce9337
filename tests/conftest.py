"""Shared test set-up: few threads (CI has 2 cores), the test-only task registered."""
from __future__ import annotations

import torch

import tests.fakes  # noqa: F401  (registers the `test_line` task)

torch.set_num_threads(1)
