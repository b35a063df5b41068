"""ALOHA sim (gym-aloha; Zhao et al., 2023, the ACT paper) with LeRobot's evaluation protocol.

Two bimanual tasks, transfer-cube and insertion, controlled by 14-D absolute joint positions at
50 Hz from the `top` camera. As in LeRobot's gym-aloha evaluation, a seed draws the objects'
layout (gym-aloha's own draw, so seed s is the layout `gym_aloha` `reset(seed=s)` gives), an
episode lasts at most 400 steps, and success is the step reward reaching the task's maximum (4),
at which the episode ends. The scripted expert is wamforge's (see `aloha_env`), replayed from the
joint trajectory planned for the episode's seed.
"""
from __future__ import annotations

import os
from typing import Literal

import numpy as np
from pydantic import field_validator

from wamforge.config.base import Strict
from wamforge.evaluation.suites.base import StepResult, Suite, expand, require

TASKS = ["transfer-cube", "insertion"]  # `aloha_env.TASKS`, named here so configs validate without the simulator
TASK_SETS = {"aloha": TASKS}


class AlohaSuiteConfig(Strict):
    kind: Literal["aloha"] = "aloha"
    tasks: list[str] | str = "aloha"  # transfer-cube, insertion, or the task set "aloha" (both)

    @field_validator("tasks")
    @classmethod
    def _known(cls, value):
        expand(value, TASK_SETS, TASKS, "ALOHA")  # a typo fails when the config loads
        return value


class AlohaEnv:
    """One task's joint-space env, reused across episodes; `reset(seed)` redraws the layout.

    The expert's trajectory for a seed is planned on its first `expert_action()` after the reset,
    so episodes of other controllers do not pay for it.
    """

    def __init__(self, task: str, camera: str, resolution: tuple[int, int], max_steps: int):
        os.environ.setdefault("MUJOCO_GL", "egl")  # headless; must be set before MuJoCo is first imported
        require("gym_aloha", "aloha", "aloha")
        require("dm_control", "aloha", "aloha")
        from wamforge.data_pipeline.sources import aloha_env

        self.aloha, self.task, self.max_steps = aloha_env, task, max_steps
        self.sim = aloha_env.AlohaSim(task, (camera,), resolution)
        self.action_low, self.action_high = aloha_env.ACTION_LOW.copy(), aloha_env.ACTION_HIGH.copy()
        self.seed, self.steps, self.plan = None, 0, None

    def reset(self, seed: int, trial: int = 0) -> None:
        self.sim.reset(seed)
        self.seed, self.steps, self.plan = seed, 0, None

    def observation(self) -> dict:
        return {"image": self.sim.render(), "proprio": self.sim.proprio()}

    def step(self, action: np.ndarray) -> StepResult:
        reward = self.sim.step(action)  # clipped to the action bounds inside
        self.steps += 1
        success = self.sim.success
        return StepResult(reward, success, success or self.steps >= self.max_steps)

    def expert_action(self) -> np.ndarray:
        """The planned joint targets for this step (the last one held once the plan is done)."""
        if self.plan is None:
            self.plan = self.aloha.expert_actions(self.task, self.seed, self.max_steps)
        return self.plan[min(self.steps, len(self.plan) - 1)].copy()

    def close(self) -> None:
        self.sim.close()


class AlohaSuite(Suite):
    name, label, extra, embodiment = "aloha", "ALOHA sim (gym-aloha 0.1.5)", "aloha", "aloha"
    default_max_steps = 400  # LeRobot's episode length for gym-aloha

    def tasks(self) -> list[str]:
        return expand(self.cfg.tasks, TASK_SETS, TASKS, "ALOHA")

    def instruction(self, task: str) -> str:
        from wamforge.data_pipeline.sources.aloha_env import instruction

        return instruction(task)

    def make_env(self, task: str, camera: str, resolution: tuple[int, int], max_steps: int) -> AlohaEnv:
        if task not in TASKS:
            raise ValueError(f"ALOHA has no task '{task}'; tasks: {', '.join(TASKS)}")
        return AlohaEnv(task, camera, resolution, max_steps)
