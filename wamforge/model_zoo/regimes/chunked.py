"""The chunked regime (survey §4.5): predict H actions, execute the first K (H >= K), then re-plan.

`ChunkedControl` is the control loop for any policy with `act(observation, instruction) -> [H, A]`
(and, optionally, `reset(seed)`; for models with past context `observe(observation)` / `needs_history`): the
simulator suites drive it one control step at a time.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Callable, Literal

import numpy as np
from pydantic import Field

from wamforge.config.base import Strict


class ChunkedConfig(Strict):
    kind: Literal["chunked"] = "chunked"
    horizon: int = Field(8, ge=1, description="H: actions predicted per chunk (the action stream's length)")


class Chunked:
    label = "Chunked"

    def __init__(self, cfg: ChunkedConfig):
        self.horizon = cfg.horizon

    def control(self, policy, execute_steps: int, action_dim: int) -> ChunkedControl:
        return ChunkedControl(policy, execute_steps, action_dim)


def checked_chunk(chunk, action_dim: int) -> np.ndarray:
    """A policy's chunk as float32 [H, A], or one sentence on what is wrong with it."""
    chunk = np.asarray(chunk, dtype=np.float32)
    if chunk.ndim != 2 or chunk.shape[1] != action_dim or len(chunk) == 0:
        raise ValueError(f"policy.act must return actions [H, {action_dim}], got {list(chunk.shape)}")
    if not np.isfinite(chunk).all():
        raise ValueError("policy.act returned non-finite actions (NaN or inf)")
    return chunk


class ChunkedControl:
    """Executes the first `execute_steps` actions of each predicted chunk, then re-plans."""

    def __init__(self, policy, execute_steps: int, action_dim: int):
        self.policy, self.execute_steps, self.action_dim = policy, execute_steps, action_dim
        self.latencies_ms: list[float] = []
        self.queue: deque[np.ndarray] = deque()

    def reset(self, instruction: str, seed: int | None = None) -> None:
        """An episode starts: `seed` reseeds the policy's sampler, so that its draws depend on this
        episode alone (episodes then replay the same, in any order and on any worker)."""
        self.instruction = instruction
        self.queue.clear()
        if hasattr(self.policy, "reset"):
            self.policy.reset(seed)

    def step(self, observe: Callable[[], dict]) -> np.ndarray:
        """observe() -> {"image": uint8 [V, H, W, 3], "proprio": float [P]}, called only when needed."""
        if self.queue and getattr(self.policy, "needs_history", False):
            self.policy.observe(observe())  # past context for the next chunk
        if not self.queue:
            observation = observe()  # the simulator's render is not the policy's latency
            start = time.perf_counter()
            chunk = checked_chunk(self.policy.act(observation, self.instruction), self.action_dim)
            self.latencies_ms.append(1000 * (time.perf_counter() - start))
            self.queue.extend(chunk[: self.execute_steps])
        return self.queue.popleft()
