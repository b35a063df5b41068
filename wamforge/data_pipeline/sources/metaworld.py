"""The `sim` source: Meta-World episodes recorded from the scripted experts."""
from __future__ import annotations

import numpy as np

from wamforge.config.data import DataConfig, SourceConfig
from wamforge.data_pipeline.schema import Episode
from wamforge.data_pipeline.sources import metaworld_env as mw

SOURCE_FORMAT = "metaworld"
SUCCESS_TAIL_STEPS = 8  # keep a few settled frames after success, then stop instead of idling


class MetaWorldSource:
    def __init__(self, name: str, cfg: SourceConfig, data: DataConfig):
        self.name, self.cfg, self.data = name, cfg, data

    def episode_specs(self) -> list[dict]:
        """One small JSON-able spec per episode, in a fixed order; the seed fixes the layout."""
        return [{"task": task, "index": index, "seed": mw.episode_seed(self.cfg.seed, task, index)}
                for task in self.cfg.tasks for index in range(self.cfg.episodes_per_task)]

    def load(self, spec: dict) -> Episode:
        """Roll out the expert; frame t is what it saw before taking action t. Failures are kept."""
        task, seed = spec["task"], spec["seed"]
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
        return Episode(
            source=self.name,
            episode=f"{task}_{spec['index']:04d}",
            kind=self.cfg.kind,
            embodiment=self.cfg.embodiment,
            frames=np.stack(frames),
            fps=self.data.fps,
            views=cameras,
            language=mw.instruction(task),
            actions=np.stack(actions),
            proprio=np.stack(proprio),
            action_space=mw.ACTION_SPACE,
            extra={"task": task, "seed": seed, "success": success_step is not None,
                   "success_step": success_step},
        )
