"""Fault injection for the tests of failure handling, read from the environment of each rank:

  WAMFORGE_INJECT_NONFINITE="3,5"  rank 0's loss is NaN at steps 3 and 5; "4+" from step 4 on
  WAMFORGE_INJECT_HANG="1@3"       rank 1 stops answering (sleeps) when it reaches step 3
  WAMFORGE_INJECT_CHECKPOINT_CRASH="4"  every rank dies while writing the step-4 checkpoint
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Faults:
    nonfinite_steps: frozenset[int] = frozenset()
    nonfinite_from: int | None = None
    hang_rank: int | None = None
    hang_step: int | None = None
    checkpoint_crash_step: int | None = None

    @classmethod
    def from_env(cls) -> "Faults":
        steps, start = set(), None
        for part in filter(None, os.environ.get("WAMFORGE_INJECT_NONFINITE", "").split(",")):
            if part.endswith("+"):
                start = int(part[:-1])
            else:
                steps.add(int(part))
        hang_rank = hang_step = None
        if spec := os.environ.get("WAMFORGE_INJECT_HANG"):
            hang_rank, hang_step = (int(v) for v in spec.split("@"))
        crash = os.environ.get("WAMFORGE_INJECT_CHECKPOINT_CRASH")
        return cls(frozenset(steps), start, hang_rank, hang_step, int(crash) if crash else None)

    def nonfinite(self, rank: int, step: int) -> bool:
        return rank == 0 and (step in self.nonfinite_steps or self.nonfinite_from is not None
                              and step >= self.nonfinite_from)

    def maybe_hang(self, rank: int, step: int) -> None:
        if rank == self.hang_rank and step == self.hang_step:
            while True:
                time.sleep(3600)

    def maybe_crash_in_checkpoint(self, step: int) -> None:
        if step == self.checkpoint_crash_step:
            os._exit(70)  # as a kill would: no cleanup, files half written
