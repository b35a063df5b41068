"""What an evaluation suite provides: named task sets, environments that reset to a seeded
layout, and success read the way its benchmark reads it.

A suite is one file in this room with its config (a `kind` discriminator) beside its class. Its
simulator is imported only when an environment is made, so configs validate without it, and a
missing simulator is one sentence naming the extra to install.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class StepResult:
    reward: float
    success: bool  # the benchmark's own success signal at this step
    done: bool  # the episode ended (time limit or the env's own termination)


class SuiteEnv(Protocol):
    """One task's environment, reused across episodes: `reset(seed, trial)` fixes the layout (a
    suite with fixed initial states, as LIBERO's, picks the trial's; others draw it from the seed)."""
    action_low: np.ndarray
    action_high: np.ndarray

    def reset(self, seed: int, trial: int = 0) -> None: ...

    def observation(self) -> dict:
        """{"image": uint8 [V, H, W, 3], "proprio": float32 [P]} as the policy sees it."""

    def step(self, action: np.ndarray) -> StepResult: ...

    def expert_action(self) -> np.ndarray:
        """The suite's scripted expert's action in the current state (raises if it has none)."""

    def close(self) -> None: ...


class Suite:
    """Base of the registered suites; `cfg` is the suite's own config block (`eval.suite`)."""
    name: str = ""
    label: str = ""  # how reports name it, with the version its figures belong to
    extra: str = ""  # the pip extra that installs its simulator
    embodiment: str = ""  # its robot's name in configs/embodiments.yaml
    default_max_steps: int = 200

    def __init__(self, cfg):
        self.cfg = cfg

    def tasks(self) -> list[str]:
        """The config's tasks with named task sets expanded, in order, without repeats."""
        raise NotImplementedError

    def group(self, task: str) -> str:
        """The group a task is reported under (a difficulty split, a sub-suite)."""
        return self.name

    def instruction(self, task: str) -> str:
        raise NotImplementedError

    def make_env(self, task: str, camera: str, resolution: tuple[int, int], max_steps: int) -> SuiteEnv:
        raise NotImplementedError


def require(module: str, suite: str, extra: str):
    """Import a suite's simulator, or say in one sentence which extra installs it."""
    try:
        return import_module(module)
    except ImportError as err:
        raise RuntimeError(f"the {suite} suite needs {module}, which is not installed "
                           f"(pip install 'wamforge[{extra}]'): {err}") from None


def expand(names: list[str] | str, task_sets: dict[str, list[str]], known: list[str], suite: str) -> list[str]:
    """Task names and task-set names -> task names, in order and without repeats."""
    names = [names] if isinstance(names, str) else names
    tasks: list[str] = []
    for name in names:
        members = task_sets.get(name, [name])
        unknown = [t for t in members if t not in known]
        if unknown:
            raise ValueError(f"{suite} has no task or task set '{unknown[0]}'; task sets: {', '.join(task_sets)}")
        tasks += [t for t in members if t not in tasks]
    if not tasks:
        raise ValueError(f"eval.suite.tasks is empty; name at least one {suite} task or task set")
    return tasks
