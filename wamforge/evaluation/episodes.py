"""One episode, run so that nothing a policy does can stop the evaluation.

A policy that raises, returns the wrong shape or non-finite actions fails its episode, with the
reason recorded; the next episode goes on. Each episode's layout and the policy's sampler noise
come from its own seed, so episodes give the same result in any order and on any worker.
"""
from __future__ import annotations

import resource
import sys
import time
import zlib
from dataclasses import dataclass

import numpy as np

from wamforge.evaluation.controllers import Controller
from wamforge.evaluation.suites.base import SuiteEnv
from wamforge.model_zoo.regimes.open_loop import PlanSpent


@dataclass(frozen=True)
class EpisodeSpec:
    """What fixes an episode: who acts, on which task, with which seed (layout and noise)."""
    controller: str
    task: str
    seed: int  # the evaluation seed the episode belongs to (eval.seeds)
    index: int  # its number within (task, seed)
    record_frames: bool = False

    @property
    def episode_seed(self) -> int:
        """The episode's own seed; crc32 because hash() is salted per process."""
        return zlib.crc32(f"{self.seed}/{self.task}/{self.index}".encode()) & 0x7FFFFFFF


def run_episode(env: SuiteEnv, controller: Controller, spec: EpisodeSpec, instruction: str,
                max_steps: int) -> dict:
    """Until the first success or `max_steps`; success at any step counts (as Meta-World's and
    LeRobot's protocols read it)."""
    record = {"task": spec.task, "seed": spec.seed, "index": spec.index, "episode_seed": spec.episode_seed,
              "success": False, "length": 0, "sum_reward": 0.0, "max_reward": None, "failure": None}
    frames, started = [], time.perf_counter()
    try:
        env.reset(spec.episode_seed, spec.index)
        controller.start(env, instruction, spec.episode_seed)
        for _ in range(max_steps):
            if spec.record_frames:
                frames.append(env.observation()["image"])
            result = env.step(_checked(controller.action(env), len(env.action_low)))
            record["length"] += 1
            record["sum_reward"] += result.reward
            record["max_reward"] = result.reward if record["max_reward"] is None else max(record["max_reward"],
                                                                                          result.reward)
            if result.success:
                record["success"] = True
                break
            if result.done:
                break
    except PlanSpent as spent:  # an open-loop episode ends with its plan: no fault, no success
        record["stopped"] = str(spent)
    except Exception as err:  # noqa: BLE001 - a failing policy or env fails its episode, not the evaluation
        record["failure"] = f"{type(err).__name__}: {err}"
    record["seconds"] = time.perf_counter() - started
    record["latency_ms"] = list(getattr(controller, "latencies_ms", []))
    regime = getattr(controller, "regime", None)  # a policy's deployment regime (§4.5), by its label and H
    if regime is not None:
        record["regime"] = {"regime": regime.label, "horizon": regime.horizon}
    record["peak_rss_mb"] = peak_rss_mb()
    if spec.record_frames:
        record["frames"] = np.stack(frames) if frames else None
    return record


def _checked(action, action_dim: int) -> np.ndarray:
    action = np.asarray(action, dtype=np.float32)
    if action.shape != (action_dim,):
        raise ValueError(f"the controller's action has shape {list(action.shape)}, the env takes [{action_dim}]")
    if not np.isfinite(action).all():
        raise ValueError("the controller's action is not finite (NaN or inf)")
    return action


def peak_rss_mb() -> float:
    """This process's resident-memory high-water mark (simulator included)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss if sys.platform == "darwin" else rss * 1024) / 2**20  # Linux reports KiB
