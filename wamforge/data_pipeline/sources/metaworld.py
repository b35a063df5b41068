"""The `sim` source: Meta-World episodes recorded from the scripted experts."""
from __future__ import annotations

import numpy as np

from wamforge.config.data import DataConfig, SourceConfig
from wamforge.data_pipeline.schema import Episode
from wamforge.data_pipeline.sources.expert_rollout import SUCCESS_TAIL_STEPS, expert_episode
from wamforge.data_pipeline.sources import metaworld_env as mw
from wamforge.evaluation.suites.base import expand
from wamforge.evaluation.suites.metaworld import TASK_SETS

SOURCE_FORMAT = "metaworld"


class MetaWorldSource:
    def __init__(self, name: str, cfg: SourceConfig, data: DataConfig):
        self.name, self.cfg, self.data = name, cfg, data

    def episode_specs(self) -> list[dict]:
        """One small JSON-able spec per episode, in a fixed order; the seed fixes the layout. Tasks
        may name the evaluation suite's task sets (mt10, easy, ..., mt50)."""
        tasks = expand(self.cfg.tasks, TASK_SETS, TASK_SETS["mt50"], "Meta-World")
        return [{"task": task, "index": index, "seed": mw.episode_seed(self.cfg.seed, task, index)}
                for task in tasks for index in range(self.cfg.episodes_per_task)]

    def load(self, spec: dict) -> Episode:
        """The expert's rollout; with `successful_only`, the first successful one of up to `attempts`
        seeds (the spec's, then seeds drawn after it), else an error the build quarantines."""
        if not self.cfg.successful_only:
            return self._rollout(spec, spec["seed"])
        for attempt in range(self.cfg.attempts):
            seed = spec["seed"] if attempt == 0 else mw.episode_seed(self.cfg.seed, spec["task"],
                                                                    f"{spec['index']}.{attempt}")
            episode = self._rollout(spec, seed)
            if episode.extra["success"]:
                return episode
        raise ValueError(f"the {spec['task']} expert failed all {self.cfg.attempts} attempts of demo "
                         f"{spec['index']} (successful_only)")

    def _rollout(self, spec: dict, seed: int) -> Episode:
        """Roll out the expert; frame t is what it saw before taking action t. Failures are kept."""
        task = spec["task"]
        cameras = self.cfg.cameras or [self.cfg.camera]  # the first one is the env's own
        env = mw.make_env(task, seed, cameras[0], self.data.resolution, self.cfg.max_steps)
        extra_views = mw.ExtraViews(env, cameras[1:], tuple(self.data.resolution))
        policy = mw.expert(task)
        frames, actions, proprio = [], [], []
        success_step = None  # index of the first frame that shows the task solved
        try:
            obs, _ = env.reset(seed=seed)
            while True:
                action = mw.clip_action(env, policy.get_action(obs))
                frames.append(np.stack([mw.render(env), *extra_views()]))
                actions.append(action)
                proprio.append(mw.proprio(obs))
                obs, _, terminated, truncated, info = env.step(action)
                if success_step is None and mw.success(info):
                    success_step = len(actions)
                settled = success_step is not None and len(actions) >= success_step + SUCCESS_TAIL_STEPS
                if terminated or truncated or settled:
                    break
        finally:
            extra_views.close()
            env.close()
        return expert_episode(self, spec, seed, cameras, mw.instruction(task), mw.ACTION_SPACE, frames, actions,
                              proprio, success_step)
