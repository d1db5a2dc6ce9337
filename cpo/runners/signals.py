"""Signals of a training loop: SIGINT / SIGTERM (and SLURM's SIGUSR1/2) ask for a checkpoint
and a clean exit after the current iteration; a second SIGINT exits at once."""
from __future__ import annotations

import signal
from typing import Any, Dict, Optional


#: SLURM's ``--signal`` and submitit's timeout/preemption signal (USR2 by default)
_USR_SIGNALS = tuple(getattr(signal, n) for n in ("SIGUSR1", "SIGUSR2") if hasattr(signal, n))


class Signals:
    """SIGINT/SIGTERM/SIGUSR1/SIGUSR2: the first asks for a checkpoint and a clean exit after
    the current iteration; a second SIGINT exits at once. A SIGUSR1/2 handler that was
    installed before ours (submitit's, which requeues the SLURM job) is called by
    :meth:`chain` once the checkpoint is written."""

    def __init__(self) -> None:
        self.requested: Optional[int] = None
        self._old: Dict[int, Any] = {}
        self._pending: Any = None

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM) + _USR_SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signum

    def restore(self) -> None:
        if self.requested in _USR_SIGNALS and callable(self._old.get(self.requested)):
            self._pending = self._old[self.requested]
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def chain(self) -> None:
        """Pass a SIGUSR1/2 on to the handler installed before ours (after :meth:`restore`)."""
        handler, self._pending = self._pending, None
        if handler is not None:
            handler(self.requested, None)
