"""The open-loop regime (survey §4.5.1): one plan of H ~ T actions, made from the first observation and
executed without feedback (UniPi, AVDC, Dreamitate). The WAM's cost is paid once per episode, and
nothing it sees later can revise the plan: when the plan is spent, the episode is over.
"""
from __future__ import annotations

import time
from typing import Callable, Literal

import numpy as np
from pydantic import Field

from wamforge.config.base import Strict
from wamforge.model_zoo.regimes.chunked import checked_chunk


class OpenLoopConfig(Strict):
    kind: Literal["open_loop"] = "open_loop"
    horizon: int = Field(32, ge=1, description="H ~ T: the whole task's actions, planned once")


class OpenLoop:
    label = "Open-loop"

    def __init__(self, cfg: OpenLoopConfig):
        self.horizon = cfg.horizon

    def control(self, policy, execute_steps: int, action_dim: int) -> OpenLoopControl:
        return OpenLoopControl(policy, action_dim)


class PlanSpent(Exception):
    """The open-loop plan has been executed to its end: the episode stops there."""


class OpenLoopControl:
    """Calls the policy once, at the episode's first step, then replays its plan."""

    def __init__(self, policy, action_dim: int):
        self.policy, self.action_dim = policy, action_dim
        self.latencies_ms: list[float] = []
        self.plan: np.ndarray | None = None
        self.executed = 0

    def reset(self, instruction: str, seed: int | None = None) -> None:
        self.instruction, self.plan, self.executed = instruction, None, 0
        if hasattr(self.policy, "reset"):
            self.policy.reset(seed)

    def step(self, observe: Callable[[], dict]) -> np.ndarray:
        if self.plan is None:
            observation = observe()
            start = time.perf_counter()
            self.plan = checked_chunk(self.policy.act(observation, self.instruction), self.action_dim)
            self.latencies_ms.append(1000 * (time.perf_counter() - start))
        if self.executed == len(self.plan):
            raise PlanSpent(f"the open-loop plan of {len(self.plan)} actions is spent")
        self.executed += 1
        return self.plan[self.executed - 1]
