"""Stopping a run on request: SIGTERM or SIGUSR1 (what SLURM sends before preemption or a time
limit) marks the request; the trainer checks it at every optimizer step, all ranks agree on the
same step, write a checkpoint there and exit with PREEMPTED_EXIT, so `--resume` continues with
no step lost."""
from __future__ import annotations

import signal
import threading

PREEMPTED_EXIT = 75  # EX_TEMPFAIL: stopped on purpose, to be resumed
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """Raised once every rank has checkpointed after a stop request."""


class StopRequest:
    def __init__(self):
        self.signal: str | None = None

    def install(self) -> "StopRequest":
        # Python delivers signals to the main thread only: a trainer run in another thread (a Ray
        # Train worker runs it in one) takes no stop requests by signal; its scheduler stops it instead
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal is not None
