"""Who acts in an episode: a policy driven by its deployment regime, or a reference controller.

The scripted expert is the upper bound and a uniform random controller the lower bound; they run
on the same tasks and seeded layouts as the policy, so the three rates compare directly.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from wamforge.evaluation.suites.base import SuiteEnv
from wamforge.model_zoo.regimes.chunked import Chunked, ChunkedConfig


class ChunkPolicy(Protocol):
    def act(self, observation: dict, instruction: str) -> np.ndarray:
        """observation = {"image": uint8 [V, H, W, 3], "proprio": float32 [P]} -> actions [H, A], raw units.

        A policy may also have `reset(seed)` (episode start: clears its past context and reseeds its
        sampler, so an episode's draws do not depend on the episodes before it), and, with past
        context, `observe(observation)` (a step it does not act on) and `needs_history`."""


class Controller(Protocol):
    def start(self, env: SuiteEnv, instruction: str, seed: int) -> None: ...

    def action(self, env: SuiteEnv) -> np.ndarray: ...


class Expert:
    def start(self, env: SuiteEnv, instruction: str, seed: int) -> None:
        pass

    def action(self, env: SuiteEnv) -> np.ndarray:
        return env.expert_action()


class Random:
    def start(self, env: SuiteEnv, instruction: str, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def action(self, env: SuiteEnv) -> np.ndarray:
        return self.rng.uniform(env.action_low, env.action_high).astype(np.float32)


class PolicyControl:
    """A policy in its deployment regime's control loop (open-loop, chunked, single-step or
    interactive: `policy.regime`, chunked for a policy that names none), fed the env's observations;
    keeps the per-call latencies of the episode in progress."""

    def __init__(self, policy: ChunkPolicy, execute_steps: int):
        self.policy, self.execute_steps = policy, execute_steps
        self.regime = getattr(policy, "regime", None) or Chunked(ChunkedConfig())
        self.loop = None

    @property
    def latencies_ms(self) -> list[float]:
        return self.loop.latencies_ms if self.loop else []

    def start(self, env: SuiteEnv, instruction: str, seed: int) -> None:
        self.loop = self.regime.control(self.policy, self.execute_steps, len(env.action_low))
        self.loop.reset(instruction, seed)

    def action(self, env: SuiteEnv) -> np.ndarray:
        return self.loop.step(env.observation)


REFERENCES = {"expert": Expert, "random": Random}
